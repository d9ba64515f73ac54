//! Compiled guests (AOT): the same guests as the interpreter's tests,
//! compiled by `wamr-coro compile`'s compiler, served in both modes and from
//! both env sources, byte-exact; traps, budgets, deep recursion on a
//! coroutine stack, reset; the CLI's `compile`, `serve X.aot` and
//! `serve --aot` with its cache.
//!
//! The tests skip, loudly, only when this build has no AOT compiler (LLVM
//! was not installed at build time). `.ci/run` installs LLVM and sets
//! `WAMR_CORO_REQUIRE_AOT=1`, which turns the skip into a failure.
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wamr_coro::aot::{self, Target};
use wamr_coro::server::{EnvPolicy, Limits, Mode, Server, ServerHandle};
use wamr_coro::{EnvSource, Guest, GuestConfig, Module, Registry};

/// False (after a loud message) when the compiler is missing and that is
/// allowed; panics when `WAMR_CORO_REQUIRE_AOT=1`.
fn compiler() -> bool {
    if aot::compiler_available() {
        return true;
    }
    assert!(
        std::env::var("WAMR_CORO_REQUIRE_AOT").as_deref() != Ok("1"),
        "WAMR_CORO_REQUIRE_AOT=1 but this build has no AOT compiler (install llvm-14-dev)"
    );
    eprintln!("\n*** SKIPPED: this build has no AOT compiler (LLVM not found at build time; apt-get install llvm-14-dev) ***\n");
    false
}

/// The AOT-compiled form of a guest named like `common::any_guest`.
fn aot_bytes(name: &str) -> Vec<u8> {
    setup();
    let path = if let Some(n) = name.strip_prefix("c:") {
        built_guests_dir().join(format!("{n}.wasm"))
    } else {
        guest_path(name)
    };
    aot::compile(&std::fs::read(&path).unwrap(), Target::Native).unwrap()
}

fn aot_module(name: &str) -> Module {
    let m = Module::from_aot(&aot_bytes(name)).unwrap();
    assert!(m.is_aot());
    m
}

fn start_aot(m: Module, mode: Mode, source: EnvSource, limits: Limits) -> ServerHandle {
    Server::builder(m)
        .listen("127.0.0.1:0")
        .mode(mode)
        .policy(EnvPolicy::Connection)
        .env_source(source)
        .workers(2)
        .limits(limits)
        .start()
        .unwrap()
}

fn variants() -> Vec<(Mode, EnvSource)> {
    vec![(Mode::Direct, EnvSource::Instance), (Mode::Direct, EnvSource::Spawn), (Mode::Queue, EnvSource::Instance)]
}

