//! Isolation and containment (GUEST_ABI 1.1): a connection starts from the
//! module's initial state whatever env it gets; spawned envs carry the
//! module's data; guest memory is bounded per env and in total; bad modules
//! are start-up errors with clear messages.
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::server::{EnvPolicy, Limits, Mode, Server, ServerHandle};
use wamr_coro::{EnvSource, Error, Module};

fn start_with(module: Module, source: EnvSource, pool: usize, limits: Limits) -> ServerHandle {
    Server::builder(module)
        .listen("127.0.0.1:0")
        .mode(Mode::Direct)
        .policy(EnvPolicy::Connection)
        .env_source(source)
        .pool_capacity(pool)
        .workers(2)
        .limits(limits)
        .start()
        .unwrap()
}

/// One message on a fresh connection; returns the remember guest's answer.
fn ask(server: &ServerHandle, msg: &[u8], answer_len: usize) -> Vec<u8> {
    let mut s = connect(server.local_addr());
    s.write_all(msg).unwrap();
    read_n(&mut s, answer_len).unwrap()
}

fn fresh_answer() -> Vec<u8> {
    let mut a = vec![0u8, 3];
    a.extend_from_slice(b"none");
    a
}

fn no_leak_across_connections(source: EnvSource) {
    let server = start_with(module("remember.wat"), source, 1, test_limits());
    for i in 0..40u64 {
        let secret = format!("secret-of-client-A-{i:02}");
        // Client A's first answer is the initial state; then it leaves a
        // secret behind in the env.
        assert_eq!(ask(&server, secret.as_bytes(), 6), fresh_answer(), "round {i}, client A");
        wait_closed(&server, 2 * i + 1);
        // Client B gets the same env back from the pool (capacity 1) and
        // must see the module's initial state, byte for byte.
        assert_eq!(ask(&server, b"hello", 6), fresh_answer(), "round {i}, client B saw earlier state");
        wait_closed(&server, 2 * i + 2);
    }
    let stats = server.stop();
    assert!(stats.pool.hits >= 70, "envs were not reused, so nothing was tested: {stats}");
    assert!(stats.env_resets >= 70, "{stats}");
}

#[test]
fn a_new_connection_never_sees_an_earlier_connections_state_instance() {
    no_leak_across_connections(EnvSource::Instance);
}

#[test]
fn a_new_connection_never_sees_an_earlier_connections_state_spawn() {
    no_leak_across_connections(EnvSource::Spawn);
}

/// The same for a guest compiled by clang (`guests/c/remember.c`), whose
/// state sits where a C guest's does: .data and .bss starting mid-page, a
/// shadow stack in linear memory. The WAT probe above keeps its state at
/// page-aligned places only. (Its grown pages go with the env, which is
/// destroyed, as `grown_memory_does_not_survive_into_the_next_connection`
/// checks for the WAT probe.)
#[test]
fn a_compiled_c_guests_state_never_reaches_the_next_connection() {
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let server = start_with(built_guest("remember"), source, 1, test_limits());
        let addr = server.local_addr();
        // Within one connection the probe does remember (so it would show a
        // leak): its count, the stored message, the byte left on its stack.
        let mut s = connect(addr);
        s.write_all(b"first").unwrap();
        let fresh = read_n(&mut s, 8).unwrap();
        assert_eq!((fresh[0], fresh[2], fresh[3], &fresh[4..]), (0, 0, 0, &b"none"[..]), "{source:?}: {fresh:?}");
        s.write_all(b"again").unwrap();
        let second = read_n(&mut s, 8).unwrap();
        assert_eq!((second[0], second[2], &second[4..]), (1, b'f', &b"firs"[..]), "{source:?}: {second:?}");
        drop(s);
        wait_closed(&server, 1);
        // A new connection on the env the last one returned (one env
        // circulates: each connection starts after the previous one closed)
        // answers as a fresh env did, byte for byte. Every third secret
        // grows memory: such an env is destroyed, not reset, and the next
        // connection gets a new one.
        for i in 0..12u64 {
            let secret = [if i % 3 == 2 { b'G' } else { b'S' }, b'0' + i as u8, b'!', b'?'];
            assert_eq!(ask(&server, &secret, 8), fresh, "{source:?} round {i}: the secret's client");
            wait_closed(&server, 2 * i + 2);
            assert_eq!(ask(&server, b"hello", 8), fresh, "{source:?} round {i}: an earlier client's state was seen");
            wait_closed(&server, 2 * i + 3);
        }
        let stats = server.stop();
        assert!(stats.pool.hits >= 16, "{source:?}: envs were not reused, so nothing was tested: {stats}");
        assert!(stats.env_reset_refusals >= 4, "{source:?}: grown envs must be destroyed: {stats}");
        assert_eq!(stats.envs.live, 0, "{stats}");
    }
}

