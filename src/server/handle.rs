//! A running server: statistics, reload and the graceful stop.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::wamr::Module;
use crate::watchdog::Watchdog;

use super::{bind, generation, metrics, ServerStats, Shared};

/// A queue shard's runner: a dedicated thread or a coroutine ([`QueueRunner`](super::QueueRunner)).
pub(super) enum RunnerHandle {
    Thread(std::thread::JoinHandle<()>),
    Coroutine(may::coroutine::JoinHandle<()>),
}

impl RunnerHandle {
    fn is_done(&self) -> bool {
        match self {
            RunnerHandle::Thread(h) => h.is_finished(),
            RunnerHandle::Coroutine(h) => h.is_done(),
        }
    }
    pub(super) fn join(self) {
        let _ = match self {
            RunnerHandle::Thread(h) => h.join().map_err(|_| ()),
            RunnerHandle::Coroutine(h) => h.join().map_err(|_| ()),
        };
    }
}

/// A running server. [`stop`](Self::stop) it for a graceful shutdown;
/// dropping it stops it too.
pub struct ServerHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) local_addr: SocketAddr,
    pub(super) acceptor: Mutex<Option<may::coroutine::JoinHandle<()>>>,
    pub(super) runners: Mutex<Vec<RunnerHandle>>,
    pub(super) sweeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A second descriptor of the listening socket, to wake the acceptor.
    pub(super) waker: Mutex<Option<socket2::Socket>>,
    pub(super) _watchdog: Option<Watchdog>,
    pub(super) metrics: Option<metrics::MetricsServer>,
    /// Held by a reload for its whole length, and by `stop` once it has set
    /// `stopping`: a reload that had passed its check when `stop` began
    /// installs its generation (and hands over its runners) before `stop`
    /// shuts the queues down and takes the runners; one that starts later
    /// sees `stopping` and is refused.
    pub(super) reloading: Mutex<()>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("local_addr", &self.local_addr).finish()
    }
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the guest for new connections, as nginx reloads: `module`
    /// is checked and instantiated first (a failure leaves the old guest
    /// serving and is returned); connections already open finish on the old
    /// guest, whose envs, pool and queue shards go once its last connection
    /// has closed.
    pub fn reload(&self, module: Module) -> Result<()> {
        let _reloading = self.reloading.lock();
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        let gen = self.shared.generations.template().make(module, &self.shared.registry)?;
        let runners = generation::start_runners(&self.shared, &gen)?;
        {
            // The runners of earlier generations that have finished are
            // joined here: an unjoined thread keeps its stack mapped, and
            // after some 30,000 reloads thread creation failed and the
            // process aborted.
            let mut held = self.runners.lock();
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *held).into_iter().partition(|r| r.is_done());
            done.into_iter().for_each(RunnerHandle::join);
            *held = running;
            held.extend(runners);
        }
        self.shared.generations.install(gen);
        tracing::info!(reloads = self.shared.generations.reloads(), "guest reloaded");
        Ok(())
    }

    /// Queue runners (threads or coroutines) this handle still holds, the
    /// current generation's and those of older ones not yet joined. For
    /// tests.
    #[doc(hidden)]
    pub fn held_runners(&self) -> usize {
        self.runners.lock().len()
    }

    /// Where the metrics endpoint listens, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Current statistics.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Whether `stop` has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Graceful shutdown: stop accepting; let in-flight callbacks finish
    /// (up to `shutdown_grace`, then terminate them); call `on_close` for
    /// every open connection; destroy every env. Returns the final stats
    /// (`envs.live` is 0 unless something could not be stopped, which is
    /// logged). Blocks the calling thread: call it from a thread, not from a
    /// coroutine.
    ///
    /// Every wait here is bounded by one deadline, because a guest that never
    /// returns occupies its `may` worker and can starve coroutines queued
    /// behind it (the acceptor among them): past the grace period, calls in
    /// flight are terminated until everything has ended.
    pub fn stop(&self) -> ServerStats {
        let Some(acceptor) = self.acceptor.lock().take() else {
            return self.stats();
        };
        let sh = &self.shared;
        sh.stopping.store(true, Ordering::Release);
        // A reload in flight finishes first: otherwise it would install a
        // generation (queue runners and their envs) after the phases below
        // have shut the queues down and taken the runners, and it would
        // live on unstopped. Later reloads see `stopping`.
        drop(self.reloading.lock());
        // Wake the acceptor (it checks `stopping` after every accept) by
        // shutting the socket down, not by dialling the port: with
        // SO_REUSEPORT a dial may reach another process.
        if let Some(waker) = self.waker.lock().take() {
            bind::wake_acceptor(&waker);
        }
        let grace_end = Instant::now() + sh.limits.shutdown_grace;
        let hard_end = grace_end + Duration::from_secs(5);
        let mut swept = std::collections::HashSet::new();
        // Phase 1: every connection ends (EOF from a read-side shutdown):
        // direct mode calls on_close from its coroutine; queue mode's
        // readers queue CLOSE, which the guest must have taken. Past the
        // grace period writes are shut down too, so a coroutine blocked
        // writing to a client that never reads gets an error and ends.
        let conns_done = |swept: &mut std::collections::HashSet<i32>| {
            let late = Instant::now() >= grace_end;
            let conns = sh.conns.lock();
            for (id, c) in conns.iter() {
                if swept.insert(*id) {
                    c.shutdown();
                }
                if late {
                    c.shutdown_both();
                }
            }
            acceptor.is_done() && conns.is_empty() && sh.generations.queue_open_conns() == 0
        };
        self.wait_bounded(grace_end, hard_end, "connections", || conns_done(&mut swept));
        // Phase 2 (queue mode): SHUTDOWN from wait_msg; the runners return.
        if sh.generations.has_queue() {
            sh.generations.shut_down_queues();
            let runners = std::mem::take(&mut *self.runners.lock());
            let done = self.wait_bounded(grace_end, hard_end, "queue guests", || runners.iter().all(|r| r.is_done()));
            if done {
                runners.into_iter().for_each(RunnerHandle::join);
            }
        }
        if acceptor.is_done() {
            let _ = acceptor.join();
        }
        sh.generations.close_pools();
        if let Some(t) = self.sweeper.lock().take() {
            let _ = t.join();
        }
        let left = hard_end.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        if !sh.registry.destroy_all(left) {
            tracing::error!(live = sh.registry.live(), "envs still alive after shutdown");
        }
        tracing::info!(connections = swept.len(), "stopped");
        self.stats()
    }

    /// Polls `done` until it holds; past `grace_end` terminates guest calls
    /// in flight on each poll; gives up (logging) at `hard_end`.
    fn wait_bounded(&self, grace_end: Instant, hard_end: Instant, what: &str, mut done: impl FnMut() -> bool) -> bool {
        let mut warned = false;
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= hard_end {
                tracing::error!(what, "shutdown: gave up waiting");
                return false;
            }
            if now >= grace_end {
                let n = self.shared.registry.interrupt_all();
                if !warned && n > 0 {
                    tracing::warn!(what, terminated = n, "shutdown grace over: terminated guest calls still running");
                    warned = true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
