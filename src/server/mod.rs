//! The TCP server: a builder, a running handle, and its statistics.
//!
//! ```no_run
//! use wamr_coro::server::{Server, Mode};
//! let module = wamr_coro::Module::from_file("guests/echo.wat")?;
//! let server = Server::builder(module).listen("127.0.0.1:0").mode(Mode::Direct).start()?;
//! println!("listening on {}", server.local_addr());
//! let stats = server.stop(); // graceful: on_close for every open connection
//! # Ok::<(), wamr_coro::Error>(())
//! ```
//!
//! Files: `bind.rs` binds the port, `listener.rs` accepts, `connection.rs` runs one connection's
//! coroutine (direct mode), `conn_host.rs` is the guest's way back to the
//! socket, `queue.rs` is queue mode (per shard, a guest looping in `wait_msg`),
//! `signals.rs` maps SIGINT/SIGTERM to a graceful stop.
pub(crate) mod bind;
mod conn_host;
mod connection;
mod generation;
mod listener;
mod metrics;
mod queue;
mod ratelimit;
pub mod signals;
mod socket;

pub use queue::QueueRunner;
pub use socket::raise_fd_limit;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::abi::ModeReq;
use crate::error::{Error, Result};
use crate::guest::{EnvSource, GuestConfig};
use crate::pool::PoolStats;
use crate::registry::{Registry, RegistryStats};
use crate::wamr::state::{MemoryBudget, MemoryBudgetStats};
use crate::wamr::Module;
use crate::watchdog::Watchdog;

/// Idle envs a server keeps for reuse unless told otherwise
/// ([`ServerBuilder::pool_capacity`]).
pub const DEFAULT_POOL_CAPACITY: usize = 1024;

/// How connections reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Mode {
    /// Each connection's coroutine calls the guest on its own env.
    #[default]
    Direct,
    /// Connection coroutines queue events; one guest instance takes them
    /// with `wait_msg` (or the host's loop calls its handlers).
    Queue,
}

/// When a connection holds an env (direct mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum EnvPolicy {
    /// One env for the connection's whole life (default): guest state
    /// (globals, memory) persists between its callbacks, and every
    /// connection starts from the module's initial state (a reused env is
    /// reset first; see `pool.rs`).
    #[default]
    Connection,
    /// SHARED STATE: an env leased from the pool for each callback and
    /// returned after it, *without* a reset: idle connections cost no env,
    /// but a callback may run on an env that served other connections and
    /// sees whatever they left in memory and globals (only the receive
    /// buffer is wiped), and the next callback of the same connection may
    /// run on another env. Only for guests that keep no per-client data.
    Message,
}

