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
//! Files, in the order a connection meets them:
//!
//! | file | concept |
//! |---|---|
//! | `config.rs` | modes, env policies, limits and their defaults |
//! | `builder.rs` | [`Server::builder`]: checks the configuration, binds, starts |
//! | `bind.rs` | the listening socket (exclusive, or shared with `reuse_port`) |
//! | `listener.rs` | the acceptor coroutine: admission, one coroutine per connection |
//! | `socket.rs` | what both modes share per connection: registration, the read loop (buffer, idle and progress rules) |
//! | `connection.rs` | direct mode: a connection's coroutine calling the guest on its env |
//! | `queue/` | queue mode: reader/writer coroutines, shards, the shard runner |
//! | `conn_host.rs` | the guest's `send`/`close`: one check order for both modes |
//! | `generation.rs` | the guest in service and those still finishing after a reload |
//! | `handle.rs` | [`ServerHandle`]: stats, reload, graceful stop |
//! | `stats.rs` | [`ServerStats`] and the counters behind it |
//! | `metrics.rs` | `/metrics` and `/healthz` |
//! | `ratelimit.rs` | rate limits for log lines |
//! | `signals.rs` | SIGINT/SIGTERM → graceful stop, SIGHUP → reload |
pub(crate) mod bind;
mod builder;
mod config;
mod conn_host;
mod connection;
mod generation;
mod handle;
mod listener;
mod metrics;
mod queue;
mod ratelimit;
pub mod signals;
mod socket;
mod stats;
mod striped;

pub use builder::{Server, ServerBuilder};
pub use config::{EnvPolicy, Limits, Mode, DEFAULT_POOL_CAPACITY};
pub use handle::ServerHandle;
pub use queue::QueueRunner;
pub use socket::raise_fd_limit;
pub use stats::ServerStats;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::registry::Registry;
use stats::Counters;

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
}
