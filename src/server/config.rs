//! Server configuration: dispatch modes, env policies, limits and their
//! defaults.
use std::time::Duration;

/// Queue shards a server accepts at most ([`Limits::queue_shards`]): each is
/// a guest instance with a runner thread of its own.
pub const MAX_QUEUE_SHARDS: usize = 1024;

/// The most events one queue shard's ring may hold ([`Limits::queue_capacity`]):
/// 2^20. The ring is allocated whole when the shard starts, about 40 bytes
/// an event, so this is 40 MiB a shard before any payload. Without a bound,
/// `--queue-capacity 1000000000` aborted the process on a 40 GB allocation.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// The most events all of a queue-mode server's rings may hold together
/// (`queue_capacity` times the number of shards), per generation of the
/// guest (a reload's old generation keeps its rings until its last
/// connection closes): 2^23, about 320 MiB of
/// rings, each written whole when its shard starts. Without it the two
/// bounds above allowed 1,024 rings of 2^20 events, 40 GiB.
pub const MAX_QUEUE_EVENTS: usize = 1 << 23;

/// Idle envs a server keeps for reuse unless told otherwise
/// ([`ServerBuilder::pool_capacity`](super::ServerBuilder::pool_capacity)).
pub const DEFAULT_POOL_CAPACITY: usize = 1024;

/// Where a server runs direct mode's guest calls unless told otherwise
/// ([`ServerBuilder::call_stack`](super::ServerBuilder::call_stack)): the
/// worker's call stack. A bare [`ExecEnv`](crate::ExecEnv) defaults to the
/// caller's own stack instead ([`CallStack::Coroutine`](crate::CallStack::Coroutine)).
pub const DEFAULT_CALL_STACK: crate::CallStack = crate::CallStack::Worker;

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
    /// The same rule for output: while a write is pending, the
    /// client must accept at least this many bytes in every `idle_timeout`
    /// window, or the connection is closed (counted as `slow_closes`, and
    /// reset, so the kernel drops what it still holds for it). Without it a
    /// client that takes a little of a large answer now and then keeps the
    /// write, the connection's coroutine and its env for as long as the
    /// answer lasts: the write timeout only fires when nothing at all is
    /// taken for `idle_timeout`. Queue mode's writer applies it from the
    /// first write the socket does not take at once until nothing is queued
    /// (it holds the connection and its queued output, not an env). Default
    /// 0 (off), like `min_recv_bytes`.
    pub min_send_bytes: usize,
    /// Bytes a connection may have queued by `send` and not yet written;
    /// `send` past it returns `WOULD_EXCEED_LIMIT`. Default 1 MiB.
    pub output_limit: usize,
    /// Bytes per `on_recv` / `DATA` event at most. Default 64 KiB.
    pub chunk_size: usize,
    /// A connection with no input for this long, or whose client accepts no
    /// output for this long, is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// When the server closes a connection its client may still be sending
    /// on (the guest closed it, refused it or faulted, or no env could be
    /// had), it first ends its output and reads and discards the client's
    /// input for up to this long (a "lingering close", plus up to a second:
    /// the idle sweep ends it; independent of `idle_timeout`), so that
    /// unread input does not make the kernel reset the connection and drop
    /// the end of the answer. Meanwhile the connection still counts toward
    /// `max_connections` and `max_connections_per_ip` (its env is released
    /// first; in queue mode the guest has had its `CLOSE`).
    /// Connections the client closed, idle, trickling or not reading ones
    /// close at once. Default 2 s; zero closes at once always.
    pub linger: Duration,
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
    /// `queue_capacity * chunk_size` for payloads). Default 1024, at most
    /// [`MAX_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// Queue mode: guest instances, each with its own ring and runner; a
    /// connection belongs to one for its life, and a fault costs only that
    /// shard's connections. Default 0 = the number of `may` workers.
    pub queue_shards: usize,
    /// Linear memory per env at most, in 64 KiB pages: the guest's
    /// `memory.grow` fails past it. Default 256 (16 MiB); 0 = the module's
    /// own maximum. See [`GuestConfig::max_memory_pages`](crate::GuestConfig::max_memory_pages).
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
            min_send_bytes: 0,
            output_limit: 1 << 20,
            chunk_size: crate::abi::DEFAULT_CHUNK_SIZE,
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(2),
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

impl Limits {
    /// The limits a server can run with: sizes and counts that must be
    /// positive are, `idle_timeout` is not zero (it also bounds writes to a
    /// client that reads nothing), `queue_capacity` is at most
    /// [`MAX_QUEUE_CAPACITY`] and `queue_shards` at most [`MAX_QUEUE_SHARDS`]. [`ServerBuilder::start`](super::ServerBuilder::start)
    /// refuses others with [`Error::Config`](crate::Error::Config).
    pub fn check(&self) -> crate::Result<()> {
        let positive = [
            ("chunk_size", self.chunk_size),
            ("output_limit", self.output_limit),
            ("max_connections", self.max_connections),
            ("queue_capacity", self.queue_capacity),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(crate::Error::Config(format!("{name} must be > 0")));
        }
        if self.idle_timeout.is_zero() {
            return Err(crate::Error::Config("idle_timeout must be > 0".into()));
        }
        if self.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(crate::Error::Config(format!(
                "queue_capacity must be at most {MAX_QUEUE_CAPACITY}, not {}",
                self.queue_capacity
            )));
        }
        if self.queue_shards > MAX_QUEUE_SHARDS {
            return Err(crate::Error::Config(format!(
                "queue_shards must be at most {MAX_QUEUE_SHARDS}, not {}",
                self.queue_shards
            )));
        }
        Ok(())
    }
}
