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
//! | `socket.rs` | what both modes share per connection: registration, the read loop (buffer, idle and progress rules); direct mode's writes (progress rule) |
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

pub use builder::{Server, ServerBuilder, MAX_POOL_CAPACITY};
pub use config::{
    EnvPolicy, Limits, Mode, DEFAULT_CALL_STACK, DEFAULT_POOL_CAPACITY, MAX_QUEUE_CAPACITY, MAX_QUEUE_EVENTS,
    MAX_QUEUE_SHARDS,
};
pub use handle::ServerHandle;
pub use queue::QueueRunner;
pub(crate) use socket::fd_limit;
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
    /// The next connection id to try; moved only under `conns`' lock (see
    /// [`Shared::register_conn`]).
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
    /// Enters an accepted connection in the table under an id no open
    /// connection has, and returns the id. Both modes register here
    /// ([`socket::Registration::new`]).
    ///
    /// The id is picked and entered under the table's lock, so the check
    /// that it is free cannot go stale: once the counter has wrapped past
    /// `i32::MAX` (the contract allows reuse then), ids still open are
    /// skipped. Before, a wrapped id could be one a connection still had,
    /// and the insert replaced that connection's entry: in queue mode one
    /// client's bytes then went to another client.
    pub(crate) fn register_conn(&self, entry: socket::ConnEntry) -> i32 {
        let mut conns = self.conns.lock();
        let id = free_conn_id(&self.next_conn, &conns);
        conns.insert(id, entry);
        id
    }
}

/// The next connection id from `next` (positive; after `i32::MAX` it starts
/// again at 1) that is not a key of `live`, the table of open connections;
/// `next` moves past it. Call with `live`'s lock held: the lock serialises
/// the counter too.
///
/// Terminates: `live` holds one entry per open socket, far fewer than the
/// `i32::MAX` ids.
fn free_conn_id<V>(next: &AtomicI32, live: &std::collections::HashMap<i32, V>) -> i32 {
    let mut id = next.load(Ordering::Relaxed);
    loop {
        if id <= 0 {
            id = 1;
        }
        let after = id.wrapping_add(1);
        if !live.contains_key(&id) {
            next.store(after, Ordering::Relaxed);
            return id;
        }
        id = after;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicI32;

    use super::free_conn_id;

    #[test]
    fn connection_ids_wrap_without_handing_out_an_open_one() {
        // Ids 1, 2 and 4 are still open when the counter reaches i32::MAX.
        let mut open: HashMap<i32, ()> = [1, 2, 4].into_iter().map(|id| (id, ())).collect();
        let next = AtomicI32::new(i32::MAX);
        let mut got = Vec::new();
        for _ in 0..4 {
            let id = free_conn_id(&next, &open);
            assert!(id > 0, "id {id} is not positive");
            assert!(!open.contains_key(&id), "id {id} handed out while a connection has it (after {got:?})");
            open.insert(id, ());
            got.push(id);
        }
        assert_eq!(got, [i32::MAX, 3, 5, 6]);
        // A closed id is free again once the counter comes round.
        open.remove(&2);
        next.store(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(free_conn_id(&next, &open), 2);
    }

    #[test]
    fn connection_ids_count_up_from_one_when_nothing_is_open() {
        let open: HashMap<i32, ()> = HashMap::new();
        let next = AtomicI32::new(1);
        assert_eq!((0..3).map(|_| free_conn_id(&next, &open)).collect::<Vec<_>>(), [1, 2, 3]);
        // A counter that wrapped past i32::MAX (negative) restarts at 1.
        next.store(i32::MIN, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(free_conn_id(&next, &open), 1);
    }
}