#[test]
fn grown_memory_does_not_survive_into_the_next_connection() {
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let server = start_with(module("remember.wat"), source, 4, test_limits());
        for i in 0..5u64 {
            assert_eq!(ask(&server, b"G-grown-secret", 6), fresh_answer());
            wait_closed(&server, 2 * i + 1);
            assert_eq!(ask(&server, b"after", 6), fresh_answer(), "{source:?} round {i}");
            wait_closed(&server, 2 * i + 2);
        }
        let stats = server.stop();
        assert!(stats.env_reset_refusals >= 5, "grown envs must be destroyed, not reused: {stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

#[test]
fn spawned_envs_answer_with_the_modules_data_segments() {
    setup();
    let server = start_with(wamr_coro::default_guest().unwrap(), EnvSource::Spawn, 16, test_limits());
    for _ in 0..20 {
        let mut s = connect(server.local_addr());
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let got = read_n(&mut s, HTTP_RESPONSE.len()).unwrap();
        assert_eq!(got, HTTP_RESPONSE, "spawned env answered {:?}", String::from_utf8_lossy(&got));
    }
    server.stop();
}

/// Grows 64 pages (4 MiB) per message and touches each new 4 KiB page;
/// answers memory.grow's result (4 bytes, little-endian).
const GROWER: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $old i32) (local $at i32) (local $end i32)
    (local.set $old (memory.grow (i32.const 64)))
    (if (i32.ge_s (local.get $old) (i32.const 0))
      (then
        (local.set $at (i32.mul (local.get $old) (i32.const 65536)))
        (local.set $end (i32.add (local.get $at) (i32.const 4194304)))
        (loop $touch
          (i32.store8 (local.get $at) (i32.const 1))
          (local.set $at (i32.add (local.get $at) (i32.const 4096)))
          (br_if $touch (i32.lt_u (local.get $at) (local.get $end))))))
    (i32.store (i32.const 0) (local.get $old))
    (drop (call $send (local.get $conn) (i32.const 0) (i32.const 4)))
    (i32.const 0)))"#;

