//! `wamr-coro`: serve a WebAssembly guest over TCP, or stress the runtime.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use wamr_coro::server::{EnvPolicy, Limits, Mode, QueueRunner, Server, DEFAULT_CALL_STACK, DEFAULT_POOL_CAPACITY};
use wamr_coro::{CallStack, EnvSource, Error, Module, Runtime, RuntimeConfig, WamrLog};

// Every default below comes from the library (`Limits::default()`,
// `RuntimeConfig::default()`, …) and every choice is a library enum: the
// command line states no default of its own.
fn limits() -> Limits {
    Limits::default()
}
fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[derive(Parser)]
#[command(name = "wamr-coro", version, about = "WebAssembly guests serving TCP on may coroutines (WAMR)")]
struct Cli {
    /// Log lines as text (ANSI colour only on a terminal) or JSON, on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MODULE (.wasm or .wat); without it, the embedded HTTP guest.
    Serve(ServeArgs),
    /// Compile MODULE (.wasm or .wat) to an AOT file of native code (WAMR's
    /// AOT compiler, LLVM) that `serve` loads like a module.
    Compile(CompileArgs),
    /// Hold N private envs at once, one per coroutine, and report their
    /// costs (no sockets; for servers under load, use `bench`).
    Stress(StressArgs),
    /// Load-test direct and queue mode against a native baseline (no
    /// WebAssembly), each server in its own process: req/s, latency
    /// percentiles, CPU, memory per connection; or, with --hold N, hold N
    /// connections and report memory per connection.
    Bench(BenchArgs),
    /// (bench internal) The native baseline server.
    #[command(hide = true)]
    BenchNative {
        /// JSON `NativeSpec`.
        #[arg(long)]
        spec: String,
    },
    /// (bench internal) A load-generator process.
    #[command(hide = true)]
    BenchClient {
        /// JSON `ClientSpec`.
        #[arg(long)]
        spec: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchModeArg {
    Direct,
    Queue,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Auto,
    Http,
    Echo,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Guest module (.wasm or .wat). Default: the embedded HTTP responder.
    module: Option<PathBuf>,
    /// Which WebAssembly servers to measure (the native baseline always runs).
    #[arg(long, value_enum, default_value = "all")]
    mode: BenchModeArg,
    /// Connections of the closed-loop load.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Seconds per server.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// What the guest speaks: probed by default (HTTP/1.1 keep-alive or echo).
    #[arg(long, value_enum, default_value = "auto")]
    protocol: ProtocolArg,
    /// Instead of a closed loop: open N connections, one request each, hold
    /// them, and report memory per connection and time to open. Beyond one
    /// process's limits, several servers share the port (--reuse-port).
    #[arg(long)]
    hold: Option<usize>,
    /// Hold: fail when a WebAssembly server keeps more than this many KiB
    /// of resident memory per held connection (a guard for CI: the
    /// default mode's target is 32).
    #[arg(long, requires = "hold")]
    max_kib_per_conn: Option<f64>,
    /// Write the results as JSON to PATH.
    #[arg(long)]
    json: Option<PathBuf>,
    /// may worker threads per server process.
    #[arg(long, default_value_t = 2)]
    server_workers: usize,
    /// may worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    client_workers: usize,
    /// Show the servers' and load generators' stderr.
    #[arg(long)]
    verbose: bool,
    /// Soak instead: serve healthy and hostile clients this long per mode
    /// (e.g. 10m) on the soak guest, sampling RSS, descriptors and envs;
    /// fails on a lost byte, RSS drift or a leak (src/bench/soak.rs).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "hold")]
    soak: Option<Duration>,
    /// Soak: share of --conns that are hostile.
    #[arg(long, default_value_t = 0.1)]
    hostile_share: f64,
    /// Soak: RSS drift allowed after warm-up, percent.
    #[arg(long, default_value_t = 5.0)]
    max_rss_drift: f64,
    /// Soak: warm-up left out of the drift (default: a tenth, 1–60 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Soak: plot RSS, descriptors and envs over time to this SVG file.
    #[arg(long, requires = "soak")]
    plot: Option<PathBuf>,
    /// Soak: seed of the clients' random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Soak: run the server under this command (split at spaces), e.g.
    /// "valgrind --error-exitcode=99" (scripts/leakcheck.sh).
    #[arg(long)]
    server_wrapper: Option<String>,
    /// The WebAssembly servers' --engine (see `serve --help`).
    #[arg(long, value_enum, default_value_t)]
    engine: Engine,
}

#[derive(clap::Args)]
struct CompileArgs {
    /// The module to compile (.wasm or .wat).
    module: PathBuf,
    /// The AOT file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// CPU to generate code for.
    #[arg(long, value_enum, default_value_t)]
    target: wamr_coro::aot::Target,
    /// Stop the compiler after this many seconds (an error); at most 1800.
    #[arg(long, default_value_t = compile_limits().timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=wamr_coro::aot::MAX_COMPILE_TIME.as_secs()))]
    timeout_s: u64,
    /// Memory (data) the compiler may use, MiB.
    #[arg(long, default_value_t = compile_limits().max_memory >> 20, value_parser = clap::value_parser!(u64).range(64..))]
    max_memory_mib: u64,
}

fn compile_limits() -> wamr_coro::aot::CompileLimits {
    wamr_coro::aot::CompileLimits::default()
}

#[derive(clap::Args)]
struct StressArgs {
    /// Guest module (needs on_recv). Default: the embedded HTTP responder.
    module: Option<PathBuf>,
    /// Coroutines (= envs alive at the peak).
    #[arg(long, default_value_t = 10_000)]
    coroutines: usize,
    /// on_recv calls per coroutine (yielding between them).
    #[arg(long, default_value_t = 2)]
    calls: usize,
    /// Where envs come from.
    #[arg(long, value_enum, default_value_t)]
    source: EnvSource,
    /// may worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Receive buffer per env, bytes.
    #[arg(long, default_value_t = limits().chunk_size as u32)]
    chunk_size: u32,
    /// Envs per spawn parent (WAMR max_thread_num).
    #[arg(long, default_value_t = RuntimeConfig::default().envs_per_parent)]
    envs_per_parent: u32,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Guest module (.wasm or .wat). Default: the embedded HTTP responder.
    module: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Share the port with other processes started with --reuse-port
    /// (SO_REUSEPORT: the kernel spreads connections between them). Without
    /// it a busy port is an error.
    #[arg(long)]
    reuse_port: bool,
    /// Dispatch mode.
    #[arg(long, value_enum, default_value_t)]
    mode: Mode,
    /// Queue mode: run the guest on a dedicated thread or in a coroutine.
    #[arg(long, value_enum, default_value_t)]
    runner: QueueRunner,
    /// Queue mode: events the ring holds at most (at least 1).
    #[arg(long, default_value_t = limits().queue_capacity)]
    queue_capacity: usize,
    /// Queue mode: guest instances (shards), each with its own ring and
    /// runner; a fault costs one shard's connections. 0 = one per worker;
    /// at most 1024.
    #[arg(long, default_value_t = limits().queue_shards)]
    queue_shards: usize,
    /// Env per connection, or leased per message (stateless guests only).
    #[arg(long, value_enum, default_value_t)]
    policy: EnvPolicy,
    /// Where envs come from: independent instances, or spawned (clustered).
    #[arg(long, value_enum, default_value_t)]
    source: EnvSource,
    /// Direct mode: run guest calls on the worker thread's call stack, which
    /// stays in cache, or on each connection coroutine's own stack.
    #[arg(long, value_enum, default_value_t = DEFAULT_CALL_STACK)]
    call_stack: CallStack,
    /// may worker threads (default: number of CPUs; 1 to 1024, two file
    /// descriptors each).
    #[arg(long)]
    workers: Option<usize>,
    /// Coroutine stack size in KiB (56 to 65536).
    #[arg(long, default_value_t = wamr_coro::coro::DEFAULT_STACK_BYTES / 1024)]
    stack_kib: usize,
    /// Open connections at most.
    #[arg(long, default_value_t = limits().max_connections)]
    max_connections: usize,
    /// Open connections from one client address at most (0 = no limit).
    #[arg(long, default_value_t = limits().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Close a connection that delivers fewer bytes than this in an
    /// idle-timeout window (0 = off): against clients trickling bytes.
    #[arg(long, default_value_t = limits().min_recv_bytes)]
    min_recv_bytes: usize,
    /// Close a connection whose client accepts fewer bytes
    /// than this in an idle-timeout window while an answer is being
    /// written (0 = off): against clients reading a trickle.
    #[arg(long, default_value_t = limits().min_send_bytes)]
    min_send_bytes: usize,
    /// Bytes a connection may have queued by `send`.
    #[arg(long, default_value_t = limits().output_limit)]
    output_limit: usize,
    /// Bytes per on_recv (direct mode) or per DATA event (queue mode) at
    /// most.
    #[arg(long, default_value_t = limits().chunk_size)]
    chunk_size: usize,
    /// Close connections idle this long (ms; at least 1).
    #[arg(long, default_value_t = ms(limits().idle_timeout))]
    idle_timeout_ms: u64,
    /// When the server closes a connection (the guest closed, refused or
    /// faulted), read and discard the client's further input for up to
    /// this long (ms) before closing, so it gets the whole answer rather
    /// than a reset; 0 = close at once.
    #[arg(long, default_value_t = ms(limits().linger))]
    linger_ms: u64,
    /// Terminate guest calls running longer (ms); 0 = unlimited.
    #[arg(long, default_value_t = limits().call_budget.map_or(0, ms))]
    call_budget_ms: u64,
    /// Stop guest calls (queue mode with `run`: per event) after this many
    /// WAMR-counted instructions, like a budget overrun; 0 = unlimited.
    #[arg(long, default_value_t = limits().instruction_budget.unwrap_or(0),
          value_parser = clap::value_parser!(u32).range(0..=i32::MAX as i64))]
    instruction_budget: u32,
    /// Linear memory per env at most, in 64 KiB pages (0 = module's maximum).
    /// A module whose initial memory is larger is refused at start.
    #[arg(long, default_value_t = limits().max_memory_pages)]
    max_memory_pages: u32,
    /// Linear memory of all envs together at most, in MiB (default: half the
    /// machine's memory). Past it memory.grow returns -1 and new envs are
    /// refused; both are counted.
    #[arg(long)]
    max_guest_memory_mib: Option<u64>,
    /// Idle envs kept for reuse.
    #[arg(long, default_value_t = DEFAULT_POOL_CAPACITY)]
    pool: usize,
    /// Envs per spawn parent (WAMR max_thread_num).
    #[arg(long, default_value_t = RuntimeConfig::default().envs_per_parent)]
    envs_per_parent: u32,
    /// Serve Prometheus metrics at /metrics and a health check at /healthz
    /// (200 while accepting, 503 while draining) on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// At stop, how long callbacks in flight may run before they are
    /// terminated (ms). A second SIGINT/SIGTERM exits at once.
    #[arg(long, default_value_t = ms(limits().shutdown_grace))]
    shutdown_grace_ms: u64,
    /// Drop WAMR's own messages instead of logging them.
    #[arg(long)]
    quiet_wamr: bool,
    /// How the guest's code runs: compiled at start through the cache
    /// (`aot`), WAMR's interpreter (`interp`), or `auto`: compiled when this
    /// build has the compiler and no --instruction-budget is set (WAMR meters
    /// only its interpreter), interpreted otherwise or if compiling fails.
    /// An AOT file (made by `compile`) loads only with `aot`: it is native
    /// code that runs unchecked in this process, so load only files you made.
    #[arg(long, value_enum, default_value_t)]
    engine: Engine,
    /// The same as --engine aot.
    #[arg(long, conflicts_with = "engine")]
    aot: bool,
    /// When compiling: CPU to generate code for.
    #[arg(long, value_enum, default_value_t)]
    aot_target: wamr_coro::aot::Target,
    /// When compiling: where compiled modules are cached (default:
    /// $XDG_CACHE_HOME/wamr-coro/aot, or ~/.cache/wamr-coro/aot; none
    /// without either). Entries are native code loaded as they are: a
    /// directory another user (but root) owns or that group or others can write is
    /// not used.
    #[arg(long)]
    aot_cache: Option<PathBuf>,
    /// When compiling: stop the compiler after this many seconds (with
    /// `auto`, the guest is then interpreted); at most 1800.
    #[arg(long, default_value_t = compile_limits().timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=wamr_coro::aot::MAX_COMPILE_TIME.as_secs()))]
    aot_timeout_s: u64,
    /// When compiling: memory (data) the compiler may use, MiB.
    #[arg(long, default_value_t = compile_limits().max_memory >> 20, value_parser = clap::value_parser!(u64).range(64..))]
    aot_max_memory_mib: u64,
    /// (bench internal) Answer `stats` lines on stdin; stop when it closes.
    #[arg(long, hide = true)]
    control_stdin: bool,
}

