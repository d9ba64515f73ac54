//! What giving every connection a fresh guest costs, per option (issue 8):
//!
//! * `reset`: what the pool does on release — copy the image's data pages
//!   back, `MADV_DONTNEED` its zero pages, restore globals;
//! * `reinstantiate`: destroy the env and make a new one (instantiate +
//!   exec env + `alloc`), what a pool without reset would have to do;
//! * `full copy`: copy the whole memory image back (a snapshot restore that
//!   ignores which pages are zero), for comparison.
//!
//! Each env first serves a "connection" (on_recv of 1 KiB that the guest
//! stores or echoes), so the reset has real work. Prints median, p99 and
//! p99.9 in µs per guest from an HDR histogram of 2,000 rounds each.
//!
//! `cargo bench --bench reset` (the C and Rust guests are built with
//! guests/build.sh when clang/wasm-ld and the wasm32 target are present).
use std::path::PathBuf;
use std::time::Instant;

use hdrhistogram::Histogram;
use wamr_coro::*;

/// Rounds per guest and option under `cargo bench`; `cargo test
/// --all-targets` runs this binary without `--bench`, as a quick smoke test.
fn rounds() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        2000
    } else {
        20
    }
}

fn guests() -> Vec<(String, Module)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut v = vec![
        ("http.wat (default guest)".to_string(), wamr_coro::default_guest().unwrap()),
        ("remember.wat (keeps state)".to_string(), Module::from_file(root.join("guests/remember.wat")).unwrap()),
    ];
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-guests");
    let built = std::process::Command::new("bash")
        .arg(root.join("guests/build.sh"))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if built {
        for (name, file) in [("C echo", "echo.wasm"), ("Rust echo (std, dlmalloc)", "rust_echo.wasm")] {
            if let Ok(m) = Module::from_file(out.join(file)) {
                v.push((name.to_string(), m));
            }
        }
    } else {
        eprintln!("(guests/build.sh failed: C and Rust guests left out)");
    }
    v
}

fn report(name: &str, what: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("{name:<30} {what:<14} {:>8.2} {:>8.2} {:>8.2}", us(0.5), us(0.99), us(0.999));
}

fn main() {
    Runtime::init(RuntimeConfig { log: WamrLog::Silent, ..RuntimeConfig::default() }).unwrap();
    coro::configure(2, 256 * 1024).unwrap();
    println!("{:<30} {:<14} {:>8} {:>8} {:>8}", "guest", "option", "p50 µs", "p99 µs", "p99.9 µs");
    let msg = vec![b'x'; 1024];
    for (name, module) in guests() {
        let cfg = GuestConfig { chunk_size: 16 * 1024, call_budget: None, ..GuestConfig::default() };
        let guest = Guest::new(module, cfg, Registry::new()).unwrap();
        let (g, name2, msg2) = (guest.clone(), name.clone(), msg.clone());
        // Calls need a coroutine (or a thread) whose stack is known.
        coro::spawn(move || {
            let (guest, name, msg) = (g, name2, msg2);
            let mut reset = Histogram::<u64>::new(3).unwrap();
            let mut full = Histogram::<u64>::new(3).unwrap();
            let mut env = guest.create_env().unwrap();
            for _ in 0..rounds() {
                env.on_recv(1, &msg).unwrap();
                let t = Instant::now();
                env.reset().unwrap();
                reset.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            // Full copy: rewrite every byte of memory (what restoring a
            // whole snapshot costs at least). A loop of its own, on an env
            // of its own: a reset after it would find every page resident,
            // and the reset loop above would measure that instead (until
            // 2026-12-07 they shared one loop and one env).
            let mut copied = guest.create_env().unwrap();
            for _ in 0..rounds() {
                copied.on_recv(1, &msg).unwrap();
                let len = copied.exec_env().memory().len();
                let t = Instant::now();
                copied.exec_env().memory().fill(0, len as i32, 0);
                full.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            drop(copied);
            let mut again = Histogram::<u64>::new(3).unwrap();
            for _ in 0..rounds() {
                env.on_recv(1, &msg).unwrap();
                let t = Instant::now();
                drop(env);
                env = guest.create_env().unwrap();
                again.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            report(&name, "reset", &reset);
            report(&name, "full copy", &full);
            report(&name, "reinstantiate", &again);
        })
        .join()
        .unwrap();
    }
}
