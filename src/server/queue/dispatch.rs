//! The one source of events for a shard's guest, whether it loops in
//! `wait_msg` or the host loops for it.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Event, QueueConn, Shard};

/// What the guest is handed next.
pub(super) enum Next {
    Open(i32),
    Data(i32, Vec<u8>),
    Close(i32),
    Shutdown,
}

/// Picks the next event for the current instance: skips events of
/// connections that belong to a crashed instance or that the guest closed,
/// splits DATA longer than the guest's buffer, and says SHUTDOWN once the
/// server stops and every connection's CLOSE has been handed out.
pub(crate) struct Dispatcher {
    pub(super) qs: Arc<Shard>,
    pub(super) generation: u64,
    /// The rest of a DATA event that did not fit the guest's buffer.
    pub(super) rest: Option<(i32, Vec<u8>, usize)>,
    /// The DATA event the guest is handling: its bytes count as the
    /// connection's queued input until the guest asks for the next event
    /// (by then its answer is in the pending output), so the reader's
    /// backpressure never loses sight of them.
    pub(super) handling: Option<(Arc<QueueConn>, usize)>,
    /// The connection whose CLOSE the guest is handling: it may still send
    /// (a client that only shut its side down reads what `on_close` sends,
    /// as in direct mode), and its writer is closed, after what was sent,
    /// when the guest asks for the next event.
    pub(super) closing: Option<Arc<QueueConn>>,
}

impl Dispatcher {
    pub(super) fn new(qs: &Arc<Shard>, generation: u64) -> Dispatcher {
        Dispatcher { qs: Arc::clone(qs), generation, rest: None, handling: None, closing: None }
    }

    /// The connection whose DATA the guest is handling, if it is `id`: what
    /// `send` and `Caller::connection` look up on every request, found
    /// without the shard's connection table (its lock and a hash lookup).
    /// Also the connection whose CLOSE it is handling, which is no longer
    /// in the table.
    pub(super) fn handling(&self, id: i32) -> Option<&Arc<QueueConn>> {
        let by_id = |c: &&Arc<QueueConn>| c.id == id;
        self.handling.as_ref().map(|(c, _)| c).filter(by_id).or_else(|| self.closing.as_ref().filter(by_id))
    }

    pub(super) fn done_handling(&mut self) {
        if let Some((c, n)) = self.handling.take() {
            c.inflight.fetch_sub(n, Ordering::AcqRel);
        }
        if let Some(c) = self.closing.take() {
            c.close_writer();
        }
    }

    /// The next event; a DATA event carries at most `cap` bytes and the
    /// rest waits for the next call. With `cap` 0 it carries none and
    /// keeps all of them: `wait_msg`'s peek.
    pub(super) fn next(&mut self, cap: usize) -> Next {
        if let Some((conn, data, off)) = self.rest.take() {
            // Unless the guest closed the connection meanwhile: then the
            // rest goes, as its queued DATA events do (below).
            if !self.handling.as_ref().is_some_and(|(c, _)| c.id == conn && c.closed.load(Ordering::Acquire)) {
                let end = (off + cap).min(data.len());
                let piece = data[off..end].to_vec();
                if end < data.len() {
                    self.rest = Some((conn, data, end));
                }
                return Next::Data(conn, piece);
            }
        }
        self.done_handling();
        loop {
            let Some(ev) = self.qs.ring.pop(Duration::from_millis(50)) else {
                if self.qs.finished() {
                    return Next::Shutdown;
                }
                // `may` resumes a coroutine whose timed wait expired on its
                // timer thread; yield so the guest never runs there (a busy
                // guest would stall every timer in the process).
                if may::coroutine::is_coroutine() {
                    may::coroutine::yield_now();
                }
                continue;
            };
            let conns = self.qs.conns.lock();
            match ev {
                Event::Open(id) => {
                    if let Some(c) = conns.get(&id) {
                        c.open_gen.store(self.generation, Ordering::Release);
                        return Next::Open(id);
                    }
                }
                Event::Data(id, data) => {
                    let Some(c) = conns.get(&id) else { continue };
                    if c.open_gen.load(Ordering::Acquire) != self.generation || c.closed.load(Ordering::Acquire) {
                        c.inflight.fetch_sub(data.len(), Ordering::AcqRel);
                        continue;
                    }
                    self.handling = Some((Arc::clone(c), data.len()));
                    drop(conns);
                    if data.len() > cap {
                        let piece = data[..cap].to_vec();
                        self.rest = Some((id, data, cap));
                        return Next::Data(id, piece);
                    }
                    return Next::Data(id, data);
                }
                Event::Close(id) => {
                    drop(conns);
                    let Some(c) = self.qs.conns.lock().remove(&id) else { continue };
                    if c.open_gen.load(Ordering::Acquire) != self.generation || c.refused.load(Ordering::Acquire) {
                        c.close_writer();
                        continue;
                    }
                    self.closing = Some(c);
                    return Next::Close(id);
                }
            }
        }
    }

    /// Closes every connection the (crashed) current instance had opened.
    pub(super) fn abandon_generation(&mut self) -> usize {
        self.rest = None;
        self.done_handling();
        // Picked under the lock, closed after it: closing is a system call
        // (or a send to a writer) per connection, thousands after a crash,
        // and a new connection of this shard is admitted under the lock
        // (blocking its `may` worker thread while it waits), as is every
        // statistics snapshot.
        let abandoned: Vec<Arc<QueueConn>> = self
            .qs
            .conns
            .lock()
            .values()
            .filter(|c| c.open_gen.load(Ordering::Acquire) == self.generation)
            .cloned()
            .collect();
        abandoned.iter().for_each(|c| c.close_writer());
        abandoned.len()
    }
}
