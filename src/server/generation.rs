//! Guest generations: what serves new connections, and what still serves
//! older ones after a reload.
//!
//! A [`Generation`] is one guest module with its env pool and, in queue
//! mode, its shards and runners. New connections take the current one and
//! keep it for life. [`Generations::install`] (a reload: SIGHUP, or
//! `ServerHandle::reload`) makes a new generation current and *retires* the
//! old: its pool stops keeping released envs, its queue shards answer
//! SHUTDOWN to their guest once their last connection has closed. Nothing is
//! dropped: connections open at the reload finish on the old guest, as with
//! nginx; the old generation goes when the last of them has.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::handle::RunnerHandle;
use super::{queue, EnvPolicy, QueueRunner, Shared};
use crate::error::{Error, Result};
use crate::guest::{Guest, GuestConfig};
use crate::pool::{EnvPool, PoolStats};
use crate::registry::Registry;
use crate::wamr::Module;

/// One guest module and what serves it.
pub(crate) struct Generation {
    pub pool: Arc<EnvPool>,
    pub queue: Option<Arc<queue::Queue>>,
    runner: QueueRunner,
}

/// How to make a generation from a module: the server's settings.
#[derive(Clone)]
pub(crate) struct Template {
    pub config: GuestConfig,
    pub policy: EnvPolicy,
    pub pool_capacity: usize,
    pub queue: Option<QueueTemplate>,
}

/// Queue mode's part of a [`Template`].
#[derive(Clone, Copy)]
pub(crate) struct QueueTemplate {
    pub shards: usize,
    pub capacity: usize,
    pub runner: QueueRunner,
}

impl Template {
    /// Checks `module` (one env is made, see `Guest::new`) and builds its
    /// pool and queue; runners start with [`start_runners`].
    pub(crate) fn make(&self, module: Module, registry: &Arc<Registry>) -> Result<Arc<Generation>> {
        let guest = Guest::new(module, self.config.clone(), Arc::clone(registry))?;
        let pool = match self.policy {
            EnvPolicy::Connection => EnvPool::new(guest, self.pool_capacity),
            EnvPolicy::Message => EnvPool::new_shared_state(guest, self.pool_capacity),
        };
        let queue = self.queue.map(|q| queue::Queue::new(q.shards, q.capacity));
        let runner = self.queue.map(|q| q.runner).unwrap_or_default();
        Ok(Arc::new(Generation { pool, queue, runner }))
    }
}

/// Starts the queue runners of `gen` (none in direct mode).
///
/// All or nothing: if one cannot start, those already started are stopped
/// and joined (see [`stop_runners`]) before the error returns. Left alone
/// they would run for the life of the process, each with its shard, an
/// env and a standby, waiting for connections of a generation that is
/// never installed.
pub(crate) fn start_runners(shared: &Arc<Shared>, gen: &Arc<Generation>) -> Result<Vec<RunnerHandle>> {
    start_runners_with(shared, gen, |name, f| std::thread::Builder::new().name(name).spawn(f))
}

/// [`start_runners`], with `spawn_thread` starting each `Thread` runner.
fn start_runners_with(
    shared: &Arc<Shared>,
    gen: &Arc<Generation>,
    mut spawn_thread: impl FnMut(String, Box<dyn FnOnce() + Send>) -> std::io::Result<std::thread::JoinHandle<()>>,
) -> Result<Vec<RunnerHandle>> {
    let mut runners = Vec::new();
    let Some(q) = &gen.queue else { return Ok(runners) };
    for (i, shard) in q.shards.iter().enumerate() {
        let (sh, qs, guest) = (Arc::clone(shared), Arc::clone(shard), Arc::clone(gen.pool.guest()));
        match gen.runner {
            QueueRunner::Thread => {
                match spawn_thread(format!("wamr-coro-queue-{i}"), Box::new(move || queue::run(sh, qs, guest))) {
                    Ok(h) => runners.push(RunnerHandle::Thread(h)),
                    Err(e) => {
                        stop_runners(gen, runners);
                        return Err(Error::io("starting a queue runner", e));
                    }
                }
            }
            QueueRunner::Coroutine => {
                runners.push(RunnerHandle::Coroutine(crate::coro::spawn(move || queue::run(sh, qs, guest))))
            }
        }
    }
    Ok(runners)
}

/// Stops and joins `runners` of `gen`, a generation never installed (so no
/// connection reached its shards): each guest is told SHUTDOWN, and each
/// runner destroys its env and standby as it leaves.
pub(crate) fn stop_runners(gen: &Generation, runners: Vec<RunnerHandle>) {
    if let Some(q) = &gen.queue {
        q.shut_down();
    }
    runners.into_iter().for_each(RunnerHandle::join);
}

/// The current generation and the retired ones still serving.
pub(crate) struct Generations {
    current: RwLock<Arc<Generation>>,
    /// Every generation not yet gone (the current one included), and what
    /// the gone ones had counted.
    all: Mutex<(Vec<Arc<Generation>>, GoneCounts)>,
    template: Template,
    reloads: AtomicU64,
}

/// The counters of generations already forgotten, so that the server's
/// counters (`ServerStats`, the metrics) never go down when a reload
/// replaces a guest and its last connection goes.
#[derive(Default, Clone, Copy)]
struct GoneCounts {
    hits: u64,
    misses: u64,
    discarded: u64,
    resets: u64,
    reset_refusals: u64,
    queue_restarts: u64,
}

impl GoneCounts {
    fn add(&mut self, g: &Generation) {
        let p = g.pool.stats();
        let (resets, refusals) = g.pool.guest().reset_counts();
        self.hits += p.hits;
        self.misses += p.misses;
        self.discarded += p.discarded;
        self.resets += resets;
        self.reset_refusals += refusals;
        self.queue_restarts += g.queue.as_ref().map_or(0, |q| q.restarts());
    }
}

