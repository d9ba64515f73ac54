//! The bounded event queue between connection coroutines and the queue-mode
//! guest.
//!
//! A lock-free ring (`crossbeam` `ArrayQueue`) between two counting
//! semaphores from `may` (`items` and `space`), the classic bounded buffer:
//!
//! * [`push`](EventRing::push) waits for space, so a full queue stops the
//!   pushing reader from reading its socket and TCP pushes back on the
//!   client: nothing is dropped, memory stays bounded by `capacity` events.
//! * [`pop`](EventRing::pop) parks the consumer while the queue is empty
//!   (an OS-thread consumer after polling for 10 µs).
//!
//! `may`'s semaphores park a coroutine when called from one and the OS
//! thread otherwise, so producers (coroutines) and the consumer (an OS
//! thread or a coroutine) can be mixed. Events of one producer keep their
//! order (FIFO). `benches/queue.rs` measures it against a mutex queue.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use may::sync::Semphore;

/// How long [`EventRing::pop`] on an OS thread polls before it parks (the
/// same window `may`'s workers poll their epoll for, vendor/README.md).
pub(crate) const POLL_BEFORE_PARK: Duration = Duration::from_micros(10);

/// A bounded MPMC queue whose consumer parks instead of spinning, after a
/// brief poll (see [`EventRing::pop`]).
pub struct EventRing<T> {
    ring: ArrayQueue<T>,
    items: Semphore,
    space: Semphore,
    /// The most events ever queued at once.
    high_water: AtomicUsize,
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
        EventRing {
            ring: ArrayQueue::new(capacity),
            items: Semphore::new(0),
            space: Semphore::new(capacity),
            high_water: AtomicUsize::new(0),
        }
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
        // A load first: the mark rarely moves, and a read-modify-write on
        // every push would bounce the line between the pushing cores.
        let len = self.ring.len();
        if len > self.high_water.load(Ordering::Relaxed) {
            self.high_water.fetch_max(len, Ordering::Relaxed);
        }
        self.items.post();
        Ok(())
    }

    /// Takes the oldest event, waiting up to `timeout` for one.
    ///
    /// A consumer on an OS thread (queue mode's default runner) first polls
    /// for up to 10 µs, yielding its core between polls: under
    /// load the next event is usually microseconds away, and a park costs a
    /// futex sleep, a wake-up syscall in the producer and a context switch.
    /// A coroutine consumer parks at once (a thread yield would hold up every
    /// other coroutine on its worker).
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        if !may::coroutine::is_coroutine() {
            let start = std::time::Instant::now();
            while start.elapsed() < POLL_BEFORE_PARK {
                if let Some(v) = self.try_pop() {
                    return Some(v);
                }
                std::thread::yield_now();
            }
        }
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

    /// The most events ever queued at once (at most the capacity): whether
    /// backpressure ever engaged, which sampling `len` can miss.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
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