#[test]
fn echo_guests_compiled_echo_byte_exact_in_both_modes() {
    if !compiler() {
        return;
    }
    use rand::{Rng, SeedableRng};
    for guest in ["echo.wat", "c:echo", "echo_run.wat"] {
        for (mode, source) in variants() {
            if guest == "echo_run.wat" && mode == Mode::Direct {
                continue;
            }
            let server = start_aot(aot_module(guest), mode, source, test_limits());
            let addr = server.local_addr();
            let threads: Vec<_> = (0..40u64)
                .map(|i| {
                    std::thread::spawn(move || {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(i);
                        let mut s = connect(addr);
                        for _ in 0..10 {
                            let len = rng.gen_range(1..=64 * 1024);
                            let msg: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                            echo_round(&mut s, &msg);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap_or_else(|_| panic!("{guest} {mode:?} {source:?}: a connection failed"));
            }
            let stats = server.stop();
            assert_eq!(stats.bytes_in, stats.bytes_out, "{guest} {mode:?}: {stats}");
            assert_eq!(stats.traps, 0);
            assert_eq!(stats.envs.live, 0);
        }
    }
}

#[test]
fn http_guests_compiled_answer_keepalive_pipelined_and_split() {
    if !compiler() {
        return;
    }
    for guest in ["http.wat", "c:http"] {
        for (mode, source) in variants() {
            let server = start_aot(aot_module(guest), mode, source, test_limits());
            let mut s = connect(server.local_addr());
            http_keepalive_pipelined_split(&mut s, &format!("{guest} {mode:?}"));
            drop(s);
            assert_eq!(server.stop().envs.live, 0);
        }
    }
}

/// The CPU-bound benchmark guest answers the same bytes compiled and
/// interpreted (its answer is a function of the request's bytes).
#[test]
fn cpu_guest_compiled_answers_like_the_interpreter() {
    if !compiler() {
        return;
    }
    let answers = |m: Module, mode: Mode| -> Vec<Vec<u8>> {
        let server = start_aot(m, mode, EnvSource::Instance, test_limits());
        let mut s = connect(server.local_addr());
        let out = (0..20)
            .map(|i| {
                s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes()).unwrap();
                read_n(&mut s, 73).unwrap()
            })
            .collect();
        server.stop();
        out
    };
    let interp = answers(module("cpu.wat"), Mode::Direct);
    assert!(interp[0].starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_ne!(interp[0], interp[1], "answers depend on the request");
    for mode in [Mode::Direct, Mode::Queue] {
        assert_eq!(answers(aot_module("cpu.wat"), mode), interp, "{mode:?}");
    }
    // Portable code answers the same.
    let portable =
        Module::from_aot(&aot::compile(guest_text("cpu.wat").as_bytes(), Target::Portable).unwrap()).unwrap();
    assert_eq!(answers(portable, Mode::Direct), interp);
}

/// Answers each 16-byte request (value, count: two little-endian i64s)
/// with wasm's rotates of them: by the count, and by constants after a
/// multiplication (the shape patch 0400 compiles to one rotate instruction).
const ROTATE_WAT: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global (export "__heap_base") i32 (i32.const 131072))
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (local $v i64) (local $k i64) (local $v32 i32) (local $k32 i32)
    (if (i32.ne (local.get $n) (i32.const 16)) (then (return (i32.const -1))))
    (local.set $v (i64.load (local.get $p)))
    (local.set $k (i64.load offset=8 (local.get $p)))
    (local.set $v32 (i32.wrap_i64 (local.get $v)))
    (local.set $k32 (i32.wrap_i64 (local.get $k)))
    (i32.store (i32.const 1024) (i32.rotl (local.get $v32) (local.get $k32)))
    (i32.store (i32.const 1028) (i32.rotr (local.get $v32) (local.get $k32)))
    (i64.store (i32.const 1032) (i64.rotl (local.get $v) (local.get $k)))
    (i64.store (i32.const 1040) (i64.rotr (local.get $v) (local.get $k)))
    (i32.store (i32.const 1048) (i32.rotl (i32.mul (local.get $v32) (i32.const 0x9E3779B1)) (i32.const 7)))
    (i64.store (i32.const 1052) (i64.rotr (i64.mul (local.get $v) (i64.const 0x9E3779B97F4A7C15)) (i64.const 33)))
    (i32.store (i32.const 1060) (i32.rotl (local.get $v32) (i32.const 32)))
    (i64.store (i32.const 1064) (i64.rotr (local.get $v) (i64.const -1)))
    (call $send (local.get $c) (i32.const 1024) (i32.const 48))))"#;

/// What `ROTATE_WAT` answers, computed by Rust.
fn rotate_answer(v: u64, k: u64) -> Vec<u8> {
    let (v32, k32) = (v as u32, k as u32);
    let mut out = Vec::with_capacity(48);
    out.extend(v32.rotate_left(k32 % 32).to_le_bytes());
    out.extend(v32.rotate_right(k32 % 32).to_le_bytes());
    out.extend(v.rotate_left((k % 64) as u32).to_le_bytes());
    out.extend(v.rotate_right((k % 64) as u32).to_le_bytes());
    out.extend(v32.wrapping_mul(0x9E37_79B1).rotate_left(7).to_le_bytes());
    out.extend(v.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_right(33).to_le_bytes());
    out.extend(v32.to_le_bytes());
    out.extend(v.rotate_right(63).to_le_bytes());
    out
}

/// rotl/rotr of i32 and i64 by every kind of count (zero, the width, past
/// it, negative, high bits set) give wasm's answers compiled as well as
/// interpreted: patch 0400 changed how the compiler emits them.
#[test]
fn compiled_rotates_match_wasm_semantics() {
    if !compiler() {
        return;
    }
    let values = [0u64, 1, 0x8000_0000_0000_0001, 0xDEAD_BEEF_CAFE_BABE, u64::MAX, 0x0123_4567_89AB_CDEF];
    let counts = [0u64, 1, 7, 31, 32, 33, 63, 64, 65, u64::MAX, 0x1_0000_0021, 1 << 63];
    let wasm = wat::parse_str(ROTATE_WAT).unwrap();
    let portable = aot::compile(&wasm, Target::Portable).unwrap();
    let native = aot::compile(&wasm, Target::Native).unwrap();
    for (what, bytes) in [("interpreted", wasm), ("native AOT", native), ("portable AOT", portable)] {
        let m = if what == "interpreted" { Module::new(bytes) } else { Module::from_aot(&bytes) }.unwrap();
        let server = start_aot(m, Mode::Direct, EnvSource::Instance, test_limits());
        let mut s = connect(server.local_addr());
        for &v in &values {
            for &k in &counts {
                let mut req = v.to_le_bytes().to_vec();
                req.extend(k.to_le_bytes());
                s.write_all(&req).unwrap();
                assert_eq!(read_n(&mut s, 48).unwrap(), rotate_answer(v, k), "{what}: value {v:#x}, count {k:#x}");
            }
        }
        server.stop();
    }
}

#[test]
fn compiled_faults_close_only_their_connection() {
    if !compiler() {
        return;
    }
    for (mode, source) in [(Mode::Direct, EnvSource::Instance), (Mode::Queue, EnvSource::Instance)] {
        let server = Arc::new(start_aot(aot_module("faulty.wat"), mode, source, test_limits()));
        let addr = server.local_addr();
        let queue = mode == Mode::Queue;
        let healthy = echoers(addr, 4, queue);
        std::thread::sleep(Duration::from_millis(50));
        // Compiled code that spins is stopped by the time budget too.
        let mut b = trap_spin_bad_pointer(addr);
        echo_round(&mut b, b"still here");
        for n in healthy.finish() {
            assert!(n > 0);
        }
        let server = Arc::try_unwrap(server).ok().unwrap();
        let stats = server.stop();
        assert_eq!(stats.traps, 1, "{mode:?}: {stats}");
        assert_eq!(stats.budget_overruns, 1, "{mode:?}: {stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

/// Recursion `depth` deep (from the message's first 4 bytes, LE), with a
/// few locals per frame; answers "ok". An unbounded depth must end in
/// WAMR's native stack check, never past the coroutine's stack.
const RECURSE: &str = r#"(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "ok")
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func $r (param $n i32) (param $a i64) (param $b i64) (result i64)
    (if (result i64) (i32.eqz (local.get $n))
      (then (local.get $a))
      (else (i64.add (i64.mul (local.get $b) (i64.const 3))
        (call $r (i32.sub (local.get $n) (i32.const 1))
                 (i64.add (local.get $a) (local.get $b))
                 (i64.xor (local.get $a) (i64.extend_i32_u (local.get $n))))))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (drop (call $r (i32.load (local.get $ptr)) (i64.const 1) (i64.const 2)))
    (drop (call $send (local.get $conn) (i32.const 16) (i32.const 2)))
    (i32.const 0)))"#;

#[test]
fn compiled_deep_recursion_traps_cleanly_and_the_server_keeps_serving() {
    if !compiler() {
        return;
    }
    let m = Module::from_aot(&aot::compile(RECURSE.as_bytes(), Target::Native).unwrap()).unwrap();
    for mode in [Mode::Direct, Mode::Queue] {
        let server = start_aot(m.clone(), mode, EnvSource::Instance, test_limits());
        let addr = server.local_addr();
        // A modest depth runs.
        let mut ok = connect(addr);
        ok.write_all(&100u32.to_le_bytes()).unwrap();
        assert_eq!(read_n(&mut ok, 2).unwrap(), b"ok");
        for round in 0..3 {
            let mut deep = connect(addr);
            deep.write_all(&100_000_000u32.to_le_bytes()).unwrap();
            assert!(closed_by_peer(&mut deep, Duration::from_secs(10)), "{mode:?} round {round}: not closed");
            let mut again = connect(addr);
            again.write_all(&1000u32.to_le_bytes()).unwrap();
            assert_eq!(read_n(&mut again, 2).unwrap(), b"ok", "{mode:?}: server stopped serving");
        }
        if mode == Mode::Direct {
            // Direct mode: the connection that did not recurse is intact.
            ok.write_all(&10u32.to_le_bytes()).unwrap();
            assert_eq!(read_n(&mut ok, 2).unwrap(), b"ok");
        }
        let stats = server.stop();
        assert_eq!(stats.traps, 3, "{mode:?}: {stats}");
        assert_eq!(stats.envs.live, 0);
    }
}

/// A start function that recurses 20,000 frames natively: it fits the 8 MiB
/// stack of the thread that makes the first env, not a 256 KiB coroutine
/// stack.
const DEEP_START: &str = r#"
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  (func $rec (param $n i32)
    (if (local.get $n)
      (then
        (call $rec (i32.sub (local.get $n) (i32.const 1)))
        (i32.store (i32.and (local.get $n) (i32.const 1023)) (local.get $n)))))
  (func $init (call $rec (i32.const 20000)))
  (start $init)
  (func (export "alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (call $send (local.get $c) (local.get $p) (local.get $n))))"#;

/// A start function runs on an exec env we cannot give a stack boundary
/// (a temporary one when instantiating, the parent's when spawning). On a
/// connection's coroutine WAMR used to check it against the worker thread's
/// stack, so a deep start function ran off the coroutine's stack and the
/// process died ("coroutine has overflowed its stack"). Now the env cannot
/// be made, the connection is closed, and the server keeps running.
#[test]
fn a_start_function_too_deep_for_a_coroutine_fails_the_env_not_the_process() {
    if !compiler() {
        return;
    }
    let m = Module::from_aot(&aot::compile(DEEP_START.as_bytes(), Target::Native).unwrap()).unwrap();
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        // The server's first env is made here, on the test's thread.
        let server = start_aot(m.clone(), Mode::Direct, source, test_limits());
        for round in 0..3 {
            let mut s = connect(server.local_addr());
            s.write_all(b"hello").unwrap();
            assert!(closed_by_peer(&mut s, Duration::from_secs(10)), "{source:?} round {round}: not closed");
        }
        let stats = server.stop();
        assert!(stats.envs.failures >= 3, "{source:?}: {stats}");
        assert_eq!(stats.envs.live, 0, "{source:?}: {stats}");
    }
}

/// The compiled form of a start function that never returns is held to the
/// call budget like the interpreted one (`isolation.rs`
/// `a_start_function_that_never_returns_is_a_start_up_error`): WAMR's AOT
/// runtime runs it in its own instantiation code, which calls the same hook.
#[test]
fn a_compiled_start_function_that_never_returns_is_a_start_up_error() {
    if !compiler() {
        return;
    }
    let wat = r#"(module (memory (export "memory") 1)
        (func $spin (loop $l (br $l))) (start $spin)
        (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0)))"#;
    let m = Module::from_aot(&aot::compile(wat.as_bytes(), Target::Native).unwrap()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let limits = Limits { call_budget: Some(Duration::from_millis(200)), ..test_limits() };
        let r = Server::builder(m).listen("127.0.0.1:0").limits(limits).start().map(drop);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Err(e)) => assert!(e.contains("start function") && e.contains("200 ms"), "{e}"),
        Ok(Ok(())) => panic!("accepted a module whose start function never returns"),
        Err(_) => panic!("still instantiating after 20 s (the start function was never stopped)"),
    }
}

/// Native stack an AOT call uses on a coroutine stack: the stack below the
/// caller is painted, the call runs, and the lowest changed byte is the
/// peak. Printed (docs/BENCHMARKS.md quotes it) and checked to leave the
/// coroutine stack's guard untouched.
#[test]
fn compiled_calls_native_stack_use() {
    if !compiler() {
        return;
    }
    #[inline(never)]
    fn measure(env: &mut wamr_coro::GuestEnv, msg: &[u8]) -> usize {
        let b = wamr_coro::coro::current_bounds().expect("coroutine bounds");
        let sp = {
            let x = 0u8;
            std::hint::black_box(&x) as *const u8 as usize
        };
        // Paint from the guard's top up to just below this frame's locals.
        let (lo, hi) = (b.low + wamr_coro::internals::STACK_GUARD, (sp - 256) & !7);
        for a in (lo..hi).step_by(8) {
            // SAFETY: [lo, hi) is this coroutine's own stack below the
            // current frame: unused, mapped, writable.
            unsafe { std::ptr::write_volatile(a as *mut u64, 0x5a5a_5a5a_5a5a_5a5a) };
        }
        env.on_recv(1, msg).unwrap();
        let mut a = lo;
        // SAFETY: as above; reading our own stack.
        while a < hi && unsafe { std::ptr::read_volatile(a as *const u64) } == 0x5a5a_5a5a_5a5a_5a5a {
            a += 8;
        }
        sp - a
    }
    setup();
    let mut report = Vec::new();
    for (name, kind, msg) in [
        ("cpu.wat", "aot", &b"GET / HTTP/1.1\r\n\r\n"[..]),
        ("cpu.wat", "interp", &b"GET / HTTP/1.1\r\n\r\n"[..]),
        ("http.wat", "aot", &b"GET / HTTP/1.1\r\n\r\n"[..]),
        ("c:echo", "aot", &b"hello"[..]),
    ] {
        let m = if kind == "aot" { aot_module(name) } else { module(name) };
        let g = Guest::new(m, GuestConfig::default(), Registry::new()).unwrap();
        let used = wamr_coro::coro::spawn(move || {
            let mut env = g.create_env().unwrap();
            measure(&mut env, msg)
        })
        .join()
        .unwrap();
        report.push(format!("{name} ({kind}): {used} bytes"));
        assert!(used < wamr_coro::coro::DEFAULT_STACK_BYTES - wamr_coro::internals::STACK_GUARD, "{name}: {used}");
    }
    eprintln!("native stack per call (host frames below the caller included): {}", report.join("; "));
}

/// Compiled code keeps globals where the interpreter does, and its aux stack
/// pointer elsewhere in them: a spawned compiled env, too, starts as a
/// fresh instance, with the stack pointer of its own slot.
#[test]
fn compiled_spawned_envs_start_with_the_globals_and_memory_of_a_fresh_instance() {
    if !compiler() {
        return;
    }
    let m = Module::from_aot(&aot::compile(START_READS_DATA_WAT.as_bytes(), Target::Native).unwrap()).unwrap();
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let server = Server::builder(m.clone())
            .listen("127.0.0.1:0")
            .env_source(source)
            .pool_capacity(1)
            .workers(2)
            .limits(test_limits())
            .start()
            .unwrap();
        starts_like_a_fresh_instance(&server, source);
        let stats = server.stop();
        assert_eq!(stats.envs.live, 0, "{stats}");
    }
}

