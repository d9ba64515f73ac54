//! Queue mode with the guest's own `run` loop: `wait_msg`'s edge cases
//! (guest-abi.md sections 1 and 3) and the time budget of `run`'s own code
//! (section 8).
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode};
use wamr_coro::Module;

/// Reads until `want` bytes have arrived, the peer closes, or 5 s pass.
fn read_up_to(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while got.len() < want && Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    got
}

/// Peeks at every event with `wait_msg(buf, 0, info)` and then takes a
/// DATA event's bytes with a 64-byte buffer, echoing them. A peek must
/// answer 0 and say DATA; a peek that answers anything else is reported as
/// a `!` in the echo.
const PEEK_THEN_TAKE: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "!")
  (func (export "run") (result i32) (local $n i32)
    (loop $next
      (local.set $n (call $wait (i32.const 2048) (i32.const 0) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then
          (if (local.get $n)
            (then (drop (call $send (i32.load (i32.const 1024)) (i32.const 100) (i32.const 1)))))
          (local.set $n (call $wait (i32.const 2048) (i32.const 64) (i32.const 1024)))
          (drop (call $send (i32.load (i32.const 1024)) (i32.const 2048) (local.get $n)))))
      (br $next))
    (i32.const 0)))"#;

/// `cap` 0 reports a DATA event without consuming a byte: the next call
/// hands out the same bytes, and a chunk longer than the next buffer still
/// arrives whole, in order.
#[test]
fn wait_msg_with_cap_zero_peeks_without_consuming() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(PEEK_THEN_TAKE).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    let mut s = connect(server.local_addr());
    s.write_all(b"abcdef").unwrap();
    let got = read_up_to(&mut s, 6);
    assert_eq!(String::from_utf8_lossy(&got), "abcdef", "a peek lost bytes of the chunk");
    // 100 bytes: more than the 64-byte buffer, so taken in pieces, each
    // after a peek.
    let long: Vec<u8> = (0..100u8).map(|i| b'A' + i % 26).collect();
    s.write_all(&long).unwrap();
    let got = read_up_to(&mut s, long.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&long), "a peek lost bytes of a long chunk");
    let stats = server.stop();
    assert_eq!((stats.queue_restarts, stats.traps, stats.bad_pointers), (0, 0, 0), "{stats}");
}

/// Spins in `run` before its first `wait_msg` until 700 ms after the server
/// started (`now_ms`), then echoes.
const SPIN_BEFORE_FIRST_WAIT: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (import "env" "now_ms" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (local $n i32)
    (loop $spin (br_if $spin (i64.lt_u (call $now) (i64.const 700))))
    (loop $next
      (local.set $n (call $wait (i32.const 2048) (i32.const 1024) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then (drop (call $send (i32.load (i32.const 1024)) (i32.const 2048) (local.get $n)))))
      (br $next))
    (i32.const 0)))"#;

/// The code `run` executes before its first `wait_msg` has the call budget
/// too: an instance spinning there past 200 ms is stopped, counted as a
/// budget overrun, and replaced like after any queue-mode fault; the shard
/// then serves the connection that was waiting.
#[test]
fn code_before_the_first_wait_msg_is_under_the_call_budget() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(SPIN_BEFORE_FIRST_WAIT).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    // Connected while the first instance spins: its OPEN waits in the ring
    // and no instance has been told of it, so a fault does not close it.
    let mut s = connect(server.local_addr());
    s.write_all(b"served after the spin").unwrap();
    let got = read_up_to(&mut s, 21);
    assert_eq!(String::from_utf8_lossy(&got), "served after the spin");
    let stats = server.stop();
    assert!(stats.budget_overruns >= 1, "a 200 ms budget, spun for 700 ms, never stopped: {stats}");
    assert!(stats.queue_restarts >= 1, "the shard was not restarted after the overrun: {stats}");
    assert_eq!(stats.traps, 0, "{stats}");
}

/// Peeks (`wait_msg(buf, 0, info)`) in a loop and never takes the event.
const PEEK_FOREVER: &str = r#"(module
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (loop $next
      (if (i32.eq (call $wait (i32.const 2048) (i32.const 0) (i32.const 1024)) (i32.const -4))
        (then (return (i32.const 0))))
      (br $next))
    (i32.const 0)))"#;

