//! The registry of every live guest exec env.
//!
//! Each [`GuestEnv`](crate::guest::GuestEnv) holds a [`RegistryEntry`]; the
//! entry is removed when the env is destroyed, which happens when its owner
//! drops it — a coroutine ending normally, unwinding from a panic, or being
//! cancelled at shutdown. The registry therefore always knows how many envs
//! exist, and the watchdog (`watchdog.rs`) can reach every env's interrupt
//! handle to stop a call that overran its budget.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::wamr::InterruptHandle;

/// Counters of a registry, as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryStats {
    /// Envs alive now.
    pub live: u64,
    /// Envs created so far.
    pub created: u64,
    /// Envs destroyed so far.
    pub destroyed: u64,
    /// Highest `live` seen.
    pub peak: u64,
    /// Env creations that failed.
    pub failures: u64,
    /// Envs discarded because their guest trapped, overran its budget, or
    /// shared a poisoned cluster.
    pub faulted: u64,
}

/// Tracks every live env. Shared (`Arc`) by the pool, the server and the
/// watchdog.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<Slots>,
    zero: Condvar,
    created: AtomicU64,
    destroyed: AtomicU64,
    peak: AtomicU64,
    failures: AtomicU64,
    faulted: AtomicU64,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Arc<InterruptHandle>>>,
    free: Vec<usize>,
    live: u64,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Records a new env; the returned entry unregisters it when dropped.
    pub(crate) fn register(self: &Arc<Self>, handle: Arc<InterruptHandle>) -> RegistryEntry {
        let mut s = self.slots.lock();
        let key = match s.free.pop() {
            Some(k) => {
                s.entries[k] = Some(handle);
                k
            }
            None => {
                s.entries.push(Some(handle));
                s.entries.len() - 1
            }
        };
        s.live += 1;
        self.peak.fetch_max(s.live, Ordering::Relaxed);
        self.created.fetch_add(1, Ordering::Relaxed);
        RegistryEntry { registry: Arc::clone(self), key }
    }

    fn unregister(&self, key: usize) {
        let mut s = self.slots.lock();
        s.entries[key] = None;
        s.free.push(key);
        s.live -= 1;
        self.destroyed.fetch_add(1, Ordering::Relaxed);
        if s.live == 0 {
            self.zero.notify_all();
        }
    }

    /// Counts a failed env creation.
    pub fn note_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an env discarded after a guest fault.
    pub fn note_fault(&self) {
        self.faulted.fetch_add(1, Ordering::Relaxed);
    }

    /// Envs alive now.
    pub fn live(&self) -> u64 {
        self.slots.lock().live
    }

    /// All counters.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            live: self.live(),
            created: self.created.load(Ordering::Relaxed),
            destroyed: self.destroyed.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            faulted: self.faulted.load(Ordering::Relaxed),
        }
    }

    /// Calls `f` on every live env's interrupt handle (under the registry
    /// lock: keep `f` short).
    pub fn for_each_handle(&self, mut f: impl FnMut(&InterruptHandle)) {
        let s = self.slots.lock();
        for h in s.entries.iter().flatten() {
            f(h);
        }
    }

    /// Terminates every call in flight now (shutdown: a guest that does not
    /// return on its own is stopped). Returns how many were stopped.
    pub fn interrupt_all(&self) -> usize {
        let mut n = 0;
        self.for_each_handle(|h| {
            if h.terminate_in_flight() {
                n += 1;
            }
        });
        n
    }

    /// Destroys every env: dooms each one (a call in flight is terminated,
    /// every later call fails, so its holder drops it — a coroutine ending,
    /// a lease going back to a pool that then discards it) and waits up to
    /// `timeout` for the live count to reach 0. Returns whether it did.
    /// Envs idle in an [`EnvPool`](crate::EnvPool) are destroyed by closing
    /// the pool; a holder that never calls again keeps its env until it
    /// drops it. Blocks the calling OS thread: call it from a thread, not
    /// from a coroutine.
    pub fn destroy_all(&self, timeout: Duration) -> bool {
        self.for_each_handle(|h| h.doom());
        self.wait_until_empty(timeout)
    }

    /// Waits until no env is alive, at most `timeout`. True if it got there.
    /// Blocks the calling OS thread (call it from a thread).
    pub fn wait_until_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.slots.lock();
        while s.live > 0 {
            if self.zero.wait_until(&mut s, deadline).timed_out() {
                return s.live == 0;
            }
        }
        true
    }
}

/// Membership of one env in a [`Registry`]; dropping it unregisters the env.
#[derive(Debug)]
pub(crate) struct RegistryEntry {
    registry: Arc<Registry>,
    key: usize,
}

impl Drop for RegistryEntry {
    fn drop(&mut self) {
        self.registry.unregister(self.key);
    }
}