fn main() -> ExitCode {
    // `--version` adds WAMR's version, security fixes and features.
    // clap wants a &'static str; this runs once per process.
    let long_version: &'static str =
        Box::leak(wamr_coro::internals::wamr_build_info().trim_end().to_string().into_boxed_str());
    let matches = Cli::command().long_version(long_version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,may=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => {
            use std::io::IsTerminal;
            fmt.with_ansi(std::io::stderr().is_terminal()).init()
        }
        LogFormat::Json => fmt.json().init(),
    }
    // Servers and load generators may hold many sockets: lift the soft
    // descriptor limit to the hard one (children inherit it).
    if let Err(e) = wamr_coro::server::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Compile(args) => compile(args),
        Command::Stress(args) => stress(args),
        Command::Bench(args) => bench(args),
        Command::BenchNative { spec } => parse_spec(&spec).and_then(|s| wamr_coro::internals::bench::native::serve(&s)),
        Command::BenchClient { spec } => parse_spec(&spec).and_then(|s| wamr_coro::internals::bench::client::run(&s)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_spec<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|e| Error::Bench(format!("bad --spec: {e}")))
}

fn bench(a: BenchArgs) -> Result<(), Error> {
    use wamr_coro::internals::bench::{protocol::Protocol, soak::SoakConfig, BenchConfig, Target};
    let targets = match a.mode {
        BenchModeArg::Direct => vec![Target::Direct],
        BenchModeArg::Queue => vec![Target::Queue],
        BenchModeArg::All => vec![Target::Direct, Target::Queue],
    };
    if let Some(max) = a.max_kib_per_conn.filter(|m| !(*m > 0.0 && m.is_finite())) {
        return Err(Error::Config(format!("--max-kib-per-conn must be a positive number of KiB, not {max}")));
    }
    if let Some(duration) = a.soak {
        let cfg = SoakConfig {
            module: a.module,
            targets,
            duration,
            warmup: a.warmup,
            conns: a.conns,
            hostile_share: a.hostile_share,
            max_rss_drift: a.max_rss_drift / 100.0,
            plot: a.plot,
            server_workers: a.server_workers,
            seed: a.seed,
            server_wrapper: a
                .server_wrapper
                .map(|w| w.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            engine: engine_name(a.engine),
            verbose: a.verbose,
        };
        return wamr_coro::internals::bench::soak::run_cli(&cfg, a.json.as_deref());
    }
    let cfg = BenchConfig {
        module: a.module,
        targets,
        protocol: match a.protocol {
            ProtocolArg::Auto => None,
            ProtocolArg::Http => Some(Protocol::Http),
            ProtocolArg::Echo => Some(Protocol::Echo),
        },
        conns: a.conns,
        duration_s: a.duration,
        pipeline: a.pipeline,
        hold: a.hold,
        server_workers: a.server_workers,
        client_workers: a.client_workers,
        engine: engine_name(a.engine),
        verbose: a.verbose,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = wamr_coro::internals::bench::run(&cfg)?;
    println!("{} — {}", report.date, report.machine);
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report).expect("serialisable");
        std::fs::write(path, json)
            .map_err(|e| Error::Io { context: format!("writing {}", path.display()), source: e })?;
    }
    let errors: u64 = report.runs.iter().map(|r| r.errors).chain(report.holds.iter().map(|h| h.errors)).sum();
    if errors > 0 {
        return Err(Error::Bench(format!("{errors} errors during the bench (see the table)")));
    }
    if let Some(max) = a.max_kib_per_conn {
        let over: Vec<String> = report
            .holds
            .iter()
            .filter(|h| h.name != "native" && !(h.rss_per_conn_kib <= max))
            .map(|h| format!("{} keeps {:.1} KiB per connection", h.name, h.rss_per_conn_kib))
            .collect();
        if !over.is_empty() {
            return Err(Error::Bench(format!("over --max-kib-per-conn {max}: {}", over.join(", "))));
        }
    }
    Ok(())
}

