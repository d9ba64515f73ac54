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
//! socket, `queue.rs` is queue mode (one guest looping in `wait_msg`),
//! `signals.rs` maps SIGINT/SIGTERM to a graceful stop.
pub(crate) mod bind;
mod conn_host;
mod connection;
mod listener;
mod queue;
pub mod signals;

pub use queue::QueueRunner;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::abi::ModeReq;
use crate::error::{Error, Result};
use crate::guest::{EnvSource, Guest, GuestConfig};
use crate::pool::{EnvPool, PoolStats};
use crate::registry::{Registry, RegistryStats};
use crate::wamr::Module;
use crate::watchdog::Watchdog;

/// How connections reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
pub enum EnvPolicy {
    /// One env for the connection's whole life (default): guest state
    /// (globals, memory) persists between its callbacks.
    #[default]
    Connection,
    /// An env leased from the pool for each callback and returned after it:
    /// idle connections cost no env, but guest state does NOT survive between
    /// callbacks (the next callback may run on another env). For stateless
    /// guests.
    Message,
}

/// Limits, each with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; further ones are accepted and closed at
    /// once, and counted as refused. Default 10,000.
    pub max_connections: usize,
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
    /// At stop, how long in-flight callbacks get to finish before they are
    /// terminated. Default 2 s.
    pub shutdown_grace: Duration,
    /// Queue mode: events the ring holds at most (memory is bounded by
    /// `queue_capacity * chunk_size` for payloads). Default 1024.
    pub queue_capacity: usize,
    /// Linear memory per env at most, in 64 KiB pages: the guest's
    /// `memory.grow` fails past it. Default 256 (16 MiB); 0 = the module's
    /// own maximum. See [`GuestConfig::max_memory_pages`].
    pub max_memory_pages: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            output_limit: 1 << 20,
            chunk_size: crate::abi::DEFAULT_CHUNK_SIZE,
            idle_timeout: Duration::from_secs(60),
            call_budget: Some(Duration::from_secs(1)),
            shutdown_grace: Duration::from_secs(2),
            queue_capacity: 1024,
            max_memory_pages: 256,
        }
    }
}

/// Server statistics (a snapshot).
#[derive(Debug, Clone, Default)]
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
    /// `send` calls refused for the output limit.
    pub output_limit_hits: u64,
    /// Bad pointers passed to `send` or `log`.
    pub bad_pointers: u64,
    /// Connections closed for idleness.
    pub idle_closes: u64,
    /// The exec env registry.
    pub envs: RegistryStats,
    /// The env pool.
    pub pool: PoolStats,
    /// Queue mode: events waiting in the ring now.
    pub queue_depth: u64,
    /// Queue mode: guest instances replaced after a failure.
    pub queue_restarts: u64,
}