#[test]
fn the_global_guest_memory_budget_bounds_growth_and_new_envs() {
    setup();
    // 40 MiB in all: each env starts at 2 pages + an app heap, and may grow
    // to its 256-page cap; 20 clients growing 4 MiB per message would reach
    // 20 x 16 MiB without the budget.
    let limits = Limits { max_guest_memory: 40 << 20, ..test_limits() };
    let server = start_with(Module::from_wat(GROWER).unwrap(), EnvSource::Instance, 64, limits);
    let mut clients: Vec<_> = (0..20).map(|_| connect(server.local_addr())).collect();
    // Each connection's env is made when the server gets to its `on_open`,
    // which may be after the first clients have grown their memory: then
    // the budget refuses it and that client is closed unanswered (seen as a
    // rare failure of `read_n` below). Start growing once all 20 exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().envs.live < 20 {
        assert!(Instant::now() < deadline, "the 20 envs were not made: {}", server.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut refused_grows = 0;
    for round in 0..6 {
        for c in clients.iter_mut() {
            c.write_all(b"x").unwrap();
            let r = read_n(c, 4).unwrap();
            let old = i32::from_le_bytes(r[..4].try_into().unwrap());
            if old < 0 {
                refused_grows += 1;
            }
            let used = server.stats().guest_memory.used_bytes;
            assert!(used <= 40 << 20, "round {round}: budget exceeded: {used} bytes charged");
        }
    }
    assert!(refused_grows > 0, "the budget never refused a grow");
    // With the budget (nearly) exhausted, new envs are refused: the
    // connection is closed without an answer, and counted. What is left
    // may still fit an env or two; well before 20 more, one is refused.
    let mut late = Vec::new();
    let refused = (0..20).any(|_| {
        let mut c = connect(server.local_addr());
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 4];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let served = matches!(std::io::Read::read(&mut c, &mut b), Ok(n) if n > 0);
        late.push(c);
        !served
    });
    assert!(refused, "connections past the budget were all served: {}", server.stats());
    drop(late);
    let stats = server.stats();
    assert!(stats.guest_memory.refused_grows > 0, "{stats}");
    assert!(stats.guest_memory.refused_envs > 0, "{stats}");
    // Memory comes back when clients leave: a new client is served again.
    drop(clients);
    wait_closed(&server, stats.accepted);
    let mut again = connect(server.local_addr());
    again.write_all(b"x").unwrap();
    let r = read_n(&mut again, 4).unwrap();
    assert!(i32::from_le_bytes(r[..4].try_into().unwrap()) >= 0, "memory was not given back");
    drop(again);
    let stats = server.stop();
    assert_eq!(stats.guest_memory.used_bytes, 0, "charges left after every env died: {stats}");
}

/// A million-element table: 8 MiB of host memory in every instance, for a
/// module of a few dozen bytes. Answers one byte.
const BIG_TABLE: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table 1000000 funcref)
  (data (i32.const 16) "k")
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $send (local.get $c) (i32.const 16) (i32.const 1))))"#;

/// The guest-memory budget counts what an env's tables take too. Before,
/// it counted linear memory only, and a module declaring a big table had
/// every env take 8 MiB the budget never saw: 10 connections took 80 MiB
/// of a 40 MiB budget, which reported 1.3 MiB used (10,000 connections, the
/// default limit, would have asked for 80 GB).
#[test]
fn the_global_guest_memory_budget_counts_tables() {
    setup();
    let limits = Limits { max_guest_memory: 40 << 20, ..test_limits() };
    let server = start_with(Module::from_wat(BIG_TABLE).unwrap(), EnvSource::Instance, 1, limits);
    let mut held = Vec::new();
    let mut served = 0;
    for _ in 0..10 {
        let mut c = connect(server.local_addr());
        c.write_all(b"x").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        if matches!(std::io::Read::read(&mut c, &mut b), Ok(1)) {
            served += 1;
        }
        held.push(c);
        let used = server.stats().guest_memory.used_bytes;
        assert!(used <= 40 << 20, "budget exceeded: {used} bytes charged");
    }
    let stats = server.stats();
    assert!(served < 10, "10 envs of 8 MiB tables each fit a 40 MiB budget? {stats}");
    assert!(served >= 3, "only {served} served: {stats}");
    assert!(stats.guest_memory.refused_envs > 0, "{stats}");
    drop(held);
    server.stop();
}

