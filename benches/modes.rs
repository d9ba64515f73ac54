//! Queue mode against direct mode: throughput and latency at 1, 100 and
//! 1,000 connections, on the embedded HTTP guest.
//!
//! `cargo bench --bench modes` starts the real server (`wamr-coro serve`,
//! 2 workers) as a child process per case, and drives it from this process
//! with one `may` coroutine per connection in a closed loop (send a request,
//! wait for its response, repeat) for 3 s. Latency is per request, from
//! write to the last byte of the response, in an HdrHistogram. Both sides
//! share the machine's cores, as they would on a single box.
//! Under `cargo test` it runs a 0.3 s smoke version (1 and 10 connections).
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const RESPONSE_LEN: usize = 86;

struct Case {
    mode: &'static str,
    runner: &'static str,
    conns: usize,
}

fn run_case(case: &Case, secs: f64) -> (f64, u64, u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wamr-coro"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2", "--quiet-wamr"])
        .args(["--mode", case.mode, "--runner", case.runner])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().trim_start_matches("listening on ").parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..case.conns)
        .map(|_| {
            let stop = Arc::clone(&stop);
            wamr_coro::coro::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut s = may::net::TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).unwrap();
                let mut buf = [0u8; RESPONSE_LEN];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if s.write_all(REQUEST).is_err() || s.read_exact(&mut buf).is_err() {
                        break;
                    }
                    h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                }
                h
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for h in handles {
        all.add(h.join().unwrap()).unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    (all.len() as f64 / elapsed, all.value_at_quantile(0.5), all.value_at_quantile(0.99), all.len())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    wamr_coro::coro::configure(2, 64 * 1024).unwrap();
    let (secs, counts): (f64, &[usize]) = if full { (3.0, &[1, 100, 1000]) } else { (0.3, &[1, 10]) };
    println!("{:<22} {:>6} {:>12} {:>10} {:>10}", "mode", "conns", "req/s", "p50 µs", "p99 µs");
    for &conns in counts {
        for (mode, runner) in [("direct", "thread"), ("queue", "thread"), ("queue", "coroutine")] {
            let case = Case { mode, runner, conns };
            let (rps, p50, p99, n) = run_case(&case, secs);
            assert!(n > 0, "no request completed for {mode}/{runner} at {conns} connections");
            let name = if mode == "queue" { format!("queue ({runner})") } else { mode.to_string() };
            println!("{name:<22} {conns:>6} {rps:>12.0} {p50:>10} {p99:>10}");
        }
    }
}