impl Generations {
    pub(crate) fn new(first: Arc<Generation>, template: Template) -> Generations {
        Generations {
            current: RwLock::new(Arc::clone(&first)),
            all: Mutex::new((vec![first], GoneCounts::default())),
            template,
            reloads: AtomicU64::new(0),
        }
    }

    /// What new connections are served by.
    pub(crate) fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.read())
    }

    pub(crate) fn template(&self) -> &Template {
        &self.template
    }

    /// Makes `gen` current and retires the one it replaces; forgets retired
    /// generations that no connection uses any more.
    pub(crate) fn install(&self, gen: Arc<Generation>) {
        // Current first, then retired: from `retire` on, the old shards
        // admit no connection (`queue::Shard::admit`; one the listener had
        // chosen them for goes to this current one), so a retired queue
        // found without connections below stays without.
        let old = std::mem::replace(&mut *self.current.write(), Arc::clone(&gen));
        old.pool.retire();
        if let Some(q) = &old.queue {
            q.retire();
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.all.lock();
        let (all, gone) = &mut *guard;
        all.push(gen);
        let current = self.current();
        all.retain(|g| {
            let keep = Arc::ptr_eq(g, &current)
                || Arc::strong_count(&g.pool) > 1
                || g.queue.as_ref().is_some_and(|q| q.open_conns() > 0);
            if !keep {
                gone.add(g);
            }
            keep
        });
    }

    pub(crate) fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Envs reset, and envs that could not be, over every generation the
    /// server has had.
    pub(crate) fn reset_counts(&self) -> (u64, u64) {
        let all = self.all.lock();
        let gone = (all.1.resets, all.1.reset_refusals);
        all.0.iter().map(|g| g.pool.guest().reset_counts()).fold(gone, |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The pools' counters over every generation the server has had (its
    /// envs idle now: the live generations').
    pub(crate) fn pool_stats(&self) -> PoolStats {
        let all = self.all.lock();
        let gone = all.1;
        let init = PoolStats { hits: gone.hits, misses: gone.misses, idle: 0, discarded: gone.discarded };
        all.0.iter().map(|g| g.pool.stats()).fold(init, |a, p| PoolStats {
            hits: a.hits + p.hits,
            misses: a.misses + p.misses,
            idle: a.idle + p.idle,
            discarded: a.discarded + p.discarded,
        })
    }

    pub(crate) fn has_queue(&self) -> bool {
        self.all.lock().0.iter().any(|g| g.queue.is_some())
    }

    /// Queue events waiting, per shard, over every live generation.
    pub(crate) fn queue_depths(&self) -> Vec<u64> {
        self.all.lock().0.iter().filter_map(|g| g.queue.as_ref()).flat_map(|q| q.depths()).collect()
    }

    /// Queue instances replaced after a fault, over every generation the
    /// server has had.
    pub(crate) fn queue_restarts(&self) -> u64 {
        let all = self.all.lock();
        all.1.queue_restarts + all.0.iter().filter_map(|g| g.queue.as_ref()).map(|q| q.restarts()).sum::<u64>()
    }

    /// Queue-mode connections whose CLOSE a guest has not seen yet.
    pub(crate) fn queue_open_conns(&self) -> usize {
        self.all.lock().0.iter().filter_map(|g| g.queue.as_ref()).map(|q| q.open_conns()).sum()
    }

    /// Lets every queue guest see SHUTDOWN once its ring is empty.
    pub(crate) fn shut_down_queues(&self) {
        for q in self.all.lock().0.iter().filter_map(|g| g.queue.as_ref()) {
            q.shut_down();
        }
    }

    /// Closes every pool (shutdown).
    pub(crate) fn close_pools(&self) {
        for g in self.all.lock().0.iter() {
            g.pool.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::abi::ModeReq;
    use crate::server::{Mode, Server};

    /// The third of three runner threads cannot start (as when the process
    /// is out of threads): the two started are stopped and joined, and
    /// their envs destroyed, before the error returns.
    #[test]
    fn a_runner_that_cannot_start_leaves_no_runner_behind() {
        let module = Module::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/guests/echo.wat")).unwrap();
        // A direct-mode server: its Shared, with no runner of its own.
        let server = Server::builder(module.clone()).listen("127.0.0.1:0").mode(Mode::Direct).start().unwrap();
        let shared = &server.shared;
        let mut template = shared.generations.template().clone();
        template.config.mode = ModeReq::Queue;
        template.queue = Some(QueueTemplate { shards: 3, capacity: 64, runner: QueueRunner::Thread });
        let gen = template.make(module, &shared.registry).unwrap();
        let (guest_envs, registered) = (gen.pool.guest().live_envs(), shared.registry.live());

        let running = Arc::new(AtomicUsize::new(0));
        let mut spawned = 0;
        let err = start_runners_with(shared, &gen, |name, f| {
            spawned += 1;
            if spawned == 3 {
                return Err(std::io::Error::other("no more threads"));
            }
            let running = Arc::clone(&running);
            running.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new().name(name).spawn(move || {
                f();
                running.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .err()
        .expect("the third runner could not start");
        assert!(err.to_string().contains("no more threads"), "{err}");
        assert_eq!(spawned, 3);
        assert_eq!(running.load(Ordering::SeqCst), 0, "runners started before the failure still run");
        assert_eq!(gen.pool.guest().live_envs(), guest_envs, "their envs are still alive");
        assert_eq!(shared.registry.live(), registered, "their envs are still registered");
        let q = gen.queue.as_ref().unwrap();
        assert!(q.shards.iter().all(|s| Arc::strong_count(s) == 1), "a runner still holds its shard");
        server.stop();
    }
}
