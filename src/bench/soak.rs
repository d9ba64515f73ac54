//! `wamr-coro bench --soak DURATION`: keep one server busy for a long time
//! with healthy and hostile clients at once, and prove that it loses
//! nothing and leaks nothing.
//!
//! For each selected mode the soak starts `serve` as a child process
//! ([`child`](super::child)) on its own guest, [`SOAK_GUEST`]
//! (`guests/soak.wat`: an echo that traps, spins, passes bad pointers or
//! grows its memory when a message's first byte asks it to), with short
//! limits so that every defence fires often: a 200 ms call budget, a 5 s
//! idle timeout with a 16-byte minimum per window, 16 pages per env. Then,
//! from threads of this process:
//!
//! * **healthy clients** (1 − `hostile_share` of `conns`) open a
//!   connection, echo 5–100 messages of 1–4096 random lowercase bytes,
//!   check every byte that comes back, close and start again;
//! * **hostile clients** pick, again and again, one of: trap, spin, an
//!   out-of-bounds pointer (bad `send` source, another connection's id, a
//!   bad `log` pointer, close-then-send, a 2 KiB send), memory growth, an
//!   abrupt disconnect (RST) in the middle of a message, a slow reader (4 MiB
//!   sent, nothing read) and a trickling sender (a byte every 500 ms).
//!
//! Once a second a sampler reads the server's resident memory
//! (`/proc/PID/status` `VmRSS`), its open descriptors (`/proc/PID/fd`) and
//! scrapes its `/metrics` (live envs, idle pool envs, open connections,
//! queue depth per shard, guest memory).
//!
//! The run **fails** ([`verdict`]) if a healthy byte came back wrong or not at
//! all (a healthy connection closed by the server mid-request counts as
//! lost in direct mode; in queue mode a fault closes its shard's
//! connections by design, so such cuts are allowed only when the server
//! counted shard restarts), if the mean RSS of the last window of the load
//! differs from that of the first window after warm-up by more than
//! `max_rss_drift`, if descriptors or envs in use (live − idle in the pool)
//! are not back at their idle level once the clients are gone, or if the
//! server does not exit cleanly. It prints a summary table, writes the
//! samples as JSON (`--json`) and plots RSS, descriptors and envs over time
//! as SVG (`--plot`).
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::child::Server;
use super::Target;
use crate::error::{Error, Result};

/// The soak's guest (`guests/soak.wat`), used unless a module is given.
pub const SOAK_GUEST: &str = include_str!("../../guests/soak.wat");

/// The server's limits during a soak (also in the report).
pub const SERVER_ARGS: &[&str] = &[
    "--call-budget-ms",
    "200",
    "--idle-timeout-ms",
    "5000",
    "--min-recv-bytes",
    "16",
    "--max-memory-pages",
    "16",
    "--quiet-wamr",
];

/// How long a healthy client waits for an answer before it counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What to soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The guest; None: [`SOAK_GUEST`]. Another module must understand the
    /// same first-byte commands.
    pub module: Option<PathBuf>,
    /// Modes, soaked one after the other.
    pub targets: Vec<Target>,
    /// Load time per mode.
    pub duration: Duration,
    /// Warm-up excluded from the RSS drift (None: a tenth of the
    /// duration, between 1 s and 60 s).
    pub warmup: Option<Duration>,
    /// Client connections at once, healthy and hostile.
    pub conns: usize,
    /// Share of `conns` that are hostile (0..=1).
    pub hostile_share: f64,
    /// Largest RSS drift allowed after warm-up, as a fraction (0.05 = ±5 %).
    pub max_rss_drift: f64,
    /// Write an SVG plot here (with several modes, `-MODE` is added to the
    /// file name).
    pub plot: Option<PathBuf>,
    /// `may` workers of the server.
    pub server_workers: usize,
    /// Seed of the clients' random choices.
    pub seed: u64,
    /// Run the server under this program and its arguments (e.g.
    /// valgrind; empty: directly). Its exit status decides
    /// [`SoakRun::server_exit_clean`].
    pub server_wrapper: Vec<String>,
    /// The servers' `--engine` (`auto`, `aot` or `interp`).
    pub engine: String,
    /// Show the server's stderr.
    pub verbose: bool,
}

/// One look at the server, once a second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Exec envs alive (`wamr_coro_envs_live`).
    pub envs_live: u64,
    /// Of them, idle in the pool (`wamr_coro_pool_idle`).
    pub pool_idle: u64,
    /// Open connections.
    pub open: u64,
    /// Events waiting, all queue shards together.
    pub queue_depth: u64,
    /// Linear memory charged to the guest-memory budget, bytes.
    pub guest_memory_bytes: u64,
}

impl Sample {
    /// Envs doing something: alive and not idle in the pool.
    pub fn envs_in_use(&self) -> u64 {
        self.envs_live.saturating_sub(self.pool_idle)
    }
}