#[test]
fn compiled_envs_are_reset_between_connections() {
    if !compiler() {
        return;
    }
    for source in [EnvSource::Instance, EnvSource::Spawn] {
        let server = Server::builder(aot_module("remember.wat"))
            .listen("127.0.0.1:0")
            .env_source(source)
            .pool_capacity(1)
            .workers(2)
            .limits(test_limits())
            .start()
            .unwrap();
        let fresh = [&[0u8, 3][..], b"none"].concat();
        for i in 0..10u64 {
            let mut a = connect(server.local_addr());
            a.write_all(format!("secret-{i}").as_bytes()).unwrap();
            assert_eq!(read_n(&mut a, 6).unwrap(), fresh);
            drop(a);
            wait_closed(&server, 2 * i + 1);
            let mut b = connect(server.local_addr());
            b.write_all(b"hello").unwrap();
            assert_eq!(read_n(&mut b, 6).unwrap(), fresh, "{source:?} round {i}: saw an earlier connection's state");
            drop(b);
            wait_closed(&server, 2 * i + 2);
        }
        let stats = server.stop();
        assert!(stats.pool.hits >= 15, "envs were not reused, so nothing was tested: {stats}");
        assert!(stats.env_resets >= 15, "{stats}");
    }
}

/// Compiled code reaches the tail WAMR maps past a memory it shrank to
/// `__heap_base` as the interpreter does, and the reset clears it the same
/// way (`isolation.rs::the_tail_of_a_shrunk_memory_is_reset_too`).
#[test]
fn compiled_envs_reset_the_tail_of_a_shrunk_memory() {
    if !compiler() {
        return;
    }
    setup();
    let aot = aot::compile(SHRUNK_WAT.as_bytes(), Target::Native).unwrap();
    shrunk_tail_is_reset(&Module::from_aot(&aot).unwrap());
}