fn stress(a: StressArgs) -> Result<(), Error> {
    Runtime::init(RuntimeConfig { envs_per_parent: a.envs_per_parent, ..RuntimeConfig::default() })?;
    wamr_coro::coro::configure(a.workers, wamr_coro::coro::DEFAULT_STACK_BYTES)?;
    let module = match &a.module {
        Some(path) => Module::from_file(path)?,
        None => wamr_coro::default_guest()?,
    };
    let report = wamr_coro::internals::stress::run(
        module,
        &wamr_coro::internals::stress::StressConfig {
            coroutines: a.coroutines,
            calls: a.calls,
            source: a.source,
            chunk_size: a.chunk_size,
        },
    )?;
    println!("{report}");
    if report.errors > 0 || report.live_after > 0 {
        return Err(Error::Bench(format!(
            "stress run had {} errors, {} envs left alive",
            report.errors, report.live_after
        )));
    }
    Ok(())
}

fn compile(a: CompileArgs) -> Result<(), Error> {
    let input = wamr_coro::read_module_file(&a.module)?;
    // `-o` naming the input (or a link to it) replaced the module with its
    // native code, which `serve` then refuses to run unasked.
    let id = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    };
    if id(&a.output).is_some() && id(&a.output) == id(&a.module) {
        return Err(Error::Config(format!(
            "-o {} is the input module itself: compiling would overwrite it; write the AOT file elsewhere",
            a.output.display()
        )));
    }
    // An output that cannot be written is an error before the compile, not
    // after a minute of it. A file made only for this check goes if the
    // compile fails.
    let writing = |source| Error::Io { context: format!("writing {}", a.output.display()), source };
    let existed = std::fs::symlink_metadata(&a.output).is_ok();
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&a.output).map_err(writing)?;
    let limits =
        wamr_coro::aot::CompileLimits { timeout: Duration::from_secs(a.timeout_s), max_memory: a.max_memory_mib << 20 };
    let aot = wamr_coro::aot::compile_with(&input, a.target, &limits).inspect_err(|_| {
        if !existed {
            let _ = std::fs::remove_file(&a.output);
        }
    })?;
    std::fs::write(&a.output, &aot).map_err(writing)?;
    println!("{} -> {} ({} bytes, target {})", a.module.display(), a.output.display(), aot.len(), a.target);
    Ok(())
}