/// What the healthy clients saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthyTotals {
    /// Messages echoed completely and exactly.
    pub requests: u64,
    /// Their bytes.
    pub bytes_ok: u64,
    /// Bytes that came back different from what was sent.
    pub wrong_bytes: u64,
    /// Requests whose connection the server closed before the whole answer.
    pub cuts: u64,
    /// Bytes of those answers that never came.
    pub cut_bytes: u64,
    /// Requests with no complete answer within 10 s.
    pub timeouts: u64,
    /// Bytes of those answers that never came.
    pub timeout_bytes: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connection attempts that failed.
    pub connect_errors: u64,
}

/// What the hostile clients did, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostileTotals {
    /// Traps asked for.
    pub trap: u64,
    /// Spins asked for.
    pub spin: u64,
    /// Out-of-bounds pointers and other bad arguments.
    pub bad_pointer: u64,
    /// Memory-growth sessions.
    pub grow: u64,
    /// Connections reset in the middle of a message.
    pub disconnect: u64,
    /// Connections that sent 4 MiB and read nothing.
    pub slow_reader: u64,
    /// Connections trickling a byte every 500 ms.
    pub trickle: u64,
    /// Connection attempts that failed.
    pub connect_errors: u64,
}

/// The server at rest: before the load (after a warm-up round of every
/// kind of client) and after it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Idle {
    /// Open descriptors.
    pub fds: u64,
    /// Envs alive and not idle in the pool.
    pub envs_in_use: u64,
    /// Envs alive.
    pub envs_live: u64,
    /// Open connections.
    pub open: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
}

/// One mode's soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    /// `direct` or `queue`.
    pub mode: String,
    /// Load time, s.
    pub duration_s: f64,
    /// Warm-up, s.
    pub warmup_s: f64,
    /// Healthy client threads.
    pub healthy_clients: usize,
    /// Hostile client threads.
    pub hostile_clients: usize,
    /// The server's command line.
    pub server_args: Vec<String>,
    /// Healthy clients' figures.
    pub healthy: HealthyTotals,
    /// Hostile clients' figures.
    pub hostile: HostileTotals,
    /// At rest before the load.
    pub idle_before: Idle,
    /// At rest after the load.
    pub idle_after: Idle,
    /// Mean RSS of the first window after warm-up, KiB.
    pub rss_ref_kib: f64,
    /// Mean RSS of the last window of the load, KiB.
    pub rss_end_kib: f64,
    /// Samples per window.
    pub rss_window: usize,
    /// (end − ref) / ref.
    pub rss_drift: f64,
    /// Smallest RSS after warm-up, KiB.
    pub rss_min_kib: u64,
    /// Largest RSS after warm-up, KiB.
    pub rss_max_kib: u64,
    /// Peaks during the load.
    pub peak_fds: u64,
    /// Most envs alive at once.
    pub peak_envs_live: u64,
    /// Most connections open at once.
    pub peak_open: u64,
    /// Most events waiting at once (all shards).
    pub peak_queue_depth: u64,
    /// The server's counters at the end (from `/metrics`).
    pub server_counters: BTreeMap<String, f64>,
    /// Whether the server exited cleanly when stopped.
    pub server_exit_clean: bool,
    /// Every sample, load and return to idle.
    pub samples: Vec<Sample>,
    /// Seconds at which the load ended.
    pub load_end_s: f64,
    /// Why the run failed (empty: it passed).
    pub failures: Vec<String>,
    /// Remarks that are not failures.
    pub notes: Vec<String>,
}

/// Runs the soak for every mode in `cfg`, prints each mode's summary,
/// writes the plot, and returns the runs (a run with failures is not an
/// error here: see [`SoakRun::failures`]).
pub fn run(cfg: &SoakConfig) -> Result<Vec<SoakRun>> {
    crate::server::raise_fd_limit().map_err(|e| Error::io("raising RLIMIT_NOFILE", e))?;
    if !(0.0..=1.0).contains(&cfg.hostile_share) {
        return Err(Error::Config(format!("--hostile-share must be within 0..1, not {}", cfg.hostile_share)));
    }
    let targets: Vec<Target> = cfg.targets.iter().copied().filter(|t| *t != Target::Native).collect();
    if targets.is_empty() || cfg.conns == 0 {
        return Err(Error::Config("the soak needs --mode direct, queue or all and --conns > 0".into()));
    }
    // The guest, as a file `serve` can load.
    let scratch = std::env::temp_dir().join(format!("wamr-coro-soak-{}", std::process::id()));
    let module = match &cfg.module {
        Some(m) => m.clone(),
        None => {
            std::fs::create_dir_all(&scratch).map_err(|e| Error::io("creating a scratch directory", e))?;
            let p = scratch.join("soak.wat");
            std::fs::write(&p, SOAK_GUEST).map_err(|e| Error::io("writing the soak guest", e))?;
            p
        }
    };
    let mut runs = Vec::new();
    for &t in &targets {
        let run = soak_one(cfg, t, &module);
        match run {
            Ok(r) => {
                print!("{}", r.table());
                if let Some(p) = &cfg.plot {
                    let path = if targets.len() > 1 { with_suffix(p, t.name()) } else { p.clone() };
                    plot(&r, &path)?;
                    println!("  plot      {}", path.display());
                }
                runs.push(r);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(runs)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "soak".into());
    let name = match p.extension() {
        Some(ext) => format!("{stem}-{suffix}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{suffix}"),
    };
    p.with_file_name(name)
}

/// A free loopback port for the metrics endpoint (bound, then let go).
fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| Error::io("finding a free port", e))?;
    l.local_addr().map_err(|e| Error::io("finding a free port", e))
}