/// A peek hands back the same DATA event without consuming it and returns
/// at once; it used to re-arm the per-event budget like any `wait_msg`, so
/// a guest that peeked in a loop spun forever, out of the budget's reach
/// (found while fixing the peek). Peeking at the same event again now keeps
/// the deadline the first peek armed.
#[test]
fn a_guest_that_only_peeks_is_stopped_by_the_budget() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(PEEK_FOREVER).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    let mut s = connect(server.local_addr());
    s.write_all(b"x").unwrap();
    // The fault closes the shard's connections, this one included.
    assert!(closed_by_peer(&mut s, Duration::from_secs(10)), "the peeking guest was never stopped");
    let stats = server.stop();
    assert!(stats.budget_overruns >= 1, "{stats}");
    assert_eq!(stats.traps, 0, "{stats}");
}

/// After an OPEN it calls `wait_msg` with a negative `cap` in a loop: each
/// call answers BAD_POINTER at once.
const BAD_WAIT_FOREVER: &str = r#"(module
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (if (i32.eq (call $wait (i32.const 2048) (i32.const 1024) (i32.const 1024)) (i32.const -4))
      (then (return (i32.const 0))))
    (loop $again
      (drop (call $wait (i32.const 2048) (i32.const -1) (i32.const 1024)))
      (br $again))
    (i32.const 0)))"#;

/// A `wait_msg` refused for a bad pointer hands out no event, so it must
/// not end the budget of the event being handled either: a guest that
/// called it in a loop spun forever, out of the budget's reach, and its
/// shard's connections were never served again.
#[test]
fn a_guest_that_loops_on_a_refused_wait_msg_is_stopped_by_the_budget() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(BAD_WAIT_FOREVER).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    let mut s = connect(server.local_addr());
    // The fault closes the shard's connections, this one included.
    assert!(closed_by_peer(&mut s, Duration::from_secs(10)), "the guest was never stopped");
    let stats = server.stop();
    assert!(stats.budget_overruns >= 1, "{stats}");
    assert!(stats.bad_pointers >= 1, "{stats}");
}

/// Its own loop takes DATA 4 bytes at a time. A message starting with "C"
/// makes it close that connection; any DATA it is handed later for a
/// connection it closed is counted; "?" answers the count (as a digit).
const CLOSES_MID_MESSAGE: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "env" "wait_msg" (func $wait (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $closed (mut i32) (i32.const 0))
  (global $late (mut i32) (i32.const 0))
  (func (export "run") (result i32)
    (local $n i32) (local $conn i32)
    (loop $next
      (local.set $n (call $wait (i32.const 65536) (i32.const 4) (i32.const 1024)))
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (local.set $conn (i32.load (i32.const 1024)))
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then
          (if (i32.eq (local.get $conn) (global.get $closed))
            (then (global.set $late (i32.add (global.get $late) (i32.const 1))))
            (else
              (if (i32.eq (i32.load8_u (i32.const 65536)) (i32.const 67))
                (then
                  (drop (call $close (local.get $conn)))
                  (global.set $closed (local.get $conn))))
              (if (i32.eq (i32.load8_u (i32.const 65536)) (i32.const 63))
                (then
                  (i32.store8 (i32.const 2048) (i32.add (global.get $late) (i32.const 48)))
                  (drop (call $send (local.get $conn) (i32.const 2048) (i32.const 1)))))))))
      (br $next))
    (i32.const 0)))"#;

/// After the guest's own `close(conn)`, it is handed no more of `conn`'s
/// bytes: the events still queued for it are dropped, and so must be the
/// rest of a message longer than the guest's buffer. Before, the rest came
/// as further DATA events for the connection the guest had closed (and
/// whose state it may have freed).
#[test]
fn no_data_is_handed_out_for_a_connection_the_guest_closed() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(CLOSES_MID_MESSAGE).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    let mut a = connect(server.local_addr());
    a.write_all(b"CCCCxxxxyyyyzzzz").unwrap();
    assert!(closed_by_peer(&mut a, Duration::from_secs(5)), "the guest's close did not close");
    let mut b = connect(server.local_addr());
    b.write_all(b"?").unwrap();
    assert_eq!(read_n(&mut b, 1).unwrap(), b"0", "DATA events handed out after the guest's close");
    server.stop();
}

