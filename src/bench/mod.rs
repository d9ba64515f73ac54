//! `wamr-coro bench`: one command that answers "how many connections, how
//! fast, how much memory, compared with what".
//!
//! For each selected server — `direct` and `queue` (`wamr-coro serve` on the
//! module) and `native` (a `may` server with no WebAssembly, [`native`]) —
//! the bench starts it as a child process ([`child`]), probes it once to
//! learn the protocol and the exact response ([`protocol`]), then drives it
//! from load-generator processes ([`client`]) on loopback, sampling the
//! server's CPU time and memory from `/proc` ([`sys`]), and asks it for its
//! live envs before stopping it. [`report`] prints the table and the JSON.
//!
//! Two shapes of run:
//! * **closed loop** ([`BenchConfig::hold`] is `None`): `conns` connections,
//!   each with `pipeline` requests in flight, for `duration_s`;
//! * **hold**: N connections opened, answered once, held; spread over as
//!   many server processes (sharing the port with `--reuse-port`) and
//!   client processes (each from its own 127.x source address) as the
//!   file-descriptor, mapping and ephemeral-port limits require ([`plan_hold`]).
pub mod child;
pub mod client;
pub mod control;
pub mod native;
pub mod protocol;
pub mod report;
pub mod soak;
pub mod sys;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use child::Server;
use client::{ClientResult, ClientSpec};
use protocol::Protocol;
use report::{HoldRun, Report, Run};

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// No WebAssembly: the baseline.
    Native,
    /// `serve --mode direct`.
    Direct,
    /// `serve --mode queue`.
    Queue,
}