#[test]
fn an_aot_file_without_its_wasm_is_refused_clearly() {
    if !compiler() {
        return;
    }
    setup();
    let good = aot_bytes("echo.wat");
    // Rename the section: WAMR still loads the code, but the host cannot
    // check it.
    let at = good.windows(aot::WASM_SECTION.len()).position(|w| w == aot::WASM_SECTION.as_bytes()).unwrap();
    let mut bad = good.clone();
    bad[at] = b'X';
    let err = Module::from_aot(&bad).unwrap_err().to_string();
    assert!(err.contains("wamr-coro compile"), "{err}");
    // Truncated files are WAMR's to refuse.
    assert!(Module::from_aot(&good[..good.len() / 2]).is_err());
}

/// A `serve` child that is killed if the test ends without [`stop`] (a
/// failed assertion): a server left behind, spinning in a guest nothing
/// stops, would take a core from every test after it.
struct Served(Option<std::process::Child>);

impl std::ops::Deref for Served {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("not stopped yet")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `serve ARGS`, returns the child and the address it listens on.
fn serve(args: &[&str]) -> (Served, String) {
    use std::io::BufRead;
    let mut child = common::wamr_coro()
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--workers", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let Some(addr) = line.trim().strip_prefix("listening on ").map(str::to_string) else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("serve did not start: {line:?} {}", String::from_utf8_lossy(&out.stderr))
    };
    (Served(Some(child)), addr)
}