/// How `serve` runs the guest's code (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum Engine {
    /// Compiled when it can be and nothing needs the interpreter.
    #[default]
    Auto,
    /// Compiled ahead of time at start, through the cache; an error if it
    /// cannot be.
    Aot,
    /// WAMR's fast interpreter.
    Interp,
}

/// `--engine`'s spelling of `e`, for the servers `bench` starts.
fn engine_name(e: Engine) -> String {
    use clap::ValueEnum;
    e.to_possible_value().expect("no variant is skipped").get_name().to_string()
}

/// `serve`'s module: the file, or the embedded HTTP guest, compiled or
/// interpreted as `--engine` says. An AOT file is loaded as it is.
fn load_module(a: &ServeArgs) -> Result<Module, Error> {
    let bytes = match &a.module {
        Some(path) => wamr_coro::read_module_file(path)?,
        None => wamr_coro::internals::DEFAULT_GUEST_WAT.as_bytes().to_vec(),
    };
    let module = load_engine(a, bytes)?;
    if module.is_aot() && a.instruction_budget > 0 {
        // WAMR 2.4.3 meters only its interpreters. Checked here so that a
        // SIGHUP reload is held to it too.
        if a.call_budget_ms == 0 {
            return Err(Error::Config(
                "--instruction-budget cannot stop AOT-compiled code (WAMR does not meter it) and \
                 --call-budget-ms is 0: give AOT guests a time budget"
                    .into(),
            ));
        }
        tracing::warn!(
            call_budget_ms = a.call_budget_ms,
            "--instruction-budget does not apply to AOT-compiled code (WAMR does not meter it); \
             the time budget still does"
        );
    }
    Ok(module)
}