#[test]
fn spawned_envs_obey_the_per_env_memory_cap() {
    setup();
    // The remember guest grows 16 pages per "G" message; with a 40-page cap
    // a spawned env (which WAMR creates with the module's own maximum) must
    // stop at 35 pages: 3 + 16 + 16, then -1.
    let limits = Limits { max_memory_pages: 40, ..test_limits() };
    let server = start_with(module("remember.wat"), EnvSource::Spawn, 4, limits);
    let mut s = connect(server.local_addr());
    let mut sizes = Vec::new();
    for i in 0..4 {
        s.write_all(b"G").unwrap();
        // The first answer carries "none", later ones the stored "G".
        let a = read_n(&mut s, if i == 0 { 6 } else { 3 }).unwrap();
        sizes.push(a[1]);
    }
    assert_eq!(sizes, vec![3, 19, 35, 35]);
    drop(s);
    let stats = server.stop();
    assert!(stats.guest_memory.over_cap_grows >= 1, "{stats}");
}

#[test]
fn a_module_whose_initial_memory_is_over_the_cap_is_refused_at_start() {
    setup();
    let m = Module::from_wat(
        r#"(module (import "env" "send" (func (param i32 i32 i32) (result i32)))
             (memory (export "memory") 300)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let err = Server::builder(m).listen("127.0.0.1:0").start().unwrap_err();
    assert!(matches!(err, Error::MemoryTooLarge { initial: 300, cap: 256 }), "{err}");
    assert!(err.to_string().contains("300 pages"), "{err}");
}

#[test]
fn a_start_function_that_traps_is_a_start_up_error() {
    setup();
    let m = Module::from_wat(
        r#"(module (memory (export "memory") 1)
             (func $boom unreachable) (start $boom)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    for mode in [Mode::Direct, Mode::Queue] {
        let err = Server::builder(m.clone()).listen("127.0.0.1:0").mode(mode).start().unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{mode:?}: {err}");
    }
}

/// A start function that never returns. It runs inside WAMR's
/// instantiation, before the instance is handed back, so the watchdog could
/// not reach it: starting the server (or reloading to the module, or making
/// any env of it) hung for ever, whatever the call budget. Now it is held to
/// the call budget and starting fails with an error that says so.
#[test]
fn a_start_function_that_never_returns_is_a_start_up_error() {
    setup();
    let spinner = || {
        Module::from_wat(
            r#"(module (memory (export "memory") 1)
                 (func $spin (loop $l (br $l))) (start $spin)
                 (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
        )
        .unwrap()
    };
    // Bounded waits: without the budget these calls never return.
    let within = |what: &str, f: Box<dyn FnOnce() -> Result<(), Error> + Send>| -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => panic!("{what}: accepted a module whose start function never returns"),
            Err(_) => panic!("{what}: still instantiating after 20 s (the start function was never stopped)"),
        }
    };
    let limits = || Limits { call_budget: Some(Duration::from_millis(200)), ..test_limits() };
    for mode in [Mode::Direct, Mode::Queue] {
        let m = spinner();
        let err = within(
            "start",
            Box::new(move || Server::builder(m).listen("127.0.0.1:0").mode(mode).limits(limits()).start().map(drop)),
        );
        assert!(err.contains("start function") && err.contains("200 ms"), "{mode:?}: {err}");
    }
    // A reload to it fails the same way, and the server goes on serving.
    let server = start(module("echo.wat"), Mode::Direct, EnvPolicy::Connection, limits());
    let server = std::sync::Arc::new(server);
    let s2 = std::sync::Arc::clone(&server);
    let m = spinner();
    let err = within("reload", Box::new(move || s2.reload(m)));
    assert!(err.contains("start function"), "{err}");
    let mut c = connect(server.local_addr());
    echo_round(&mut c, b"still served");
}

/// An `alloc` that never returns. The server calls it in the env it makes
/// to check the module, before it listens; the watchdog that holds guest
/// calls to the budget was started only after that env, so starting the
/// server hung for ever. Now it is a start-up error naming the budget.
#[test]
fn an_alloc_that_never_returns_is_a_start_up_error() {
    setup();
    let limits = || Limits { call_budget: Some(Duration::from_millis(200)), ..test_limits() };
    for mode in [Mode::Direct, Mode::Queue] {
        let m = Module::from_wat(
            r#"(module (memory (export "memory") 2)
                 (func (export "alloc") (param i32) (result i32) (loop $l (br $l)) (i32.const 1024))
                 (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = Server::builder(m).listen("127.0.0.1:0").mode(mode).limits(limits()).start().map(drop);
            let _ = tx.send(r);
        });
        let err = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => panic!("{mode:?}: accepted a module whose alloc never returns"),
            Err(_) => panic!("{mode:?}: still starting after 20 s (alloc was never stopped)"),
        };
        assert!(err.contains("alloc") && err.contains("200 ms"), "{mode:?}: {err}");
    }
}

