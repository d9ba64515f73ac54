//! The guest's imports in queue mode: `send`/`close` through the shared
//! check order (`conn_host.rs`), and `wait_msg`.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::super::conn_host::{self, Outbox};
use super::super::socket;
use super::super::Shared;
use super::dispatch::{Dispatcher, Next};
use super::{Out, QueueConn};
use crate::abi::{self, AbiHost, ERR_BAD_POINTER};
use crate::wamr::memory::GuestMemory;
use crate::wamr::InterruptHandle;

/// The ABI host of the queue guest's env.
pub(super) struct QueueHost {
    pub(super) dispatcher: Arc<Mutex<Dispatcher>>,
    pub(super) sh: Arc<Shared>,
    pub(super) interrupt: Arc<InterruptHandle>,
    pub(super) budget: Option<Duration>,
    /// When the event the guest is handling was handed out.
    pub(super) handed_out: Option<Instant>,
    /// The DATA event the guest peeked at last (`wait_msg` with `cap` 0),
    /// and the deadline that peek armed: peeking again at the same event
    /// keeps it, so a guest that peeks in a loop cannot renew its budget.
    pub(super) peeked: Option<(i32, Option<(Instant, Duration)>)>,
    /// The guest runs its own loop (`run`): only then may it wait.
    pub(super) guest_loop: bool,
    /// The deadline armed when `wait_msg` first answered SHUTDOWN: the
    /// guest has its budget to return from `run`, and later calls (answered
    /// SHUTDOWN at once) keep that deadline rather than buy more time.
    pub(super) shutdown_deadline: Option<Option<(Instant, Duration)>>,
    /// The connection of the event being handled (`Caller::connection`).
    pub(super) current: Arc<Mutex<Option<crate::abi::ConnInfo>>>,
    /// The guest's budget of log lines.
    pub(super) log_limit: super::super::ratelimit::LogLimit,
}

/// Who `conn` is, for `Caller::connection`.
pub(super) fn conn_info(d: &Dispatcher, conn: i32) -> Option<crate::abi::ConnInfo> {
    let peer = match d.handling(conn) {
        Some(c) => c.peer,
        None => d.qs.conns.lock().get(&conn).and_then(|c| c.peer),
    };
    Some(crate::abi::ConnInfo { id: conn, peer })
}

impl QueueHost {
    fn conn(&self, id: i32) -> Option<Arc<QueueConn>> {
        let d = self.dispatcher.lock();
        let c = match d.handling(id) {
            Some(c) => Arc::clone(c),
            None => d.qs.conns.lock().get(&id).cloned()?,
        };
        (c.open_gen.load(Ordering::Acquire) == d.generation && !c.closed.load(Ordering::Acquire)).then_some(c)
    }
}

impl Outbox for QueueHost {
    type Conn = Arc<QueueConn>;

    fn find(&self, conn: i32) -> Option<Arc<QueueConn>> {
        self.conn(conn)
    }

    fn queued(&self, c: &Arc<QueueConn>) -> usize {
        c.pending.load(Ordering::Acquire)
    }

    fn push(&mut self, c: &Arc<QueueConn>, mut bytes: &[u8]) -> bool {
        // Nothing queued for the writer: write what the socket takes now,
        // without the channel hop and the writer's wake-up (an OS-thread
        // runner would wake a may worker through its eventfd for each
        // answer). The rest, if any, goes to the writer behind it, in order:
        // later sends see it pending and queue too. A failed write leaves
        // the bytes to the writer, whose own write fails the same way.
        let mut end = c.writer_end.lock();
        if end.gone || c.closed.load(Ordering::Acquire) {
            // Output has ended, or is ending: `close_writer` marks the
            // connection closed before it takes this lock to queue CLOSE, so
            // nothing is queued behind a CLOSE.
            return false;
        }
        if c.pending.load(Ordering::Acquire) == 0 {
            // SAFETY: the socket stays open until output has ended and
            // `writer_end.gone` is set, which cannot happen while we hold
            // its lock.
            if let Ok(n) = unsafe { socket::write_nonblocking(c.fd, bytes) } {
                if n > 0 {
                    self.sh.counters.bytes_out.add(n as u64);
                    c.activity.touch();
                }
                bytes = &bytes[n..];
                if bytes.is_empty() {
                    return true;
                }
            }
        }
        // The rest goes to the writer, started now if the connection has
        // not needed one before. Sent under the lock, as `close_writer`
        // sends CLOSE, so that nothing is queued behind a CLOSE.
        c.pending.fetch_add(bytes.len(), Ordering::AcqRel);
        let data = Out::Data(bytes.to_vec());
        let sent = match &end.tx {
            Some(tx) => tx.send(data).is_ok(),
            None => match end.done.take() {
                Some(done) => {
                    let (tx, rx) = may::sync::mpsc::channel();
                    let _ = tx.send(data);
                    end.tx = Some(tx);
                    drop(end);
                    super::conn::start_writer(&self.sh, c, rx, done);
                    true
                }
                // Not reached: `done` leaves only where `tx` or `gone` is set
                // (a connection built without one, as in unit tests).
                None => false,
            },
        };
        if !sent {
            c.pending.fetch_sub(bytes.len(), Ordering::AcqRel);
        }
        sent
    }

