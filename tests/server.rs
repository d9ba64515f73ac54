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

/// The combinations the suite runs under. In queue mode the policy does not
/// apply (one env serves every connection).
fn variants() -> Vec<(Mode, EnvPolicy)> {
    vec![
        (Mode::Direct, EnvPolicy::Connection),
        (Mode::Direct, EnvPolicy::Message),
        (Mode::Queue, EnvPolicy::Connection),
    ]
}

/// Echo guests in every language: WAT, C (built from source), Rust (the
/// guest SDK's `echo` example).
fn echo_guests() -> Vec<&'static str> {
    let mut g = vec!["echo.wat", "c:echo"];
    if rust_guest_enabled() {
        g.push("rust:rust_echo");
    }
    g
}

fn echo_many(guest: &str, mode: Mode, policy: EnvPolicy) {
    // No time budget: it measures wall time, and on a loaded machine (this
    // suite runs under `nice`) a worker preempted for 200 ms in the middle
    // of a microsecond echo overran test_limits' budget; the call was
    // stopped as a fault and its connection closed (seen as "N connections
    // failed", with as many budget overruns and nothing else). What this
    // checks is bytes, not budgets (those: faults_beside_healthy and the
    // budget tests).
    let limits = Limits { call_budget: None, ..test_limits() };
    let server = start(any_guest(guest), mode, policy, limits);
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
    let stats = server.stop();
    assert_eq!(failed, 0, "{failed} connections failed ({guest}, {mode:?}, {policy:?}): {stats}");
    assert_eq!(stats.accepted, conns as u64);
    assert_eq!(stats.bytes_in, stats.bytes_out);
    assert_eq!(stats.envs.live, 0, "{stats}");
    assert_eq!(stats.traps, 0);
    assert_eq!(stats.budget_overruns, 0);
}

#[test]
fn echo_500_connections_byte_exact() {
    for guest in echo_guests() {
        for (mode, policy) in variants() {
            echo_many(guest, mode, policy);
        }
    }
    // A WAT guest with its own wait_msg loop, in queue mode (the C and Rust
    // echo guests export `run` too, so queue mode above used their loops).
    echo_many("echo_run.wat", Mode::Queue, EnvPolicy::Connection);
}

fn http_keepalive_pipelined(guest: &str, mode: Mode, policy: EnvPolicy) {
    let m = match guest {
        "default" => wamr_coro::default_guest().unwrap(),
        other => any_guest(other),
    };
    let server = start(m, mode, policy, test_limits());
    let mut s = connect(server.local_addr());
    // Keep-alive, pipelined, split byte by byte.
    http_keepalive_pipelined_split(&mut s, &format!("{guest} {mode:?} {policy:?}"));
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
        let mut guests = vec!["default", "c:http"];
        if rust_guest_enabled() {
            guests.push("rust:rust_http");
        }
        for guest in guests {
            http_keepalive_pipelined(guest, mode, policy);
        }
    }
}

fn faults_beside_healthy(mode: Mode, policy: EnvPolicy) {
    let server = Arc::new(start(module("faulty.wat"), mode, policy, test_limits()));
    let addr = server.local_addr();
    // Healthy connections echo continuously while faults happen. In direct
    // mode a fault touches only its own connection. In queue mode the
    // contract closes every connection the crashed instance served: a
    // healthy client may see its connection closed (never a wrong byte),
    // and reconnects to a fresh instance.
    let queue = mode == Mode::Queue;
    let healthy = echoers(addr, 8, queue);
    std::thread::sleep(Duration::from_millis(50));

    // A trap, a spinner stopped by the budget (200 ms), a bad pointer (-2;
    // the connection stays usable).
    let mut b = trap_spin_bad_pointer(addr);
    // Counted at once (what /metrics shows), not when the connection closes.
    assert!(server.stats().bad_pointers >= 1, "{mode:?}: not counted while open: {}", server.stats());
    echo_round(&mut b, b"still here");
    // Sending to another connection is UNKNOWN_CONN in direct mode.
    b.write_all(b"O").unwrap();
    assert_eq!(read_n(&mut b, 4).unwrap(), (-1i32).to_le_bytes());
    // A bad pointer to log is ignored and counted; the message is echoed.
    echo_round(&mut b, b"Log with bad pointer");
    // The guest closing itself closes the socket.
    b.write_all(b"Close").unwrap();
    assert!(closed_by_peer(&mut b, Duration::from_secs(5)));

    for n in healthy.finish() {
        assert!(n > 0);
    }
    let stats = server.stop();
    assert_eq!(stats.traps, 1, "{stats}");
    assert_eq!(stats.budget_overruns, 1, "{stats}");
    assert!(stats.bad_pointers >= 2, "{stats}");
    assert_eq!(stats.queue_restarts, if queue { 2 } else { 0 }, "{stats}");
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
    let _hooks = HOOKS.lock();
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

/// Counts `on_open`/`on_close`; echoes, except that a message starting
/// with `S` spins until the call budget stops it. No `memory.grow`: each env
/// costs the same fixed pages of the guest-memory budget.
const SPIN_OR_ECHO_COUNTING_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "test_hooks" "opened" (func $opened (param i32)))
  (import "test_hooks" "closed" (func $closed (param i32)))
  (memory (export "memory") 4)
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "on_open") (param i32) (result i32) (call $opened (local.get 0)) (i32.const 0))
  (func (export "on_close") (param i32) (call $closed (local.get 0)))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 83)) (then (loop $spin (br $spin))))
    (call $send (local.get $c) (local.get $p) (local.get $n))))
