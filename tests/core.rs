//! The embedding layer: modules, envs, traps, registry, pool, coroutines.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Captured;
use wamr_coro::abi::ModeReq;
use wamr_coro::*;

/// A guest with a host import that yields the coroutine, plus trap and spin.
const CORE_WAT: &str = r#"
(module
  (import "test" "yield" (func $yield (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $sp (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 1024))
  (global (export "__heap_base") i32 (i32.const 131072))
  (global $count (mut i32) (i32.const 0))
  (func (export "noop"))
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param i32 i32 i32) (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.add (call $yield (local.get 0)) (global.get $count)))
  (func (export "count") (result i32) (global.get $count))
  (func (export "trap") (unreachable))
  (func (export "spin") (loop $l (br $l)))
  (func (export "add64") (param i64 i64) (result i64) (i64.add (local.get 0) (local.get 1)))
)"#;

static YIELDS: AtomicUsize = AtomicUsize::new(0);

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        Runtime::init(RuntimeConfig::default()).unwrap();
        wamr_coro::coro::configure(2, 256 * 1024).unwrap();
        Runtime::get()
            .unwrap()
            .register(HostFunc::new("test", "yield", &[ValType::I32], &[ValType::I32], |_c, args| {
                // Park inside the import. may resumes a sleeper on its timer
                // thread; the yield then hands it to whichever worker takes
                // it, often the other one, before the guest continues
                // (asserted below).
                may::coroutine::sleep(Duration::from_micros(100));
                may::coroutine::yield_now();
                YIELDS.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Val::I32(args[0].i32().unwrap() * 10)))
            }))
            .unwrap();
        Runtime::get()
            .unwrap()
            .register(HostFunc::new("test", "should_spin", &[], &[ValType::I32], |_c, _args| {
                Ok(Some(Val::I32(SHOULD_SPIN.load(Ordering::SeqCst) as i32)))
            }))
            .unwrap();
    });
}

/// What the `test.should_spin` import answers.
static SHOULD_SPIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn core_module() -> Module {
    setup();
    Module::from_wat(CORE_WAT).unwrap()
}

fn guest(source: EnvSource) -> Arc<Guest> {
    let cfg = GuestConfig { source, chunk_size: 1024, ..Default::default() };
    Guest::new(core_module(), cfg, Registry::new()).unwrap()
}

#[test]
fn receive_buffer_from_app_heap_without_alloc() {
    setup();
    let m = Module::from_wat(
        r#"(module (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "on_recv") (param i32 i32 i32) (result i32)
               (i32.load8_u (local.get 1))))"#,
    )
    .unwrap();
    let g = Guest::new(m, GuestConfig { chunk_size: 4096, ..Default::default() }, Registry::new()).unwrap();
    let mut env = g.create_env().unwrap();
    let (ptr, cap) = env.recv_buffer();
    assert!(ptr > 0 && cap == 4096);
    assert_eq!(env.on_recv(1, b"\x2a").unwrap(), 42);
}

#[test]
fn typed_calls_and_i64() {
    let m = core_module();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let f = env.func(&m, "add64").unwrap();
    let r = env.call(&f, &[Val::I64(1 << 40), Val::I64(5)]).unwrap();
    assert_eq!(r, vec![Val::I64((1 << 40) + 5)]);
    let err = env.call(&f, &[Val::I32(1)]).unwrap_err();
    assert!(matches!(err, Error::BadArguments { .. }), "{err}");
}