    fn close(&mut self, c: &Arc<QueueConn>) {
        c.close_writer();
    }
}

impl AbiHost for QueueHost {
    fn send(&mut self, conn: i32, bytes: Result<&[u8], ()>) -> i32 {
        let sh = Arc::clone(&self.sh);
        conn_host::send(self, &sh, conn, bytes)
    }

    fn close(&mut self, conn: i32) -> i32 {
        conn_host::close(self, conn)
    }

    fn wait_msg(&mut self, mem: &mut GuestMemory<'_>, buf: i32, cap: i32, info: i32) -> i32 {
        // Only a guest's own `run` loop waits; inside a handler the host
        // loop calls, taking events would steal them from that loop.
        if !self.guest_loop {
            return abi::ERR_NOT_IN_THIS_MODE;
        }
        // Refused before anything changes: such a call hands out no event
        // and waits for none, so the deadline of the event being handled
        // keeps running (disarming it here let a guest that looped on bad
        // pointers spin forever out of the budget's reach).
        if mem.check(info, abi::EVENT_SIZE).is_none() || cap < 0 || mem.check(buf, cap).is_none() {
            self.sh.counters.bad_pointers.fetch_add(1, Ordering::Relaxed);
            return ERR_BAD_POINTER;
        }
        // The guest is back for more: its time for the last event is over
        // (unless it only peeks at it again, below). Once told SHUTDOWN, it
        // has no more events to wait for: its clock keeps running.
        let peeked = self.peeked.take();
        match self.shutdown_deadline {
            Some(deadline) => self.interrupt.restore_deadline(deadline),
            None => self.interrupt.set_deadline(None),
        }
        if let Some(t) = self.handed_out.take() {
            self.sh.metrics.call_seconds.observe(t.elapsed());
        }
        // With `cap` 0 a DATA event comes back empty and the dispatcher
        // keeps all its bytes for the next call: a peek (guest-abi.md 3).
        let next = self.dispatcher.lock().next(cap as usize);
        let (conn, kind, ret) = match next {
            Next::Shutdown => {
                // The guest must now return from `run`, within its budget,
                // as after an event; later calls keep this deadline (see
                // above), so one that ignores SHUTDOWN in a loop is stopped,
                // not left polling forever.
                if self.shutdown_deadline.is_none() {
                    self.interrupt.set_deadline(self.budget);
                    self.shutdown_deadline = Some(self.interrupt.deadline());
                    // The instruction budget too: without it the guest had
                    // only what its last event left to return in.
                    self.interrupt.rearm_instructions();
                }
                return abi::ERR_SHUTDOWN;
            }
            Next::Open(c) => (c, abi::EVENT_OPEN, 0),
            Next::Close(c) => (c, abi::EVENT_CLOSE, 0),
            // Only `buf .. buf+n` (guest-abi.md 3): the buffer is the guest's
            // own memory, and what lies past `n` is what the guest left there.
            // (The host loop's receive buffer is the host's, and is wiped
            // between connections: `GuestEnv::on_recv`.)
            Next::Data(c, data) => {
                mem.write(buf, &data);
                (c, abi::EVENT_DATA, data.len() as i32)
            }
        };
        *self.current.lock() = conn_info(&self.dispatcher.lock(), conn);
        let mut rec = [0u8; abi::EVENT_SIZE as usize];
        rec[..4].copy_from_slice(&conn.to_le_bytes());
        rec[4..].copy_from_slice(&kind.to_le_bytes());
        mem.write(info, &rec);
        let peek = kind == abi::EVENT_DATA && cap == 0;
        match peeked {
            // The same event again, not consumed: a peek returns at once and
            // buys no time (a loop of peeks is a spinning guest).
            Some((c, deadline)) if peek && c == conn => {
                self.interrupt.restore_deadline(deadline);
                self.peeked = Some((c, deadline));
                return ret;
            }
            _ => {}
        }
        self.interrupt.set_deadline(self.budget);
        if peek {
            self.peeked = Some((conn, self.interrupt.deadline()));
        }
        self.handed_out = Some(Instant::now());
        self.interrupt.rearm_instructions();
        ret
    }

    fn epoch(&self) -> Instant {
        self.sh.epoch
    }

    fn bad_log_pointer(&mut self) {
        conn_host::bad_log_pointer(&self.sh);
    }

    fn connection(&self) -> Option<crate::abi::ConnInfo> {
        *self.current.lock()
    }

    /// One budget for the shard's guest (its connections share an instance).
    fn log_allowed(&mut self) -> Option<u64> {
        self.log_limit.allow()
    }
}
