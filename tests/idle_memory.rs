//! What an idle connection keeps after its answers, and what a finished
//! connection leaves in `may`'s pool of stacks. Alone in their binary, and
//! run one at a time: they measure resident memory, which other tests
//! running in parallel would move.
mod common;

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use wamr_coro::server::{EnvPolicy, Mode};
use wamr_coro::{Caller, HostFunc, Module, Runtime};

/// One test at a time: each measures the whole process.
static ALONE: Mutex<()> = Mutex::new(());

/// Answers every message with 1 MiB (the default output limit) in one send.
const BIG_ANSWER: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 18)
  (data (i32.const 0) "big answer")
  (func (export "alloc") (param i32) (result i32) (i32.const 1114112))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $send (local.get $c) (i32.const 0) (i32.const 1048576))))"#;

/// Direct mode kept each connection's output buffer for reuse at the
/// capacity of the largest answer it ever wrote: 50 clients that asked for
/// one 1 MiB answer each and then held their connections open idle kept
/// 52 MiB resident (4 MiB now: buffers larger than 64 KiB are freed once
/// written). Measured for both env policies.
#[test]
fn idle_connections_do_not_keep_the_buffer_of_their_largest_answer() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    setup_deep();
    for policy in [EnvPolicy::Connection, EnvPolicy::Message] {
        let server = start(Module::from_wat(BIG_ANSWER).unwrap(), Mode::Direct, policy, test_limits());
        // One round first, so that allocator and pool warm-up is not counted.
        let mut warm = connect(server.local_addr());
        warm.write_all(b"x").unwrap();
        read_n(&mut warm, 1 << 20).unwrap();
        drop(warm);
        std::thread::sleep(Duration::from_millis(100));
        let before = wamr_coro::internals::stress::rss_bytes();
        let mut held = Vec::new();
        for _ in 0..50 {
            let mut c = connect(server.local_addr());
            c.write_all(b"x").unwrap();
            let answer = read_n(&mut c, 1 << 20).unwrap();
            assert!(answer.starts_with(b"big answer"), "{policy:?}");
            held.push(c);
        }
        let grew = wamr_coro::internals::stress::rss_bytes().saturating_sub(before);
        assert!(grew < 25 << 20, "{policy:?}: 50 idle connections keep {} MiB", grew >> 20);
        drop(held);
        server.stop();
    }
}

/// `may`'s pool of finished coroutines in this binary: two, so that the
/// stack a connection leaves comes back to the next connections (with the
/// default 1,000 it would come back a thousand coroutines later).
const POOL: usize = 2;

/// `setup`, with a small coroutine pool (`may` reads its capacity when its
/// scheduler starts, at the first coroutine: every test here calls this
/// first), and the host functions `deep.dig` and `deep.probe`.
fn setup_deep() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        may::config().set_pool_capacity(POOL);
        setup();
        let rt = Runtime::get().unwrap();
        rt.register(HostFunc::wrap("deep", "dig", |_: Caller<'_>| {
            let b = wamr_coro::coro::current_bounds().expect("a coroutine started by coro::spawn");
            DUG_STACKS.lock().unwrap().push(b.low);
            let mut pit = [0u8; DIG_BYTES];
            for (i, b) in pit.iter_mut().enumerate() {
                *b = i as u8 | 1;
            }
            std::hint::black_box(&mut pit);
        }))
        .unwrap();
        // () -> i32: pages of the calling coroutine's stack resident more
        // than 32 KiB below its top (the bottom page left out): below what
        // a new coroutine keeps of a reused stack for guest calls on it
        // (16 KiB under its entry frame), above what `deep.dig` reached.
        rt.register(HostFunc::wrap("deep", "probe", |_: Caller<'_>| -> i32 {
            let b = wamr_coro::coro::current_bounds().expect("a coroutine started by coro::spawn");
            PROBED_STACKS.lock().unwrap().push(b.low);
            resident_pages(b.low + 4096, b.high - 32 * 1024) as i32
        }))
        .unwrap();
        // (ptr, len) -> i32: pages of that range of the caller's linear
        // memory resident now.
        rt.register(HostFunc::wrap("deep", "resident", |mut caller: Caller<'_>, ptr: i32, len: i32| -> i32 {
            let from = caller.memory().slice(ptr, len).expect("in the guest's memory").as_ptr() as usize;
            resident_pages(from, from + len as usize) as i32
        }))
        .unwrap();
    });
}

/// The stacks (their low ends) `deep.dig` and `deep.probe` ran on.
static DUG_STACKS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static PROBED_STACKS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Bytes of stack `deep.dig` writes: a deep path, like a fault's warning
/// line, only deeper, so that it shows plainly.
const DIG_BYTES: usize = 64 * 1024;

/// Pages of `[from, to)` resident now; an unmapped range (a stack `may`
/// freed instead of pooling) has none.
fn resident_pages(from: usize, to: usize) -> usize {
    let n = (to - from) / 4096;
    let mut v = vec![0u8; n];
    // SAFETY: `v` has one byte per page of the page-aligned range; mincore
    // only writes them.
    let rc = unsafe { libc::mincore(from as *mut libc::c_void, to - from, v.as_mut_ptr()) };
    if rc != 0 {
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOMEM), "mincore");
        return 0;
    }
    v.iter().filter(|&&b| b & 1 == 1).count()
}

