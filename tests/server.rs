//! The loopback suite: real sockets on 127.0.0.1, real guests. Every test is
//! written once and run for each dispatch mode / env policy it applies to.
mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use wamr_coro::server::{EnvPolicy, Limits, Mode};

/// The combinations the suite runs under.
fn variants() -> Vec<(Mode, EnvPolicy)> {
    vec![(Mode::Direct, EnvPolicy::Connection), (Mode::Direct, EnvPolicy::Message)]
}

fn echo_many(mode: Mode, policy: EnvPolicy) {
    let server = start(module("echo.wat"), mode, policy, test_limits());
    let addr = server.local_addr();
    let conns = 500;
    let rounds = 50;
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                    let mut s = connect(addr);
                    for _ in 0..rounds {
                        let len = rng.gen_range(1..=64 * 1024);
                        let msg: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                        echo_round(&mut s, &msg);
                    }
                })
                .unwrap()
        })
        .collect();
    let mut failed = 0;
    for t in threads {
        if t.join().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} connections failed ({mode:?}, {policy:?})");
    let stats = server.stop();
    assert_eq!(stats.accepted, conns as u64);
    assert_eq!(stats.bytes_in, stats.bytes_out);
    assert_eq!(stats.envs.live, 0, "{stats}");
    assert_eq!(stats.traps, 0);
}

#[test]
fn echo_500_connections_byte_exact() {
    for (mode, policy) in variants() {
        echo_many(mode, policy);
    }
}

fn http_keepalive_pipelined(mode: Mode, policy: EnvPolicy) {
    let server = start(wamr_coro::default_guest::module().unwrap(), mode, policy, test_limits());
    let mut s = connect(server.local_addr());
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // Keep-alive: three sequential requests on one connection.
    for _ in 0..3 {
        s.write_all(req).unwrap();
        assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    }
    // Pipelined: five requests in one write.
    s.write_all(&req.repeat(5)).unwrap();
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len() * 5).unwrap(), HTTP_RESPONSE.repeat(5));
    // Split: one request byte by byte, including the CRLF CRLF.
    for b in req.iter() {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    // "\r\n\r\r\n\r\n" style near-misses do not confuse it.
    s.write_all(b"GET / HTTP/1.1\r\nX: a\r\n\r").unwrap();
    std::thread::sleep(Duration::from_millis(5));
    s.write_all(b"\n").unwrap();
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    drop(s);
    let stats = server.stop();
    assert_eq!(stats.envs.live, 0);
}

#[test]
fn http_keepalive_pipelining_and_split_requests() {
    for (mode, policy) in variants() {
        // The HTTP guest keeps per-connection parse state: not for the
        // message policy, whose envs change between callbacks.
        if policy == EnvPolicy::Message {
            continue;
        }
        http_keepalive_pipelined(mode, policy);
    }
}

fn faults_beside_healthy(mode: Mode, policy: EnvPolicy) {
    let server = Arc::new(start(module("faulty.wat"), mode, policy, test_limits()));
    let addr = server.local_addr();
    // Healthy connections echo continuously while faults happen.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let healthy: Vec<_> = (0..8)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let msg = format!("healthy {i} message {n}");
                    echo_round(&mut s, msg.as_bytes());
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));

    // A trap closes only its connection.
    let mut t = connect(addr);
    t.write_all(b"T").unwrap();
    assert!(closed_by_peer(&mut t, Duration::from_secs(5)), "trap did not close its connection");

    // A spinning guest is stopped by the budget (200 ms) and closed.
    let mut sp = connect(addr);
    let t0 = Instant::now();
    sp.write_all(b"S").unwrap();
    assert!(closed_by_peer(&mut sp, Duration::from_secs(5)), "spinner was not stopped");
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(200 + 1000), "spinner stopped after {took:?}");

    // A bad pointer gets -2 and the connection stays usable.
    let mut b = connect(addr);
    b.write_all(b"B").unwrap();
    assert_eq!(read_n(&mut b, 4).unwrap(), (-2i32).to_le_bytes());
    echo_round(&mut b, b"still here");
    // Sending to another connection is UNKNOWN_CONN in direct mode.
    b.write_all(b"O").unwrap();
    assert_eq!(read_n(&mut b, 4).unwrap(), (-1i32).to_le_bytes());
    // A bad pointer to log is ignored and counted; the message is echoed.
    echo_round(&mut b, b"Log with bad pointer");
    // The guest closing itself closes the socket.
    b.write_all(b"Close").unwrap();
    assert!(closed_by_peer(&mut b, Duration::from_secs(5)));

    stop.store(true, Ordering::Relaxed);
    for h in healthy {
        let n = h.join().expect("a healthy connection lost data");
        assert!(n > 0);
    }
    let stats = server.stop();
    assert_eq!(stats.traps, 1, "{stats}");
    assert_eq!(stats.budget_overruns, 1, "{stats}");
    assert!(stats.bad_pointers >= 2, "{stats}");
    assert_eq!(stats.envs.live, 0);
}