/// On a DATA event starting with 'P', calls `wait_msg` with a bad buffer
/// in a loop, ignoring its -2; echoes anything else.
fn bad_pointer_loop_wat() -> String {
    run_loop_wat(
        r#"(if (i32.eq (local.get $c) (i32.const 80))
             (then (loop $bad (drop (call $wait (i32.const -1) (i32.const 16) (i32.const 1024))) (br $bad))))"#,
    )
}

/// A `wait_msg` that refuses bad pointers returns at once, without an event
/// and without waiting; it used to disarm the per-event deadline all the
/// same, so a guest calling it in a loop spun forever with no budget at all
/// (the shard dead, its runner's thread busy) until shutdown cut it. The
/// deadline of the event being handled now stays armed.
#[test]
fn a_guest_looping_on_bad_wait_msg_pointers_is_stopped_by_the_budget() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(&bad_pointer_loop_wat()).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    let mut s = connect(server.local_addr());
    echo_round(&mut s, b"fine");
    s.write_all(b"P").unwrap();
    assert!(closed_by_peer(&mut s, Duration::from_secs(5)), "the looping guest was never stopped");
    // The standby serves the shard's next connection.
    echo_round(&mut connect(server.local_addr()), b"after the fault");
    let stats = server.stop();
    assert!(stats.budget_overruns >= 1, "{stats}");
    assert!(stats.bad_pointers >= 1, "{stats}");
    assert_eq!((stats.traps, stats.shutdown_cuts), (0, 0), "{stats}");
}

/// Keeps calling `wait_msg` after it answered SHUTDOWN instead of
/// returning from `run`.
fn ignores_shutdown_wat() -> String {
    run_loop_wat("").replace("(then (return (i32.const 0)))", "(then (br $next))")
}

/// SHUTDOWN comes back at once on every later call too; it disarmed the
/// deadline, so a guest that ignored it spun forever out of the budget's
/// reach. After a reload (which tells the old guest SHUTDOWN once its last
/// connection is gone) that guest's runner, env and standby then lived for
/// as long as the server did. The guest now has its budget to return after
/// SHUTDOWN, like for any event.
#[test]
fn a_guest_that_ignores_shutdown_is_stopped_by_the_budget() {
    setup();
    let limits = Limits { queue_shards: 1, ..test_limits() };
    let server = start(Module::from_wat(&ignores_shutdown_wat()).unwrap(), Mode::Queue, EnvPolicy::Connection, limits);
    echo_round(&mut connect(server.local_addr()), b"served");
    // Replaced by a guest that returns on SHUTDOWN: the old one is told
    // SHUTDOWN now (it has no connection left).
    server.reload(Module::from_wat(&run_loop_wat("")).unwrap()).unwrap();
    echo_round(&mut connect(server.local_addr()), b"new guest");
    // The old runner ends once its guest is stopped, and with it its envs:
    // left are the new guest's instance and standby.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().envs.live > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = server.stats();
    assert_eq!(stats.envs.live, 2, "the old guest spins on after SHUTDOWN: {stats}");
    assert!(stats.budget_overruns >= 1, "{stats}");
    server.stop();
}

/// A client that pipelines requests and reads none of the answers: the
/// guest's `send` hits the output limit and the connection ends, which is
/// an output-limit hit, not an idle close. Before, the reader, waiting for
/// output room when the connection was closed, counted every such end as
/// idle though the idle timeout (30 s here) had not passed.
#[test]
fn a_connection_closed_while_output_waits_is_not_an_idle_close() {
    setup();
    let server = start(wamr_coro::default_guest().unwrap(), Mode::Queue, EnvPolicy::Connection, test_limits());
    let mut s = connect(server.local_addr());
    s.set_nonblocking(true).unwrap();
    let requests = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    // Write for 3 s, as much as the server takes; never read.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match s.write(&requests) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    let stats = server.stop();
    assert!(stats.output_limit_hits >= 1, "{stats}");
    assert_eq!(stats.idle_closes, 0, "{stats}");
}