/// Limits, each with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; further ones are accepted and closed at
    /// once, and counted as refused. Default 10,000.
    pub max_connections: usize,
    /// Open connections from one client address at most (0 = no limit);
    /// further ones are refused like those past `max_connections`, so one
    /// client cannot take every slot. Default 2,500 (a quarter of the
    /// default `max_connections`).
    pub max_connections_per_ip: usize,
    /// A connection must deliver at least this many bytes in every
    /// `idle_timeout` window, or it is closed (counted as `slow_closes`):
    /// a client trickling a byte at a time never goes idle otherwise.
    /// Default 0 (off).
    pub min_recv_bytes: usize,
    /// Bytes a connection may have queued by `send` and not yet written;
    /// `send` past it returns `WOULD_EXCEED_LIMIT`. Default 1 MiB.
    pub output_limit: usize,
    /// Bytes per `on_recv` / `DATA` event at most. Default 64 KiB.
    pub chunk_size: usize,
    /// A connection with no input for this long, or whose client accepts no
    /// output for this long, is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// A guest call running longer is terminated; only its connection is
    /// closed. Default 1 s. `None` = unlimited.
    pub call_budget: Option<Duration>,
    /// Instructions (WAMR's counted ops) a guest call may execute — in queue
    /// mode with the guest's own `run` loop, per event — before it is stopped
    /// like a budget overrun. Deterministic, needs no watchdog, independent
    /// of `call_budget`. Interpreted guests only. Default `None` (unlimited).
    pub instruction_budget: Option<u32>,
    /// At stop, how long in-flight callbacks get to finish before they are
    /// terminated. Default 2 s.
    pub shutdown_grace: Duration,
    /// Queue mode: events the ring holds at most (memory is bounded by
    /// `queue_capacity * chunk_size` for payloads). Default 1024.
    pub queue_capacity: usize,
    /// Queue mode: guest instances, each with its own ring and runner; a
    /// connection belongs to one for its life, and a fault costs only that
    /// shard's connections. Default 0 = the number of `may` workers.
    pub queue_shards: usize,
    /// Linear memory per env at most, in 64 KiB pages: the guest's
    /// `memory.grow` fails past it. Default 256 (16 MiB); 0 = the module's
    /// own maximum. See [`GuestConfig::max_memory_pages`].
    pub max_memory_pages: u32,
    /// Linear memory of all envs together at most, bytes: a `memory.grow`
    /// past it returns -1, a new env past it is refused (its connection is
    /// closed). Both are counted. Default half the machine's memory.
    pub max_guest_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 2_500,
            min_recv_bytes: 0,
            output_limit: 1 << 20,
            chunk_size: crate::abi::DEFAULT_CHUNK_SIZE,
            idle_timeout: Duration::from_secs(60),
            call_budget: Some(Duration::from_secs(1)),
            instruction_budget: None,
            shutdown_grace: Duration::from_secs(2),
            queue_capacity: 1024,
            queue_shards: 0,
            max_memory_pages: 256,
            max_guest_memory: crate::wamr::state::MemoryBudget::default_bytes(),
        }
    }
}

/// Server statistics (a snapshot).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections refused (max_connections, or `on_open` < 0).
    pub refused: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed.
    pub closed: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Connections closed because their guest trapped.
    pub traps: u64,
    /// Connections closed because their guest overran the call budget.
    pub budget_overruns: u64,
    /// Connections closed because their guest overran the instruction budget.
    pub instruction_budget_overruns: u64,
    /// `send` calls refused for the output limit.
    pub output_limit_hits: u64,
    /// Bad pointers passed to `send` or `log`.
    pub bad_pointers: u64,
    /// Connections closed for idleness.
    pub idle_closes: u64,
    /// Connections closed for delivering less than `min_recv_bytes` in an
    /// idle-timeout window.
    pub slow_closes: u64,
    /// Guest calls terminated because they outlived the shutdown grace
    /// period (not counted as traps).
    pub shutdown_cuts: u64,
    /// The exec env registry.
    pub envs: RegistryStats,
    /// The env pool.
    pub pool: PoolStats,
    /// Envs reset to their initial state for the next connection.
    pub env_resets: u64,
    /// Envs destroyed instead of reset (grown memory, faulted, or state a
    /// reset cannot restore).
    pub env_reset_refusals: u64,
    /// The guest-memory budget.
    pub guest_memory: MemoryBudgetStats,
    /// Queue mode: events waiting in the rings now (all shards).
    pub queue_depth: u64,
    /// Queue mode: events waiting now, per shard.
    pub queue_shard_depths: Vec<u64>,
    /// Queue mode: guest instances replaced after a failure.
    pub queue_restarts: u64,
    /// Guest modules reloaded (SIGHUP / `ServerHandle::reload`).
    pub reloads: u64,
}