/// 'd': digs (`deep.dig`) and answers -1; anything else: answers what
/// `deep.probe` finds. Both imports may block, so the env runs on the
/// connection's own coroutine stack.
const DIG_OR_PROBE: &str = r#"(module
  (import "deep" "dig" (func $dig))
  (import "deep" "probe" (func $probe (result i32)))
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 100))
      (then (call $dig) (i32.store (i32.const 0) (i32.const -1)))
      (else (i32.store (i32.const 0) (call $probe))))
    (drop (call $send (local.get $c) (i32.const 0) (i32.const 4)))
    (i32.const 0)))"#;

/// A connection's coroutine starts with none of the stack pages that earlier
/// users of its stack made resident, beyond what a guest call on it takes.
/// `may` hands out the stacks of finished coroutines as they are; before, a
/// connection kept every page the deepest path of any earlier user had
/// touched (here 10 pages of the region probed, from `deep.dig`), and RSS
/// grew with every rare deep path (a soak with hostile clients: +2 MiB in
/// 200 s).
#[test]
fn a_new_connection_does_not_inherit_the_stack_pages_of_earlier_ones() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    setup_deep();
    let server = start(Module::from_wat(DIG_OR_PROBE).unwrap(), Mode::Direct, EnvPolicy::Connection, test_limits());
    let ask = |what: &[u8]| -> i32 {
        let mut c = connect(server.local_addr());
        c.write_all(what).unwrap();
        let answer = read_n(&mut c, 4).unwrap();
        drop(c);
        i32::from_le_bytes(answer.try_into().unwrap())
    };
    // Every stack in the pool, and more, dug deep and handed back.
    for _ in 0..4 * POOL {
        assert_eq!(ask(b"dig"), -1);
    }
    // Give the dug connections' coroutines time to end (the client's close
    // must reach the server) and their stacks to reach the pool.
    std::thread::sleep(Duration::from_millis(300));
    let found: Vec<i32> = (0..4 * POOL).map(|_| ask(b"probe")).collect();
    let dug = DUG_STACKS.lock().unwrap().clone();
    let reused = PROBED_STACKS.lock().unwrap().iter().filter(|low| dug.contains(low)).count();
    assert!(reused > 0, "no probe ran on a stack a dig had used: nothing was tested");
    assert!(
        found.iter().all(|&pages| pages == 0),
        "resident stack pages below each new connection's frames: {found:?} ({} KiB were dug on earlier ones)",
        DIG_BYTES / 1024
    );
    server.stop();
}

/// 'W' k: writes a byte to page 8 + k of its memory, in a run that is zero
/// in the module's image (pages 1..=127), and answers 1; 'P': answers how
/// many pages of that run are resident (`deep.resident`).
const SCATTER: &str = r#"(module
  (import "deep" "resident" (func $resident (param i32 i32) (result i32)))
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 8)
  (global (export "__heap_base") i32 (i32.const 524288))
  (data (i32.const 0) "image")
  (func (export "alloc") (param i32) (result i32) (i32.const 256))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 87))
      (then
        (i32.store8 (i32.mul (i32.add (i32.load8_u offset=1 (local.get $p)) (i32.const 8)) (i32.const 4096))
          (i32.const 1))
        (i32.store (i32.const 16) (i32.const 1)))
      (else (i32.store (i32.const 16) (call $resident (i32.const 4096) (i32.const 520192)))))
    (drop (call $send (local.get $c) (i32.const 16) (i32.const 4)))
    (i32.const 0)))"#;

/// A reset reads the resident pages of an env's zero runs to find those
/// holding data, and pages it clears by writing stay resident. An env whose
/// connections each wrote a different page (per-connection state in a
/// table indexed by connection id, as `guests/http.wat` keeps it) gathered
/// them all, and every reset read them all: 11 % of the server's CPU under
/// connection churn (35 pages), growing with the table. Now a run with
/// more than 16 resident pages goes back to the kernel whole: here the
/// one env kept 100 pages after 100 connections, and keeps at most 16.
#[test]
fn an_env_does_not_gather_the_pages_its_connections_wrote() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    setup_deep();
    let server = wamr_coro::server::Server::builder(Module::from_wat(SCATTER).unwrap())
        .listen("127.0.0.1:0")
        .mode(Mode::Direct)
        .policy(EnvPolicy::Connection)
        .pool_capacity(1)
        .workers(2)
        .limits(test_limits())
        .start()
        .unwrap();
    let mut closed = 0;
    let mut ask = |what: &[u8]| -> i32 {
        let mut c = connect(server.local_addr());
        c.write_all(what).unwrap();
        let answer = read_n(&mut c, 4).unwrap();
        drop(c);
        // The env is back in the pool (capacity 1) before the next one.
        closed += 1;
        wait_closed(&server, closed);
        i32::from_le_bytes(answer.try_into().unwrap())
    };
    for k in 0..3u8 {
        assert_eq!(ask(&[b'W', k]), 1);
    }
    // The measure works: the pages cleared by writing are still there.
    let kept = ask(b"P");
    assert!(kept >= 3, "3 pages written and cleared, {kept} resident: the probe sees nothing");
    for k in 3..100u8 {
        assert_eq!(ask(&[b'W', k]), 1);
    }
    let kept = ask(b"P");
    assert!(kept <= 16, "after 100 connections that each wrote a page, the env keeps {kept} resident");
    let stats = server.stop();
    assert!(stats.pool.hits >= 100, "the env was not reused, so nothing was tested: {stats}");
}
