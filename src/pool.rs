//! A bounded pool of ready envs, so that a connection does not pay for a
//! fresh instance.
//!
//! [`EnvPool::acquire`] takes an idle env — first from its thread's slot
//! (one env per slot, behind a lock only that thread normally takes), then
//! from a shared lock-free queue (`crossbeam` ArrayQueue), then from the
//! other threads' slots — or creates one;
//! the returned [`Lease`] puts it back when dropped (into the slot if it is
//! empty, else into the queue) — unless the guest faulted (trap, budget
//! overrun, poisoned shard), in which case the env is destroyed, or the pool
//! is full or closed.
//!
//! The slots are the per-worker fast path: with two `may` workers taking
//! and returning envs at once, the shared queue's head and tail and its hit
//! counter bounced between the cores (`benches/core.rs`,
//! `pool/acquire_release_no_reset_two_coroutines`). A coroutine may move to
//! another worker between acquire and release; the env then lands in that
//! worker's slot, which is just as good.
//!
//! Before an env goes back it is reset ([`GuestEnv::reset`]): linear memory
//! and globals return to the state the env had when it was made, so the next
//! holder starts exactly as with a fresh instance and sees nothing an
//! earlier one left. An env that cannot be reset (its memory grew, it
//! faulted, the module changes tables or drops segments) is destroyed
//! instead. The reset runs on release — at the end of a connection, after
//! its socket is closed — never on a request's path.
//!
//! [`EnvPool::new_shared_state`] makes a pool that does not reset (only the
//! receive buffer is wiped): `EnvPolicy::Message` uses it, where an env
//! serves one callback of any connection and state is shared by design.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::error::Result;
use crate::guest::{Guest, GuestEnv};

/// Pool counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Acquires served by an idle env.
    pub hits: u64,
    /// Acquires that had to create an env.
    pub misses: u64,
    /// Envs idle in the pool now.
    pub idle: u64,
    /// Envs destroyed on release because they faulted (not those whose
    /// call the host cut at shutdown).
    pub discarded: u64,
}

/// Idle envs of one guest.
#[derive(Debug)]
pub struct EnvPool {
    guest: Arc<Guest>,
    /// Boxed: a `GuestEnv` is a few hundred bytes, and moving it by value
    /// through the queue and into the lease was most of the pool's own cost
    /// (two `memcpy`s per acquire; callgrind, `benches/core.rs`).
    idle: ArrayQueue<Box<GuestEnv>>,
    /// One idle env per thread slot, ahead of `idle` (see the module docs).
    slots: Box<[CachePadded<Slot>]>,
    closed: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
    reset: bool,
    retired: AtomicBool,
}

/// A thread's place in the pool: at most one idle env, and the hits it
/// served (summed by [`EnvPool::stats`]; a counter per slot so that the
/// fast path touches no line another core writes).
#[derive(Debug, Default)]
struct Slot {
    env: Mutex<Option<Box<GuestEnv>>>,
    hits: AtomicU64,
}

/// This thread's slot index (threads numbered as they first use a pool).
/// Never inlined, so that a coroutine that moved to another worker gets
/// that worker's slot (see `server::striped`'s `stripe`).
#[inline(never)]
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

impl EnvPool {
    /// A pool keeping at most `capacity` idle envs (at least 1) in its
    /// shared queue, plus one in each thread slot (`may`'s workers plus
    /// one, rounded up to a power of two), each reset to its initial state
    /// before it is reused.
    pub fn new(guest: Arc<Guest>, capacity: usize) -> Arc<EnvPool> {
        Self::make(guest, capacity, true)
    }

    /// A pool that does not reset envs between holders (shared guest state;
    /// only the receive buffer is wiped). For stateless guests only.
    pub fn new_shared_state(guest: Arc<Guest>, capacity: usize) -> Arc<EnvPool> {
        Self::make(guest, capacity, false)
    }

    fn make(guest: Arc<Guest>, capacity: usize, reset: bool) -> Arc<EnvPool> {
        let slots = (may::config().get_workers() + 1).next_power_of_two().min(64);
        Arc::new(EnvPool {
            guest,
            idle: ArrayQueue::new(capacity.max(1)),
            slots: (0..slots).map(|_| CachePadded::new(Slot::default())).collect(),
            closed: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            reset,
            retired: AtomicBool::new(false),
        })
    }

    /// The guest.
    pub fn guest(&self) -> &Arc<Guest> {
        &self.guest
    }

