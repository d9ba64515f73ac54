//! The bounded event queue between connection coroutines and the queue-mode
//! guest.
//!
//! A lock-free ring (`crossbeam` `ArrayQueue`) between two counting
//! semaphores from `may` (`items` and `space`), the classic bounded buffer:
//!
//! * [`push`](EventRing::push) waits for space, so a full queue stops the
//!   pushing reader from reading its socket and TCP pushes back on the
//!   client: nothing is dropped, memory stays bounded by `capacity` events.
//! * [`pop`](EventRing::pop) parks the consumer without spinning while the
//!   queue is empty.
//!
//! `may`'s semaphores park a coroutine when called from one and the OS
//! thread otherwise, so producers (coroutines) and the consumer (an OS
//! thread or a coroutine) can be mixed. Events of one producer keep their
//! order (FIFO). `benches/queue.rs` measures it against a mutex queue.
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use may::sync::Semphore;

/// A bounded MPMC queue that parks instead of spinning.
pub struct EventRing<T> {
    ring: ArrayQueue<T>,
    items: Semphore,
    space: Semphore,
}

impl<T> std::fmt::Debug for EventRing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing").field("len", &self.ring.len()).field("capacity", &self.ring.capacity()).finish()
    }
}

impl<T> EventRing<T> {
    /// A queue of at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> EventRing<T> {
        let capacity = capacity.max(1);
        EventRing { ring: ArrayQueue::new(capacity), items: Semphore::new(0), space: Semphore::new(capacity) }
    }

    /// Appends `v`, waiting while the queue is full. Gives `v` back if the
    /// wait exceeded `timeout` (so a caller can re-check a stop flag).
    pub fn push(&self, v: T, timeout: Duration) -> Result<(), T> {
        if !self.space.wait_timeout(timeout) {
            return Err(v);
        }
        // A space permit guarantees a free slot.
        if let Err(v) = self.ring.push(v) {
            self.space.post();
            return Err(v);
        }
        self.items.post();
        Ok(())
    }

    /// Takes the oldest event, waiting up to `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        if !self.items.wait_timeout(timeout) {
            return None;
        }
        let v = self.ring.pop();
        if v.is_some() {
            self.space.post();
        }
        v
    }

    /// Takes the oldest event if there is one, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        if !self.items.try_wait() {
            return None;
        }
        let v = self.ring.pop();
        if v.is_some() {
            self.space.post();
        }
        v
    }

    /// Wakes a consumer parked in `pop` without giving it an event (it then
    /// returns `None` at once or after its next wait): used at shutdown.
    pub fn wake(&self) {
        self.items.post();
    }

    /// Events queued now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Maximum events.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }
}
