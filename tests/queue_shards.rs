//! Queue mode shards (GUEST_ABI 1.1): a fault costs one shard's connections,
//! a standby takes over at once, output backpressure keeps a reading client
//! whole, and a receive buffer never shows one connection another's bytes.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode, Server, ServerHandle};
use wamr_coro::{EnvSource, Module};

fn start_queue(m: Module, shards: usize, limits: Limits) -> ServerHandle {
    start(m, Mode::Queue, EnvPolicy::Connection, Limits { queue_shards: shards, ..limits })
}

/// Whether the connection still echoes (false if the server closed it).
fn still_echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4];
    matches!(s.read_exact(&mut b), Ok(())) && &b == b"ping"
}

#[test]
fn a_fault_closes_only_its_shards_connections() {
    a_fault_closes_only_its_shards_connections_from(EnvSource::Instance);
}

/// With `--source spawn` every shard's instance, and every standby, used to
/// be spawned from one shard parent: WAMR spread one shard's trap to all of
/// them, so every connection of every shard was closed (and each shard's
/// standby failed in turn: 8 traps counted for one).
#[test]
fn a_fault_closes_only_its_shards_connections_spawn() {
    a_fault_closes_only_its_shards_connections_from(EnvSource::Spawn);
}

fn a_fault_closes_only_its_shards_connections_from(source: EnvSource) {
    let server = Server::builder(module("faulty.wat"))
        .listen("127.0.0.1:0")
        .mode(Mode::Queue)
        .env_source(source)
        .workers(2)
        .limits(Limits { queue_shards: 4, ..test_limits() })
        .start()
        .unwrap();
    // Connection ids are given in accept order from 1: round-trip each
    // before opening the next, so ids 1..=8 are these, spread over shards
    // id % 4.
    let mut healthy: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(server.local_addr());
            echo_round(&mut s, b"hi");
            s
        })
        .collect();
    // Id 9 (shard 1) traps its shard's instance.
    let mut bad = connect(server.local_addr());
    bad.write_all(b"T").unwrap();
    assert!(closed_by_peer(&mut bad, Duration::from_secs(5)), "the trapping connection stayed open");
    // Ids 1 and 5 shared shard 1 with it and are closed; the six others
    // are served as if nothing happened.
    let alive: Vec<bool> = healthy.iter_mut().map(still_echoes).collect();
    assert_eq!(alive, vec![false, true, true, true, false, true, true, true], "{source:?}");
    // The standby serves shard 1's next connection (id 10 is shard 2, 13 is
    // shard 1) at once.
    let mut fresh: Vec<TcpStream> = (0..4).map(|_| connect(server.local_addr())).collect();
    for s in fresh.iter_mut() {
        echo_round(s, b"again");
    }
    let stats = server.stop();
    assert_eq!(stats.queue_restarts, 1, "{source:?}: {stats}");
    assert_eq!(stats.traps, 1, "{source:?}: {stats}");
    assert_eq!(stats.queue_shard_depths.len(), 4);
}

#[test]
fn shards_default_to_the_number_of_workers() {
    let server = start_queue(module("echo.wat"), 0, test_limits());
    let mut s = connect(server.local_addr());
    echo_round(&mut s, b"x");
    let stats = server.stop();
    assert_eq!(stats.queue_shard_depths.len(), 2, "tests run 2 workers: {stats}");
}

#[test]
fn a_reading_client_gets_a_10_mb_echo_intact() {
    for shards in [1, 2] {
        let server = start_queue(module("echo.wat"), shards, test_limits());
        let mut s = connect(server.local_addr());
        let total = 10 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
        let mut got = vec![0u8; total];
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == data, "echo differs");
        let stats = server.stop();
        assert_eq!(stats.output_limit_hits, 0, "{stats}");
        assert_eq!(stats.queue_restarts, 0, "{stats}");
    }
}