impl std::fmt::Display for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections: {} accepted, {} refused, {} open, {} closed; bytes: {} in, {} out; \
             faults: {} traps, {} budget overruns, {} output-limit hits, {} bad pointers, {} idle closes; \
             envs: {} live, {} created, {} destroyed, peak {}, {} failures, {} faulted; \
             pool: {} hits, {} misses, {} idle; queue: depth {}, {} restarts",
            self.accepted, self.refused, self.open, self.closed, self.bytes_in, self.bytes_out,
            self.traps, self.budget_overruns, self.output_limit_hits, self.bad_pointers, self.idle_closes,
            self.envs.live, self.envs.created, self.envs.destroyed, self.envs.peak, self.envs.failures,
            self.envs.faulted, self.pool.hits, self.pool.misses, self.pool.idle,
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
    pub output_limit_hits: AtomicU64,
    pub bad_pointers: AtomicU64,
    pub idle_closes: AtomicU64,
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
            pool_capacity: 1024,
            limits: Limits::default(),
            runner: QueueRunner::Thread,
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
        let registry = Registry::new();
        let guest = Guest::new(
            self.module.clone(),
            GuestConfig {
                source: self.source,
                chunk_size: u32::try_from(self.limits.chunk_size)
                    .map_err(|_| Error::Config("chunk_size too large".into()))?,
                call_budget: self.limits.call_budget,
                max_memory_pages: self.limits.max_memory_pages,
                mode: match self.mode {
                    Mode::Direct => ModeReq::Direct,
                    Mode::Queue => ModeReq::Queue,
                },
                ..GuestConfig::default()
            },
            Arc::clone(&registry),
        )?;
        let pool = EnvPool::new(Arc::clone(&guest), self.pool_capacity);
        let watchdog = match self.limits.call_budget {
            Some(_) => Some(Watchdog::start(&registry).map_err(|e| Error::io("starting watchdog", e))?),
            None => None,
        };
        let bind::Bound { listener, local_addr, waker } = bind::bind(addr, self.reuse_port)?;
        let queue = (self.mode == Mode::Queue).then(|| queue::QueueShared::new(self.limits.queue_capacity));
        let shared = Arc::new(Shared {
            queue: queue.clone(),
            pool,
            registry,
            policy: self.policy,
            limits: self.limits,
            epoch: Instant::now(),
            stopping: AtomicBool::new(false),
            next_conn: AtomicI32::new(1),
            conns: Mutex::new(std::collections::HashMap::new()),
            counters: Counters::default(),
        });
        let runner = match &queue {
            None => None,
            Some(qs) => {
                let (sh, qs) = (Arc::clone(&shared), Arc::clone(qs));
                Some(match self.runner {
                    QueueRunner::Thread => RunnerHandle::Thread(
                        std::thread::Builder::new()
                            .name("wamr-coro-queue".into())
                            .spawn(move || queue::run(sh, qs))
                            .map_err(|e| Error::io("starting the queue runner", e))?,
                    ),
                    QueueRunner::Coroutine => RunnerHandle::Coroutine(crate::coro::spawn(move || queue::run(sh, qs))),
                })
            }
        };
        let acceptor = listener::start(Arc::clone(&shared), listener);
        tracing::info!(%local_addr, mode = ?self.mode, policy = ?self.policy, source = ?self.source, "listening");
        Ok(ServerHandle {
            shared,
            local_addr,
            acceptor: Mutex::new(Some(acceptor)),
            waker: Mutex::new(Some(waker)),
            runner: Mutex::new(runner),
            _watchdog: watchdog,
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
    /// Queue mode's ring and connection table.
    pub queue: Option<Arc<queue::QueueShared>>,
    pub pool: Arc<EnvPool>,
    pub registry: Arc<Registry>,
    pub policy: EnvPolicy,
    pub limits: Limits,
    pub epoch: Instant,
    pub stopping: AtomicBool,
    pub next_conn: AtomicI32,
    /// Open connections: a clone of each socket (to shut it down at stop)
    /// and its coroutine.
    pub conns: Mutex<std::collections::HashMap<i32, connection::ConnEntry>>,
    pub counters: Counters,
}

impl Counters {
    /// Counts a guest fault that closed a connection (direct) or replaced
    /// the queue guest: a budget overrun or, otherwise, a trap.
    pub(crate) fn count_fault(&self, e: &Error) {
        match e {
            Error::BudgetExceeded { .. } => self.budget_overruns.fetch_add(1, Ordering::Relaxed),
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
            output_limit_hits: l(&c.output_limit_hits),
            bad_pointers: l(&c.bad_pointers),
            idle_closes: l(&c.idle_closes),
            envs: self.registry.stats(),
            pool: self.pool.stats(),
            queue_depth: self.queue.as_ref().map(|q| q.ring.len() as u64).unwrap_or(0),
            queue_restarts: self.queue.as_ref().map(|q| q.restarts.load(Ordering::Relaxed)).unwrap_or(0),
        }
    }
}

/// A running server. [`stop`](Self::stop) it for a graceful shutdown;
/// dropping it stops it too.
pub struct ServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Mutex<Option<may::coroutine::JoinHandle<()>>>,
    /// A second descriptor of the listening socket, to wake the acceptor.
    waker: Mutex<Option<socket2::Socket>>,
    runner: Mutex<Option<RunnerHandle>>,
    _watchdog: Option<Watchdog>,
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
                && sh.queue.as_ref().map(|q| q.open_conns() == 0).unwrap_or(true)
        };
        self.wait_bounded(grace_end, hard_end, "connections", || conns_done(&mut swept));
        // Phase 2 (queue mode): SHUTDOWN from wait_msg; the runner returns.
        if let Some(qs) = &sh.queue {
            qs.shutdown.store(true, Ordering::Release);
            qs.ring.wake();
            if let Some(runner) = self.runner.lock().take() {
                let done = self.wait_bounded(grace_end, hard_end, "queue guest", || runner.is_done());
                if done {
                    runner.join();
                }
            }
        }
        if acceptor.is_done() {
            let _ = acceptor.join();
        }
        sh.pool.close();
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
