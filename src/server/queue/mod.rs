//! Queue mode: network I/O entirely native, guest instances handling their
//! connections through `wait_msg` (WAMR's Native_WaitMsg pattern, WAMR
//! issue #3328).
//!
//! ```text
//! reader coroutine ─ OPEN/DATA/CLOSE ─▶ shard's EventRing ─▶ shard runner: guest `run` ⇄ wait_msg
//!                                                               │ send/close
//! socket ◀── writer coroutine ◀── per-connection channel ◀──────┘
//! ```
//! * Connections are spread over `queue_shards` shards by id; each shard has
//!   its own ring, connection table, runner and guest instance, so shards run
//!   in parallel and a fault costs one shard's connections, not all.
//! * Each connection has a reader coroutine (socket → events; a full ring
//!   blocks it, so TCP pushes back on the client) and, once it needs one, a
//!   writer coroutine (channel → socket), so the guest never blocks on a
//!   slow client. When the writer has nothing queued, `send` writes what the
//!   socket takes at once, without waiting, and only the rest goes to the
//!   writer, which starts the first time there is a rest: a connection whose
//!   answers always fit its socket never has one. The guest's
//!   `send` fails with `WOULD_EXCEED_LIMIT` once `output_limit` bytes are
//!   pending for that connection. The reader stops reading while the
//!   connection's pending output plus its queued input could not take
//!   another chunk's answer, so a client that reads gets even a 10 MB echo
//!   intact; `-3` is left for clients that do not read.
//! * The runner owns the one exec env. With a `run` export the guest loops in
//!   `wait_msg`; without it the host runs the same loop natively and calls
//!   `on_open` / `on_recv` / `on_close`. Both take events from one
//!   `Dispatcher` (`dispatch.rs`), so they behave identically.
//! * The per-call budget applies to each event: `wait_msg` arms the deadline
//!   when it hands an event to the guest and disarms it when the guest comes
//!   back for the next one. The code `run` executes before its first
//!   `wait_msg` has the budget too, armed when `run` is called.
//! * A trap, a budget overrun, or `run` returning before `SHUTDOWN` discards
//!   the shard's instance, closes the connections it had been told about (by
//!   OPEN), drops their remaining events, and hands the shard to a standby
//!   instance made in advance. Only a crash loop (3 faults within a second)
//!   backs off, and only that shard. During shutdown nothing restarts: the
//!   shard drains its events without a guest.
//! * Before a different connection's DATA lands in the host loop's receive
//!   buffer (the host's), the bytes the previous one left there are wiped.
//!   `wait_msg` writes only `buf .. buf+n` of the guest's own buffer and
//!   wipes nothing (guest-abi.md sections 3 and 5).
//!
//! Files: this one holds the shared structures (shards, connections,
//! events); `conn.rs` the reader and writer coroutines of a connection;
//! `dispatch.rs` the `Dispatcher` both loops take events from; `host.rs`
//! the guest's imports in queue mode; `runner.rs` a shard's runner.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ring::EventRing;

mod conn;
mod dispatch;
mod host;
mod runner;

pub(super) use conn::start_conn;
pub(super) use runner::run;

/// Where the queue guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum QueueRunner {
    /// A dedicated OS thread (default): a guest computing never occupies a
    /// `may` worker, so socket I/O keeps both workers.
    #[default]
    Thread,
    /// A `may` coroutine: cheaper wake-ups, but a busy guest holds a worker.
    Coroutine,
}

/// One event from a connection.
#[derive(Debug)]
pub(crate) enum Event {
    Open(i32),
    Data(i32, Vec<u8>),
    Close(i32),
}

/// What goes to a connection's writer.
enum Out {
    Data(Vec<u8>),
    Close,
}

/// A connection as queue mode sees it.
struct QueueConn {
    /// The connection's id.
    id: i32,
    /// The socket's descriptor, for the runner's direct writes (see
    /// `QueueHost::push`); open while `writer_end.gone` is false.
    fd: std::os::fd::RawFd,
    /// When the connection last made progress (the idle sweep reads it).
    activity: Arc<super::socket::Activity>,
    /// Whether output has ended, and the channel to the writer once the
    /// connection has needed one. The runner writes directly only under
    /// this lock, while `gone` is false.
    writer_end: Arc<Mutex<WriterEnd>>,
    /// Bytes handed to the writer, not yet written.
    pending: Arc<AtomicUsize>,
    /// DATA bytes queued in the ring, not yet handed to the guest.
    inflight: AtomicUsize,
    /// The guest closed it, or its instance crashed: no more send/close.
    closed: AtomicBool,
    /// Generation of the instance that received its OPEN (0 = not yet).
    open_gen: AtomicU64,
    /// `on_open` refused it (host loop): no `on_close`.
    refused: AtomicBool,
    /// The client's address.
    peer: Option<std::net::SocketAddr>,
    /// How its close lingers once output ends.
    linger: super::socket::Linger,
}

/// A connection's output side.
///
/// Its writer coroutine, and the channel to it, start only when the socket
/// first refuses part of an answer (`QueueHost::push`): until then the
/// runner writes directly, and `done` waits here. A connection whose
/// answers all fit its socket, the common case, never has a second
/// coroutine or a channel (`conn.rs`).
#[derive(Default)]
struct WriterEnd {
    /// Output has ended (the writer ended, or the connection closed without
    /// one): the socket may close from now on.
    gone: bool,
    /// The channel to the writer, once it has started.
    tx: Option<may::sync::mpsc::Sender<Out>>,
    /// The sender whose drop tells the reader that output has ended, while
    /// no writer has started (then the writer holds it).
    done: Option<may::sync::mpsc::Sender<()>>,
}