impl Target {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::Direct => "direct",
            Target::Queue => "queue",
        }
    }
    /// Descriptors a server holds per connection: one in every mode (the
    /// server shuts sockets down, and queue mode writes, through the
    /// connection's own descriptor; see `server/socket.rs`).
    fn fds_per_conn(self) -> u64 {
        1
    }
    /// Memory mappings per connection, rounded up from what hold runs
    /// measure (a coroutine stack and its guard page are two, a linear
    /// memory one more unless the kernel merges it with a neighbouring
    /// mapping: 30,000 held measured 1.9 native, 2.0 direct, 3.6 queue).
    fn maps_per_conn(self) -> u64 {
        match self {
            Target::Native => 2,
            Target::Direct => 3,
            Target::Queue => 4,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The guest (None: the embedded HTTP guest).
    pub module: Option<PathBuf>,
    /// WebAssembly servers to measure (native always runs too).
    pub targets: Vec<Target>,
    /// Protocol, or None to probe.
    pub protocol: Option<Protocol>,
    /// Closed loop: connections.
    pub conns: usize,
    /// Closed loop: seconds per run.
    pub duration_s: f64,
    /// Closed loop: requests in flight per connection.
    pub pipeline: usize,
    /// Hold this many connections instead of a closed loop.
    pub hold: Option<usize>,
    /// `may` workers per server process.
    pub server_workers: usize,
    /// `may` workers of the closed-loop client.
    pub client_workers: usize,
    /// The WebAssembly servers' `--engine` (`auto`, `aot` or `interp`).
    pub engine: String,
    /// Show the servers' and clients' stderr.
    pub verbose: bool,
    /// The command line, for the report.
    pub command: String,
}

/// The longest closed-loop run `--duration` asks for, seconds: a year.
const MAX_DURATION_S: f64 = 365.0 * 86400.0;

/// Runs every selected server, native first in the report, and returns
/// what was measured. Progress goes to stderr.
pub fn run(cfg: &BenchConfig) -> Result<Report> {
    crate::server::raise_fd_limit().map_err(|e| Error::io("raising RLIMIT_NOFILE", e))?;
    let mut order: Vec<Target> = cfg.targets.iter().copied().filter(|t| *t != Target::Native).collect();
    if order.is_empty() {
        return Err(Error::Config("bench needs --mode direct, queue or all".into()));
    }
    // A run of nothing reported a row of zeros (and 10,000 µs of CPU per
    // request) as if it had measured something.
    match cfg.hold {
        Some(0) => return Err(Error::Config("--hold needs at least 1 connection".into())),
        Some(_) => {}
        None if cfg.conns == 0 || cfg.pipeline == 0 => {
            return Err(Error::Config("--conns and --pipeline must be at least 1".into()))
        }
        // At most a year: past what a `Duration` and a deadline can hold
        // (1e300 s) it panicked instead.
        None if !(cfg.duration_s > 0.0 && cfg.duration_s <= MAX_DURATION_S) => {
            return Err(Error::Config(format!(
                "--duration must be a positive number of seconds, at most {MAX_DURATION_S} (a year), not {}",
                cfg.duration_s
            )))
        }
        None => {}
    }
    // WebAssembly first: the module's answer decides the protocol the
    // native server then speaks.
    order.push(Target::Native);
    let mut reference: Option<(Protocol, Vec<u8>)> = None;
    let mut report = Report {
        command: cfg.command.clone(),
        date: report::utc_now(),
        machine: sys::machine(),
        runs: Vec::new(),
        holds: Vec::new(),
    };
    for (i, &target) in order.iter().enumerate() {
        match cfg.hold {
            None => report.runs.push(closed_loop(cfg, target, &mut reference)?),
            Some(n) => report.holds.push(hold(cfg, target, n, i, &mut reference)?),
        }
    }
    if let Some(native) = report.runs.iter().find(|r| r.name == "native").map(|r| r.req_s) {
        for r in &mut report.runs {
            r.ratio_to_native = (native > 0.0).then(|| r.req_s / native);
        }
    }
    // Native ran last; report it first.
    if !report.runs.is_empty() {
        report.runs.rotate_right(1);
    }
    if !report.holds.is_empty() {
        report.holds.rotate_right(1);
    }
    Ok(report)
}

/// Starts `target` listening on `listen`.
fn start_server(
    cfg: &BenchConfig,
    target: Target,
    listen: SocketAddr,
    reuse_port: bool,
    max_conns: u64,
    protocol: Protocol,
) -> Result<Server> {
    let mut args: Vec<String> = Vec::new();
    match target {
        Target::Native => {
            let spec = native::NativeSpec { listen, protocol, workers: cfg.server_workers, reuse_port };
            args.extend(["bench-native".into(), "--spec".into(), serde_json::to_string(&spec).expect("serialisable")]);
        }
        Target::Direct | Target::Queue => {
            args.push("serve".into());
            if let Some(m) = &cfg.module {
                args.push(m.display().to_string());
            }
            args.extend(
                [
                    "--listen",
                    &listen.to_string(),
                    "--mode",
                    target.name(),
                    "--workers",
                    &cfg.server_workers.to_string(),
                    "--max-connections",
                    &max_conns.to_string(),
                    // One load generator from a few source addresses: the
                    // per-address limit (2,500 by default) refused a hold
                    // of 9,000 a quarter of its connections.
                    "--max-connections-per-ip",
                    "0",
                    "--idle-timeout-ms",
                    "3600000",
                    "--quiet-wamr",
                    "--control-stdin",
                ]
                .map(String::from),
            );
            if reuse_port {
                args.push("--reuse-port".into());
            }
            args.extend(["--engine".into(), cfg.engine.clone()]);
        }
    }
    Server::start(format!("{} server", target.name()), &args, cfg.verbose)
}

/// Probes a freshly started server; the first WebAssembly server sets the
/// reference, the others must answer the same, native answers its own.
fn check_protocol(
    cfg: &BenchConfig,
    target: Target,
    addr: SocketAddr,
    reference: &mut Option<(Protocol, Vec<u8>)>,
) -> Result<(Protocol, Vec<u8>)> {
    let want = cfg.protocol.or(reference.as_ref().map(|r| r.0));
    let got = protocol::probe(addr, want)?;
    match (target, reference.as_ref()) {
        (Target::Native, Some((_, module_answer))) if got.1 != *module_answer => {
            eprintln!(
                "note: the native server answers {} bytes where the module answers {}: \
                 the ratio compares different responses",
                got.1.len(),
                module_answer.len()
            );
        }
        (Target::Native, _) => {}
        (_, Some(r)) if *r != got => {
            return Err(Error::Bench(format!("the {} server answers differently from the first one", target.name())))
        }
        (_, None) => *reference = Some(got.clone()),
        _ => {}
    }
    Ok(got)
}

fn bar(len: u64, prefix: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {msg}").expect("valid template").progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn closed_loop(cfg: &BenchConfig, target: Target, reference: &mut Option<(Protocol, Vec<u8>)>) -> Result<Run> {
    let protocol = reference.as_ref().map(|r| r.0).or(cfg.protocol).unwrap_or(Protocol::Http);
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let mut server = start_server(cfg, target, listen, false, cfg.conns as u64 + 64, protocol)?;
    let (protocol, expected) = check_protocol(cfg, target, server.addr, reference)?;
    std::thread::sleep(Duration::from_millis(100));
    let pid = server.child.pid();
    let before = sys::sample(pid).map_err(|e| Error::io("reading the server's /proc", e))?;
    let spec = ClientSpec {
        addr: server.addr,
        conns: cfg.conns,
        protocol,
        expected,
        pipeline: cfg.pipeline.max(1),
        duration_s: cfg.duration_s,
        workers: cfg.client_workers,
        hold: false,
        source_ips: Vec::new(),
        open_threads: 0,
    };
    let mut client = child::Child::spawn(
        "load client",
        &["bench-client".into(), "--spec".into(), serde_json::to_string(&spec).expect("serialisable")],
        cfg.verbose,
    )?;
    let pb = bar((cfg.duration_s * 10.0).ceil() as u64, format!("{} ×{}", target.name(), cfg.conns));
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.duration_s) + Duration::from_secs(120);
    let mut cpu_end = None;
    let result: ClientResult = loop {
        let mut got = None;
        for line in client.pending_lines() {
            if let Some(p) = line.strip_prefix("progress ") {
                let mut it = p.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                let (done, errors) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                pb.inc(1);
                let secs = pb.position() as f64 / 10.0;
                pb.set_message(format!("{:.0} req/s, {errors} errors", done as f64 / secs.max(0.1)));
            } else if let Some(json) = line.strip_prefix("result ") {
                cpu_end = sys::sample(pid).ok();
                got = Some(serde_json::from_str(json).map_err(|e| Error::Bench(format!("load client result: {e}")))?);
            }
        }
        if let Some(r) = got {
            pb.finish_and_clear();
            break r;
        }
        if client.has_exited() && client.pending_lines().is_empty() {
            return Err(Error::Bench("the load client ended without a result (run with --verbose)".into()));
        }
        if Instant::now() > deadline {
            return Err(Error::Bench("the load client did not finish in time".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    client.wait(Duration::from_secs(10));
    let after = cpu_end.unwrap_or_default();
    let live_envs_end = server.stats()?.get("live_envs").and_then(|v| v.as_u64()).unwrap_or(0);
    server.stop();
    let hist = client::decode_histogram(&result.histogram_hex)?;
    let req_s = result.requests as f64 / result.elapsed_s.max(1e-9);
    // CPU time comes in clock ticks (10 ms): keep two decimals.
    let cpu_s = ((after.cpu_s - before.cpu_s).max(0.0) * 100.0).round() / 100.0;
    Ok(Run {
        name: target.name().into(),
        protocol: protocol.to_string(),
        conns: cfg.conns,
        pipeline: cfg.pipeline.max(1),
        duration_s: result.elapsed_s,
        requests: result.requests,
        req_s,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        errors: result.errors,
        wrong_bytes: result.wrong_bytes,
        ratio_to_native: None,
        cpu_s,
        cpu_us_per_req: cpu_s * 1e6 / (result.requests.max(1) as f64),
        base_rss_kib: before.rss_kib,
        peak_rss_kib: after.peak_rss_kib,
        rss_per_conn_kib: after.peak_rss_kib.saturating_sub(before.rss_kib) as f64 / cfg.conns.max(1) as f64,
        live_envs_end,
        server_processes: 1,
        client_processes: 1,
    })
}

/// How a hold run is spread over processes, and why.
#[derive(Debug, Clone)]
pub struct HoldPlan {
    /// Server processes sharing the port.
    pub servers: usize,
    /// Connections one server process may hold.
    pub per_server: u64,
    /// Client processes, each from its own source addresses.
    pub clients: usize,
    /// Connections per source address at most.
    pub per_source: usize,
    /// The limits that decided it, in words.
    pub why: String,
}

/// Spreads `n` held connections to `target` over processes: a server
/// process holds at most what its descriptors (`RLIMIT_NOFILE`) and its
/// memory mappings (`vm.max_map_count`) allow, with 20 % headroom because
/// the kernel spreads connections over `SO_REUSEPORT` sockets by hash, not
/// evenly; a client process at most its descriptors, and a source address
/// a seventh of its ephemeral ports.
pub fn plan_hold(n: usize, target: Target) -> HoldPlan {
    let nofile = crate::server::raise_fd_limit().unwrap_or(1024);
    let max_map = sys::sysctl("vm/max_map_count").unwrap_or(65_530);
    let ports = sys::ephemeral_ports();
    let by_fds = nofile.saturating_sub(256) / target.fds_per_conn();
    let by_maps = max_map.saturating_sub(4096) / target.maps_per_conn();
    let per_server = by_fds.min(by_maps).max(1);
    let servers = (n as u64 * 5).div_ceil(per_server * 4).max(1) as usize;
    let per_client = nofile.saturating_sub(256).max(1);
    let clients = (n as u64).div_ceil(per_client).max(1) as usize;
    // The kernel picks a connection's source port by probing the range
    // for a free 4-tuple: the fuller the range, the longer the search.
    // Keep each source address's share to a seventh of its ports.
    let per_source = (ports / 7).max(1) as usize;
    let why = format!(
        "{servers} server process(es) of ≤ {per_server} connections (RLIMIT_NOFILE {nofile} / {} fds per connection = {by_fds}; \
         vm.max_map_count {max_map} / {} mappings per connection = {by_maps}; 20 % headroom for the kernel's uneven spreading), \
         {clients} client process(es) of ≤ {per_client} (RLIMIT_NOFILE {nofile}), \
         ≤ {per_source} connections per source address (a seventh of its {ports} ephemeral ports)",
        target.fds_per_conn(),
        target.maps_per_conn()
    );
    HoldPlan { servers, per_server, clients, per_source, why }
}

fn hold(
    cfg: &BenchConfig,
    target: Target,
    n: usize,
    run_index: usize,
    reference: &mut Option<(Protocol, Vec<u8>)>,
) -> Result<HoldRun> {
    let plan = plan_hold(n, target);
    let protocol = reference.as_ref().map(|r| r.0).or(cfg.protocol).unwrap_or(Protocol::Http);
    let reuse = plan.servers > 1;
    let mut servers = vec![start_server(
        cfg,
        target,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        reuse,
        plan.per_server,
        protocol,
    )?];
    let addr = servers[0].addr;
    for _ in 1..plan.servers {
        servers.push(start_server(cfg, target, addr, true, plan.per_server, protocol)?);
    }
    let (protocol, expected) = check_protocol(cfg, target, addr, reference)?;
    std::thread::sleep(Duration::from_millis(100));
    let base: Vec<(sys::ProcSample, usize)> = servers
        .iter()
        .map(|s| Ok((sys::sample(s.child.pid())?, sys::mappings(s.child.pid())?)))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("reading the servers' /proc", e))?;
    // Each client from its own source addresses, a fresh block per run: no
    // port of an earlier run's connections is in the way.
    let mut sources: Vec<IpAddr> = Vec::new();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for c in 0..plan.clients {
        let share = n / plan.clients + usize::from(c < n % plan.clients);
        let ips: Vec<IpAddr> = (0..share.div_ceil(plan.per_source).clamp(1, 250))
            .map(|j| IpAddr::V4(Ipv4Addr::new(127, 1 + run_index as u8, c as u8, 1 + j as u8)))
            .collect();
        sources.extend(&ips);
        let spec = ClientSpec {
            addr,
            conns: share,
            protocol,
            expected: expected.clone(),
            pipeline: 1,
            duration_s: 0.0,
            workers: 1,
            hold: true,
            source_ips: ips,
            open_threads: 32,
        };
        clients.push(child::Child::spawn(
            "hold client",
            &["bench-client".into(), "--spec".into(), serde_json::to_string(&spec).expect("serialisable")],
            cfg.verbose,
        )?);
    }
    let pb = bar(n as u64, format!("{} hold", target.name()));
    let mut done = vec![0u64; clients.len()];
    let mut results: Vec<Option<ClientResult>> = vec![None; clients.len()];
    let deadline = Instant::now() + Duration::from_secs(600);
    while results.iter().any(Option::is_none) {
        for (i, c) in clients.iter_mut().enumerate() {
            for line in c.pending_lines() {
                if let Some(p) = line.strip_prefix("progress ") {
                    done[i] = p.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
                } else if let Some(json) = line.strip_prefix("result ") {
                    results[i] =
                        Some(serde_json::from_str(json).map_err(|e| Error::Bench(format!("hold client result: {e}")))?);
                }
            }
            if results[i].is_none() && c.has_exited() {
                return Err(Error::Bench("a hold client ended without a result (run with --verbose)".into()));
            }
        }
        pb.set_position(done.iter().sum());
        if Instant::now() > deadline {
            return Err(Error::Bench("hold clients did not finish opening within 600 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let open_s = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let results: Vec<ClientResult> = results.into_iter().flatten().collect();
    let held: u64 = results.iter().map(|r| r.held).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    // Let the servers' last accepts settle, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let (mut rss_kib, mut maps, mut live_envs, mut open_per_server) = (0u64, 0usize, 0u64, Vec::new());
    for (s, (b, m)) in servers.iter_mut().zip(&base) {
        let pid = s.child.pid();
        let now = sys::sample(pid).map_err(|e| Error::io("reading a server's /proc", e))?;
        rss_kib += now.rss_kib.saturating_sub(b.rss_kib);
        maps += sys::mappings(pid).unwrap_or(*m).saturating_sub(*m);
        let st = s.stats()?;
        live_envs += st.get("live_envs").and_then(|v| v.as_u64()).unwrap_or(0);
        open_per_server.push(st.get("open").and_then(|v| v.as_u64()).unwrap_or(0));
    }
    for c in &mut clients {
        c.close_stdin();
    }
    for c in &mut clients {
        c.wait(Duration::from_secs(30));
    }
    Server::stop_all(servers);
    Ok(HoldRun {
        name: target.name().into(),
        protocol: protocol.to_string(),
        conns: n,
        held,
        errors,
        open_s,
        rss_kib,
        rss_per_conn_kib: rss_kib as f64 / held.max(1) as f64,
        maps_per_conn: maps as f64 / held.max(1) as f64,
        open_per_server,
        live_envs,
        server_processes: plan.servers,
        client_processes: plan.clients,
        source_addresses: sources.iter().map(|a| a.to_string()).collect(),
        plan: plan.why,
    })
}
