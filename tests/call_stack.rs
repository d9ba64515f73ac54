//! Worker call stacks (`CallStack::Worker`): a guest call made from a
//! coroutine runs on its worker thread's stack, and a host function that
//! tries to block the coroutine there fails the call instead of suspending
//! it on a stack other calls reuse.
mod common;

use std::io::Write;
use std::sync::Once;
use std::time::Duration;

use common::*;
use wamr_coro::server::{EnvPolicy, Mode};
use wamr_coro::{coro, CallStack, Caller, Error, ExecEnv, HostFunc, InstanceConfig, Module, Runtime, Val};

fn register() {
    setup();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let rt = Runtime::get().unwrap();
        // () -> i64: where the host function's frame is.
        rt.register(HostFunc::wrap("cs", "sp", |_: Caller<'_>| -> i64 {
            let marker = 0u8;
            std::hint::black_box(&marker) as *const u8 as usize as i64
        }))
        .unwrap();
        // () -> i32: yields the coroutine (a host function that waits for
        // something), then answers 7.
        rt.register(HostFunc::wrap("cs", "block", |_: Caller<'_>| -> i32 {
            may::coroutine::yield_now();
            7
        }))
        .unwrap();
        // () -> (): waits a millisecond the coroutine way. Declared as a
        // host function may be (it may block).
        rt.register(HostFunc::wrap("cs", "wait", |_: Caller<'_>| may::coroutine::sleep(Duration::from_millis(1))))
            .unwrap();
        // () -> i32: takes LOCK, wrongly declared never_blocks.
        rt.register(
            HostFunc::wrap("cs", "lock", |_: Caller<'_>| -> i32 {
                drop(LOCK.lock().unwrap());
                1
            })
            .never_blocks(),
        )
        .unwrap();
        // The same, wrongly declared never_blocks.
        rt.register(
            HostFunc::wrap("cs", "wait_declared_never_blocks", |_: Caller<'_>| {
                may::coroutine::sleep(Duration::from_millis(1))
            })
            .never_blocks(),
        )
        .unwrap();
    });
}

/// A `may` mutex a host function takes.
static LOCK: std::sync::LazyLock<may::sync::Mutex<()>> = std::sync::LazyLock::new(|| may::sync::Mutex::new(()));

const GUEST: &str = r#"(module
  (import "cs" "sp" (func $sp (result i64)))
  (import "cs" "block" (func $block (result i32)))
  (import "cs" "lock" (func $lock (result i32)))
  (memory (export "memory") 1)
  (func (export "where") (result i64) (call $sp))
  (func (export "block") (result i32) (call $block))
  (func (export "lock") (result i32) (call $lock)))"#;

fn env(m: &Module, at: CallStack) -> ExecEnv {
    let mut env = ExecEnv::new(m, InstanceConfig::default()).unwrap();
    env.set_call_stack(at);
    env
}

/// The host function's frame is on the coroutine's stack with
/// `CallStack::Coroutine`, and off it with `CallStack::Worker`.
#[test]
fn a_call_on_the_worker_stack_runs_off_the_coroutine_stack() {
    register();
    let m = Module::from_wat(GUEST).unwrap();
    let h = coro::spawn(move || {
        let own = coro::current_bounds().expect("bounds recorded");
        let mut at = Vec::new();
        for stack in [CallStack::Coroutine, CallStack::Worker, CallStack::Coroutine, CallStack::Worker] {
            let mut e = env(&m, stack);
            let f = e.func(&m, "where").unwrap();
            let sp = match e.call(&f, &[]).unwrap()[..] {
                [Val::I64(v)] => v as usize,
                ref other => panic!("{other:?}"),
            };
            at.push((stack, own.low <= sp && sp < own.high));
        }
        at
    });
    let at = h.join().unwrap();
    for (stack, on_own) in at {
        assert_eq!(on_own, stack == CallStack::Coroutine, "{stack:?}: host frame on the coroutine's stack = {on_own}");
    }
}