    /// An env for the caller's exclusive use until the lease is dropped.
    pub fn acquire(self: &Arc<Self>) -> Result<Lease> {
        if self.closed.load(Ordering::Acquire) {
            return Err(crate::Error::PoolClosed);
        }
        let slot = self.slot();
        if let Some(env) = self.take_reusable(slot) {
            slot.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Lease { env: Some(env), pool: Arc::clone(self) });
        }
        while let Some(env) = self.idle.pop() {
            // Its shard may have faulted, or destroy_all doomed it, while it
            // sat idle.
            if !self.reusable(&env) {
                continue;
            }
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Lease { env: Some(env), pool: Arc::clone(self) });
        }
        // Other threads' slots last: an env released on another worker
        // waits there. Creating one instead cost an instance more, and
        // failed outright when `max_envs` or the guest-memory budget had
        // room for no more: a connection was refused (or, policy message,
        // closed) with an env idle.
        if let Some(env) = self.slots.iter().find_map(|s| self.take_reusable(s)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Lease { env: Some(env), pool: Arc::clone(self) });
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let env = self.guest.create_env_boxed()?;
        Ok(Lease { env: Some(env), pool: Arc::clone(self) })
    }

    /// The env idle in `slot`, if there is one and it may serve again (a
    /// faulted one is dropped, which destroys it).
    fn take_reusable(&self, slot: &Slot) -> Option<Box<GuestEnv>> {
        // A separate statement: the slot's lock is released at its end.
        let cached = slot.env.lock().take();
        cached.filter(|env| self.reusable(env))
    }

    /// Whether `env` may serve again; a faulted one is counted (the caller
    /// drops it, which destroys it).
    fn reusable(&self, env: &GuestEnv) -> bool {
        if env.is_doomed() {
            return false;
        }
        if env.poisoned().is_some() {
            if env.note_fault() {
                self.discarded.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        true
    }

    fn release(&self, mut env: Box<GuestEnv>) {
        if !self.reusable(&env) {
            return;
        }
        if self.closed.load(Ordering::Acquire) || self.retired.load(Ordering::Acquire) {
            return;
        }
        env.set_host(None);
        if self.reset {
            if let Err(why) = env.reset() {
                tracing::debug!(why, "env not reusable; destroying it");
                return;
            }
        } else {
            env.wipe_recv_buffer();
        }
        let overflow = {
            let mut s = self.slot().env.lock();
            if s.is_none() {
                *s = Some(env);
                None
            } else {
                Some(env)
            }
        };
        if let Some(env) = overflow {
            // A full pool drops (destroys) the env.
            let _ = self.idle.push(env);
        }
        // `close` may have drained the pool between our check and the
        // store: never leave an env behind in a closed pool.
        if self.closed.load(Ordering::Acquire) || self.retired.load(Ordering::Acquire) {
            self.drain();
        }
    }

    fn slot(&self) -> &Slot {
        // The slot count is a power of two.
        &self.slots[thread_index() & (self.slots.len() - 1)]
    }

    /// Destroys every idle env: the queue's and the slots'.
    fn drain(&self) {
        while self.idle.pop().is_some() {}
        for s in self.slots.iter() {
            // Taken under the lock, destroyed after it.
            let env = s.env.lock().take();
            drop(env);
        }
    }

    /// Destroys every idle env, stops keeping released ones, and refuses
    /// further acquires with [`Error::PoolClosed`](crate::Error::PoolClosed)
    /// (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drain();
    }

    /// Stops keeping released envs (they are destroyed) and destroys the
    /// idle ones, but still serves acquires: a guest replaced by a reload
    /// serves its remaining connections and then goes with its last one.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.drain();
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        let slotted = self.slots.iter().filter(|s| s.env.lock().is_some()).count();
        PoolStats {
            hits: self.hits.load(Ordering::Relaxed)
                + self.slots.iter().map(|s| s.hits.load(Ordering::Relaxed)).sum::<u64>(),
            misses: self.misses.load(Ordering::Relaxed),
            idle: (self.idle.len() + slotted) as u64,
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }
}

/// Exclusive use of a pooled env; returns it to the pool on drop (also when
/// the holder unwinds from a panic or is cancelled).
#[derive(Debug)]
pub struct Lease {
    env: Option<Box<GuestEnv>>,
    pool: Arc<EnvPool>,
}

impl Lease {
    /// Destroys the env instead of returning it (e.g. its guest state is
    /// suspect for a reason the host knows).
    pub fn discard(mut self) {
        self.env.take();
    }
}

impl std::ops::Deref for Lease {
    type Target = GuestEnv;
    fn deref(&self) -> &GuestEnv {
        self.env.as_ref().expect("lease holds an env until dropped")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut GuestEnv {
        self.env.as_mut().expect("lease holds an env until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(env) = self.env.take() {
            self.pool.release(env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::GuestConfig;
    use crate::registry::Registry;

    /// With room for one env, it serves whichever thread asks: released on
    /// one thread (into that thread's slot), it is taken on the next.
    /// Before, the next thread found its own slot and the queue empty,
    /// tried to create a second env, and was refused while the one env
    /// sat idle.
    #[test]
    fn an_env_idle_in_another_threads_slot_is_taken_before_creating_one() {
        let module = crate::wamr::Module::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/guests/echo.wat")).unwrap();
        let config = GuestConfig { max_envs: 1, ..GuestConfig::default() };
        let guest = Guest::new(module, config, Registry::new()).unwrap();
        let pool = EnvPool::new_shared_state(guest, 4);
        // Fresh threads, one after another: at least two of them have
        // different slots.
        for i in 0..4 {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let lease = pool.acquire().unwrap_or_else(|e| panic!("thread {i}: {e}"));
                drop(lease);
            })
            .join()
            .unwrap();
        }
        let stats = pool.stats();
        assert_eq!((stats.misses, stats.hits, stats.idle), (1, 3, 1), "{stats:?}");
    }
}
