//! Admission and hostile clients: per-address limits, the minimum-progress
//! rule against trickling clients, one descriptor per connection.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode};

fn modes() -> [Mode; 2] {
    [Mode::Direct, Mode::Queue]
}

#[test]
fn one_address_cannot_take_every_slot() {
    for mode in modes() {
        let limits = Limits { max_connections: 20, max_connections_per_ip: 5, ..test_limits() };
        let server = start(module("echo.wat"), mode, EnvPolicy::Connection, limits);
        let addr = server.local_addr();
        let mut mine: Vec<TcpStream> = (0..5).map(|_| connect_from("127.0.0.1", addr)).collect();
        for s in mine.iter_mut() {
            echo_round(s, b"in");
        }
        // The sixth from the same address is refused...
        let mut sixth = connect_from("127.0.0.1", addr);
        let _ = sixth.write_all(b"x");
        assert!(closed_by_peer(&mut sixth, Duration::from_secs(5)), "{mode:?}: sixth connection served");
        // ...while another address is served.
        let mut other = connect_from("127.0.0.2", addr);
        echo_round(&mut other, b"other address");
        // A slot freed is a slot again.
        drop(mine.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = connect_from("127.0.0.1", addr);
            let _ = again.write_all(b"y");
            again.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            if matches!(again.read(&mut b), Ok(1)) {
                break;
            }
            assert!(Instant::now() < deadline, "{mode:?}: the freed slot never came back");
        }
        let stats = server.stop();
        assert!(stats.refused >= 1, "{stats}");
    }
}

#[test]
fn a_trickling_client_is_closed_and_a_healthy_one_is_served() {
    for mode in modes() {
        // At least 16 bytes per 600 ms window.
        let limits = Limits { idle_timeout: Duration::from_millis(600), min_recv_bytes: 16, ..test_limits() };
        let server = start(module("echo.wat"), mode, EnvPolicy::Connection, limits);
        let addr = server.local_addr();
        let mut slow = connect(addr);
        let mut healthy = connect(addr);
        // One byte every 100 ms: the idle timeout alone would never fire.
        let mut closed = false;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            if slow.write_all(b"z").is_err() {
                closed = true;
                break;
            }
            slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut b = [0u8; 16];
            match slow.read(&mut b) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                _ => {}
            }
            echo_round(&mut healthy, b"0123456789abcdefghij");
        }
        assert!(closed, "{mode:?}: the trickling client was never closed");
        echo_round(&mut healthy, b"still here, and well above the floor");
        let stats = server.stop();
        assert!(stats.slow_closes >= 1, "{mode:?}: {stats}");
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn one_file_descriptor_per_connection() {
    for mode in modes() {
        let server = start(module("echo.wat"), mode, EnvPolicy::Connection, test_limits());
        let addr = server.local_addr();
        // Warm up (pool, workers), then count.
        echo_round(&mut connect(addr), b"warm");
        std::thread::sleep(Duration::from_millis(100));
        let before = open_fds();
        let mut clients: Vec<TcpStream> = (0..50).map(|_| connect(addr)).collect();
        for c in clients.iter_mut() {
            echo_round(c, b"x");
        }
        let after = open_fds();
        // 50 client sockets in this process, plus the server's side.
        let server_side = after - before - 50;
        assert!(server_side <= 50 + 4, "{mode:?}: {server_side} descriptors for 50 connections");
        drop(clients);
        server.stop();
    }
}

/// 'B' answers 32 MiB (512 sends of the 64 KiB at 0, byte i = i % 251);
/// anything else is echoed.
const BIG_ANSWER_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32)
    (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 66))
      (then (return (call $send (local.get $c) (local.get $p) (local.get $n)))))
    (loop $fill
      (i32.store8 (local.get $i) (i32.rem_u (local.get $i) (i32.const 251)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 65536))))
    (local.set $i (i32.const 0))
    (loop $big
      (drop (call $send (local.get $c) (i32.const 0) (i32.const 65536)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $big (i32.lt_u (local.get $i) (i32.const 512))))
    (i32.const 0)))"#;

const BIG_ANSWER: usize = 32 << 20;

/// Asks for the big answer and checks it byte for byte.
fn big_answer_intact(addr: SocketAddr) -> bool {
    let mut s = connect(addr);
    s.write_all(b"B").unwrap();
    let got = read_n(&mut s, BIG_ANSWER).unwrap();
    let intact = got.iter().enumerate().all(|(i, &b)| b == (i % 65536 % 251) as u8);
    echo_round(&mut s, b"and then an echo");
    intact
}

#[test]
fn a_client_that_reads_a_trickle_is_closed_and_a_healthy_one_is_served() {
    // Direct mode: the write holds the connection's coroutine and its env.
    // Queue mode: the writer holds the connection and its queued output.
    for mode in [Mode::Direct, Mode::Queue] {
        trickle_reader_is_closed(mode);
    }
}

fn trickle_reader_is_closed(mode: Mode) {
    // At least 4 MiB taken per 1 s window while an answer is pending.
    let limits = Limits {
        idle_timeout: Duration::from_millis(1000),
        min_send_bytes: 4 << 20,
        output_limit: 2 * BIG_ANSWER,
        ..test_limits()
    };
    let m = wamr_coro::Module::from_wat(BIG_ANSWER_WAT).unwrap();
    let server = start(m, mode, EnvPolicy::Connection, limits);
    let addr = server.local_addr();
    let mut slow = connect(addr);
    slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    slow.write_all(b"B").unwrap();
    let asked = Instant::now();
    // 256 KiB every 100 ms: about 2.5 MiB/s, enough that the socket becomes
    // writable within every idle timeout (so the write timeout never fires),
    // too little for the floor; the answer would last 13 s. The rule is
    // checked as writes return, so it ends the write within about two
    // windows (2.3-2.8 s here).
    let mut chunk = vec![0u8; 256 << 10];
    let mut healthy = None;
    let mut taken = 0usize;
    while server.stats().slow_closes == 0 && asked.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
        if slow.read_exact(&mut chunk).is_err() {
            break;
        }
        taken += chunk.len();
        // Another client, served while the slow one's write is pending.
        healthy.get_or_insert_with(|| std::thread::spawn(move || big_answer_intact(addr)));
    }
    let waited = asked.elapsed();
    let stats = server.stats();
    assert!(stats.slow_closes == 1, "{mode:?}: after {waited:?} ({taken} bytes taken): {stats}");
    assert!(waited < Duration::from_secs(6), "{mode:?}: closed only after {waited:?}");
    // The connection is reset: the slow client gets what its own socket
    // holds and then the reset, not the rest of what the server's kernel
    // held for it (megabytes) and an orderly end.
    let mut b = vec![0u8; 64 << 10];
    let end = loop {
        match slow.read(&mut b) {
            Ok(0) => break Ok(0),
            Ok(_) => {}
            Err(e) => break Err(e.kind()),
        }
    };
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset), "{mode:?}: the slow connection was not reset");
    assert!(healthy.expect("started").join().unwrap(), "{mode:?}: the healthy client's answer was damaged");
    assert!(big_answer_intact(addr), "{mode:?}: a client after the close was not served");
    let stats = server.stop();
    assert_eq!(stats.slow_closes, 1, "{mode:?}: {stats}");
    assert_eq!(stats.envs.live, 0, "{stats}");
}