#[test]
fn an_import_with_the_wrong_signature_says_so() {
    setup();
    let err = Module::from_wat(
        r#"(module (import "env" "send" (func (param i32 i32) (result i32)))
             (memory (export "memory") 1))"#,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("env.send"), "{msg}");
    assert!(msg.contains("(i32, i32) -> (i32)") && msg.contains("(i32, i32, i32) -> (i32)"), "{msg}");
}

#[test]
fn errors_quote_only_a_short_excerpt_of_the_input() {
    setup();
    let zeros = vec![0u8; 8 << 20];
    let msg = Module::new(&zeros).unwrap_err().to_string();
    assert!(msg.len() < 2000, "an 8 MiB input gave a {}-byte error", msg.len());
    // A binary with the magic is never parsed as text.
    let mut bad = b"\0asm\x01\0\0\0".to_vec();
    bad.extend_from_slice(&[0xff; 64]);
    let err = Module::new(&bad).unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err}");
}

/// WAMR runs the start function again in every spawned instance, on memory
/// without its data segments. Spawned envs got the parent's memory copied
/// over that, but only its non-zero pages, and kept the globals the start
/// function computed from the missing data: they answered [0, 42] where a
/// fresh instance answers [42, 0].
#[test]
fn spawned_envs_start_with_the_globals_and_memory_of_a_fresh_instance() {
    setup();
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        // Pool capacity 1 and more connections than one shard (16): new
        // spawns, a second parent, and reused (reset) envs all answer alike.
        let server = start_with(Module::from_wat(START_READS_DATA_WAT).unwrap(), source, 1, test_limits());
        starts_like_a_fresh_instance(&server, source);
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0, "{stats}");
    }
}

/// With `--source spawn` a trap fails its shard (the envs spawned from one
/// parent) and nothing more. A connection that arrived meanwhile got no env
/// at all: WAMR refuses to spawn into a cluster whose exception a trap has
/// just set (before the trapping call returns and the parent is retired),
/// and an env spawned just before gets that exception in its first call
/// (`alloc`); either way the new connection was closed unserved, counted as
/// an env creation failure (39 in 1,000 connections here). Now it is served
/// from another parent.
#[test]
fn a_trap_in_a_spawn_shard_never_refuses_a_new_connection() {
    setup();
    let server = start_with(module("faulty.wat"), EnvSource::Spawn, 1, test_limits());
    let addr = server.local_addr();
    let trappers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let mut s = connect(addr);
                    let _ = s.write_all(b"T");
                    closed_by_peer(&mut s, Duration::from_secs(5));
                }
            })
        })
        .collect();
    let others: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..200 {
                    // Served, or closed if its env shared a shard with a trap.
                    let mut s = connect(addr);
                    let _ = s.write_all(b"hello");
                    let _ = read_n(&mut s, 5);
                }
            })
        })
        .collect();
    for t in trappers.into_iter().chain(others) {
        t.join().unwrap();
    }
    let stats = server.stop();
    assert!(stats.traps >= 200, "{stats}");
    assert_eq!(stats.envs.failures, 0, "connections were refused an env: {stats}");
    assert_eq!(stats.envs.live, 0, "{stats}");
}