fn ten_thousand(source: EnvSource) {
    let g = guest(source);
    // Guest::new made (and destroyed) one env to check the module.
    let base = g.registry().stats();
    let n = 10_000;
    let errors = Arc::new(AtomicUsize::new(0));
    let migrated = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let g = Arc::clone(&g);
            let errors = Arc::clone(&errors);
            let migrated = Arc::clone(&migrated);
            coro::spawn(move || {
                let run = || -> Result<()> {
                    let mut env = g.create_env()?;
                    let before = std::thread::current().id();
                    let r1 = env.on_recv(i, b"x")?;
                    let after = std::thread::current().id();
                    if before != after {
                        migrated.fetch_add(1, Ordering::Relaxed);
                    }
                    let r2 = env.on_recv(i, b"y")?;
                    // Private instance: its own counter went 1, 2.
                    assert_eq!((r1, r2), (i * 10 + 1, i * 10 + 2));
                    Ok(())
                };
                if let Err(e) = run() {
                    eprintln!("coroutine {i}: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    // Some calls really did continue on another OS thread mid-guest-call.
    assert!(migrated.load(Ordering::Relaxed) > 0, "no coroutine resumed on another worker");
    let s = g.registry().stats();
    assert_eq!(s.live, 0, "{s:?}");
    assert_eq!(s.created - base.created, n as u64);
    assert_eq!(s.destroyed - base.destroyed, n as u64);
    eprintln!(
        "{source:?}: peak {} envs, {} coroutines resumed on another worker",
        s.peak,
        migrated.load(Ordering::Relaxed)
    );
}

#[test]
fn ten_thousand_coroutines_independent_envs() {
    ten_thousand(EnvSource::Instance);
}

#[test]
fn ten_thousand_coroutines_spawned_envs() {
    ten_thousand(EnvSource::Spawn);
}

#[test]
fn panic_while_holding_env_destroys_it() {
    let g = guest(EnvSource::Instance);
    let g2 = Arc::clone(&g);
    let h = coro::spawn(move || {
        let mut env = g2.create_env().unwrap();
        env.on_recv(1, b"a").unwrap();
        assert_eq!(g2.registry().live(), 1);
        panic!("boom while holding an env");
    });
    assert!(h.join().is_err());
    assert_eq!(g.registry().live(), 0);
    // One more than the env Guest::new made to check the module.
    assert_eq!(g.registry().stats().destroyed, 2);
}

#[test]
fn trap_in_independent_env_leaves_others_working() {
    let g = guest(EnvSource::Instance);
    let m = g.module().clone();
    let mut a = g.create_env().unwrap();
    let mut b = g.create_env().unwrap();
    let trap = a.exec_env().func(&m, "trap").unwrap();
    let err = a.exec_env().call(&trap, &[]).unwrap_err();
    assert!(matches!(&err, Error::Trap { message, .. } if message.contains("unreachable")), "{err}");
    assert!(a.poisoned().is_some());
    // Other envs: untouched, including new ones.
    assert_eq!(b.on_recv(1, b"x").unwrap(), 11);
    let mut c = g.create_env().unwrap();
    assert_eq!(c.on_recv(2, b"x").unwrap(), 21);
    // The trapped env refuses further calls.
    assert!(matches!(a.on_recv(3, b"x"), Err(Error::Poisoned(_))));
}

/// A spawned env's trap fails that env only: its siblings of the same
/// parent (WAMR cluster) go on, as the contract asks of every env source.
/// Upstream WAMR sets an exception on every instance of the cluster; patch
/// 0700 keeps it in its own, and the host no longer retires the shard.
#[test]
fn trap_in_spawned_env_fails_that_env_only() {
    let g = guest(EnvSource::Spawn);
    let m = g.module().clone();
    let per = Runtime::get().unwrap().config().envs_per_parent as usize;
    // Fill one shard and start a second.
    let mut envs: Vec<_> = (0..per + 1).map(|_| g.create_env().unwrap()).collect();
    assert_eq!(g.shard_count(), 2);
    let trap = envs[0].exec_env().func(&m, "trap").unwrap();
    assert!(envs[0].exec_env().call(&trap, &[]).is_err());
    assert!(matches!(envs[0].on_recv(1, b"x"), Err(Error::Poisoned(_))));
    // Every sibling in the shard is served, and so is the other shard.
    for (i, e) in envs.iter_mut().enumerate().skip(1) {
        assert_eq!(e.on_recv(i as i32, b"x").unwrap(), i as i32 * 10 + 1, "env {i}");
    }
    // A sibling's trap after a call of its own, and calls on either side of
    // it, keep each env's result its own (a clear used to clear them all).
    let trap1 = envs[1].exec_env().func(&m, "trap").unwrap();
    assert!(envs[1].exec_env().call(&trap1, &[]).is_err());
    assert_eq!(envs[2].on_recv(7, b"x").unwrap(), 72, "its second call");
    assert!(matches!(envs[1].on_recv(1, b"x"), Err(Error::Poisoned(_))));
    // New envs still come from the first shard's parent too.
    drop(envs.remove(0));
    let mut fresh = g.create_env().unwrap();
    assert_eq!(fresh.on_recv(6, b"x").unwrap(), 61);
    assert_eq!(g.shard_count(), 2);
    drop(envs);
    drop(fresh);
    assert_eq!(g.registry().live(), 0);
}

/// With either env source: a spawned spinner's sibling (same parent) is
/// not terminated with it (WAMR patch 0700).
#[test]
fn budget_stops_spinning_guest_only() {
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let cfg = GuestConfig {
            source,
            call_budget: Some(Duration::from_millis(50)),
            chunk_size: 1024,
            ..Default::default()
        };
        let g = Guest::new(core_module(), cfg, Registry::new()).unwrap();
        let _wd = wamr_coro::Watchdog::start(g.registry()).unwrap();
        let m = g.module().clone();
        let mut spinner = g.create_env().unwrap();
        let mut healthy = g.create_env().unwrap();
        let spin = spinner.exec_env().func(&m, "spin").unwrap();
        let t0 = std::time::Instant::now();
        let err = spinner.exec_env().call(&spin, &[]).unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(err, Error::BudgetExceeded { budget_ms: 50, .. }), "{source:?}: {err}");
        assert!(took >= Duration::from_millis(50) && took < Duration::from_secs(5), "{source:?}: {took:?}");
        assert_eq!(healthy.on_recv(4, b"x").unwrap(), 41, "{source:?}");
    }
}

/// A guest that exports `malloc` (and no `alloc`) gets its receive buffer
/// from that export when an env is made. It is guest code: it used to run
/// with no budget and not marked in flight, so one that spun held its
/// thread forever, out of reach of the watchdog and of shutdown.
#[test]
fn a_guest_malloc_that_spins_is_stopped_by_the_budget() {
    setup();
    let module = Module::from_wat(
        r#"(module
             (import "test" "should_spin" (func $should (result i32)))
             (memory (export "memory") 2)
             (func (export "malloc") (param i32) (result i32)
               (if (call $should) (then (loop $spin (br $spin))))
               (i32.const 65536))
             (func (export "free") (param i32))
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    SHOULD_SPIN.store(false, Ordering::SeqCst);
    let cfg = GuestConfig { call_budget: Some(Duration::from_millis(50)), chunk_size: 1024, ..Default::default() };
    let g = Guest::new(module, cfg, Registry::new()).unwrap();
    let _wd = wamr_coro::Watchdog::start(g.registry()).unwrap();
    SHOULD_SPIN.store(true, Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    let g2 = Arc::clone(&g);
    // Without the budget this thread never returns; the test fails at the
    // timeout below and leaves it spinning until the process exits.
    std::thread::spawn(move || tx.send(g2.create_env().map(drop)).unwrap());
    let got = rx.recv_timeout(Duration::from_secs(10));
    SHOULD_SPIN.store(false, Ordering::SeqCst);
    let err = got.expect("making an env whose malloc spins did not return within 10 s").unwrap_err();
    assert!(matches!(&err, Error::BudgetExceeded { func, budget_ms: 50 } if func == "malloc"), "{err}");
    assert_eq!(g.registry().live(), 0, "the failed env was not destroyed");
    // The guest is still usable.
    let mut env = g.create_env().unwrap();
    assert_eq!(env.on_recv(1, b"x").unwrap(), 0);
}

#[test]
fn clear_errors() {
    setup();
    // Malformed binary: WAMR's own text.
    let e = Module::new(b"\0asm\x01\0\0\0\x05garbage").unwrap_err();
    assert!(matches!(e, Error::Load(_)), "{e}");
    // Malformed text.
    let e = Module::from_wat("(module (func").unwrap_err();
    assert!(matches!(e, Error::Wat(_)), "{e}");
    // Unknown import is named.
    let e = Module::from_wat(r#"(module (import "env" "nope" (func)))"#).unwrap_err();
    assert!(e.to_string().contains("env.nope"), "{e}");
    // Missing what spawn needs: the exports are named.
    let m = Module::from_wat(
        r#"(module (memory (export "memory") 1)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let e = Guest::new(m.clone(), GuestConfig { source: EnvSource::Spawn, ..Default::default() }, Registry::new())
        .unwrap_err();
    let s = e.to_string();
    assert!(s.contains("__heap_base") && s.contains("__data_end"), "{s}");
    // Missing export.
    let m2 = Module::from_wat(r#"(module (memory (export "memory") 1))"#).unwrap();
    let e = Guest::new(m2, GuestConfig::default(), Registry::new()).unwrap_err();
    assert!(e.to_string().contains("on_recv"), "{e}");
    // Wrong signature.
    let m3 = Module::from_wat(
        r#"(module (memory (export "memory") 1) (func (export "on_recv") (param i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let e = Guest::new(m3, GuestConfig::default(), Registry::new()).unwrap_err();
    assert!(matches!(&e, Error::WrongSignature { name, .. } if name == "on_recv"), "{e}");
    // Too many envs.
    let g =
        Guest::new(core_module(), GuestConfig { max_envs: 2, chunk_size: 1024, ..Default::default() }, Registry::new())
            .unwrap();
    let _a = g.create_env().unwrap();
    let _b = g.create_env().unwrap();
    assert!(matches!(g.create_env(), Err(Error::TooManyEnvs { limit: 2, .. })));
    // Runtime settings cannot change.
    let e = Runtime::init(RuntimeConfig { envs_per_parent: 99, ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::RuntimeConfigConflict { .. }), "{e}");
}

#[test]
fn pool_reuses_and_discards_faulted() {
    let g = guest(EnvSource::Instance);
    let pool = EnvPool::new(Arc::clone(&g), 4);
    {
        let mut l = pool.acquire().unwrap();
        l.on_recv(1, b"x").unwrap();
    }
    {
        let mut l = pool.acquire().unwrap();
        // Same env (a pool hit), reset to its initial state: the guest's
        // counter starts over, as on a fresh instance.
        assert_eq!(l.on_recv(1, b"x").unwrap(), 11);
        let m = g.module().clone();
        let trap = l.exec_env().func(&m, "trap").unwrap();
        assert!(l.exec_env().call(&trap, &[]).is_err());
    }
    let s = pool.stats();
    assert_eq!((s.hits, s.misses, s.discarded, s.idle), (1, 1, 1, 0));
    // The faulted env was destroyed, never reused.
    let mut l = pool.acquire().unwrap();
    assert_eq!(l.on_recv(1, b"x").unwrap(), 11);
    drop(l);
    pool.close();
    assert_eq!(g.registry().live(), 0);
}

#[test]
fn stack_bounds_match_proc_maps() {
    setup();
    let h = coro::spawn(|| {
        let b = coro::current_bounds().expect("bounds recorded");
        let sp = {
            let x = 0u8;
            std::hint::black_box(&x) as *const u8 as usize
        };
        assert!(b.low < sp && sp < b.high);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let region = maps
            .lines()
            .filter_map(|l| {
                let r = l.split_whitespace().next()?;
                let (a, z) = r.split_once('-')?;
                Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(z, 16).ok()?))
            })
            .find(|(a, z)| *a <= sp && sp < *z)
            .expect("sp inside a mapping");
        // Our top is the mapping's top, and our bottom is not below it.
        assert_eq!(b.high, region.1, "top {:#x} vs mapping {:#x}-{:#x}", b.high, region.0, region.1);
        assert!(b.low >= region.0, "low {:#x} below mapping start {:#x}", b.low, region.0);
    });
    h.join().unwrap();
}

#[test]
fn unknown_coroutine_stack_is_refused() {
    let m = core_module();
    // SAFETY: the coroutine touches no thread-locals across yields.
    let h = unsafe {
        may::coroutine::spawn(move || {
            let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
            let f = env.func(&m, "noop").unwrap();
            env.call(&f, &[]).map(|_| ())
        })
    };
    assert!(matches!(h.join().unwrap(), Err(Error::UnknownStack)));
}

#[test]
fn guest_contract_checks_modes() {
    setup();
    let m = Module::from_wat(&common::guest_text("echo.wat")).unwrap();
    assert!(wamr_coro::abi::check_guest(&m, ModeReq::Direct).is_ok());
    assert!(wamr_coro::abi::check_guest(&m, ModeReq::Queue).is_ok());
}

/// A guest whose memory is shared: `alloc` hands out distinct buffers with an
/// atomic bump, and `on_recv` increments a counter that lives in memory.
const SHARED_WAT: &str = r#"
(module
  (memory (export "memory") 4 4 shared)
  (global $sp (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 1024))
  (global (export "__heap_base") i32 (i32.const 262144))
  (func (export "alloc") (param $size i32) (result i32)
    ;; bump allocator at address 16, starting at 64 KiB
    (i32.add (i32.const 65536)
      (i32.atomic.rmw.add (i32.const 16) (i32.const 1024))))
  (func (export "on_recv") (param i32 i32 i32) (result i32)
    (i32.add (i32.atomic.rmw.add (i32.const 8) (i32.const 1)) (i32.const 1)))
  (func (export "trap") (unreachable)))"#;

#[test]
fn shared_memory_guests_share_across_spawned_envs_only() {
    setup();
    let m = Module::from_wat(SHARED_WAT).unwrap();
    assert!(m.has_shared_memory());
    // Spawned envs of one parent share the parent's memory: one counter.
    let cfg = |source| GuestConfig { source, chunk_size: 1024, ..Default::default() };
    let g = Guest::new(m.clone(), cfg(EnvSource::Spawn), Registry::new()).unwrap();
    let mut a = g.create_env().unwrap();
    let mut b = g.create_env().unwrap();
    assert_ne!(a.recv_buffer().0, b.recv_buffer().0, "alloc must hand out distinct buffers");
    assert_eq!(a.on_recv(1, b"x").unwrap(), 1);
    assert_eq!(b.on_recv(2, b"x").unwrap(), 2);
    assert_eq!(a.on_recv(1, b"x").unwrap(), 3);
    // A trap fails its own env only, shared memory or not (the contract:
    // other connections are unaffected); the memory stays shared.
    let trap = a.exec_env().func(&m, "trap").unwrap();
    assert!(a.exec_env().call(&trap, &[]).is_err());
    assert!(matches!(a.on_recv(1, b"x"), Err(Error::Poisoned(_))));
    assert_eq!(b.on_recv(2, b"x").unwrap(), 4);
    drop((a, b));
    assert_eq!(g.registry().live(), 0);

    // Independent instances each get their own (shared-capable) memory.
    let g = Guest::new(m, cfg(EnvSource::Instance), Registry::new()).unwrap();
    let mut c = g.create_env().unwrap();
    let mut d = g.create_env().unwrap();
    assert_eq!(c.on_recv(1, b"x").unwrap(), 1);
    assert_eq!(d.on_recv(2, b"x").unwrap(), 1);

    // No Rust reference into shared memory: slices are refused, copies work.
    let mut mem = c.exec_env().memory();
    assert!(mem.is_shared());
    assert!(mem.slice(1000, 4).is_none() && mem.slice_mut(1000, 4).is_none());
    assert!(mem.write(1000, b"abcd"));
    assert_eq!(mem.with_bytes(1000, 4, |b| b.map(<[u8]>::to_vec)), Some(b"abcd".to_vec()));
    assert!(mem.with_bytes(-4, 8, |b| b.is_none()));
    assert!(mem.fill(1000, 4, 0));
    assert_eq!(mem.with_bytes(1000, 4, |b| b.map(<[u8]>::to_vec)), Some(vec![0; 4]));
}

#[test]
fn max_envs_holds_exactly_under_concurrent_creation() {
    let cfg = GuestConfig { max_envs: 10, chunk_size: 1024, ..Default::default() };
    let g = Guest::new(core_module(), cfg, Registry::new()).unwrap();
    let n = 50;
    let attempted = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (g, attempted) = (Arc::clone(&g), Arc::clone(&attempted));
            coro::spawn(move || {
                let env = g.create_env();
                attempted.fetch_add(1, Ordering::SeqCst);
                // Hold the env until every coroutine has tried.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while attempted.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
                    may::coroutine::sleep(Duration::from_millis(1));
                }
                match env {
                    Ok(_) => Ok(()),
                    Err(Error::TooManyEnvs { limit: 10, .. }) => Err(()),
                    Err(e) => panic!("unexpected: {e}"),
                }
            })
        })
        .collect();
    let ok = handles.into_iter().map(|h| h.join().unwrap()).filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10);
    assert_eq!(g.live_envs(), 0);
    assert_eq!(g.registry().stats().peak, 10);
}

#[test]
fn memory_growth_is_capped() {
    setup();
    // on_recv grows memory one page at a time until memory.grow fails and
    // returns the final size in pages. (`alloc` keeps WAMR's app heap, which
    // would add pages of its own, out of the picture.)
    let m = Module::from_wat(
        r#"(module
             (memory (export "memory") 2)
             (func (export "alloc") (param i32) (result i32) (i32.const 1024))
             (func (export "on_recv") (param i32 i32 i32) (result i32)
               (block $full (loop $more
                 (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                 (br $more)))
               (memory.size)))"#,
    )
    .unwrap();
    // A cap below the initial size is refused when the guest is made.
    let cfg = GuestConfig { max_memory_pages: 1, chunk_size: 1024, ..Default::default() };
    let e = Guest::new(m.clone(), cfg, Registry::new()).unwrap_err();
    assert!(matches!(e, Error::MemoryTooLarge { initial: 2, cap: 1 }), "{e}");
    for (cap, want) in [(8, 8), (100, 100)] {
        let cfg = GuestConfig { max_memory_pages: cap, chunk_size: 1024, ..Default::default() };
        let g = Guest::new(m.clone(), cfg, Registry::new()).unwrap();
        let mut env = g.create_env().unwrap();
        assert_eq!(env.on_recv(1, b"x").unwrap(), want, "cap {cap}");
    }
}

#[test]
fn wamr_messages_arrive_in_tracing() {
    setup();
    let m = Module::from_wat(r#"(module (memory (export "memory") 1))"#).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig { heap_size: 4096, ..Default::default() }).unwrap();
    let out = Captured::default();
    let w = out.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, || {
        // WAMR logs "allocate ... bytes memory failed" (LOG_WARNING) itself.
        assert!(env.heap_alloc(1 << 20).is_err());
    });
    let text = String::from_utf8_lossy(&out.0.lock()).into_owned();
    assert!(text.contains("wamr") && text.contains("allocate 1048576 bytes memory failed"), "{text:?}");
}

/// `doom` sets the env's `doomed` flag, then stops a call in flight. A call
/// used to check the flag and only then mark itself in flight, each under a
/// different lock: a call that started between the two was neither refused
/// nor stopped, and `destroy_all` timed out waiting for a guest that spun
/// on (found by review: 4 of 300 trials). Each trial dooms an env whose
/// caller loops over calls that start spinning once `should_spin` says so.
#[test]
fn destroy_all_stops_a_call_that_is_just_starting() {
    setup();
    let module = Module::from_wat(
        r#"(module
             (import "test" "should_spin" (func $should (result i32)))
             (memory (export "memory") 1)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0))
             (func (export "f") (if (call $should) (then (loop $spin (br $spin))))))"#,
    )
    .unwrap();
    let mut missed = Vec::new();
    for trial in 0..400u64 {
        SHOULD_SPIN.store(false, Ordering::SeqCst);
        let registry = Registry::new();
        let guest = Guest::new(module.clone(), GuestConfig::default(), Arc::clone(&registry)).unwrap();
        let mut env = guest.create_env().unwrap();
        let m = module.clone();
        let caller = std::thread::spawn(move || {
            let f = env.exec_env().func(&m, "f").unwrap();
            // Bounded by `destroy_all` (or `interrupt_all` below): every
            // call after doom fails.
            while env.exec_env().call(&f, &[]).is_ok() {}
        });
        std::thread::sleep(Duration::from_micros(50 + trial % 200));
        SHOULD_SPIN.store(true, Ordering::SeqCst);
        if !registry.destroy_all(Duration::from_millis(300)) {
            // Let the test go on: stop the call doom missed.
            missed.push((trial, registry.interrupt_all()));
        }
        caller.join().unwrap();
    }
    assert!(missed.is_empty(), "destroy_all left a call running in (trial, calls then stopped): {missed:?}");
}