fn soak_one(cfg: &SoakConfig, target: Target, module: &Path) -> Result<SoakRun> {
    let metrics_addr = free_port()?;
    let mut args: Vec<String> = vec!["serve".into(), module.display().to_string()];
    args.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--mode",
            target.name(),
            "--workers",
            &cfg.server_workers.to_string(),
            "--metrics-listen",
            &metrics_addr.to_string(),
            "--control-stdin",
        ]
        .map(String::from),
    );
    args.extend(SERVER_ARGS.iter().map(|s| s.to_string()));
    args.extend(["--engine".to_string(), cfg.engine.clone()]);
    let server = Server::start_wrapped(format!("{} server", target.name()), &cfg.server_wrapper, &args, cfg.verbose)?;
    let pid = server.child.pid();
    let addr = server.addr;

    // One client of every kind, one after the other, so that whatever the
    // server makes lazily exists before the idle level is taken.
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let healthy_tot = Arc::new(Counters::default());
    let hostile_tot = Arc::new(Counters::default());
    let prewarm_end = Instant::now() + Duration::from_secs(20);
    healthy_connection(addr, &mut rng, prewarm_end, 5, &healthy_tot);
    for kind in [Hostile::Trap, Hostile::Spin, Hostile::BadPointer, Hostile::Grow, Hostile::Disconnect] {
        hostile_action(kind, addr, &mut rng, prewarm_end, &hostile_tot);
    }
    let idle_before = wait_idle(pid, metrics_addr, None, Duration::from_secs(15))?;

    let n_hostile =
        if cfg.hostile_share > 0.0 { ((cfg.conns as f64 * cfg.hostile_share).round() as usize).max(1) } else { 0 };
    let n_hostile = n_hostile.min(cfg.conns);
    let n_healthy = cfg.conns - n_hostile;
    let warmup =
        cfg.warmup.unwrap_or_else(|| (cfg.duration / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)));

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let t0 = Instant::now();
    let end = t0 + cfg.duration;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop_sampling));
        std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Acquire) {
                    if let Ok(mut s) = sample(pid, metrics_addr) {
                        s.t_s = t0.elapsed().as_secs_f64();
                        samples.lock().expect("sampler lock").push(s);
                    }
                    next += Duration::from_secs(1);
                    while Instant::now() < next && !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| Error::io("starting the sampler", e))?
    };
    let mut clients = Vec::new();
    for i in 0..cfg.conns {
        let seed = cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1);
        let hostile = i < n_hostile;
        let tot = Arc::clone(if hostile { &hostile_tot } else { &healthy_tot });
        let h = std::thread::Builder::new()
            .name(if hostile { "soak-hostile".into() } else { "soak-healthy".into() })
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                if hostile {
                    hostile_client(addr, &mut rng, end, &tot)
                } else {
                    healthy_client(addr, &mut rng, end, &tot)
                }
            })
            .map_err(|e| Error::io("starting a client thread", e))?;
        clients.push(h);
    }
    let pb = super::bar(cfg.duration.as_secs().max(1), format!("soak {}", target.name()));
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1000).min(end.saturating_duration_since(Instant::now())));
        pb.set_position(t0.elapsed().as_secs());
        let last = samples.lock().expect("sampler lock").last().copied().unwrap_or_default();
        let h = healthy_tot.snapshot_healthy();
        pb.set_message(format!(
            "{} ok, {} wrong, {} cut, RSS {:.1} MiB, {} fds, {} envs",
            h.requests,
            h.wrong_bytes,
            h.cuts,
            last.rss_kib as f64 / 1024.0,
            last.fds,
            last.envs_live
        ));
    }
    for c in clients {
        let _ = c.join();
    }
    let load_end_s = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    // Back to rest: every connection closed, envs released, descriptors
    // returned. The sampler keeps running, so the plot shows the return.
    let idle_after = wait_idle(pid, metrics_addr, Some(idle_before), Duration::from_secs(30))?;
    let counters = scrape(metrics_addr).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(1100));
    stop_sampling.store(true, Ordering::Release);
    let _ = sampler.join();
    let server_exit_clean = server.stop_within(if cfg.server_wrapper.is_empty() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(180)
    });
    let samples = std::mem::take(&mut *samples.lock().expect("sampler lock"));

    // The warm-up round's figures count too: its bytes were checked alike.
    let healthy = healthy_tot.snapshot_healthy();
    let hostile = hostile_tot.snapshot_hostile();
    let server_counters: BTreeMap<String, f64> = counters
        .into_iter()
        .filter(|(k, _)| k.ends_with("_total") && !k.contains("guest_call_seconds"))
        .map(|(k, v)| (k.trim_start_matches("wamr_coro_").trim_end_matches("_total").to_string(), v))
        .collect();
    let mut run = SoakRun {
        mode: target.name().into(),
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        healthy_clients: n_healthy,
        hostile_clients: n_hostile,
        server_args: args,
        healthy,
        hostile,
        idle_before,
        idle_after,
        rss_ref_kib: 0.0,
        rss_end_kib: 0.0,
        rss_window: 0,
        rss_drift: 0.0,
        rss_min_kib: 0,
        rss_max_kib: 0,
        peak_fds: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        peak_envs_live: samples.iter().map(|s| s.envs_live).max().unwrap_or(0),
        peak_open: samples.iter().map(|s| s.open).max().unwrap_or(0),
        peak_queue_depth: samples.iter().map(|s| s.queue_depth).max().unwrap_or(0),
        server_counters,
        server_exit_clean,
        samples,
        load_end_s,
        failures: Vec::new(),
        notes: Vec::new(),
    };
    run.measure_rss();
    let (failures, notes) = verdict(&run, cfg.max_rss_drift);
    run.failures = failures;
    run.notes = notes;
    Ok(run)
}