/// [`load_module`]'s choice of engine for `bytes`.
fn load_engine(a: &ServeArgs, bytes: Vec<u8>) -> Result<Module, Error> {
    let compiled = |bytes: &[u8]| {
        let dir = a.aot_cache.clone().or_else(wamr_coro::aot::default_cache_dir);
        if dir.is_none() {
            tracing::info!("no AOT cache: neither XDG_CACHE_HOME nor HOME is set (nor --aot-cache)");
        }
        let limits = wamr_coro::aot::CompileLimits {
            timeout: Duration::from_secs(a.aot_timeout_s),
            max_memory: a.aot_max_memory_mib << 20,
        };
        wamr_coro::aot::load_compiled(bytes, a.aot_target, dir.as_deref(), &limits)
    };
    let engine = if a.aot { Engine::Aot } else { a.engine };
    if bytes.starts_with(wamr_coro::aot::AOT_MAGIC) {
        // Native code: only when asked for. A file that turns out to be an
        // AOT file (on disk at a SIGHUP too) is refused under any other
        // engine; before, every engine ran it.
        if engine != Engine::Aot {
            let name = a.module.as_deref().map_or("the module".into(), |p| p.display().to_string());
            return Err(Error::Config(format!(
                "{name} is an AOT file: native code that would run unchecked in this process. \
                 Load only AOT files you made yourself (`wamr-coro compile`), and say so with --engine aot"
            )));
        }
        tracing::info!("guest loaded from an AOT file");
        return Module::from_aot(&bytes);
    }
    let interpreted = |bytes: Vec<u8>, why: &str| {
        tracing::info!(why, "guest interpreted");
        Module::new(bytes)
    };
    match engine {
        Engine::Aot => compiled(&bytes),
        Engine::Interp => interpreted(bytes, "--engine interp"),
        Engine::Auto if a.instruction_budget > 0 => {
            interpreted(bytes, "--instruction-budget: WAMR meters only its interpreter")
        }
        Engine::Auto if !wamr_coro::aot::compiler_available() => {
            interpreted(bytes, "this build has no AOT compiler (it was built without LLVM)")
        }
        // A module the compiler refuses is loaded by the interpreter, and
        // only a module the interpreter takes is said to fall back: one that
        // neither takes gets the loader's error alone, not a fallback
        // warning followed by it.
        Engine::Auto => compiled(&bytes).or_else(|e| {
            let module = Module::new(bytes)?;
            tracing::warn!(error = %e, "cannot compile the guest; interpreting it");
            tracing::info!(why = "compiling failed", "guest interpreted");
            Ok(module)
        }),
    }
}