#[test]
fn destroy_all_ends_envs_held_by_coroutines_and_pools() {
    let g = guest(EnvSource::Instance);
    let pool = EnvPool::new(Arc::clone(&g), 8);
    // Two idle envs in the pool, one coroutine spinning in a call, three
    // coroutines calling in a loop.
    drop((pool.acquire().unwrap(), pool.acquire().unwrap()));
    let m = g.module().clone();
    let spinner = {
        let g = Arc::clone(&g);
        coro::spawn(move || {
            let mut env = g.create_env().unwrap();
            let spin = env.exec_env().func(&m, "spin").unwrap();
            env.exec_env().call(&spin, &[]).unwrap_err()
        })
    };
    let loopers: Vec<_> = (0..3)
        .map(|i| {
            let pool = Arc::clone(&pool);
            coro::spawn(move || loop {
                let mut l = match pool.acquire() {
                    Ok(l) => l,
                    Err(e) => return e,
                };
                if let Err(e) = l.on_recv(i, b"x") {
                    return e;
                }
                may::coroutine::sleep(Duration::from_millis(1));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert!(g.registry().live() >= 3);
    pool.close();
    assert!(g.registry().destroy_all(Duration::from_secs(10)));
    assert_eq!(g.registry().live(), 0);
    // Stopped by the host, not by a fault of its own.
    assert!(matches!(spinner.join().unwrap(), Error::Interrupted { .. }));
    for l in loopers {
        let e = l.join().unwrap();
        assert!(matches!(e, Error::Poisoned(_) | Error::Interrupted { .. } | Error::PoolClosed), "{e}");
    }
}

#[test]
fn typed_calls_check_the_signature_once() {
    let m = core_module();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let add = env.typed::<(i64, i64), i64>(&m, "add64").unwrap();
    assert_eq!(env.call_typed(&add, (1 << 40, 5)).unwrap(), (1 << 40) + 5);
    let noop = env.typed::<(), ()>(&m, "noop").unwrap();
    env.call_typed(&noop, ()).unwrap();
    let recv = env.typed::<(i32, i32, i32), i32>(&m, "on_recv");
    assert!(recv.is_ok());
    // A wrong Rust signature is refused at lookup, naming both sides.
    let e = env.typed::<(i32, i32), i64>(&m, "add64").unwrap_err();
    assert!(
        matches!(&e, Error::WrongSignature { expected, found, .. }
            if expected == "(i32, i32) -> (i64)" && found == "(i64, i64) -> (i64)"),
        "{e}"
    );
    // Traps come back as errors here too.
    let trap = env.typed::<(), ()>(&m, "trap").unwrap();
    assert!(matches!(env.call_typed(&trap, ()), Err(Error::Trap { .. })));
}

/// `coro::spawn` leaves the bottom page of a coroutine's stack, where
/// `generator` keeps its overflow sentinel, alone (`may` ends the process
/// with "stack overflow detected" if it finds the sentinel gone when it
/// drops a stack). Until 2026-12-07 the page was given back while the
/// coroutine ran and the sentinel written back at its end: 4 KiB less per
/// held connection, for two TLB flushes per connection (src/wamr/stack.rs).
/// Stacks go back to may's pool, on return and when unwinding, and serve
/// again.
#[test]
fn coroutines_leave_the_stack_sentinel_alone_and_their_stacks_serve_again() {
    setup();
    let sentinel = coro::spawn(|| {
        let b = coro::current_bounds().expect("bounds recorded");
        // SAFETY: `low` is the bottom of this coroutine's own stack mapping
        // (stack_bounds_match_proc_maps), readable; 8 words are read.
        unsafe { std::slice::from_raw_parts(b.low as *const usize, 8).to_vec() }
    })
    .join()
    .unwrap();
    assert_eq!(sentinel, vec![0xDEAD_BEEF_usize; 8], "generator's sentinel at the stack's bottom");
    for _ in 0..50 {
        assert!(coro::spawn(|| panic!("unwind through the entry frame")).join().is_err());
        assert_eq!(coro::spawn(|| 7).join().unwrap(), 7);
    }
}

/// WAMR's own clamp of `max_memory_pages` to the module's maximum logs a
/// warning per instantiation (a formatted line, and ~3 KiB of the calling
/// coroutine's stack that then stays resident); the cap is clamped before
/// WAMR sees it, with the same result.
#[test]
fn a_cap_above_the_module_maximum_is_clamped_without_a_wamr_warning() {
    setup();
    // No memory.grow and __heap_base: WAMR shrinks the memory to one page
    // of 256 KiB (maximum 1). The second module declares a maximum of 4.
    let shrunk = Module::from_wat(
        r#"(module (memory (export "memory") 5)
             (global $sp (mut i32) (i32.const 65536))
             (global (export "__data_end") i32 (i32.const 2048))
             (global (export "__heap_base") i32 (i32.const 262144)))"#,
    )
    .unwrap();
    let growable = Module::from_wat(
        r#"(module (memory (export "memory") 1 4)
             (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#,
    )
    .unwrap();
    let out = Captured::default();
    let w = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let cfg = InstanceConfig { max_memory_pages: 256, ..Default::default() };
    let (shrunk_max, growable_max) = tracing::subscriber::with_default(subscriber, || {
        let a = ExecEnv::new(&shrunk, cfg).unwrap();
        let b = ExecEnv::new(&growable, cfg).unwrap();
        (a.memory_pages().unwrap().max, b.memory_pages().unwrap().max)
    });
    let text = String::from_utf8_lossy(&out.0.lock()).into_owned();
    assert!(!text.contains("Cannot override max memory"), "{text:?}");
    assert_eq!((shrunk_max, growable_max), (1, 4));
    // Below the module's maximum the cap still applies.
    let mut c = ExecEnv::new(&growable, InstanceConfig { max_memory_pages: 2, ..Default::default() }).unwrap();
    let grow = c.func(&growable, "grow").unwrap();
    assert_eq!(c.call(&grow, &[Val::I32(1)]).unwrap(), vec![Val::I32(1)]);
    assert_eq!(c.call(&grow, &[Val::I32(1)]).unwrap(), vec![Val::I32(-1)]);
}

/// A new env's operand stack pages past the first are given back to the
/// kernel (WAMR's memset made them resident); they read back as zeros, so
/// calls that use the whole stack work as before, on fresh and reused envs.
#[test]
fn calls_use_the_whole_operand_stack_after_its_pages_are_released() {
    setup();
    let m = Module::from_wat(
        r#"(module (memory (export "memory") 1)
             (func $rec (export "rec") (param $n i32) (result i32)
               (if (result i32) (i32.eqz (local.get $n))
                 (then (i32.const 0))
                 (else (i32.add (call $rec (i32.sub (local.get $n) (i32.const 1))) (i32.const 1))))))"#,
    )
    .unwrap();
    let depth_ok = |n: i32| {
        let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
        let rec = env.func(&m, "rec").unwrap();
        match env.call(&rec, &[Val::I32(n)]) {
            Ok(v) => {
                assert_eq!(v, vec![Val::I32(n)]);
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("operand stack overflow"), "{e}");
                false
            }
        }
    };
    // The deepest recursion the 16 KiB operand stack takes.
    let (mut lo, mut hi) = (1, 1 << 16);
    assert!(depth_ok(lo) && !depth_ok(hi));
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if depth_ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    assert!(lo >= 64, "only {lo} frames fit in 16 KiB");
    // The same env, called at full depth again and again.
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let rec = env.func(&m, "rec").unwrap();
    for _ in 0..3 {
        assert_eq!(env.call(&rec, &[Val::I32(lo)]).unwrap(), vec![Val::I32(lo)]);
    }
}

/// Envs kept in the pool's per-thread slots are counted as idle, served
/// again to their thread, and destroyed by close and retire like the queue's:
/// the registry's live count stays exact.
#[test]
fn pool_slots_keep_envs_per_thread_and_close_destroys_them() {
    let g = guest(EnvSource::Instance);
    let pool = EnvPool::new(Arc::clone(&g), 4);
    // Four threads in turn: each takes an env (a miss unless its slot is one
    // an earlier thread filled), gives it back (into its slot, or the queue
    // if the slot is taken), and gets it again without a miss.
    for _ in 0..4 {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            drop(pool.acquire().unwrap());
            let before = pool.stats().misses;
            drop(pool.acquire().unwrap());
            assert_eq!(pool.stats().misses, before);
        })
        .join()
        .unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.hits + s.misses, 8);
    assert!(s.misses >= 1 && s.idle == s.misses && s.idle == g.registry().live(), "{s:?}");
    pool.retire();
    assert_eq!((pool.stats().idle, g.registry().live()), (0, 0));
    // A retired pool still serves, then destroys what comes back.
    drop(pool.acquire().unwrap());
    assert_eq!((pool.stats().idle, g.registry().live()), (0, 0));
    let pool = EnvPool::new(Arc::clone(&g), 4);
    drop((pool.acquire().unwrap(), pool.acquire().unwrap()));
    assert_eq!(g.registry().live(), 2);
    pool.close();
    assert_eq!(g.registry().live(), 0);
    assert!(matches!(pool.acquire(), Err(Error::PoolClosed)));
}