impl QueueConn {
    /// Ends the connection's output, after what was already queued: tells
    /// its writer to stop, or, if it never needed one, ends the socket's
    /// output here, as the writer would have ([`Linger::end_output`]: the
    /// reader drains what the client still sends, then closes).
    ///
    /// [`Linger::end_output`]: super::socket::Linger::end_output
    fn close_writer(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let mut end = self.writer_end.lock();
            if let Some(tx) = &end.tx {
                // Under the lock, as `QueueHost::push` sends data: nothing
                // is queued behind the CLOSE.
                let _ = tx.send(Out::Close);
            } else if let Some(done) = end.done.take() {
                end.gone = true;
                drop(end);
                // SAFETY: the reader keeps the socket open until `done`,
                // the last sender of its wake-up, is dropped (below).
                unsafe { self.linger.end_output(self.fd, &self.activity) };
                drop(done);
            }
        }
    }
}

/// One shard: its ring, its connections, shared by their reader coroutines,
/// its runner and the server handle.
pub(crate) struct Shard {
    pub ring: EventRing<Event>,
    conns: Mutex<HashMap<i32, Arc<QueueConn>>>,
    /// Set when every connection is closed and `wait_msg` may say SHUTDOWN.
    pub shutdown: AtomicBool,
    /// Set when a reload replaced this shard's guest: SHUTDOWN once its
    /// last connection is gone.
    retired: AtomicBool,
    pub restarts: AtomicU64,
}

impl Shard {
    fn new(capacity: usize) -> Arc<Shard> {
        Arc::new(Shard {
            ring: EventRing::new(capacity),
            conns: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
        })
    }

    /// Adds `conn` to the shard, unless a reload has retired it. A retired
    /// shard's runner leaves once it has no connection left (`finished`),
    /// so a connection added after that would never be served, and, its
    /// generation forgotten by `Generations::install`, never reached by
    /// shutdown either. The check is made under the table's lock, which
    /// `finished` takes after reading `retired`: either the runner sees the
    /// connection, or this sees `retired`.
    fn admit(&self, conn: &Arc<QueueConn>) -> bool {
        let mut conns = self.conns.lock();
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        conns.insert(conn.id, Arc::clone(conn));
        true
    }

    /// Whether the guest may be told SHUTDOWN: the server stops, or the
    /// shard was retired and has no connection left; and nothing is queued.
    fn finished(&self) -> bool {
        self.ring.is_empty()
            && (self.shutdown.load(Ordering::Acquire)
                || (self.retired.load(Ordering::Acquire) && self.conns.lock().is_empty()))
    }
}

/// Every shard of a queue-mode server.
pub(crate) struct Queue {
    pub shards: Vec<Arc<Shard>>,
}

impl Queue {
    /// `n` shards (at least 1) of `capacity` events each.
    pub(crate) fn new(n: usize, capacity: usize) -> Arc<Queue> {
        Arc::new(Queue { shards: (0..n.max(1)).map(|_| Shard::new(capacity)).collect() })
    }

    /// The shard that serves connection `id` for its whole life.
    fn shard_of(&self, id: i32) -> &Arc<Shard> {
        &self.shards[id as u32 as usize % self.shards.len()]
    }

    /// Connections whose CLOSE their guest has not seen yet.
    pub(crate) fn open_conns(&self) -> usize {
        self.shards.iter().map(|s| s.conns.lock().len()).sum()
    }

    /// Events waiting, per shard.
    pub(crate) fn depths(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.ring.len() as u64).collect()
    }

    /// The most events ever waiting at once, per shard.
    pub(crate) fn high_waters(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.ring.high_water() as u64).collect()
    }

    /// Instances replaced after a fault, all shards.
    pub(crate) fn restarts(&self) -> u64 {
        self.shards.iter().map(|s| s.restarts.load(Ordering::Relaxed)).sum()
    }

    /// A reload replaced this queue's guest: each shard's guest is told
    /// SHUTDOWN once its last connection is gone.
    pub(crate) fn retire(&self) {
        for s in &self.shards {
            s.retired.store(true, Ordering::Release);
            s.ring.wake();
        }
    }

    /// Lets every `wait_msg` answer SHUTDOWN once its ring is empty.
    pub(crate) fn shut_down(&self) {
        for s in &self.shards {
            s.shutdown.store(true, Ordering::Release);
            s.ring.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: i32) -> Arc<QueueConn> {
        Arc::new(QueueConn {
            id,
            fd: -1,
            activity: Arc::default(),
            writer_end: Arc::default(),
            pending: Arc::default(),
            inflight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            open_gen: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            peer: None,
            linger: Default::default(),
        })
    }

    /// A reload between the listener choosing a generation and adding the
    /// connection to its shard: once retired, a shard takes no connection,
    /// so a runner that saw it finished (and left) leaves none behind.
    #[test]
    fn a_retired_shard_admits_no_connection() {
        let q = Queue::new(1, 4);
        let s = &q.shards[0];
        assert!(s.admit(&conn(1)), "before the reload");
        q.retire();
        assert!(!s.finished(), "its connection is still open");
        s.conns.lock().remove(&1); // its CLOSE handed out
        assert!(s.finished(), "the runner may leave");
        // The listener chose this generation just before the reload.
        assert!(!s.admit(&conn(2)), "a retired shard took a connection its runner will never serve");
        assert!(s.finished() && q.open_conns() == 0);
    }
}