impl SoakRun {
    /// Fills in the RSS figures from the samples taken after warm-up and
    /// before the load ended.
    pub fn measure_rss(&mut self) {
        let steady: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.t_s >= self.warmup_s && s.t_s <= self.load_end_s)
            .map(|s| s.rss_kib)
            .collect();
        if steady.is_empty() {
            return;
        }
        // Windows of up to 30 samples, at most a quarter of the steady part
        // each: a window's mean smooths the envs that come and go.
        let w = (steady.len() / 4).clamp(1, 30);
        let mean = |xs: &[u64]| xs.iter().sum::<u64>() as f64 / xs.len() as f64;
        self.rss_window = w;
        self.rss_ref_kib = mean(&steady[..w]);
        self.rss_end_kib = mean(&steady[steady.len() - w..]);
        self.rss_drift =
            if self.rss_ref_kib > 0.0 { (self.rss_end_kib - self.rss_ref_kib) / self.rss_ref_kib } else { 0.0 };
        self.rss_min_kib = steady.iter().copied().min().unwrap_or(0);
        self.rss_max_kib = steady.iter().copied().max().unwrap_or(0);
    }

    /// Whether nothing failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The summary, as lines of text.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let c = |k: &str| self.server_counters.get(k).copied().unwrap_or(0.0) as u64;
        let mib = |kib: f64| kib / 1024.0;
        let h = &self.healthy;
        let x = &self.hostile;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "soak {}: {:.0} s, {} clients ({} healthy, {} hostile), warm-up {:.0} s",
            self.mode,
            self.duration_s,
            self.healthy_clients + self.hostile_clients,
            self.healthy_clients,
            self.hostile_clients,
            self.warmup_s
        );
        let _ = writeln!(
            t,
            "  healthy   {} messages, {} bytes echoed exactly over {} connections; wrong bytes {}; lost: {} bytes ({} cut by the server, {} timed out)",
            h.requests,
            h.bytes_ok,
            h.connections,
            h.wrong_bytes,
            h.cut_bytes + h.timeout_bytes,
            h.cuts,
            h.timeouts
        );
        let _ = writeln!(
            t,
            "  hostile   trap {}, spin {}, bad pointer {}, grow {}, disconnect {}, slow reader {}, trickle {}",
            x.trap, x.spin, x.bad_pointer, x.grow, x.disconnect, x.slow_reader, x.trickle
        );
        let _ = writeln!(
            t,
            "  server    accepted {}, refused {}, traps {}, budget overruns {}, bad pointers {}, slow closes {}, idle closes {}, output-limit hits {}, queue restarts {}, grows over cap {}",
            c("connections_accepted"),
            c("connections_refused"),
            c("traps"),
            c("budget_overruns"),
            c("bad_pointers"),
            c("slow_closes"),
            c("idle_closes"),
            c("output_limit_hits"),
            c("queue_restarts"),
            c("guest_memory_over_cap_grows"),
        );
        let _ = writeln!(
            t,
            "  RSS       idle {:.1} MiB; after warm-up {:.1} MiB, end {:.1} MiB (means of {} samples): drift {:+.2} %; range {:.1}–{:.1} MiB; idle after {:.1} MiB",
            mib(self.idle_before.rss_kib as f64),
            mib(self.rss_ref_kib),
            mib(self.rss_end_kib),
            self.rss_window,
            self.rss_drift * 100.0,
            mib(self.rss_min_kib as f64),
            mib(self.rss_max_kib as f64),
            mib(self.idle_after.rss_kib as f64),
        );
        let _ = writeln!(
            t,
            "  fds       idle {}, peak {}, after {}",
            self.idle_before.fds, self.peak_fds, self.idle_after.fds
        );
        let _ = writeln!(
            t,
            "  envs      in use idle {}, after {}; live idle {}, peak {}, after {}; connections open after {}",
            self.idle_before.envs_in_use,
            self.idle_after.envs_in_use,
            self.idle_before.envs_live,
            self.peak_envs_live,
            self.idle_after.envs_live,
            self.idle_after.open
        );
        let _ = writeln!(t, "  queue     peak depth {} (all shards)", self.peak_queue_depth);
        for n in &self.notes {
            let _ = writeln!(t, "  note      {n}");
        }
        if self.failures.is_empty() {
            let _ = writeln!(t, "  verdict   PASS");
        } else {
            for f in &self.failures {
                let _ = writeln!(t, "  FAIL      {f}");
            }
        }
        t
    }
}

