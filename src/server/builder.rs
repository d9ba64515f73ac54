//! Building a server: the configuration checked, the guest loaded, the port
//! bound, the acceptor and queue shards started.
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::abi::ModeReq;
use crate::error::{Error, Result};
use crate::guest::{EnvSource, GuestConfig};
use crate::registry::Registry;
use crate::wamr::state::MemoryBudget;
use crate::wamr::{CallStack, Module};
use crate::watchdog::Watchdog;

use super::handle::ServerHandle;
use super::stats::Counters;
use super::{bind, generation, listener, metrics, ratelimit, socket, Shared};
use super::{EnvPolicy, Limits, Mode, QueueRunner, DEFAULT_CALL_STACK, DEFAULT_POOL_CAPACITY, MAX_QUEUE_EVENTS};

/// The largest pool capacity ([`ServerBuilder::pool_capacity`]): the pool's
/// ring is allocated whole, 16 bytes a slot, when each generation of the
/// guest is made (`--pool 18446744073709551615` panicked at start, and
/// merely large values took gigabytes before any connection).
pub const MAX_POOL_CAPACITY: usize = 1 << 20;

/// Builds a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    module: Module,
    listen: String,
    mode: Mode,
    policy: EnvPolicy,
    source: EnvSource,
    call_stack: CallStack,
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
            call_stack: DEFAULT_CALL_STACK,
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
    /// Where direct mode's guest calls run: on the worker thread's call
    /// stack (the default, [`CallStack::Worker`]: it stays in cache however
    /// many connections there are), or on each connection coroutine's own
    /// stack. A guest that imports a host function not declared
    /// [`HostFunc::never_blocks`](crate::HostFunc::never_blocks) runs on the
    /// connections' stacks whatever this says (the ABI's imports are
    /// declared so).
    pub fn call_stack(mut self, where_: CallStack) -> Self {
        self.call_stack = where_;
        self
    }
    /// `may` worker threads (process-wide; set before the first server):
    /// 1 to [`crate::coro::MAX_WORKERS`], two file descriptors each
    /// ([`start`](Self::start) refuses a count the descriptor limit cannot
    /// hold).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Coroutine stack size in bytes (process-wide). Default 256 KiB.
    pub fn stack_bytes(mut self, n: usize) -> Self {
        self.stack_bytes = n;
        self
    }
    /// Idle envs kept for reuse. Default 1024; at most
    /// [`MAX_POOL_CAPACITY`].
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

    /// Queue mode's shard count: `queue_shards`, or one per worker.
    fn queue_shards(&self) -> usize {
        match self.limits.queue_shards {
            0 => self.workers.max(1),
            n => n,
        }
    }

    /// Validates the guest, binds, and starts accepting.
    pub fn start(self) -> Result<ServerHandle> {
        self.limits.check()?;
        if self.mode == Mode::Queue {
            let events = self.queue_shards().saturating_mul(self.limits.queue_capacity);
            if events > MAX_QUEUE_EVENTS {
                return Err(Error::Config(format!(
                    "queue_capacity {} times {} queue shards is {events} events; their rings may hold at most {MAX_QUEUE_EVENTS} together",
                    self.limits.queue_capacity,
                    self.queue_shards()
                )));
            }
        }
        if self.pool_capacity > MAX_POOL_CAPACITY {
            return Err(Error::Config(format!(
                "pool_capacity must be at most {MAX_POOL_CAPACITY}, not {}",
                self.pool_capacity
            )));
        }
        let addr: SocketAddr = self
            .listen
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving {}", self.listen), e))?
            .next()
            .ok_or_else(|| Error::Config(format!("no address for {}", self.listen)))?;
        crate::coro::configure(self.workers, self.stack_bytes)?;
        // One descriptor per connection, plus the reserve the listener keeps
        // (`listener::fd_reserve`), the workers' (`coro::FDS_PER_WORKER`)
        // and some for the process itself.
        if let Some(fds) = socket::fd_limit() {
            let own = listener::fd_reserve(fds) + crate::coro::FDS_PER_WORKER * self.workers as u64 + 32;
            if (self.limits.max_connections as u64).saturating_add(own) > fds {
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
                call_stack: self.call_stack,
                mode: match self.mode {
                    Mode::Direct => ModeReq::Direct,
                    Mode::Queue => ModeReq::Queue,
                },
                ..GuestConfig::default()
            },
            policy: self.policy,
            pool_capacity: self.pool_capacity,
            queue: (self.mode == Mode::Queue).then(|| generation::QueueTemplate {
                shards: self.queue_shards(),
                capacity: self.limits.queue_capacity,
                runner: self.runner,
            }),
        };
        // The watchdog first: the env `make` creates to check the module
        // calls the guest's `alloc`, which only the watchdog holds to the
        // call budget. Started after it, an `alloc` that never returned hung
        // the server's start for ever.
        let watchdog = match self.limits.call_budget {
            Some(b) => Some(Watchdog::for_budget(&registry, b).map_err(|e| Error::io("starting watchdog", e))?),
            None => None,
        };
        let first = template.make(self.module.clone(), &registry)?;
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
            std::thread::Builder::new().name("wamr-coro-idle".into()).spawn(move || {
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
        };
        let sweeper = match sweeper {
            Ok(t) => t,
            Err(e) => {
                // The runners already run: stopped here, or they would
                // keep their envs for the life of the process.
                generation::stop_runners(&first, runners);
                return Err(Error::io("starting the idle sweeper", e));
            }
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
            reloading: Mutex::new(()),
        })
    }
}
