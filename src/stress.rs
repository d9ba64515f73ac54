//! The coroutine stress run behind `wamr-coro stress`: size a deployment by
//! holding N private envs at once, each in its own coroutine.
//!
//! Every coroutine creates its env, calls `on_recv` `calls` times (64 bytes
//! each, yielding between calls so coroutines interleave across workers),
//! waits until all N envs are alive (the peak), then drops its env. The
//! report gives per-phase wall time, per-env cost, process memory at the
//! peak, and errors.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::guest::{EnvSource, Guest, GuestConfig};
use crate::registry::Registry;
use crate::wamr::Module;

/// What to stress.
#[derive(Debug, Clone)]
pub struct StressConfig {
    /// Coroutines, each holding one env at the peak.
    pub coroutines: usize,
    /// `on_recv` calls per coroutine.
    pub calls: usize,
    /// Where envs come from.
    pub source: EnvSource,
    /// Receive buffer per env.
    pub chunk_size: u32,
}

/// What a stress run measured.
#[derive(Debug, Clone)]
pub struct StressReport {
    /// The configuration.
    pub coroutines: usize,
    /// Env source.
    pub source: EnvSource,
    /// Time until every env existed and had made its calls.
    pub create_and_call: Duration,
    /// Time to destroy all envs after the peak.
    pub destroy: Duration,
    /// Calls made in total.
    pub calls: u64,
    /// Errors (creation or call).
    pub errors: u64,
    /// Live envs at the peak.
    pub peak_envs: u64,
    /// Resident memory at the peak minus before, bytes.
    pub rss_growth: u64,
    /// Envs still alive at the end (must be 0).
    pub live_after: u64,
}

impl std::fmt::Display for StressReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.coroutines.max(1) as f64;
        write!(
            f,
            "{} coroutines, source {:?}: create+call {:.1} ms ({:.2} µs/env, {} calls), destroy {:.1} ms ({:.2} µs/env), \
             peak {} envs, RSS +{:.1} MiB ({:.1} KiB/env), errors {}, live after {}",
            self.coroutines,
            self.source,
            self.create_and_call.as_secs_f64() * 1e3,
            self.create_and_call.as_secs_f64() * 1e6 / n,
            self.calls,
            self.destroy.as_secs_f64() * 1e3,
            self.destroy.as_secs_f64() * 1e6 / n,
            self.peak_envs,
            self.rss_growth as f64 / (1 << 20) as f64,
            self.rss_growth as f64 / 1024.0 / n,
            self.errors,
            self.live_after
        )
    }
}

/// Resident set size of this process, bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// The most coroutines (and envs) one stress run holds: ten million, far
/// past what a machine's memory holds at tens of KiB an env.
pub const MAX_COROUTINES: usize = 10_000_000;

/// Runs the stress test on `module` (which must export `on_recv`).
pub fn run(module: Module, cfg: &StressConfig) -> Result<StressReport> {
    // None reported a row of per-env costs measured over no env; 2^64 - 1
    // panicked allocating the handles (capacity overflow).
    if cfg.coroutines == 0 || cfg.coroutines > MAX_COROUTINES {
        return Err(Error::Config(format!("--coroutines must be 1 to {MAX_COROUTINES}, not {}", cfg.coroutines)));
    }
    let registry = Registry::new();
    let guest = Guest::new(
        module,
        // As the server runs direct mode's calls (the stress guest's imports
        // do not block).
        GuestConfig {
            source: cfg.source,
            chunk_size: cfg.chunk_size,
            call_stack: crate::wamr::CallStack::Worker,
            ..GuestConfig::default()
        },
        Arc::clone(&registry),
    )?;
    let n = cfg.coroutines;
    let ready = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (guest, ready, release, errors, calls) =
                (Arc::clone(&guest), Arc::clone(&ready), Arc::clone(&release), Arc::clone(&errors), Arc::clone(&calls));
            let per = cfg.calls;
            crate::coro::spawn(move || {
                let data = [0x5au8; 64];
                let env = match guest.create_env() {
                    Ok(mut env) => {
                        for _ in 0..per {
                            match env.on_recv(i as i32 + 1, &data) {
                                Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                                Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                            };
                            may::coroutine::yield_now();
                        }
                        Some(env)
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                ready.fetch_add(1, Ordering::AcqRel);
                while release.load(Ordering::Acquire) == 0 {
                    may::coroutine::sleep(Duration::from_millis(1));
                }
                drop(env);
            })
        })
        .collect();
    while ready.load(Ordering::Acquire) < n {
        std::thread::sleep(Duration::from_micros(200));
    }
    let create_and_call = t0.elapsed();
    let peak_envs = registry.live();
    let rss_growth = rss_bytes().saturating_sub(rss0);
    let t1 = Instant::now();
    release.store(1, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    let destroy = t1.elapsed();
    Ok(StressReport {
        coroutines: n,
        source: cfg.source,
        create_and_call,
        destroy,
        calls: calls.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        peak_envs,
        rss_growth,
        live_after: registry.live(),
    })
}