/// Tables are host memory each env allocates and fills whole when it is
/// instantiated. Before, the per-env cap did not cover them: a module with
/// a 10-million-element table was accepted and took 80 MB per connection
/// (and concurrent instantiations overshot the global budget, asked only
/// after).
#[test]
fn a_module_whose_tables_are_over_the_cap_is_refused_at_start() {
    setup();
    let m = Module::from_wat(
        r#"(module (table 10000000 funcref)
             (memory (export "memory") 1)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let err = Server::builder(m).listen("127.0.0.1:0").start().unwrap_err();
    assert!(matches!(err, Error::TablesTooLarge { bytes: 80_000_000, cap: 256 }), "{err}");
    assert!(err.to_string().contains("tables take 78125 KiB per env"), "{err}");
    // A table within the cap is served.
    let m = Module::from_wat(
        r#"(module (table 1000 funcref)
             (memory (export "memory") 1)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    Server::builder(m).listen("127.0.0.1:0").start().unwrap().stop();
}

/// Writes `n` pages of 0xAB from 64 KiB on ('W' then n as a byte), or
/// answers whether any byte of the 40 pages from 64 KiB is non-zero ('R':
/// 1 byte, 0 when clean). Those pages are zero in the module's image.
const SCRIBBLE: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 5)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 327680))
  (data (i32.const 0) "image")
  (func (export "alloc") (param i32) (result i32) (i32.const 262144))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $acc i64)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 87))
      (then
        (memory.fill (i32.const 65536) (i32.const 171)
          (i32.mul (i32.load8_u offset=1 (local.get $p)) (i32.const 4096)))
        (i32.store8 (i32.const 16) (i32.const 1)))
      (else
        (local.set $i (i32.const 65536))
        (block $done
          (loop $l
            (br_if $done (i32.ge_u (local.get $i) (i32.const 229376)))
            (local.set $acc (i64.or (local.get $acc) (i64.load (local.get $i))))
            (local.set $i (i32.add (local.get $i) (i32.const 8)))
            (br $l)))
        (i32.store8 (i32.const 16) (i64.ne (local.get $acc) (i64.const 0)))))
    (drop (call $send (local.get $c) (i32.const 16) (i32.const 1)))
    (i32.const 0)))"#;

/// What a connection writes to pages that are zero in the module's image is
/// gone for the next connection on the same env, however many pages it
/// wrote. A reset clears up to four such pages by writing zeros (giving a
/// resident page back to the kernel costs a TLB flush on every other CPU
/// running a worker, 19 µs in a VM) and gives back the rest; a run with
/// more pages of data goes back whole. With the receive buffer's page, 1
/// and 3 written pages take the first way, 4, 16 and 40 the second.
#[test]
fn pages_an_earlier_connection_wrote_read_back_as_zeros() {
    setup();
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let server = start_with(Module::from_wat(SCRIBBLE).unwrap(), source, 1, test_limits());
        let mut closed = 0;
        for pages in [1u8, 3, 4, 16, 40] {
            assert_eq!(ask(&server, &[b'W', pages], 1), [1], "{source:?}: write {pages} pages");
            closed += 1;
            wait_closed(&server, closed);
            assert_eq!(
                ask(&server, b"R", 1),
                [0],
                "{source:?}: {pages} pages written by an earlier connection were seen"
            );
            closed += 1;
            wait_closed(&server, closed);
        }
        let stats = server.stop();
        assert!(stats.pool.hits >= 8, "{source:?}: envs were not reused, so nothing was tested: {stats}");
    }
}

/// The bytes past a shrunk memory's size, up to the end of the kernel page
/// WAMR maps and lets the guest reach, are reset too. Before, the image
/// covered only the shrunk size, and a byte written at 62000 by one
/// connection was read by the next (`common::SHRUNK_WAT`).
#[test]
fn the_tail_of_a_shrunk_memory_is_reset_too() {
    setup();
    shrunk_tail_is_reset(&Module::from_wat(SHRUNK_WAT).unwrap());
}