/// A `Func` borrows nothing from its env, so it can outlive it; WAMR then
/// frees the function instance it points to. Checked by instance address,
/// a new instance at the old one's address (the allocator hands the same
/// block back at once) let the stale function reach WAMR: here it ran the
/// other module's code, whose signature it does not even share.
#[test]
fn a_func_of_a_destroyed_env_is_refused_even_at_a_reused_address() {
    setup();
    let m1 = Module::from_wat(r#"(module (memory 1) (func (export "f") (result i32) (i32.const 1)))"#).unwrap();
    let m2 = Module::from_wat(
        r#"(module (memory 1) (func (export "f") (param i64 i64 i64 i64) (result i64) (i64.const 2)))"#,
    )
    .unwrap();
    for _ in 0..20 {
        let a = ExecEnv::new(&m1, InstanceConfig::default()).unwrap();
        let f = a.func(&m1, "f").unwrap();
        let typed = a.typed::<(), i32>(&m1, "f").unwrap();
        drop(a);
        let mut b = ExecEnv::new(&m2, InstanceConfig::default()).unwrap();
        let err = b.call(&f, &[]).unwrap_err();
        assert!(matches!(err, Error::BadArguments { .. }), "{err}");
        let err = b.call_typed(&typed, ()).unwrap_err();
        assert!(matches!(err, Error::BadArguments { .. }), "{err}");
        // The env's own functions still work.
        let g = b.func(&m2, "f").unwrap();
        let args = [Val::I64(0), Val::I64(0), Val::I64(0), Val::I64(0)];
        assert_eq!(b.call(&g, &args).unwrap(), vec![Val::I64(2)]);
    }
}

/// Once coroutines have run, `coro::configure` refuses another stack size.
/// `may` keeps finished coroutines' stacks in a pool and hands them out
/// again whatever its setting says, while a coroutine's bounds (WAMR's stack
/// limit, and the pages a new coroutine gives back) are computed from the
/// setting: a second server built with a larger `stack_bytes` used to get
/// stacks whose bottom lay below the real one.
#[test]
fn the_coroutine_stack_size_cannot_change_once_coroutines_have_run() {
    setup();
    assert_eq!(coro::spawn(|| 1).join().unwrap(), 1);
    let err = coro::configure(2, 512 * 1024).unwrap_err().to_string();
    assert!(err.contains("fixed at 262144 bytes"), "{err}");
    coro::configure(2, 256 * 1024).expect("the same size again is fine");
    assert_eq!(coro::spawn(|| 2).join().unwrap(), 2);
}

/// A timed wait that ends early leaves a cancelled timer behind, and the
/// vendored `may` unlinks cancelled timers in batches: `del_timer` wakes its
/// timer thread only once `REMOVALS_BEFORE_WAKE` (256) have gathered, where
/// upstream woke it every time (queue mode's connections paid a futex wake
/// and a context switch each). Timed waits must still behave: hundreds end
/// early, crossing the batch size twice, on channels and semaphores (what
/// the server's queue mode waits on); a later wait that is answered after
/// 100 ms gets its answer; and one that nobody answers times out, neither
/// early nor never.
#[test]
fn timed_waits_behave_after_many_cancelled_timers() {
    setup();
    let h = coro::spawn(|| {
        for i in 0..600 {
            let (tx, rx) = may::sync::mpsc::channel();
            let sender = coro::spawn(move || {
                may::coroutine::yield_now();
                tx.send(i).unwrap();
            });
            assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(i), "wait {i}");
            sender.join().unwrap();
            let sem = Arc::new(may::sync::Semphore::new(0));
            let s = Arc::clone(&sem);
            let poster = coro::spawn(move || {
                may::coroutine::yield_now();
                s.post();
            });
            assert!(sem.wait_timeout(Duration::from_secs(30)), "semaphore wait {i}");
            poster.join().unwrap();
        }
        let (tx, rx) = may::sync::mpsc::channel();
        let sender = coro::spawn(move || {
            may::coroutine::sleep(Duration::from_millis(100));
            tx.send(()).unwrap();
        });
        let answered = rx.recv_timeout(Duration::from_secs(30));
        sender.join().unwrap();
        let (_tx, rx) = may::sync::mpsc::channel::<()>();
        let t = std::time::Instant::now();
        let unanswered = rx.recv_timeout(Duration::from_millis(50));
        (answered, unanswered, t.elapsed())
    });
    // Bounded: a timer that never fires would hang the coroutine.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(h.join().unwrap()));
    let (answered, unanswered, waited) =
        result.recv_timeout(Duration::from_secs(60)).expect("a timed wait never ended");
    assert_eq!(answered, Ok(()));
    assert_eq!(unanswered, Err(std::sync::mpsc::RecvTimeoutError::Timeout));
    assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(10), "timed out after {waited:?}");
}