"#;

/// `--policy message`: a connection whose `on_open` the guest accepted, and
/// whose later message finds no env (the guest-memory budget has room for
/// one, and another connection's call holds it), is closed, and still gets
/// its `on_close` (GUEST_ABI: exactly once for every accepted connection,
/// faults aside), once an env is free again. Before, it was closed with no
/// `on_close` at all.
#[test]
fn a_message_that_finds_no_env_still_gets_its_connection_an_on_close() {
    setup();
    let _hooks = HOOKS.lock();
    let (opened0, closed0) = (OPENED.load(Ordering::SeqCst), CLOSED.load(Ordering::SeqCst));
    // Room for one env (3 pages), not two; the spinner is stopped after 3 s.
    let limits = Limits { max_guest_memory: 5 * 65536, call_budget: Some(Duration::from_secs(3)), ..test_limits() };
    let m = wamr_coro::Module::from_wat(SPIN_OR_ECHO_COUNTING_WAT).unwrap();
    let server = start(m, Mode::Direct, EnvPolicy::Message, limits);
    let mut a = connect(server.local_addr());
    echo_round(&mut a, b"one");
    let mem = server.stats().guest_memory;
    assert!(mem.used_bytes > 0 && 2 * mem.used_bytes > mem.limit_bytes, "not a one-env budget: {mem:?}");
    // B's on_open, then its spinning call, on the one env.
    let mut b = connect(server.local_addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    while OPENED.load(Ordering::SeqCst) - opened0 < 2 || server.stats().pool.idle == 0 {
        assert!(Instant::now() < deadline, "B was not opened: {}", server.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    b.write_all(b"S").unwrap();
    while server.stats().pool.idle > 0 {
        assert!(Instant::now() < deadline, "B's call did not take the env: {}", server.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    // A's next message finds no env: A is closed, unanswered.
    a.write_all(b"two").unwrap();
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut a, &mut rest);
    assert_eq!(rest, b"", "A was answered without an env");
    // B's call was stopped (a fault: no on_close for B); A's on_close ran.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut b, &mut rest);
    assert_eq!(rest, b"", "the spinning call answered");
    let stats = server.stop();
    assert_eq!(stats.budget_overruns, 1, "{stats}");
    assert_eq!(OPENED.load(Ordering::SeqCst) - opened0, 2);
    assert_eq!(CLOSED.load(Ordering::SeqCst) - closed0, 1, "A's on_close was skipped: {stats}");
    assert_eq!(stats.envs.live, 0, "{stats}");
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

// ---- queue mode only --------------------------------------------------------

#[test]
fn queue_slow_reader_stays_bounded_and_others_are_served() {
    let limits = Limits { output_limit: 256 * 1024, ..test_limits() };
    let server = start(module("echo_run.wat"), Mode::Queue, EnvPolicy::Connection, limits);
    let addr = server.local_addr();
    // A client that writes 64 MiB and never reads: the writer blocks, its
    // pending output reaches the limit, and the server stops reading it
    // (output backpressure), so TCP pushes back on the client.
    let slow = std::thread::spawn(move || {
        let mut s = connect(addr);
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk = vec![0xabu8; 64 * 1024];
        let mut written = 0usize;
        while written < 64 << 20 {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        (s, written)
    });
    // Meanwhile other connections are served byte-exact.
    let rss0 = wamr_coro::internals::stress::rss_bytes();
    for i in 0..50 {
        let mut c = connect(addr);
        echo_round(&mut c, format!("other {i}").as_bytes());
    }
    let (_slow_conn, written) = slow.join().unwrap();
    let grew = wamr_coro::internals::stress::rss_bytes().saturating_sub(rss0);
    let stats = server.stats();
    assert!(stats.queue_depth <= 1024);
    // The client could not write everything: the server stopped reading
    // once its answers could not be sent, instead of failing the guest's
    // sends; it held at most the output limit plus socket buffers.
    assert!(written < 64 << 20, "the server read all {written} bytes of a client that never reads");
    assert!(written >= 256 << 10, "client could write only {written} bytes");
    assert!(grew < 80 << 20, "RSS grew by {grew} bytes");
    let stats = server.stop();
    assert_eq!(stats.envs.live, 0);
}

#[test]
fn queue_full_ring_pushes_back_without_dropping() {
    // A tiny ring and a slow guest: readers must wait, nothing is dropped.
    setup();
    let m = wamr_coro::Module::from_wat(SLOW_ECHO_WAT).unwrap();
    // One shard: the bound under test is that of one ring.
    let limits = Limits { queue_capacity: 4, chunk_size: 1024, queue_shards: 1, ..test_limits() };
    let server = Arc::new(start(m, Mode::Queue, EnvPolicy::Connection, limits));
    let addr = server.local_addr();
    let sampler = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || {
            let mut max = 0;
            for _ in 0..200 {
                max = max.max(server.stats().queue_depth);
                std::thread::sleep(Duration::from_millis(2));
            }
            max
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                echo_full_duplex(connect(addr), (0..256 * 1024).map(|j| (i * 7 + j) as u8).collect())
            })
        })
        .collect();
    for c in clients {
        assert!(c.join().unwrap().unwrap(), "echo mismatch under backpressure");
    }
    assert!(sampler.join().unwrap() <= 4);
    let stats = server.stop();
    assert_eq!(stats.bytes_in, stats.bytes_out);
    assert_eq!(stats.envs.live, 0);
}

#[test]
fn queue_wait_msg_splits_long_data_and_checks_pointers() {
    // cap = 7: a 20-byte message arrives as 7 + 7 + 6, in order. A bad
    // info pointer on the first call is refused with BAD_POINTER.
    const SMALL_CAP: &str = r#"
    (module
      (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
      (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (global $first (mut i32) (i32.const 1))
      (func (export "run") (result i32)
        (local $n i32)
        (if (i32.ne (call $wait (i32.const 2048) (i32.const 7) (i32.const -8)) (i32.const -2))
          (then (return (i32.const 99))))
        (loop $next
          (local.set $n (call $wait (i32.const 2048) (i32.const 7) (i32.const 1024)))
          (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
          (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
            (then
              ;; reply "<n>|" + payload, so the split is visible
              (i32.store8 (i32.const 2040) (i32.add (i32.const 48) (local.get $n)))
              (i32.store8 (i32.const 2041) (i32.const 124))
              (drop (call $send (i32.load (i32.const 1024)) (i32.const 2040) (i32.const 2)))
              (drop (call $send (i32.load (i32.const 1024)) (i32.const 2048) (local.get $n)))))
          (br $next))
        (i32.const 0)))"#;
    setup();
    let m = wamr_coro::Module::from_wat(SMALL_CAP).unwrap();
    let server = start(m, Mode::Queue, EnvPolicy::Connection, test_limits());
    let mut s = connect(server.local_addr());
    s.write_all(b"abcdefghijklmnopqrst").unwrap();
    assert_eq!(read_n(&mut s, 26).unwrap(), b"7|abcdefg7|hijklmn6|opqrst");
    let stats = server.stop();
    assert_eq!(stats.queue_restarts, 0, "{stats}");
    assert!(stats.bad_pointers >= 1);
}

#[test]
fn queue_run_returning_early_is_a_failure_and_restarts() {
    // run returns at once: each instance counts as failed; the host keeps
    // replacing it (with backoff) and never serves through a dead guest.
    const QUITTER: &str = r#"
    (module (memory (export "memory") 1)
      (func (export "run") (result i32) (i32.const 0)))"#;
    setup();
    let m = wamr_coro::Module::from_wat(QUITTER).unwrap();
    let server = start(m, Mode::Queue, EnvPolicy::Connection, test_limits());
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().queue_restarts < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(server.stats().queue_restarts >= 2);
    let stats = server.stop();
    assert_eq!(stats.envs.live, 0);
}

#[test]
fn idle_connections_are_closed_with_on_close() {
    setup();
    let _hooks = HOOKS.lock();
    for (mode, policy) in variants() {
        let closed0 = CLOSED.load(Ordering::SeqCst);
        let m = wamr_coro::Module::from_wat(CLOSE_COUNTING_WAT).unwrap();
        let limits = Limits { idle_timeout: Duration::from_millis(300), ..test_limits() };
        let server = start(m, mode, policy, limits);
        let mut s = connect(server.local_addr());
        echo_round(&mut s, b"then silence");
        assert!(closed_by_peer(&mut s, Duration::from_secs(10)), "idle connection not closed");
        // on_close runs once the server has seen the close; wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while CLOSED.load(Ordering::SeqCst) == closed0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = server.stop();
        assert_eq!(stats.idle_closes, 1, "{mode:?} {policy:?}: {stats}");
        assert_eq!(CLOSED.load(Ordering::SeqCst) - closed0, 1, "{mode:?} {policy:?}");
    }
}

/// A guest with its own `run` loop that misbehaves on request: DATA starting
/// with 'S' spins, 'T' traps, anything else is echoed.
fn faulty_run_wat() -> String {
    run_loop_wat("(if (i32.eq (local.get $c) (i32.const 84)) (then unreachable))")
}

#[test]
fn queue_guest_loop_budget_is_armed_per_event() {
    setup();
    let m = wamr_coro::Module::from_wat(&faulty_run_wat()).unwrap();
    // One shard: every connection shares the instance that faults.
    let server = start(m, Mode::Queue, EnvPolicy::Connection, Limits { queue_shards: 1, ..test_limits() });
    let addr = server.local_addr();
    // The guest idles in wait_msg far longer than the 200 ms budget: that
    // is waiting, not running, and must not count.
    let mut a = connect(addr);
    echo_round(&mut a, b"first");
    std::thread::sleep(Duration::from_millis(500));
    echo_round(&mut a, b"after idling past the budget");
    // Spinning on an event overruns the budget: instance replaced, its
    // connections closed, new connections served.
    let mut s = connect(addr);
    s.write_all(b"S").unwrap();
    assert!(closed_by_peer(&mut s, Duration::from_secs(10)));
    assert!(closed_by_peer(&mut a, Duration::from_secs(10)), "the crashed instance's connections are closed");
    echo_round(&mut connect(addr), b"fresh instance");
    // A trap likewise.
    let mut t = connect(addr);
    t.write_all(b"T").unwrap();
    assert!(closed_by_peer(&mut t, Duration::from_secs(10)));
    echo_round(&mut connect(addr), b"fresh again");
    let stats = server.stop();
    assert_eq!((stats.budget_overruns, stats.traps, stats.queue_restarts), (1, 1, 2), "{stats}");
    assert_eq!(stats.envs.live, 0);
}

#[test]
fn shutdown_terminates_a_guest_that_never_returns() {
    // No call budget: only shutdown can stop the spinner. stop() waits the
    // grace period, terminates it, and still ends with every env destroyed.
    for (mode, policy) in variants() {
        let limits = Limits { call_budget: None, shutdown_grace: Duration::from_millis(300), ..test_limits() };
        let server = start(module("faulty.wat"), mode, policy, limits);
        let mut healthy = connect(server.local_addr());
        echo_round(&mut healthy, b"ok");
        let mut s = connect(server.local_addr());
        s.write_all(b"S").unwrap();
        // The spinner's byte has reached the server (its call follows).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.stats().bytes_in < 3 {
            assert!(std::time::Instant::now() < deadline, "the server never read the spin request");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0, "{mode:?} {policy:?}: {stats}");
        assert_eq!(stats.open, 0);
        // The cut is the host's doing, not a trap; nothing restarts while
        // the server stops.
        assert_eq!(stats.traps, 0, "{mode:?} {policy:?}: {stats}");
        assert!(stats.shutdown_cuts >= 1, "{mode:?} {policy:?}: {stats}");
        assert_eq!(stats.queue_restarts, 0, "{mode:?} {policy:?}: {stats}");
        assert!(closed_by_peer(&mut s, Duration::from_secs(5)));
        assert!(closed_by_peer(&mut healthy, Duration::from_secs(5)));
    }
}

#[test]
fn shutdown_does_not_wait_forever_on_a_client_that_never_reads() {
    // The echo coroutine (direct) or writer (queue) blocks writing to a
    // client that never reads; stop() must still end every connection and
    // destroy every env once the grace period is over.
    for (mode, policy) in variants() {
        let limits = Limits { shutdown_grace: Duration::from_millis(300), ..test_limits() };
        let server = start(module("echo.wat"), mode, policy, limits);
        let addr = server.local_addr();
        let mut s = connect(addr);
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        // Fill both directions' socket buffers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.write_all(&chunk).is_ok() && Instant::now() < deadline {}
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0, "{mode:?} {policy:?}: {stats}");
        assert_eq!(stats.open, 0, "{mode:?} {policy:?}: {stats}");
    }
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_idle_timeout() {
    for (mode, policy) in variants() {
        let limits = Limits { idle_timeout: Duration::from_millis(500), ..test_limits() };
        let server = start(module("echo.wat"), mode, policy, limits);
        let mut s = connect(server.local_addr());
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.write_all(&chunk).is_ok() && Instant::now() < deadline {}
        // The server gives up on the connection (its coroutine or writer
        // stops writing); the env goes back to the pool or away.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats().open > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.stats().open, 0, "{mode:?} {policy:?}");
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0);
    }
}

/// Queue mode: a guest that answers with more than the socket takes at once
/// and then closes. The runner writes what the socket takes, and the
/// connection's writer coroutine, started only then, gets the rest; the
/// guest's close must end output after all of it (not before, not with the
/// socket shut by the close while the writer still holds data), the client
/// must see every byte and then a clean end, and every connection must be
/// closed on the server after. Clients that wait before reading make the
/// direct write partial for sure. Both runners. (The guest:
/// `BIG_THEN_CLOSE_WAT`.)
#[test]
fn queue_a_large_answer_then_close_arrives_whole_then_ends() {
    setup();
    let expected: Vec<u8> = (0u32..1 << 20).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
    for runner in [wamr_coro::server::QueueRunner::Thread, wamr_coro::server::QueueRunner::Coroutine] {
        let limits = Limits { output_limit: 8 << 20, call_budget: Some(Duration::from_secs(10)), ..test_limits() };
        let m = wamr_coro::Module::from_wat(BIG_THEN_CLOSE_WAT).unwrap();
        let server = builder(m, Mode::Queue, EnvPolicy::Connection, limits).queue_runner(runner).start().unwrap();
        let addr = server.local_addr();
        let clients: Vec<_> = (0..8u64)
            .map(|i| {
                let expected = expected.clone();
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut s = connect(addr);
                    s.write_all(b"go").unwrap();
                    std::thread::sleep(Duration::from_millis(100 + 50 * i));
                    let mut got = Vec::new();
                    let end = s.read_to_end(&mut got);
                    assert!(end.is_ok(), "{runner:?} client {i}: {end:?} after {} bytes", got.len());
                    assert!(got.len() == expected.len(), "{runner:?} client {i}: {} bytes", got.len());
                    assert!(got == expected, "{runner:?} client {i}: the bytes differ");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        wait_closed(&server, 8);
        let stats = server.stop();
        assert_eq!(stats.bytes_out, 8 << 22, "{runner:?}: {stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

#[test]
fn queue_coroutine_runner_serves_restarts_and_stops() {
    setup();
    let server = builder(module("faulty.wat"), Mode::Queue, EnvPolicy::Connection, test_limits())
        .queue_runner(wamr_coro::server::QueueRunner::Coroutine)
        .start()
        .unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                for n in 0..20 {
                    echo_round(&mut s, format!("client {i} message {n}").as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // A trap replaces the instance (the restart backs off without blocking
    // a may worker), and new connections are served.
    let mut t = connect(addr);
    t.write_all(b"T").unwrap();
    assert!(closed_by_peer(&mut t, Duration::from_secs(10)));
    echo_round(&mut connect(addr), b"after restart");
    // The trapping connection is closed before its runner has decided to
    // restart, and the last connection may land on the other shard: wait
    // for the restart, or a stop arriving first leaves it undone (seen once
    // in a full run: "queue guest stopped during shutdown; not restarting").
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().queue_restarts < 1 {
        assert!(Instant::now() < deadline, "the trapped instance was not replaced: {}", server.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = server.stop();
    assert_eq!((stats.traps, stats.queue_restarts), (1, 1), "{stats}");
    assert_eq!(stats.envs.live, 0);
}

/// One connection that always has more input ready must not hold its worker:
/// with one worker, a client streaming half a MiB through a guest that
/// computes for a few hundred microseconds a chunk, a second client's
/// message is answered while most of the stream is still unanswered.
/// Without the coroutine's periodic yield (server/connection.rs) and the
/// worker's poll between queued coroutines (vendor/may), the second client
/// was not even accepted before the stream ended.
#[test]
fn a_streaming_connection_does_not_hold_its_worker() {
    let (dir, guest) = guest_file("fair", "slow_echo.wat", SLOW_ECHO_WAT);
    let (mut child, addr, _out) = spawn_server(
        common::wamr_coro()
            .arg("serve")
            .arg(&guest)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--chunk-size", "4096", "--mode", "direct"])
            // The guest must be slow for the stream to last (0.16 s
            // interpreted; compiled, 35 ms, about what a late wake-up of
            // this thread can cost).
            .args(["--engine", "interp"]),
    );

    // Long enough (about 0.2 s) that a late wake-up of this thread leaves
    // most of it to measure.
    const TOTAL: usize = 8 << 20;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
    let a = connect(addr);
    let echoed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (mut a, echoed) = (a.try_clone().unwrap(), Arc::clone(&echoed));
        std::thread::spawn(move || {
            let mut got = Vec::with_capacity(TOTAL);
            let mut buf = [0u8; 65536];
            while got.len() < TOTAL {
                match std::io::Read::read(&mut a, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                echoed.store(got.len(), Ordering::SeqCst);
            }
            got
        })
    };
    let writer = {
        let (mut a, data) = (a.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || a.write_all(&data).is_ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while echoed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the stream is never answered");
        std::thread::sleep(Duration::from_millis(1));
    }

    // Counted from here: this thread may wake late from its sleep while
    // the stream runs on.
    let at_connect = echoed.load(Ordering::SeqCst);
    let mut b = connect(addr);
    b.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut b, 4).unwrap(), b"ping");
    let at_answer = echoed.load(Ordering::SeqCst);

    assert!(writer.join().unwrap(), "the stream was not taken");
    let got = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(got == data, "the stream came back wrong: {} of {TOTAL} bytes", got.len());
    assert!(
        at_answer - at_connect < (TOTAL - at_connect) / 2,
        "the second client, connected when {at_connect} of the first one's {TOTAL} bytes were echoed, \
         was answered only after {at_answer}"
    );
}

/// A guest that computes for a while on each chunk (milliseconds,
/// interpreted) and answers one byte.
const SLOW_SINK_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global (export "__heap_base") i32 (i32.const 131072))
  (data (i32.const 1024) ".")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32)
    (loop $spin (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 5000000))))
    (drop (call $send (local.get $c) (i32.const 1024) (i32.const 1)))
    (i32.const 0)))"#;

/// A connection whose client always has the next chunk ready never waits
/// in a read, so only its share of the worker (`YIELD_AFTER`, socket.rs)
/// hands the worker back. Here the client's whole input sits in the
/// server's receive queue from the start, so no read comes up short (which
/// would make the reader wait, and yield, once), and one byte answers each
/// chunk, so no write waits either: with one worker, the second client is
/// not even accepted until the first one's input runs out, unless the
/// connection yields.
#[test]
fn a_client_that_always_has_input_ready_does_not_hold_its_worker() {
    let (dir, guest) = guest_file("ready", "slow_sink.wat", SLOW_SINK_WAT);
    let (_child, addr, _out) = spawn_server(
        common::wamr_coro()
            .arg("serve")
            .arg(&guest)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--chunk-size", "4096", "--mode", "direct"])
            .args(["--engine", "interp"]),
    );
    // Direct mode with the env held for the connection reads straight into
    // the guest's 4 KiB receive buffer: fourteen full chunks (56 KiB: it fits
    // in the connection's initial windows). With the yield, the second
    // client waits for about three of them: its accept and its own read each
    // queue behind one more chunk of the first.
    const CHUNKS: usize = 14;
    let input = vec![b'x'; CHUNKS * 4096];
    let mut a = connect(addr);
    a.write_all(&input).unwrap();
    let answered = |a: &mut std::net::TcpStream, n: usize| {
        let got = read_n(a, n).unwrap();
        assert!(got.iter().all(|&b| b == b'.'), "{got:?}");
    };
    // Two chunks in, the whole input has long since arrived.
    answered(&mut a, 2);
    a.set_nonblocking(true).unwrap();
    let mut b = connect(addr);
    b.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut b, 1).unwrap(), b".");
    // How many of the first client's chunks were answered meanwhile.
    let mut more = [0u8; 64];
    let during = std::io::Read::read(&mut a, &mut more).unwrap_or(0);
    a.set_nonblocking(false).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        during < (CHUNKS - 2) / 2,
        "the second client was answered only after {during} more of the first client's {CHUNKS} chunks"
    );
    // The rest of the first client's input is still answered.
    answered(&mut a, CHUNKS - 2 - during);
}

/// A read that finds the socket drained waits for the next read event
/// without trying first (vendor/may, `TcpStream::read`). That is only right
/// if no event is lost in between: here each client's second message
/// arrives while the guest is still answering its first, with two workers so
/// that the other worker's poll can take the event during the call and the
/// answer's write resets the socket's event flags before the next read. A
/// lost event leaves the second message unread until the idle timeout (an
/// hour here), so the bounded read below fails.
#[test]
fn data_that_arrives_during_a_call_is_read_without_waiting_for_more() {
    let (dir, guest) = guest_file("edges", "slow_echo.wat", SLOW_ECHO_WAT);
    for mode in ["direct", "queue"] {
        let (mut child, addr, _out) = spawn_server(
            common::wamr_coro()
                .arg("serve")
                .arg(&guest)
                .args(["--listen", "127.0.0.1:0", "--workers", "2", "--mode", mode])
                .args(["--idle-timeout-ms", "3600000"])
                // Slow enough that the second message lands during the call.
                .args(["--engine", "interp"]),
        );
        let clients: Vec<_> = (0..8u32)
            .map(|c| {
                std::thread::spawn(move || -> Result<(), String> {
                    let mut s = connect(addr);
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    for round in 0..150u32 {
                        let (first, second) = (format!("a{c}:{round};"), format!("b{c}:{round};"));
                        s.write_all(first.as_bytes()).map_err(|e| e.to_string())?;
                        std::thread::sleep(Duration::from_micros(40 + (round % 5) as u64 * 30));
                        s.write_all(second.as_bytes()).map_err(|e| e.to_string())?;
                        let want = format!("{first}{second}");
                        let got = read_n(&mut s, want.len())
                            .map_err(|e| format!("client {c} round {round}: {e} (an event was lost?)"))?;
                        if got != want.as_bytes() {
                            return Err(format!("client {c} round {round}: {:?}", String::from_utf8_lossy(&got)));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let results: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
        let _ = child.kill();
        let _ = child.wait();
        for r in results {
            if let Err(e) = r {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("{mode} mode: {e}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guest call that never returns holds its `may` worker's thread, and
/// with it, before `vendor/may`'s I/O stealing, every connection whose
/// socket that worker's epoll watches (fd % workers): none of them was
/// answered until the call ended, although the other worker was idle. Now
/// the other worker takes that epoll's events once it has gone unpolled
/// for 100 µs, and serves those connections while the call still runs.
#[test]
fn a_guest_call_that_never_returns_does_not_strand_its_workers_other_connections() {
    setup();
    // No call budget: only stop() ends the spinner, after the checks.
    let limits = Limits { call_budget: None, shutdown_grace: Duration::from_millis(300), ..test_limits() };
    let server = start(module("faulty.wat"), Mode::Direct, EnvPolicy::Connection, limits);
    let addr = server.local_addr();
    // Sockets on both workers' epolls (the test process has 2 workers).
    let mut clients: Vec<_> = (0..16).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        echo_round(c, format!("hello {i}").as_bytes());
    }
    let mut spinner = connect(addr);
    spinner.write_all(b"S").unwrap();
    let before = server.stats().bytes_in;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().bytes_in == before {
        assert!(Instant::now() < deadline, "the server never read the spin request");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // Every client is answered while the spinner's call goes on.
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = format!("client {i} round {round}");
            c.write_all(msg.as_bytes()).unwrap();
            let got = read_n(c, msg.len()).unwrap_or_else(|e| panic!("client {i} round {round} not answered: {e}"));
            assert_eq!(got, msg.as_bytes());
        }
    }
    assert_eq!(server.stats().open, 17, "the spinner is still in its call");
    let stats = server.stop();
    assert!(stats.shutdown_cuts >= 1, "{stats}");
    assert_eq!(stats.envs.live, 0, "{stats}");
}

/// A client that sends its request and at once shuts its side down (or
/// closes), so that its FIN reaches the server with, or right behind, its
/// data. The server must answer, then see the end of the stream and close.
/// Before, the read that took the data (less than it asked for) marked the
/// socket drained, and the next read waited for an event that never came:
/// the FIN had been announced by the same event. The half-closed client got
/// its answer but never an end, and a closed client's connection (its env,
/// its slot under `max_connections`) stayed open until the idle timeout
/// (an hour here).
#[test]
fn a_client_that_sends_then_shuts_down_gets_its_answer_and_an_end() {
    setup();
    let limits = Limits { idle_timeout: Duration::from_secs(3600), ..test_limits() };
    for (mode, policy) in variants() {
        let server = start(module("echo.wat"), mode, policy, limits.clone());
        let addr = server.local_addr();
        for i in 0..5 {
            let msg = format!("request {i} of a half-closed client");
            let mut s = connect(addr);
            s.write_all(msg.as_bytes()).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            if let Err(e) = std::io::Read::read_to_end(&mut s, &mut got) {
                panic!(
                    "{mode:?}/{policy:?}: no end of stream after {:?} ({e}): the server missed the FIN",
                    String::from_utf8_lossy(&got)
                );
            }
            assert_eq!(got, msg.as_bytes(), "{mode:?}/{policy:?}");
        }
        // Clients that close outright: their connections end too.
        for i in 0..5 {
            let mut s = connect(addr);
            s.write_all(format!("request {i} of a closing client").as_bytes()).unwrap();
        }
        // (Counted closed, not "none open": the last may not be accepted yet.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats().closed < 10 {
            assert!(
                Instant::now() < deadline,
                "{mode:?}/{policy:?}: connections of clients that closed are still open: {}",
                server.stats()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = server.stats();
        assert_eq!((stats.accepted, stats.closed, stats.open), (10, 10, 0), "{mode:?}/{policy:?}: {stats}");
        server.stop();
    }
}

/// Echoes, and says "bye" from `on_close`; with its own `run` loop (queue
/// mode) it says it on the CLOSE event.
const BYE_WAT: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (data (i32.const 16) "bye")
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (call $send (local.get $conn) (local.get $ptr) (local.get $len)))
  (func $on_close (export "on_close") (param $conn i32)
    (drop (call $send (local.get $conn) (i32.const 16) (i32.const 3))))
  (func (export "run") (result i32)
    (local $n i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then (drop (call $send (i32.load (i32.const 1024)) (i32.const 65536) (local.get $n)))))
      (if (i32.eq (i32.load offset=4 (i32.const 1024)) (i32.const 2))
        (then (call $on_close (i32.load (i32.const 1024)))))
      (br $next))
    (i32.const 0)))"#;

/// A client that shuts its side down and reads on gets what `on_close`
/// sends, in every mode: direct mode writes it before it closes the socket,
/// and so must queue mode. Before, queue mode closed the connection's writer
/// as it took the CLOSE event from the ring, so `send` in `on_close` (the
/// host's loop) or on CLOSE (the guest's own loop) answered UNKNOWN_CONN and
/// the client got only the echo: the same guest behaved differently by mode.
#[test]
fn a_half_closed_client_reads_what_on_close_sends_in_every_mode() {
    setup();
    // The same guest without `run`: queue mode runs the host's loop.
    let host_loop = BYE_WAT.replace("(func (export \"run\")", "(func $run");
    let mut cases: Vec<_> = variants().into_iter().map(|(m, p)| (m, p, host_loop.clone())).collect();
    cases.push((Mode::Queue, EnvPolicy::Connection, BYE_WAT.to_string()));
    for (mode, policy, wat) in cases {
        let own_loop = wat.contains("(export \"run\")");
        let server = start(wamr_coro::Module::from_wat(&wat).unwrap(), mode, policy, test_limits());
        for i in 0..3 {
            let mut s = connect(server.local_addr());
            let msg = format!("hello {i}");
            s.write_all(msg.as_bytes()).unwrap();
            // The echo first, so that the FIN comes after the data is handled.
            assert_eq!(read_n(&mut s, msg.len()).unwrap(), msg.as_bytes());
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&rest),
                "bye",
                "{mode:?}/{policy:?} (guest's own loop: {own_loop}): what on_close sent"
            );
        }
        server.stop();
    }
}

/// `n` (the first 4 bytes of a message, little-endian) bytes of 0x5a in one
/// `send`; a fifth byte "?" asks for what that `send` returned, right after.
const SEND_N_WAT: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $last (mut i32) (i32.const 0))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (memory.fill (i32.const 4096) (i32.const 0x5a) (i32.const 8192))
    (global.set $last (call $send (local.get $conn) (i32.const 4096) (i32.load (local.get $ptr))))
    ;; "n?" in one message: the answer right after.
    (if (i32.and (i32.ge_u (local.get $len) (i32.const 5))
                 (i32.eq (i32.load8_u offset=4 (local.get $ptr)) (i32.const 63)))
      (then
        (i32.store (i32.const 16) (global.get $last))
        (drop (call $send (local.get $conn) (i32.const 16) (i32.const 4)))))
    (i32.const 0)))"#;

/// The output limit's edge, in every mode: a `send` of exactly the limit is
/// queued whole, byte-exact; one byte more answers WOULD_EXCEED_LIMIT and
/// queues nothing. (A gap in the suite, not a bug: this passed as written.)
#[test]
fn a_send_of_exactly_the_output_limit_is_accepted_and_one_byte_more_is_not() {
    setup();
    for (mode, policy) in variants() {
        let limits = Limits { output_limit: 4096, ..test_limits() };
        let server = start(wamr_coro::Module::from_wat(SEND_N_WAT).unwrap(), mode, policy, limits);
        let mut s = connect(server.local_addr());
        s.write_all(&4096i32.to_le_bytes()).unwrap();
        assert_eq!(read_n(&mut s, 4096).unwrap(), vec![0x5au8; 4096], "{mode:?}/{policy:?}");
        let mut refused = 4097i32.to_le_bytes().to_vec();
        refused.push(b'?');
        s.write_all(&refused).unwrap();
        // Nothing of the refused send: the next bytes are the answer to "?".
        assert_eq!(read_n(&mut s, 4).unwrap(), (-3i32).to_le_bytes(), "{mode:?}/{policy:?}");
        let stats = server.stop();
        assert_eq!(stats.output_limit_hits, 1, "{mode:?}/{policy:?}: {stats}");
        assert_eq!(stats.bytes_out, 4096 + 4, "{mode:?}/{policy:?}: {stats}");
    }
}