fn stop(mut served: Served) -> String {
    let mut child = served.0.take().expect("stopped once");
    signal(&child, libc::SIGTERM);
    wait_exit(&mut child, Duration::from_secs(10), "serve did not stop");
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// faulty.wat's spinning message: its connection must be closed by a
/// budget within 10 s (`why` otherwise), and a new connection still echoed.
fn spinner_is_stopped_and_others_served(addr: &str, why: &str) {
    let mut s = connect(addr.parse().unwrap());
    s.write_all(b"S").unwrap();
    assert!(closed_by_peer(&mut s, Duration::from_secs(10)), "{why}");
    echo_round(&mut connect(addr.parse().unwrap()), b"still serving");
}

fn http_get(addr: &str) -> Vec<u8> {
    let mut s = connect(addr.parse().unwrap());
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_n(&mut s, HTTP_RESPONSE.len()).unwrap()
}

/// An empty scratch directory for one test, under cargo's test temp dir.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn cli_compile_then_serve_and_serve_aot_with_its_cache() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-cli");
    let out = dir.join("http.aot");
    let st = common::wamr_coro()
        .args([
            "compile",
            guest_path("http.wat").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--target",
            "portable",
        ])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(std::fs::read(&out).unwrap().starts_with(b"\0aot"));
    for mode in ["direct", "queue"] {
        let (child, addr) = serve(&[out.to_str().unwrap(), "--mode", mode, "--engine", "aot"]);
        assert_eq!(http_get(&addr), HTTP_RESPONSE, "{mode}");
        let log = stop(child);
        assert!(log.contains("guest loaded from an AOT file"), "{log}");
    }
    // serve --aot: the first start compiles into the cache, the second
    // finds it there.
    let cache = dir.join("cache");
    let args = [
        guest_path("http.wat").to_str().unwrap().to_string(),
        "--aot".into(),
        "--aot-cache".into(),
        cache.to_str().unwrap().into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for expect_hit in [false, true] {
        let (child, addr) = serve(&args);
        assert_eq!(http_get(&addr), HTTP_RESPONSE);
        let log = stop(child);
        assert!(log.contains(&format!("cache_hit={expect_hit}")), "{log}");
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_instruction_budget_with_aot_keeps_the_time_budget() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-budget");
    let out = dir.join("faulty.aot");
    std::fs::write(&out, aot_bytes("faulty.wat")).unwrap();
    let p = out.to_str().unwrap();
    // Said at start; a spinning compiled guest is still stopped, by time.
    let (child, addr) = serve(&[p, "--engine", "aot", "--instruction-budget", "1000", "--call-budget-ms", "100"]);
    spinner_is_stopped_and_others_served(&addr, "the spinner was not stopped");
    let log = stop(child);
    assert!(log.contains("does not apply to AOT-compiled code"), "{log}");
    // With no time budget at all, a compiled guest would run unbounded:
    // refused at start.
    let st = common::wamr_coro()
        .args(["serve", p, "--engine", "aot", "--instruction-budget", "1000", "--call-budget-ms", "0"])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("give AOT guests a time budget"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve` without an engine flag compiles (this build has the compiler),
/// `--engine interp` interprets, `--instruction-budget` interprets (WAMR
/// meters only its interpreter: compiled, this configuration would be
/// refused at start), and a cache that cannot be written costs only the
/// caching.
#[test]
fn cli_serve_compiles_by_default_and_interprets_when_told_or_metered() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-engine");
    let cache = dir.join("cache");
    let (http, cache) = (guest_path("http.wat"), cache.to_str().unwrap().to_string());
    let (child, addr) = serve(&[http.to_str().unwrap(), "--aot-cache", &cache]);
    assert_eq!(http_get(&addr), HTTP_RESPONSE);
    let log = stop(child);
    assert!(log.contains("guest AOT-compiled"), "{log}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    let (child, addr) = serve(&[http.to_str().unwrap(), "--engine", "interp", "--aot-cache", &cache]);
    assert_eq!(http_get(&addr), HTTP_RESPONSE);
    let log = stop(child);
    assert!(log.contains("guest interpreted") && log.contains("--engine interp"), "{log}");
    assert!(!log.contains("AOT-compiled"), "{log}");

    // A spinning guest with an instruction budget and no time budget: only
    // the interpreter can stop it, so that is what runs.
    let faulty = guest_path("faulty.wat");
    let (child, addr) = serve(&[faulty.to_str().unwrap(), "--instruction-budget", "100000", "--call-budget-ms", "0"]);
    spinner_is_stopped_and_others_served(&addr, "the spinner was not stopped");
    let log = stop(child);
    assert!(log.contains("guest interpreted") && log.contains("WAMR meters only its interpreter"), "{log}");

    // The cache's directory cannot be created under a file.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let bad = file.join("cache");
    let (child, addr) = serve(&[http.to_str().unwrap(), "--aot-cache", bad.to_str().unwrap()]);
    assert_eq!(http_get(&addr), HTTP_RESPONSE);
    let log = stop(child);
    assert!(log.contains("AOT cache directory not used") && log.contains("guest AOT-compiled"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SIGHUP reload is held to the rules the start is: a module that has
/// become an AOT file on disk is native code nobody asked for (no
/// `--engine aot`), and with an instruction budget and no time budget it
/// would run unbounded; the reload is refused and the interpreted guest
/// keeps serving (and keeps being stopped by its budget).
#[test]
fn a_reload_to_compiled_code_without_a_time_budget_is_refused() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-reload");
    let path = dir.join("guest.wat");
    std::fs::copy(guest_path("faulty.wat"), &path).unwrap();
    let (child, addr) = serve(&[path.to_str().unwrap(), "--instruction-budget", "100000", "--call-budget-ms", "0"]);
    echo_round(&mut connect(addr.parse().unwrap()), b"before");
    std::fs::write(&path, aot_bytes("faulty.wat")).unwrap();
    signal(&child, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    spinner_is_stopped_and_others_served(&addr, "the spinner ran unbounded: the reload was taken");
    let log = stop(child);
    assert!(log.contains("reload failed") && log.contains("is an AOT file"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An AOT file is native code: it loads only when asked for by name.
/// Before, `Module::new` and `Module::from_file` loaded any bytes with the
/// `\0aot` magic, and `serve` ran an AOT file under every `--engine` (a
/// `guest.wasm` that was really an AOT file ran as native code under the
/// default engine, and under `--engine interp` with only a warning).
#[test]
fn an_aot_file_runs_only_when_asked_for() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-asked");
    let bytes = aot_bytes("echo.wat");
    // Named like a wasm module, which is what a user would not suspect.
    let path = dir.join("guest.wasm");
    std::fs::write(&path, &bytes).unwrap();
    for err in [Module::new(&bytes).unwrap_err(), Module::from_file(&path).unwrap_err()] {
        let err = err.to_string();
        assert!(err.contains("AOT file") && err.contains("Module::from_aot"), "{err}");
    }
    let err = aot::load_compiled(&bytes, Target::Portable, None, &aot::CompileLimits::default()).unwrap_err();
    assert!(err.to_string().contains("already an AOT file"), "{err}");
    assert!(Module::from_aot(&bytes).unwrap().is_aot());
    for engine in [None, Some("auto"), Some("interp")] {
        let mut cmd = common::wamr_coro();
        cmd.args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
        if let Some(e) = engine {
            cmd.args(["--engine", e]);
        }
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = wait_output(out, Duration::from_secs(30), "serve of an AOT file did not end");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{engine:?}: served an AOT file nobody asked for");
        assert!(err.contains("guest.wasm is an AOT file") && err.contains("--engine aot"), "{engine:?}: {err}");
    }
    // Asked for, it is served.
    let (child, addr) = serve(&[path.to_str().unwrap(), "--engine", "aot"]);
    echo_round(&mut connect(addr.parse().unwrap()), b"asked for");
    let log = stop(child);
    assert!(log.contains("guest loaded from an AOT file"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `child`'s output once it exits, within `within` (killed otherwise).
fn wait_output(mut child: std::process::Child, within: Duration, what: &str) -> std::process::Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A cache entry is loaded as native code, so a cache others can write is
/// not used. Before, an entry planted in a group- or world-writable
/// directory (the shared temporary directory was the default without
/// `$HOME`) was loaded as the compiled form of whatever module hashed to
/// its name: here the HTTP guest's code served for the echo guest.
#[test]
fn an_aot_cache_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    if !compiler() {
        return;
    }
    setup();
    let dir = fresh_dir("aot-poison");
    let cache = dir.join("cache");
    let limits = aot::CompileLimits::default();
    let echo = guest_text("echo.wat");
    let first = aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap();
    let entry = first.path.clone().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache directory is private");
    assert_eq!(mode(&entry), 0o600, "cache entries are private");
    assert!(aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap().hit);
    // Someone else's code under the echo guest's name.
    let poison = aot::compile(guest_text("http.wat").as_bytes(), Target::Portable).unwrap();
    let plant = |dir_mode: u32, entry_mode: u32| {
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        std::fs::write(&entry, &poison).unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(entry_mode)).unwrap();
    };
    for (dir_mode, entry_mode) in [(0o777, 0o600), (0o770, 0o600), (0o700, 0o666), (0o700, 0o620)] {
        plant(dir_mode, entry_mode);
        let got = aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap();
        assert!(!got.hit && got.aot != poison, "{dir_mode:o}/{entry_mode:o}: the planted entry was loaded");
        let m = aot::load_compiled(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap();
        let server = start_aot(m, Mode::Direct, EnvSource::Instance, test_limits());
        echo_round(&mut connect(server.local_addr()), b"the echo guest");
        server.stop();
    }
    // An entry of another user (only root can make one here).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        plant(0o700, 0o600);
        std::os::unix::fs::chown(&entry, Some(12345), None).unwrap();
        let got = aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap();
        assert!(!got.hit && got.aot != poison, "an entry of uid 12345 was loaded");
    }
    // No $HOME and no $XDG_CACHE_HOME: no cache, not one in the shared
    // temporary directory.
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd = common::wamr_coro();
    cmd.env_remove("HOME").env_remove("XDG_CACHE_HOME").env("TMPDIR", &tmp);
    cmd.args(["serve", guest_path("echo.wat").to_str().unwrap(), "--listen", "127.0.0.1:0", "--workers", "2"]);
    let (child, addr, out) = spawn_server(&mut cmd);
    echo_round(&mut connect(addr), b"uncached");
    signal(&child, libc::SIGTERM);
    let mut child = child;
    wait_exit(&mut child, Duration::from_secs(10), "serve did not stop");
    drop(out);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "serve left {left:?} in the temporary directory");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cache directory inside a directory others can write is not used
/// either, however far up: whoever can write a directory on the way can
/// rename the private cache away and put one of their own, full of planted
/// entries, in its place. A sticky directory of root's (`/tmp`) is fine:
/// others cannot rename what is not theirs there. Links are resolved first,
/// so a cache reached through one is judged where it really is. Before, only
/// the cache directory itself and its entries were checked.
#[test]
fn an_aot_cache_inside_a_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    if !compiler() {
        return;
    }
    setup();
    let dir = fresh_dir("aot-parent");
    let open = dir.join("open");
    let cache = open.join("deeper").join("cache");
    std::fs::create_dir_all(&open).unwrap();
    let set = |mode: u32| std::fs::set_permissions(&open, std::fs::Permissions::from_mode(mode)).unwrap();
    let limits = aot::CompileLimits::default();
    let echo = guest_text("echo.wat");
    let cached =
        |at: &std::path::Path| aot::compile_cached(echo.as_bytes(), Target::Portable, Some(at), &limits).unwrap();
    set(0o755);
    assert!(cached(&cache).path.is_some(), "a cache under 0755 directories is used");
    assert!(cached(&cache).hit);
    for mode in [0o777, 0o775, 0o757] {
        set(mode);
        let got = cached(&cache);
        assert!(
            got.path.is_none() && !got.hit,
            "a cache two levels inside a directory of mode {mode:o} was used: {:?}",
            got.path
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // The test's directories are root's: sticky and root's, like /tmp.
        set(0o1777);
        assert!(cached(&cache).hit, "a cache inside a sticky directory of root's was not used");
    }
    // Reached through a link to the directory above it.
    let link = dir.join("link");
    std::os::unix::fs::symlink(open.join("deeper"), &link).unwrap();
    set(0o777);
    let got = cached(&link.join("cache"));
    assert!(got.path.is_none(), "a cache reached through a link was judged by the link's path: {:?}", got.path);
    set(0o755);
    let got = cached(&link.join("cache"));
    let real = std::fs::canonicalize(&cache).unwrap();
    assert!(got.hit, "the same cache through a link, with trusted directories, was not used");
    assert!(
        got.path.as_deref().is_some_and(|p| p.starts_with(&real)),
        "entry path {:?} is not under {real:?}",
        got.path
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// 20,000 empty functions, an 80 KB module that took the compiler 100 s
/// and 1.5 GB (WAMR's compiler and LLVM grow faster than the input).
fn costly_to_compile() -> String {
    let mut wat = String::from(
        r#"(module (memory (export "memory") 1)
             (func (export "on_recv") (param i32 i32 i32) (result i32) (i32.const 0))"#,
    );
    for _ in 0..20_000 {
        wat.push_str("(func)");
    }
    wat.push(')');
    wat
}

/// The compiler runs under a time and a memory limit, and dies with its
/// parent. Before, a hostile 80 KB module held `compile` and `serve`'s
/// start (default engine) for minutes and gigabytes, and a `serve` killed
/// meanwhile left the compiler running.
#[test]
fn a_module_too_costly_to_compile_is_stopped_by_the_limits() {
    if !compiler() {
        return;
    }
    setup();
    let wat = costly_to_compile();
    let started = Instant::now();
    let limits = aot::CompileLimits { timeout: Duration::from_secs(1), max_memory: 8 << 30 };
    let err = aot::compile_with(wat.as_bytes(), Target::Portable, &limits).unwrap_err().to_string();
    assert!(err.contains("time limit (1 s)"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "the time limit did not stop the compiler");
    let limits = aot::CompileLimits { timeout: Duration::from_secs(300), max_memory: 200 << 20 };
    let err = aot::compile_with(wat.as_bytes(), Target::Portable, &limits).unwrap_err().to_string();
    assert!(err.contains("memory limit (200 MiB)"), "{err}");

    let dir = fresh_dir("aot-costly");
    let path = dir.join("costly.wat");
    std::fs::write(&path, &wat).unwrap();
    // `serve` (engine auto) gives up compiling and interprets.
    let (child, _) = serve(&[path.to_str().unwrap(), "--aot-timeout-s", "1"]);
    let log = stop(child);
    assert!(log.contains("time limit") && log.contains("interpreting it"), "{log}");
    // A `serve` killed while it compiles takes the compiler with it. (Its
    // scratch directory stays: in `dir`, removed below.)
    let mut child = common::wamr_coro()
        .env("TMPDIR", &dir)
        .args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0", "--aot-cache", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let compiler = loop {
        if let Some(&c) = children(child.id()).first() {
            break c;
        }
        assert!(Instant::now() < deadline, "serve started no compiler");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // Gone, or a zombie waiting for whoever adopted it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{compiler}/stat"))
            .map(|st| !st.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on a pid we saw as our child's child; it is
            // still running (not a zombie), so not reused.
            unsafe { libc::kill(compiler as i32, libc::SIGKILL) };
            panic!("the compiler outlived the serve that started it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its scratch directory stayed behind. The next compile of another
    // process removes it once it is old, and leaves a young one, a live
    // process's and another name alone. Before, they stayed for good.
    let scratch = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("wamr-coro-aot-"))
            .collect();
        v.sort();
        v
    };
    let left = scratch(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    let young = format!("wamr-coro-aot-{}-00000000000000aa", child.id());
    let live = format!("wamr-coro-aot-{}-00000000000000bb", std::process::id());
    let other = "wamr-coro-aot-cache-x".to_string();
    for n in [&young, &live, &other] {
        std::fs::create_dir(dir.join(n)).unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for n in [&left[0], &live, &other] {
        std::fs::File::open(dir.join(n)).unwrap().set_modified(two_hours_ago).unwrap();
    }
    let out = dir.join("echo.aot");
    let st = common::wamr_coro()
        .env("TMPDIR", &dir)
        .args(["compile", guest_path("echo.wat").to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let mut kept = vec![young, live, other];
    kept.sort();
    assert_eq!(scratch(&dir), kept, "{} should be gone and the others kept", left[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A compile time limit past half an hour is refused, by the library and
/// by both commands: a scratch directory left that long by a dead process
/// is taken for stale by the next compile (see the test above), and a live
/// compile's must never look so.
#[test]
fn a_compile_time_limit_past_half_an_hour_is_refused() {
    if !compiler() {
        return;
    }
    setup();
    let limits = aot::CompileLimits { timeout: Duration::from_secs(1801), max_memory: 1 << 30 };
    let err = aot::compile_with(guest_text("echo.wat").as_bytes(), Target::Portable, &limits).unwrap_err();
    assert!(err.to_string().contains("at most 1800 s"), "{err}");
    let echo = guest_path("echo.wat");
    for args in [
        vec!["compile", echo.to_str().unwrap(), "-o", "/dev/null", "--timeout-s", "1801"],
        vec!["serve", echo.to_str().unwrap(), "--aot-timeout-s", "1801"],
    ] {
        let st = common::wamr_coro().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success() && err.contains("1801") && err.contains("1..=1800"), "{args:?}: {err}");
    }
}

/// `compile -o` naming the input (here through a symbolic link) is refused
/// and the module left as it was. Before, the wasm was overwritten with
/// its native code.
#[test]
fn compile_refuses_to_overwrite_its_input() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-same");
    let path = dir.join("guest.wat");
    std::fs::copy(guest_path("echo.wat"), &path).unwrap();
    let link = dir.join("link.aot");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    for out in [&path, &link] {
        let st = common::wamr_coro()
            .args(["compile", path.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success() && err.contains("is the input module itself"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), guest_text("echo.wat"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An output `compile` cannot write is refused before compiling: it was
/// found only after the compile, which a costly module runs to its time
/// limit. A failed compile leaves no empty output behind.
#[test]
fn compile_refuses_an_unwritable_output_before_compiling() {
    if !compiler() {
        return;
    }
    let dir = fresh_dir("aot-unwritable");
    let path = dir.join("costly.wat");
    std::fs::write(&path, costly_to_compile()).unwrap();
    let missing = dir.join("no-such-dir").join("out.aot");
    let st = common::wamr_coro()
        .args(["compile", path.to_str().unwrap(), "-o", missing.to_str().unwrap(), "--timeout-s", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("writing") && err.contains("no-such-dir"), "{err}");
    assert!(!err.contains("time limit"), "compiled first: {err}");
    let out = dir.join("out.aot");
    let st = common::wamr_coro()
        .args(["compile", path.to_str().unwrap(), "-o", out.to_str().unwrap(), "--timeout-s", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("time limit"), "{err}");
    assert!(!out.exists(), "a failed compile left {} behind", out.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The compiler's scratch directory is not at a name another local user
/// can take first. Before, it was `$TMPDIR/wamr-coro-aot-PID-N`, and a
/// directory created there in advance made every compile of that process
/// fail with "File exists" (here: the first 2,000 names of this process).
#[test]
fn compiling_survives_taken_scratch_names() {
    if !compiler() {
        return;
    }
    let tmp = std::env::temp_dir();
    let taken: Vec<PathBuf> =
        (0..2000).map(|n| tmp.join(format!("wamr-coro-aot-{}-{n}", std::process::id()))).collect();
    let mut made = Vec::new();
    for d in &taken {
        if std::fs::create_dir(d).is_ok() {
            made.push(d.clone());
        }
    }
    let got = aot::compile(guest_text("echo.wat").as_bytes(), Target::Portable);
    for d in &made {
        let _ = std::fs::remove_dir(d);
    }
    assert!(got.unwrap().starts_with(b"\0aot"));
}

/// A FIFO under a cache entry's name (nothing the cache writes, but a
/// directory its user can write may hold anything): reading the entry
/// opened it and waited for a writer for ever, hanging the server's start,
/// or a reload, before it could say why. Now it is no entry: the guest is
/// compiled, and the server starts.
#[test]
fn a_fifo_under_a_cache_entry_name_does_not_hang_the_compile() {
    if !compiler() {
        return;
    }
    setup();
    let dir = fresh_dir("aot-fifo-entry");
    let cache = dir.join("cache");
    let echo = guest_text("echo.wat");
    let limits = aot::CompileLimits::default();
    let entry = aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap().path.unwrap();
    std::fs::remove_file(&entry).unwrap();
    let c = std::ffi::CString::new(entry.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let (wasm, cache2) = (echo.clone(), cache.clone());
    std::thread::spawn(move || {
        let _ = tx.send(aot::compile_cached(wasm.as_bytes(), Target::Portable, Some(&cache2), &limits).map(|c| c.hit));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(hit)) => assert!(!hit, "a FIFO was taken for a cached entry"),
        Ok(Err(e)) => panic!("compiling failed: {e}"),
        Err(_) => {
            // Let the blocked open go, so the thread ends.
            let _ = std::fs::OpenOptions::new().write(true).open(&entry);
            panic!("reading a FIFO under the entry's name still waits for a writer");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A compiled guest that could not be stored (a full disk; here a
/// directory in the entry's place) is not cached: `Cached::path` is `None`,
/// as its docs say, and the log does not name an entry that was never
/// written. Before, it named the path it had failed to write.
#[test]
fn a_compile_the_cache_could_not_store_has_no_cache_path() {
    if !compiler() {
        return;
    }
    setup();
    let dir = fresh_dir("aot-unstored");
    let cache = dir.join("cache");
    let echo = guest_text("echo.wat");
    let limits = aot::CompileLimits::default();
    let entry = aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap().path.unwrap();
    std::fs::remove_file(&entry).unwrap();
    std::fs::create_dir(&entry).unwrap();
    let got = aot::compile_cached(echo.as_bytes(), Target::Portable, Some(&cache), &limits).unwrap();
    assert!(!got.hit);
    assert_eq!(got.path, None, "a compile that could not be stored says where it is cached");
    assert!(entry.is_dir());
    let _ = std::fs::remove_dir_all(&dir);
}