/// Why `run` fails, and remarks that are not failures.
pub fn verdict(run: &SoakRun, max_rss_drift: f64) -> (Vec<String>, Vec<String>) {
    let mut fail = Vec::new();
    let mut notes = Vec::new();
    let h = &run.healthy;
    if h.requests == 0 {
        fail.push("no healthy message was echoed".into());
    }
    if h.wrong_bytes > 0 {
        fail.push(format!("{} healthy bytes came back wrong", h.wrong_bytes));
    }
    if h.timeouts > 0 {
        fail.push(format!(
            "{} healthy messages ({} bytes) got no complete answer within {} s",
            h.timeouts,
            h.timeout_bytes,
            ANSWER_TIMEOUT.as_secs()
        ));
    }
    if h.cuts > 0 {
        let restarts = run.server_counters.get("queue_restarts").copied().unwrap_or(0.0);
        if run.mode == "queue" && restarts > 0.0 {
            notes.push(format!(
                "{} healthy connections ({} bytes unanswered) were closed by the {} shard restarts hostile clients caused (queue mode closes a faulted shard's connections by design)",
                h.cuts, h.cut_bytes, restarts
            ));
        } else {
            fail.push(format!(
                "the server closed {} healthy connections mid-request ({} bytes lost)",
                h.cuts, h.cut_bytes
            ));
        }
    }
    if run.rss_window == 0 {
        fail.push("no RSS sample after warm-up: the soak is too short to measure drift".into());
    } else if run.rss_drift.abs() > max_rss_drift {
        fail.push(format!(
            "RSS drifted {:+.2} % after warm-up ({:.0} → {:.0} KiB), more than ±{:.1} %",
            run.rss_drift * 100.0,
            run.rss_ref_kib,
            run.rss_end_kib,
            max_rss_drift * 100.0
        ));
    }
    let (b, a) = (&run.idle_before, &run.idle_after);
    if a.open != 0 {
        fail.push(format!("{} connections still open after the clients left", a.open));
    }
    if a.fds != b.fds {
        fail.push(format!("{} descriptors open at rest after the load, {} before", a.fds, b.fds));
    }
    if a.envs_in_use > b.envs_in_use {
        fail.push(format!("{} envs in use at rest after the load, {} before", a.envs_in_use, b.envs_in_use));
    } else if a.envs_in_use < b.envs_in_use {
        notes.push(format!("{} envs in use at rest after the load, {} before", a.envs_in_use, b.envs_in_use));
    }
    if !run.server_exit_clean {
        fail.push("the server did not exit cleanly when stopped".into());
    }
    (fail, notes)
}

/// Samples the server: `/proc` and `/metrics`.
fn sample(pid: u32, metrics: SocketAddr) -> Result<Sample> {
    let p = super::sys::sample(pid).map_err(|e| Error::io("reading the server's /proc", e))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| Error::io("reading the server's fds", e))?
        .count() as u64;
    let m = scrape(metrics)?;
    let g = |k: &str| m.get(k).copied().unwrap_or(0.0).max(0.0) as u64;
    Ok(Sample {
        t_s: 0.0,
        rss_kib: p.rss_kib,
        fds,
        envs_live: g("wamr_coro_envs_live"),
        pool_idle: g("wamr_coro_pool_idle"),
        open: g("wamr_coro_connections_open"),
        queue_depth: g("wamr_coro_queue_depth"),
        guest_memory_bytes: g("wamr_coro_guest_memory_bytes"),
    })
}

/// Scrapes `/metrics`: every sample by name, labelled ones summed.
pub fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let io = |e| Error::io(format!("scraping {addr}/metrics"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n").map_err(io)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(io)?;
    Ok(parse_metrics(&text))
}

/// Prometheus text to name → value (labelled samples of one name summed).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(text);
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let base = name.split('{').next().unwrap_or(name).to_string();
        *out.entry(base).or_insert(0.0) += v;
    }
    out
}