impl std::fmt::Display for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections: {} accepted, {} refused, {} open, {} closed; bytes: {} in, {} out; \
             faults: {} traps, {} budget overruns, {} instruction-budget overruns, {} output-limit hits, {} bad pointers, {} idle closes, {} too slow, {} cut at shutdown; \
             envs: {} live, {} created, {} destroyed, peak {}, {} failures, {} faulted; \
             pool: {} hits, {} misses, {} idle, {} resets, {} not resettable; \
             guest memory: {} of {} KiB, {} grows refused (budget), {} over cap, {} envs refused; \
             queue: depth {}, {} restarts",
            self.accepted, self.refused, self.open, self.closed, self.bytes_in, self.bytes_out,
            self.traps, self.budget_overruns, self.instruction_budget_overruns, self.output_limit_hits, self.bad_pointers, self.idle_closes,
            self.slow_closes, self.shutdown_cuts, self.envs.live, self.envs.created, self.envs.destroyed, self.envs.peak, self.envs.failures,
            self.envs.faulted, self.pool.hits, self.pool.misses, self.pool.idle,
            self.env_resets, self.env_reset_refusals,
            self.guest_memory.used_bytes / 1024, self.guest_memory.limit_bytes / 1024,
            self.guest_memory.refused_grows, self.guest_memory.over_cap_grows, self.guest_memory.refused_envs,
            self.queue_depth, self.queue_restarts
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub closed: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub traps: AtomicU64,
    pub budget_overruns: AtomicU64,
    pub instruction_budget_overruns: AtomicU64,
    pub output_limit_hits: AtomicU64,
    pub bad_pointers: AtomicU64,
    pub idle_closes: AtomicU64,
    pub slow_closes: AtomicU64,
    pub shutdown_cuts: AtomicU64,
}

/// Builds a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    module: Module,
    listen: String,
    mode: Mode,
    policy: EnvPolicy,
    source: EnvSource,
    workers: usize,
    stack_bytes: usize,
    pool_capacity: usize,
    limits: Limits,
    runner: QueueRunner,
    metrics_listen: Option<String>,
    reuse_port: bool,
}

/// Entry point: see [`Server::builder`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder serving `module`.
    pub fn builder(module: Module) -> ServerBuilder {
        ServerBuilder {
            module,
            listen: "127.0.0.1:7878".into(),
            mode: Mode::Direct,
            policy: EnvPolicy::Connection,
            source: EnvSource::Instance,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            stack_bytes: crate::coro::DEFAULT_STACK_BYTES,
            pool_capacity: DEFAULT_POOL_CAPACITY,
            limits: Limits::default(),
            runner: QueueRunner::Thread,
            metrics_listen: None,
            reuse_port: false,
        }
    }
}