/// Blocking inside a call on the worker stack is refused: the call fails as
/// a trap that says why, and the coroutine and the worker stack are fine
/// afterwards (another call runs there, the coroutine yields again). On the
/// coroutine's own stack the same host function blocks and answers.
#[test]
fn a_host_function_that_blocks_on_the_worker_stack_fails_the_call_cleanly() {
    register();
    let m = Module::from_wat(GUEST).unwrap();
    let h = coro::spawn(move || {
        let mut w = env(&m, CallStack::Worker);
        let block = w.func(&m, "block").unwrap();
        let refused = w.call(&block, &[]);
        // The coroutine may yield again once the call is over.
        may::coroutine::yield_now();
        let mut w2 = env(&m, CallStack::Worker);
        let f = w2.func(&m, "where").unwrap();
        let again = w2.call(&f, &[]).map(|_| ());
        let mut c = env(&m, CallStack::Coroutine);
        let block_c = c.func(&m, "block").unwrap();
        let blocked = c.call(&block_c, &[]);
        (refused, again, blocked)
    });
    let (refused, again, blocked) = h.join().unwrap();
    match refused {
        Err(Error::Trap { message, .. }) => {
            assert!(message.contains("may not block") && message.contains("CallStack::Worker"), "{message}")
        }
        other => panic!("blocking on the worker stack: {other:?}"),
    }
    again.expect("a later call on the worker stack");
    assert_eq!(blocked.unwrap(), vec![Val::I32(7)]);
}

/// A host function that would wait for a `may` mutex on the worker stack
/// fails before it queues itself as a waiter: the mutex is left as it was.
/// (Refused only where the wait was finally suspended, it stayed queued,
/// and the holder's unlock handed the lock to that dead waiter for good.)
#[test]
fn a_refused_wait_for_a_may_mutex_leaves_the_mutex_usable() {
    register();
    let m = Module::from_wat(GUEST).unwrap();
    let h = coro::spawn(move || {
        let held = LOCK.lock().unwrap();
        let mut w = env(&m, CallStack::Worker);
        let f = w.func(&m, "lock").unwrap();
        let refused = w.call(&f, &[]);
        drop(held);
        let free_after = LOCK.try_lock().is_ok();
        (refused, free_after)
    });
    let (refused, free_after) = h.join().unwrap();
    assert!(matches!(refused, Err(Error::Trap { .. })), "{refused:?}");
    assert!(free_after, "the mutex was left locked after the refused wait");
}

/// A direct-mode guest whose on_recv waits in `import`, then answers
/// "waited".
fn waiting_guest(import: &str) -> Module {
    Module::from_wat(&format!(
        r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "cs" "{import}" (func $wait))
  (memory (export "memory") 2)
  (data (i32.const 0) "waited")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $conn i32) (param i32 i32) (result i32)
    (call $wait)
    (drop (call $send (local.get $conn) (i32.const 0) (i32.const 6)))
    (i32.const 0)))"#
    ))
    .unwrap()
}

/// The server runs direct mode on worker call stacks by default, except for
/// a guest that imports a host function that may block: that guest's calls
/// stay on the connections' own stacks, and its waits work.
#[test]
fn a_server_guest_that_imports_a_blocking_host_function_is_served() {
    register();
    let server = start(waiting_guest("wait"), Mode::Direct, EnvPolicy::Connection, test_limits());
    for _ in 0..2 {
        let mut s = connect(server.local_addr());
        for _ in 0..3 {
            s.write_all(b"?").unwrap();
            assert_eq!(read_n(&mut s, 6).unwrap(), b"waited");
        }
    }
    let stats = server.stop();
    assert_eq!(stats.traps, 0);
}

/// A host function declared never_blocks that blocks all the same fails its
/// guest's call (that connection closes) instead of suspending it on the
/// worker's stack; the server serves on and stops cleanly.
#[test]
fn a_host_function_that_breaks_its_never_blocks_promise_closes_only_its_connection() {
    register();
    let server = start(waiting_guest("wait_declared_never_blocks"), Mode::Direct, EnvPolicy::Connection, test_limits());
    for _ in 0..2 {
        let mut s = connect(server.local_addr());
        s.write_all(b"?").unwrap();
        assert!(closed_by_peer(&mut s, Duration::from_secs(5)), "the failed call closes its connection");
    }
    let stats = server.stop();
    assert_eq!(stats.traps, 2);
}