/// Waits until the server is at rest (no connection open; if `like` is
/// given, its descriptors and envs in use back at that level) or `timeout`
/// passes, and returns what it is at then.
fn wait_idle(pid: u32, metrics: SocketAddr, like: Option<Idle>, timeout: Duration) -> Result<Idle> {
    let deadline = Instant::now() + timeout;
    let mut stable_since: Option<(Instant, Idle)> = None;
    loop {
        // A slow scrape (a server under valgrind translates the metrics
        // code on its first run, for seconds) is retried until the deadline.
        let s = match sample(pid, metrics) {
            Ok(s) => s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "scrape failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => return Err(e),
        };
        let now =
            Idle { fds: s.fds, envs_in_use: s.envs_in_use(), envs_live: s.envs_live, open: s.open, rss_kib: s.rss_kib };
        let at_rest = match like {
            Some(b) => now.open == 0 && now.fds == b.fds && now.envs_in_use <= b.envs_in_use,
            // Before the load: no connection, and the same figures for a
            // second (a faulted queue shard's standby is made meanwhile).
            None => {
                now.open == 0
                    && matches!(stable_since, Some((since, i)) if i.fds == now.fds && i.envs_live == now.envs_live
                        && since.elapsed() >= Duration::from_secs(1))
            }
        };
        if at_rest || Instant::now() >= deadline {
            return Ok(now);
        }
        match stable_since {
            Some((_, i)) if i.fds == now.fds && i.envs_live == now.envs_live => {}
            _ => stable_since = Some((Instant::now(), now)),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shared counters of one kind of client.
#[derive(Default)]
struct Counters {
    v: [AtomicU64; 10],
}

// Healthy counters.
const REQUESTS: usize = 0;
const BYTES_OK: usize = 1;
const WRONG: usize = 2;
const CUTS: usize = 3;
const CUT_BYTES: usize = 4;
const TIMEOUTS: usize = 5;
const TIMEOUT_BYTES: usize = 6;
const CONNECTIONS: usize = 7;
const CONNECT_ERRORS: usize = 8;

impl Counters {
    fn add(&self, i: usize, n: u64) {
        self.v[i].fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.v[i].load(Ordering::Relaxed)
    }
    fn snapshot_healthy(&self) -> HealthyTotals {
        HealthyTotals {
            requests: self.get(REQUESTS),
            bytes_ok: self.get(BYTES_OK),
            wrong_bytes: self.get(WRONG),
            cuts: self.get(CUTS),
            cut_bytes: self.get(CUT_BYTES),
            timeouts: self.get(TIMEOUTS),
            timeout_bytes: self.get(TIMEOUT_BYTES),
            connections: self.get(CONNECTIONS),
            connect_errors: self.get(CONNECT_ERRORS),
        }
    }
    fn snapshot_hostile(&self) -> HostileTotals {
        let k = |h: Hostile| self.get(h as usize);
        HostileTotals {
            trap: k(Hostile::Trap),
            spin: k(Hostile::Spin),
            bad_pointer: k(Hostile::BadPointer),
            grow: k(Hostile::Grow),
            disconnect: k(Hostile::Disconnect),
            slow_reader: k(Hostile::SlowReader),
            trickle: k(Hostile::Trickle),
            connect_errors: self.get(CONNECT_ERRORS),
        }
    }
}

fn connect(addr: SocketAddr, tot: &Counters) -> Option<TcpStream> {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
            let _ = s.set_write_timeout(Some(ANSWER_TIMEOUT));
            Some(s)
        }
        Err(_) => {
            tot.add(CONNECT_ERRORS, 1);
            std::thread::sleep(Duration::from_millis(50));
            None
        }
    }
}

/// `n` random lowercase bytes: never a command byte of the soak guest.
fn healthy_message(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| b'a' + rng.gen_range(0..26u8)).collect()
}

fn healthy_client(addr: SocketAddr, rng: &mut StdRng, end: Instant, tot: &Counters) {
    while Instant::now() < end {
        let n = rng.gen_range(5..=100);
        healthy_connection(addr, rng, end, n, tot);
    }
}

/// One healthy connection: up to `n` messages echoed and checked.
fn healthy_connection(addr: SocketAddr, rng: &mut StdRng, end: Instant, n: usize, tot: &Counters) {
    let Some(mut s) = connect(addr, tot) else { return };
    tot.add(CONNECTIONS, 1);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        if Instant::now() >= end {
            break;
        }
        let len = rng.gen_range(1..=4096);
        let msg = healthy_message(rng, len);
        if s.write_all(&msg).is_err() {
            tot.add(CUTS, 1);
            tot.add(CUT_BYTES, len as u64);
            return;
        }
        let mut got = 0;
        let mut broken = None;
        while got < len {
            match s.read(&mut buf[got..len]) {
                Ok(0) => {
                    broken = Some(CUTS);
                    break;
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    broken = Some(TIMEOUTS);
                    break;
                }
                Err(_) => {
                    broken = Some(CUTS);
                    break;
                }
            }
        }
        let wrong = buf[..got].iter().zip(&msg[..got]).filter(|(a, b)| a != b).count() as u64;
        tot.add(WRONG, wrong);
        match broken {
            Some(kind) => {
                tot.add(kind, 1);
                tot.add(if kind == CUTS { CUT_BYTES } else { TIMEOUT_BYTES }, (len - got) as u64);
                return;
            }
            None if wrong == 0 => {
                tot.add(REQUESTS, 1);
                tot.add(BYTES_OK, len as u64);
            }
            None => {}
        }
        let think = rng.gen_range(0..10);
        if think > 0 {
            std::thread::sleep(Duration::from_millis(think));
        }
    }
}

