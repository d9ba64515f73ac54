//! Where a compiled guest stands against native code: the work of
//! `guests/cpu.wat` (5,000 rounds of integer mixing per request) as native
//! Rust, in WAMR's fast interpreter, and compiled by `wamr-coro compile`
//! (AOT, this machine's CPU).
//!
//! `cargo bench --bench cpu_work`. The guest function is `cpu.wat`'s own
//! `$work`, exported here by editing the text, so the three run the same
//! loop. Each call runs on a coroutine, as in the server. Without the AOT
//! compiler (a build without LLVM) the compiled case is skipped with a note.
//!
//! `CPU_WORK_AOT=FILE` adds one more case: an AOT file of the same text
//! (`cpu.wat` with `$work` exported as "work") made by another build's
//! `wamr-coro compile`, so two compilers are compared in one run.
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use wamr_coro::*;

/// The rounds `cpu.wat` runs per request (its `$rounds`).
const ROUNDS: u32 = 5000;

/// `cpu.wat`'s `$work`, line for line.
#[inline(never)]
fn work_native(mut x: u32) -> u32 {
    let mut i: u32 = 0;
    loop {
        x = (x ^ (x >> 15)).wrapping_mul(0x2c1b_3c6d);
        x = x.rotate_left(7).wrapping_add(i);
        x ^= (x >> 12).wrapping_mul(0x297a_2d39);
        i += 1;
        if i >= std::hint::black_box(ROUNDS) {
            return x;
        }
    }
}

/// `guests/cpu.wat` with `$work` exported as "work".
fn guest_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/guests/cpu.wat");
    let text = std::fs::read_to_string(path).expect("guests/cpu.wat");
    assert!(text.contains(&format!("(global $rounds i32 (i32.const {ROUNDS}))")), "cpu.wat's rounds changed");
    let exported = text.replacen("(func $work (param $x i32)", "(func $work (export \"work\") (param $x i32)", 1);
    assert_ne!(exported, text, "cpu.wat's $work not found");
    exported
}

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        Runtime::init(RuntimeConfig { log: WamrLog::Silent, ..RuntimeConfig::default() }).unwrap();
        coro::configure(2, 256 * 1024).unwrap();
    });
}

/// Runs `f` with the module's `work` in a fresh env, inside one coroutine
/// as the server would.
fn with_work<R: Send + 'static>(
    m: &Module,
    f: impl FnOnce(&mut ExecEnv, &TypedFunc<i32, i32>) -> R + Send + 'static,
) -> R {
    let m = m.clone();
    coro::spawn(move || {
        let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
        let work = env.typed::<i32, i32>(&m, "work").unwrap();
        f(&mut env, &work)
    })
    .join()
    .unwrap()
}

/// Times `iters` calls of the module's `work`.
fn time_guest(m: &Module, iters: u64) -> Duration {
    with_work(m, move |env, work| {
        let t = Instant::now();
        for k in 0..iters {
            let seed = (k as u32).wrapping_mul(2_654_435_761) as i32;
            std::hint::black_box(env.call_typed(work, seed).unwrap());
        }
        t.elapsed()
    })
}

fn cpu_work(c: &mut Criterion) {
    setup();
    let text = guest_text();
    let interp = Module::from_wat(&text).unwrap();
    // The three must compute the same thing before their times mean anything.
    let want: Vec<u32> = (0..4u32).map(|s| work_native(s.wrapping_mul(2_654_435_761))).collect();
    let check = |m: &Module| {
        let want = want.clone();
        with_work(m, move |env, work| {
            for (s, w) in (0..4u32).zip(want) {
                assert_eq!(env.call_typed(work, s.wrapping_mul(2_654_435_761) as i32).unwrap() as u32, w);
            }
        })
    };
    check(&interp);
    let compiled = if aot::compiler_available() {
        let wasm = wat::parse_str(&text).unwrap();
        let m = Module::from_aot(&aot::compile(&wasm, aot::Target::Native).unwrap()).unwrap();
        check(&m);
        Some(m)
    } else {
        eprintln!("cpu_work: no AOT compiler in this build; the compiled case is skipped");
        None
    };
    let other = std::env::var_os("CPU_WORK_AOT").map(|path| {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("CPU_WORK_AOT={path:?}: {e}"));
        let m = Module::from_aot(&bytes).unwrap();
        assert!(m.is_aot(), "CPU_WORK_AOT={path:?} is not an AOT file");
        check(&m);
        m
    });

    let mut g = c.benchmark_group("cpu_work_5000_rounds");
    g.bench_function("native_rust", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for k in 0..iters {
                std::hint::black_box(work_native(std::hint::black_box((k as u32).wrapping_mul(2_654_435_761))));
            }
            t.elapsed()
        })
    });
    if let Some(m) = &compiled {
        g.bench_function("wamr_aot", |b| b.iter_custom(|iters| time_guest(m, iters)));
    }
    if let Some(m) = &other {
        g.bench_function("wamr_aot_file", |b| b.iter_custom(|iters| time_guest(m, iters)));
    }
    g.bench_function("wamr_interpreter", |b| b.iter_custom(|iters| time_guest(&interp, iters)));
    g.finish();
}

criterion_group!(benches, cpu_work);
criterion_main!(benches);