#[test]
fn trap_spin_and_bad_pointer_beside_healthy_connections() {
    for (mode, policy) in variants() {
        faults_beside_healthy(mode, policy);
    }
}

#[test]
fn connections_past_the_limit_are_refused() {
    for (mode, policy) in variants() {
        let limits = Limits { max_connections: 2, ..test_limits() };
        let server = start(module("echo.wat"), mode, policy, limits);
        let addr = server.local_addr();
        let mut a = connect(addr);
        let mut b = connect(addr);
        echo_round(&mut a, b"a");
        echo_round(&mut b, b"b");
        let mut c = connect(addr);
        assert!(closed_by_peer(&mut c, Duration::from_secs(5)), "third connection not refused");
        assert_eq!(server.stats().refused, 1);
        drop(a);
        // A slot frees up once the server has seen the close.
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats().open > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut d = connect(addr);
        echo_round(&mut d, b"d");
        echo_round(&mut b, b"b2");
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0);
    }
}

const CLOSE_COUNTING_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "test_hooks" "opened" (func $opened (param i32)))
  (import "test_hooks" "closed" (func $closed (param i32)))
  (memory (export "memory") 1)
  (func (export "on_open") (param i32) (result i32) (call $opened (local.get 0)) (i32.const 0))
  (func (export "on_close") (param i32) (call $closed (local.get 0)))
  (func (export "on_recv") (param i32 i32 i32) (result i32)
    (call $send (local.get 0) (local.get 1) (local.get 2))))
"#;

#[test]
fn shutdown_calls_on_close_for_every_open_connection() {
    setup();
    for (mode, policy) in variants() {
        let opened0 = OPENED.load(Ordering::SeqCst);
        let closed0 = CLOSED.load(Ordering::SeqCst);
        let m = wamr_coro::Module::from_wat(CLOSE_COUNTING_WAT).unwrap();
        let server = start(m, mode, policy, test_limits());
        let mut conns: Vec<_> = (0..20).map(|_| connect(server.local_addr())).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            echo_round(c, format!("conn {i}").as_bytes());
        }
        let stats = server.stop();
        assert_eq!(OPENED.load(Ordering::SeqCst) - opened0, 20);
        assert_eq!(CLOSED.load(Ordering::SeqCst) - closed0, 20, "{mode:?} {policy:?}");
        assert_eq!(stats.envs.live, 0, "{stats}");
        assert_eq!(stats.open, 0);
        for c in conns.iter_mut() {
            assert!(closed_by_peer(c, Duration::from_secs(5)));
        }
    }
}

#[test]
fn sends_past_the_output_limit_are_refused() {
    for (mode, policy) in variants() {
        let limits = Limits { output_limit: 1024, ..test_limits() };
        let server = start(module("faulty.wat"), mode, policy, limits);
        let mut s = connect(server.local_addr());
        // 2 KiB in one send: WOULD_EXCEED_LIMIT, nothing queued.
        s.write_all(b"X").unwrap();
        assert_eq!(read_n(&mut s, 4).unwrap(), (-3i32).to_le_bytes());
        // The connection goes on.
        echo_round(&mut s, &[7u8; 1000]);
        drop(s);
        let stats = server.stop();
        assert_eq!(stats.output_limit_hits, 1, "{stats}");
        assert_eq!(stats.bytes_out, 1004);
    }
}