impl ServerBuilder {
    /// Listen address (`host:port`; port 0 picks one). Default 127.0.0.1:7878.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }
    /// Dispatch mode. Default direct.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    /// Env policy in direct mode. Default per connection.
    pub fn policy(mut self, policy: EnvPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Where envs come from. Default independent instances.
    pub fn env_source(mut self, source: EnvSource) -> Self {
        self.source = source;
        self
    }
    /// `may` worker threads (process-wide; set before the first server).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Coroutine stack size in bytes (process-wide). Default 256 KiB.
    pub fn stack_bytes(mut self, n: usize) -> Self {
        self.stack_bytes = n;
        self
    }
    /// Idle envs kept for reuse. Default 1024.
    pub fn pool_capacity(mut self, n: usize) -> Self {
        self.pool_capacity = n;
        self
    }
    /// All limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Queue mode: where the guest runs. Default a dedicated thread.
    pub fn queue_runner(mut self, runner: QueueRunner) -> Self {
        self.runner = runner;
        self
    }

    /// Serve Prometheus metrics at `/metrics` and a health check at
    /// `/healthz` (200 while accepting, 503 while draining) on `addr`.
    /// Default: none.
    pub fn metrics_listen(mut self, addr: impl Into<String>) -> Self {
        self.metrics_listen = Some(addr.into());
        self
    }

    /// Share the port with other sockets that set it too (`SO_REUSEPORT`):
    /// several processes serving one port, the kernel spreading connections
    /// between them. Default false: a busy port is an error
    /// ([`Error::AddrInUse`]).
    pub fn reuse_port(mut self, yes: bool) -> Self {
        self.reuse_port = yes;
        self
    }

    /// Validates the guest, binds, and starts accepting.
    pub fn start(self) -> Result<ServerHandle> {
        if self.limits.chunk_size == 0 || self.limits.output_limit == 0 || self.limits.max_connections == 0 {
            return Err(Error::Config("chunk_size, output_limit and max_connections must be > 0".into()));
        }
        let addr: SocketAddr = self
            .listen
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving {}", self.listen), e))?
            .next()
            .ok_or_else(|| Error::Config(format!("no address for {}", self.listen)))?;
        crate::coro::configure(self.workers, self.stack_bytes)?;
        // One descriptor per connection, plus some for the process itself.
        if let Some(fds) = socket::fd_limit() {
            if self.limits.max_connections as u64 + 64 > fds {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    fd_limit = fds,
                    "max_connections exceeds what the file-descriptor limit allows; \
                     connections past it are refused (raise `ulimit -n`)"
                );
            }
        }
        let registry = Registry::new();
        let template = generation::Template {
            config: GuestConfig {
                source: self.source,
                chunk_size: u32::try_from(self.limits.chunk_size)
                    .map_err(|_| Error::Config("chunk_size too large".into()))?,
                call_budget: self.limits.call_budget,
                instruction_budget: self.limits.instruction_budget,
                max_memory_pages: self.limits.max_memory_pages,
                memory_budget: Some(Arc::new(MemoryBudget::new(self.limits.max_guest_memory))),
                mode: match self.mode {
                    Mode::Direct => ModeReq::Direct,
                    Mode::Queue => ModeReq::Queue,
                },
                ..GuestConfig::default()
            },
            policy: self.policy,
            pool_capacity: self.pool_capacity,
            queue: (self.mode == Mode::Queue).then(|| generation::QueueTemplate {
                shards: match self.limits.queue_shards {
                    0 => self.workers.max(1),
                    n => n,
                },
                capacity: self.limits.queue_capacity,
                runner: self.runner,
            }),
        };
        let first = template.make(self.module.clone(), &registry)?;
        let watchdog = match self.limits.call_budget {
            Some(_) => Some(Watchdog::start(&registry).map_err(|e| Error::io("starting watchdog", e))?),
            None => None,
        };
        let bind::Bound { listener, local_addr, waker } = bind::bind(addr, self.reuse_port)?;
        let shared = Arc::new(Shared {
            generations: generation::Generations::new(Arc::clone(&first), template),
            registry,
            policy: self.policy,
            limits: self.limits,
            epoch: Instant::now(),
            stopping: AtomicBool::new(false),
            next_conn: AtomicI32::new(1),
            conns: Mutex::new(std::collections::HashMap::new()),
            per_address: Mutex::new(socket::PerAddress::default()),
            counters: Counters::default(),
            metrics: metrics::Metrics::default(),
            log_limits: ratelimit::LogLimits::default(),
        });
        let metrics = match &self.metrics_listen {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a
                    .to_socket_addrs()
                    .map_err(|e| Error::io(format!("resolving {a}"), e))?
                    .next()
                    .ok_or_else(|| Error::Config(format!("no address for {a}")))?;
                Some(
                    metrics::MetricsServer::start(addr, Arc::clone(&shared))
                        .map_err(|e| Error::io(format!("binding the metrics endpoint {addr}"), e))?,
                )
            }
        };
        let runners = generation::start_runners(&shared, &first)?;
        let sweeper = {
            let sh = Arc::clone(&shared);
            // Idle connections are closed between idle_timeout and 1/8 of
            // it later (at most 1 s later).
            let period = (sh.limits.idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
            std::thread::Builder::new()
                .name("wamr-coro-idle".into())
                .spawn(move || {
                    let mut last = Instant::now();
                    while !sh.stopping.load(Ordering::Acquire) {
                        // Short naps, so that stop() need not wait a period.
                        std::thread::sleep(period.min(Duration::from_millis(50)));
                        if last.elapsed() >= period {
                            socket::sweep_idle(&sh);
                            last = Instant::now();
                        }
                    }
                })
                .map_err(|e| Error::io("starting the idle sweeper", e))?
        };
        let acceptor = listener::start(Arc::clone(&shared), listener);
        tracing::info!(%local_addr, mode = ?self.mode, policy = ?self.policy, source = ?self.source, "listening");
        Ok(ServerHandle {
            shared,
            local_addr,
            acceptor: Mutex::new(Some(acceptor)),
            runners: Mutex::new(runners),
            sweeper: Mutex::new(Some(sweeper)),
            waker: Mutex::new(Some(waker)),
            _watchdog: watchdog,
            metrics,
        })
    }
}

enum RunnerHandle {
    Thread(std::thread::JoinHandle<()>),
    Coroutine(may::coroutine::JoinHandle<()>),
}