/// Answers each DATA with the 8 bytes that follow it in the receive buffer.
const PEEK_HOST_LOOP: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (drop (call $send (local.get $c) (i32.add (local.get $p) (local.get $n)) (i32.const 8)))
    (i32.const 0)))"#;

/// The host's receive buffer (the host loop's; a guest's own `run` loop
/// passes its own memory to `wait_msg`, see the next test).
#[test]
fn a_receive_buffer_never_shows_another_connections_bytes() {
    setup();
    let server = start_queue(Module::from_wat(PEEK_HOST_LOOP).unwrap(), 1, test_limits());
    let mut a = connect(server.local_addr());
    a.write_all(&[b'A'; 64]).unwrap();
    assert_eq!(read_n(&mut a, 8).unwrap(), vec![0u8; 8]);
    // A's 64 bytes are still in the one instance's buffer; B's 4 bytes
    // land on them, and what follows must not be A's.
    let mut b = connect(server.local_addr());
    b.write_all(b"bbbb").unwrap();
    assert_eq!(read_n(&mut b, 8).unwrap(), vec![0u8; 8], "B saw A's bytes");
    // The same connection sees its own earlier bytes: the guest's own
    // business, not wiped.
    let deadline = Instant::now() + Duration::from_secs(5);
    a.write_all(&[b'A'; 64]).unwrap();
    let _ = read_n(&mut a, 8).unwrap();
    assert!(Instant::now() < deadline);
    server.stop();
}

/// A `run` loop over wait_msg with a 64-byte buffer at 2048. A DATA event
/// starting with `?` is answered with the bytes at buf+1 and buf+63; any
/// other is echoed, after which the guest marks buf+1 and buf+63 with `M`.
const MARK_RUN_LOOP: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (local $n i32) (local $c i32)
    (loop $next
      (local.set $n (call $wait (i32.const 2048) (i32.const 64) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (local.set $c (i32.load (i32.const 1024)))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then
          (if (i32.eq (i32.load8_u (i32.const 2048)) (i32.const 63))
            (then
              (i32.store8 (i32.const 3000) (i32.load8_u (i32.const 2049)))
              (i32.store8 (i32.const 3001) (i32.load8_u (i32.const 2111)))
              (drop (call $send (local.get $c) (i32.const 3000) (i32.const 2))))
            (else
              (drop (call $send (local.get $c) (i32.const 2048) (local.get $n)))
              (i32.store8 (i32.const 2049) (i32.const 77))
              (i32.store8 (i32.const 2111) (i32.const 77))))))
      (br $next))
    (i32.const 0)))"#;

/// guest-abi.md section 3: `wait_msg` writes only `buf .. buf+n` (and the
/// record at `info`). The buffer a `run` loop passes is the guest's own
/// memory: what the guest keeps past `n` stays, whichever connection's
/// bytes arrive next.
#[test]
fn wait_msg_writes_only_buf_to_buf_plus_n() {
    setup();
    let server = start_queue(Module::from_wat(MARK_RUN_LOOP).unwrap(), 1, Limits { chunk_size: 64, ..test_limits() });
    let mut a = connect(server.local_addr());
    a.write_all(&[b'a'; 64]).unwrap();
    assert_eq!(read_n(&mut a, 64).unwrap(), vec![b'a'; 64]);
    // Another connection's one byte lands at buf; buf+1 and buf+63 lie
    // inside its 64-byte buffer but past its n = 1.
    let mut b = connect(server.local_addr());
    b.write_all(b"?").unwrap();
    assert_eq!(read_n(&mut b, 2).unwrap(), b"MM", "the host wrote past buf+n");
    // The same connection's next bytes: likewise.
    a.write_all(b"?").unwrap();
    assert_eq!(read_n(&mut a, 2).unwrap(), b"MM", "the host wrote past buf+n");
    let stats = server.stop();
    assert_eq!((stats.queue_restarts, stats.bad_pointers), (0, 0), "{stats}");
}