fn serve(a: ServeArgs) -> Result<(), Error> {
    Runtime::init(RuntimeConfig {
        envs_per_parent: a.envs_per_parent,
        log: if a.quiet_wamr { WamrLog::Silent } else { WamrLog::Tracing },
        ..RuntimeConfig::default()
    })?;
    let module = load_module(&a)?;
    let mut b = Server::builder(module)
        .listen(a.listen.clone())
        .reuse_port(a.reuse_port)
        .mode(a.mode)
        .queue_runner(a.runner)
        .policy(a.policy)
        .env_source(a.source)
        .call_stack(a.call_stack)
        // Saturating: a size that wraps (2^54 + 256 KiB is 256 KiB, modulo
        // 2^64) must meet the builder's bound, not pass for a small one.
        .stack_bytes(a.stack_kib.saturating_mul(1024))
        .pool_capacity(a.pool)
        .limits(Limits {
            max_connections: a.max_connections,
            max_connections_per_ip: a.max_connections_per_ip,
            min_recv_bytes: a.min_recv_bytes,
            min_send_bytes: a.min_send_bytes,
            output_limit: a.output_limit,
            chunk_size: a.chunk_size,
            idle_timeout: Duration::from_millis(a.idle_timeout_ms),
            linger: Duration::from_millis(a.linger_ms),
            call_budget: (a.call_budget_ms > 0).then(|| Duration::from_millis(a.call_budget_ms)),
            instruction_budget: (a.instruction_budget > 0).then_some(a.instruction_budget),
            queue_capacity: a.queue_capacity,
            queue_shards: a.queue_shards,
            shutdown_grace: Duration::from_millis(a.shutdown_grace_ms),
            max_memory_pages: a.max_memory_pages,
            max_guest_memory: a.max_guest_memory_mib.map(|m| m << 20).unwrap_or(limits().max_guest_memory),
        });
    if let Some(w) = a.workers {
        b = b.workers(w);
    }
    if let Some(m) = &a.metrics_listen {
        b = b.metrics_listen(m.clone());
    }
    let server = Arc::new(b.start()?);
    // Signals are ours before we say we listen: one sent right after the
    // announcement must not find the default action (ending the process).
    let watch = wamr_coro::server::signals::SignalWatch::install()
        .map_err(|e| Error::Io { context: "installing signal handlers".into(), source: e })?;
    println!("listening on {}", server.local_addr());
    if a.control_stdin {
        let (s, s2) = (Arc::clone(&server), Arc::clone(&server));
        wamr_coro::internals::bench::control::spawn(
            move || {
                let st = s.stats();
                serde_json::json!({ "accepted": st.accepted, "open": st.open, "refused": st.refused, "live_envs": st.envs.live })
            },
            move || {
                if !s2.is_stopping() {
                    wamr_coro::internals::bench::control::raise_sigterm();
                }
            },
        )
        .map_err(|e| Error::Io { context: "starting the control thread".into(), source: e })?;
    }
    // SIGHUP: load the module again (from its file) and serve new
    // connections with it; open ones finish on the old one.
    let reload = || {
        let loaded = load_module(&a);
        match loaded.and_then(|m| server.reload(m)) {
            Ok(()) => tracing::info!("SIGHUP: guest reloaded; new connections get it"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; the old guest keeps serving"),
        }
    };
    let sig = watch.wait(&server, reload);
    if let Some(sig) = sig {
        tracing::info!(signal = sig, "stopping");
    }
    // A second SIGINT/SIGTERM while draining: exit now.
    let _hurry = wamr_coro::server::signals::exit_on_second_signal()
        .map_err(|e| Error::Io { context: "installing signal handlers".into(), source: e })?;
    let stats = server.stop();
    println!("{stats}");
    Ok(())
}