/// What a hostile client does (its index is its counter's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    Trap = 0,
    Spin = 1,
    BadPointer = 2,
    Grow = 3,
    Disconnect = 4,
    SlowReader = 5,
    Trickle = 6,
}

const HOSTILE: [Hostile; 7] = [
    Hostile::Trap,
    Hostile::Spin,
    Hostile::BadPointer,
    Hostile::Grow,
    Hostile::Disconnect,
    Hostile::SlowReader,
    Hostile::Trickle,
];

fn hostile_client(addr: SocketAddr, rng: &mut StdRng, end: Instant, tot: &Counters) {
    while Instant::now() < end {
        let kind = HOSTILE[rng.gen_range(0..HOSTILE.len())];
        hostile_action(kind, addr, rng, end, tot);
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
    }
}

/// Reads until the server closes, `limit` passes, or an error.
fn drain_until_closed(s: &mut TcpStream, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut b = [0u8; 4096];
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

fn hostile_action(kind: Hostile, addr: SocketAddr, rng: &mut StdRng, end: Instant, tot: &Counters) {
    let Some(mut s) = connect(addr, tot) else { return };
    tot.add(kind as usize, 1);
    match kind {
        Hostile::Trap => {
            let _ = s.write_all(b"T trap");
            drain_until_closed(&mut s, Duration::from_secs(5));
        }
        Hostile::Spin => {
            let _ = s.write_all(b"S spin");
            drain_until_closed(&mut s, Duration::from_secs(5));
        }
        Hostile::BadPointer => {
            for _ in 0..rng.gen_range(1..=4) {
                let cmd: &[u8] = match rng.gen_range(0..5) {
                    0 => b"B",
                    1 => b"O",
                    2 => b"L bad log pointer",
                    3 => b"X",
                    _ => b"C close, then send",
                };
                if s.write_all(cmd).is_err() {
                    break;
                }
                // B, O: a 4-byte result; X: 2048 bytes and a result; L: the
                // echo; C: the close. Whatever arrives within 300 ms is read.
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                let mut b = [0u8; 4096];
                let mut closed = false;
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(300) {
                    match s.read(&mut b) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    break;
                }
            }
        }
        Hostile::Grow => {
            for _ in 0..rng.gen_range(1..=16) {
                if s.write_all(b"G").is_err() {
                    break;
                }
                let mut r = [0u8; 4];
                if s.read_exact(&mut r).is_err() {
                    break;
                }
            }
        }
        Hostile::Disconnect => {
            let msg = healthy_message(rng, 8192);
            let cut = rng.gen_range(1..msg.len());
            let _ = s.write_all(&msg[..cut]);
            // Give the server a moment to be in the middle of it, then reset.
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..20)));
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        Hostile::SlowReader => {
            let chunk = healthy_message(rng, 64 * 1024);
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            for _ in 0..64 {
                if Instant::now() >= end || s.write_all(&chunk).is_err() {
                    break;
                }
            }
            // Hold the connection a while without reading.
            let hold = Instant::now() + Duration::from_secs(2);
            while Instant::now() < hold.min(end) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Hostile::Trickle => {
            // A byte every 500 ms: 10 per 5 s idle window, under the
            // server's 16-byte floor, so it closes the connection.
            let limit = Instant::now() + Duration::from_secs(8);
            while Instant::now() < limit.min(end) {
                if s.write_all(b"t").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Plots RSS, descriptors, and envs and connections over time as SVG.
pub fn plot(run: &SoakRun, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| Error::Bench(format!("plotting {}: {e}", path.display()));
    let s = &run.samples;
    let t_max = s.last().map(|x| x.t_s).unwrap_or(1.0).max(1.0);
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "wamr-coro soak, {} mode: {:.0} s, {} healthy + {} hostile clients; RSS drift {:+.2} % after {:.0} s warm-up; {}",
        run.mode,
        run.duration_s,
        run.healthy_clients,
        run.hostile_clients,
        run.rss_drift * 100.0,
        run.warmup_s,
        if run.passed() { "PASS" } else { "FAIL" }
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));
    type Series<'a> = (&'a str, RGBColor, Box<dyn Fn(&Sample) -> f64>);
    let groups: [(&str, Vec<Series>); 3] = [
        ("resident memory (MiB)", vec![("VmRSS", RED, Box::new(|x: &Sample| x.rss_kib as f64 / 1024.0))]),
        ("open file descriptors", vec![("fds", BLUE, Box::new(|x: &Sample| x.fds as f64))]),
        (
            "envs and connections",
            vec![
                ("envs live", GREEN, Box::new(|x: &Sample| x.envs_live as f64)),
                ("envs in use", MAGENTA, Box::new(|x: &Sample| x.envs_in_use() as f64)),
                ("connections open", BLACK, Box::new(|x: &Sample| x.open as f64)),
                ("queue depth", CYAN, Box::new(|x: &Sample| x.queue_depth as f64)),
            ],
        ),
    ];
    for (area, (caption, series)) in panels.iter().zip(groups) {
        let y_max = series.iter().flat_map(|(_, _, f)| s.iter().map(f)).fold(1.0f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc("seconds").draw().map_err(|e| err(&e))?;
        for (name, color, f) in series {
            chart
                .draw_series(LineSeries::new(s.iter().map(|x| (x.t_s, f(x))), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        // Where the warm-up and the load end.
        for (t, c) in [(run.warmup_s, RGBColor(150, 150, 150)), (run.load_end_s, RGBColor(90, 90, 90))] {
            chart.draw_series(LineSeries::new([(t, 0.0), (t, y_max)], c)).map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// What `bench --soak` does: runs, writes `json`, and fails if a run did.
pub fn run_cli(cfg: &SoakConfig, json: Option<&Path>) -> Result<()> {
    let runs = run(cfg)?;
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(&runs).expect("serialisable");
        std::fs::write(p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    let failed: Vec<String> =
        runs.iter().flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.mode))).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Bench(format!("the soak failed: {}", failed.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> SoakRun {
        let samples = (0..100)
            .map(|i| Sample {
                t_s: i as f64,
                rss_kib: 10_000 + (i % 3) * 10,
                fds: 20,
                envs_live: 5,
                pool_idle: 4,
                ..Sample::default()
            })
            .collect();
        let idle = Idle { fds: 12, envs_in_use: 1, envs_live: 2, open: 0, rss_kib: 9000 };
        let mut r = SoakRun {
            mode: "direct".into(),
            duration_s: 100.0,
            warmup_s: 10.0,
            healthy_clients: 9,
            hostile_clients: 1,
            server_args: Vec::new(),
            healthy: HealthyTotals { requests: 1000, bytes_ok: 1 << 20, ..HealthyTotals::default() },
            hostile: HostileTotals::default(),
            idle_before: idle,
            idle_after: idle,
            rss_ref_kib: 0.0,
            rss_end_kib: 0.0,
            rss_window: 0,
            rss_drift: 0.0,
            rss_min_kib: 0,
            rss_max_kib: 0,
            peak_fds: 20,
            peak_envs_live: 5,
            peak_open: 10,
            peak_queue_depth: 0,
            server_counters: BTreeMap::new(),
            server_exit_clean: true,
            samples,
            load_end_s: 99.0,
            failures: Vec::new(),
            notes: Vec::new(),
        };
        r.measure_rss();
        r
    }

    #[test]
    fn a_clean_run_passes() {
        let r = passing();
        assert!(r.rss_drift.abs() < 0.01, "{}", r.rss_drift);
        assert_eq!(verdict(&r, 0.05).0, Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_failure_is_caught() {
        let mut r = passing();
        r.healthy.wrong_bytes = 1;
        assert!(verdict(&r, 0.05).0[0].contains("came back wrong"));
        let mut r = passing();
        r.healthy.cuts = 1;
        assert!(verdict(&r, 0.05).0[0].contains("mid-request"));
        // In queue mode a cut is allowed only with a shard restart.
        r.mode = "queue".into();
        assert_eq!(verdict(&r, 0.05).0.len(), 1);
        r.server_counters.insert("queue_restarts".into(), 2.0);
        assert!(verdict(&r, 0.05).0.is_empty());
        let mut r = passing();
        r.healthy.timeouts = 1;
        assert_eq!(verdict(&r, 0.05).0.len(), 1);
        let mut r = passing();
        for s in r.samples.iter_mut().filter(|s| s.t_s > 60.0) {
            s.rss_kib = 11_000;
        }
        r.measure_rss();
        assert!(verdict(&r, 0.05).0[0].contains("RSS drifted +9.8"), "{:?}", verdict(&r, 0.05));
        let mut r = passing();
        r.idle_after.fds += 1;
        assert!(verdict(&r, 0.05).0[0].contains("descriptors"));
        let mut r = passing();
        r.idle_after.envs_in_use += 1;
        assert!(verdict(&r, 0.05).0[0].contains("envs in use"));
        let mut r = passing();
        r.server_exit_clean = false;
        assert_eq!(verdict(&r, 0.05).0.len(), 1);
    }

    #[test]
    fn metrics_text_is_summed_per_name() {
        let m = parse_metrics(
            "HTTP/1.1 200 OK\r\n\r\n# HELP x\nwamr_coro_envs_live 7\nwamr_coro_queue_depth{shard=\"0\"} 2\nwamr_coro_queue_depth{shard=\"1\"} 3\n# EOF\n",
        );
        assert_eq!(m["wamr_coro_envs_live"], 7.0);
        assert_eq!(m["wamr_coro_queue_depth"], 5.0);
    }

    #[test]
    fn healthy_messages_never_hold_a_command_byte() {
        let mut rng = StdRng::seed_from_u64(3);
        assert!(healthy_message(&mut rng, 10_000).iter().all(|b| b.is_ascii_lowercase()));
    }
}