impl RunnerHandle {
    fn is_done(&self) -> bool {
        match self {
            RunnerHandle::Thread(h) => h.is_finished(),
            RunnerHandle::Coroutine(h) => h.is_done(),
        }
    }
    fn join(self) {
        let _ = match self {
            RunnerHandle::Thread(h) => h.join().map_err(|_| ()),
            RunnerHandle::Coroutine(h) => h.join().map_err(|_| ()),
        };
    }
}

/// State shared by the acceptor and every connection coroutine.
pub(crate) struct Shared {
    /// The guest new connections get, and older ones still serving.
    pub generations: generation::Generations,
    pub registry: Arc<Registry>,
    pub policy: EnvPolicy,
    pub limits: Limits,
    pub epoch: Instant,
    pub stopping: AtomicBool,
    pub next_conn: AtomicI32,
    /// Open connections: each socket's descriptor, to shut it down at stop
    /// (see `socket.rs` for why it is never stale).
    pub conns: Mutex<std::collections::HashMap<i32, socket::ConnEntry>>,
    /// Open connections per client address.
    pub per_address: Mutex<socket::PerAddress>,
    pub counters: Counters,
    pub metrics: metrics::Metrics,
    pub log_limits: ratelimit::LogLimits,
}

impl Counters {
    /// Counts a guest fault that closed a connection (direct) or replaced
    /// the queue guest: a budget overrun, a call cut at shutdown, or
    /// otherwise a trap.
    pub(crate) fn count_fault(&self, e: &Error) {
        match e {
            Error::BudgetExceeded { .. } => self.budget_overruns.fetch_add(1, Ordering::Relaxed),
            Error::Interrupted { .. } => self.shutdown_cuts.fetch_add(1, Ordering::Relaxed),
            Error::InstructionBudgetExceeded { .. } => {
                self.instruction_budget_overruns.fetch_add(1, Ordering::Relaxed)
            }
            _ => self.traps.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> i32 {
        loop {
            let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
            if id > 0 {
                return id;
            }
            // i32 wrapped: start again at 1 (the contract allows reuse then).
            let _ = self.next_conn.compare_exchange(id.wrapping_add(1), 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            accepted: l(&c.accepted),
            refused: l(&c.refused),
            open: self.conns.lock().len() as u64,
            closed: l(&c.closed),
            bytes_in: l(&c.bytes_in),
            bytes_out: l(&c.bytes_out),
            traps: l(&c.traps),
            budget_overruns: l(&c.budget_overruns),
            instruction_budget_overruns: l(&c.instruction_budget_overruns),
            output_limit_hits: l(&c.output_limit_hits),
            bad_pointers: l(&c.bad_pointers),
            idle_closes: l(&c.idle_closes),
            shutdown_cuts: l(&c.shutdown_cuts),
            slow_closes: l(&c.slow_closes),
            envs: self.registry.stats(),
            pool: self.generations.current().pool.stats(),
            env_resets: self.generations.reset_counts().0,
            env_reset_refusals: self.generations.reset_counts().1,
            guest_memory: self.generations.current().pool.guest().memory_budget().stats(),
            queue_depth: self.generations.queue_depths().iter().sum(),
            queue_shard_depths: self.generations.current().queue.as_ref().map(|q| q.depths()).unwrap_or_default(),
            queue_restarts: self.generations.queue_restarts(),
            reloads: self.generations.reloads(),
        }
    }
}

/// A running server. [`stop`](Self::stop) it for a graceful shutdown;
/// dropping it stops it too.
pub struct ServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Mutex<Option<may::coroutine::JoinHandle<()>>>,
    runners: Mutex<Vec<RunnerHandle>>,
    sweeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A second descriptor of the listening socket, to wake the acceptor.
    waker: Mutex<Option<socket2::Socket>>,
    _watchdog: Option<Watchdog>,
    metrics: Option<metrics::MetricsServer>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("local_addr", &self.local_addr).finish()
    }
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the guest for new connections, as nginx reloads: `module`
    /// is checked and instantiated first (a failure leaves the old guest
    /// serving and is returned); connections already open finish on the old
    /// guest, whose envs, pool and queue shards go once its last connection
    /// has closed.
    pub fn reload(&self, module: Module) -> Result<()> {
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        let gen = self.shared.generations.template().make(module, &self.shared.registry)?;
        let runners = generation::start_runners(&self.shared, &gen)?;
        self.runners.lock().extend(runners);
        self.shared.generations.install(gen);
        tracing::info!(reloads = self.shared.generations.reloads(), "guest reloaded");
        Ok(())
    }

    /// Where the metrics endpoint listens, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Current statistics.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Whether `stop` has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Graceful shutdown: stop accepting; let in-flight callbacks finish
    /// (up to `shutdown_grace`, then terminate them); call `on_close` for
    /// every open connection; destroy every env. Returns the final stats
    /// (`envs.live` is 0 unless something could not be stopped, which is
    /// logged). Blocks the calling thread: call it from a thread, not from a
    /// coroutine.
    ///
    /// Every wait here is bounded by one deadline, because a guest that never
    /// returns occupies its `may` worker and can starve coroutines queued
    /// behind it (the acceptor among them): past the grace period, calls in
    /// flight are terminated until everything has ended.
    pub fn stop(&self) -> ServerStats {
        let Some(acceptor) = self.acceptor.lock().take() else {
            return self.stats();
        };
        let sh = &self.shared;
        sh.stopping.store(true, Ordering::Release);
        // Wake the acceptor (it checks `stopping` after every accept) by
        // shutting the socket down, not by dialling the port: with
        // SO_REUSEPORT a dial may reach another process.
        if let Some(waker) = self.waker.lock().take() {
            bind::wake_acceptor(&waker);
        }
        let grace_end = Instant::now() + sh.limits.shutdown_grace;
        let hard_end = grace_end + Duration::from_secs(5);
        let mut swept = std::collections::HashSet::new();
        // Phase 1: every connection ends (EOF from a read-side shutdown):
        // direct mode calls on_close from its coroutine; queue mode's
        // readers queue CLOSE, which the guest must have taken. Past the
        // grace period writes are shut down too, so a coroutine blocked
        // writing to a client that never reads gets an error and ends.
        let conns_done = |swept: &mut std::collections::HashSet<i32>| {
            let late = Instant::now() >= grace_end;
            let conns = sh.conns.lock();
            for (id, c) in conns.iter() {
                if swept.insert(*id) {
                    c.shutdown();
                }
                if late {
                    c.shutdown_both();
                }
            }
            acceptor.is_done()
                && conns.is_empty()
                && sh.generations.queue_open_conns() == 0
        };
        self.wait_bounded(grace_end, hard_end, "connections", || conns_done(&mut swept));
        // Phase 2 (queue mode): SHUTDOWN from wait_msg; the runners return.
        if sh.generations.has_queue() {
            sh.generations.shut_down_queues();
            let runners = std::mem::take(&mut *self.runners.lock());
            let done = self.wait_bounded(grace_end, hard_end, "queue guests", || runners.iter().all(|r| r.is_done()));
            if done {
                runners.into_iter().for_each(RunnerHandle::join);
            }
        }
        if acceptor.is_done() {
            let _ = acceptor.join();
        }
        sh.generations.close_pools();
        if let Some(t) = self.sweeper.lock().take() {
            let _ = t.join();
        }
        let left = hard_end.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        if !sh.registry.destroy_all(left) {
            tracing::error!(live = sh.registry.live(), "envs still alive after shutdown");
        }
        tracing::info!(connections = swept.len(), "stopped");
        self.stats()
    }

    /// Polls `done` until it holds; past `grace_end` terminates guest calls
    /// in flight on each poll; gives up (logging) at `hard_end`.
    fn wait_bounded(&self, grace_end: Instant, hard_end: Instant, what: &str, mut done: impl FnMut() -> bool) -> bool {
        let mut warned = false;
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= hard_end {
                tracing::error!(what, "shutdown: gave up waiting");
                return false;
            }
            if now >= grace_end {
                let n = self.shared.registry.interrupt_all();
                if !warned && n > 0 {
                    tracing::warn!(what, terminated = n, "shutdown grace over: terminated guest calls still running");
                    warned = true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
