//! Server statistics: the counters connections and shards bump, and the
//! [`ServerStats`] snapshot of them.
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::pool::PoolStats;
use crate::registry::RegistryStats;
use crate::wamr::state::MemoryBudgetStats;

use super::striped::StripedCounter;
use super::Shared;

/// Server statistics (a snapshot).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections refused (max_connections, or `on_open` < 0).
    pub refused: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed.
    pub closed: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Connections closed because their guest trapped.
    pub traps: u64,
    /// Connections closed because their guest overran the call budget.
    pub budget_overruns: u64,
    /// Connections closed because their guest overran the instruction budget.
    pub instruction_budget_overruns: u64,
    /// `send` calls refused for the output limit.
    pub output_limit_hits: u64,
    /// Bad pointers passed to `send` or `log`.
    pub bad_pointers: u64,
    /// Connections closed for idleness.
    pub idle_closes: u64,
    /// Connections closed for delivering less than `min_recv_bytes` in an
    /// idle-timeout window, or for accepting less than `min_send_bytes` of
    /// a pending answer in one.
    pub slow_closes: u64,
    /// Guest calls terminated because they outlived the shutdown grace
    /// period (not counted as traps).
    pub shutdown_cuts: u64,
    /// The exec env registry.
    pub envs: RegistryStats,
    /// The env pools: counters over every guest the server has had
    /// (reloads included), idle envs of the guests still serving.
    pub pool: PoolStats,
    /// Envs reset to their initial state for the next connection.
    pub env_resets: u64,
    /// Envs destroyed instead of reset (grown memory, faulted, or state a
    /// reset cannot restore).
    pub env_reset_refusals: u64,
    /// The guest-memory budget.
    pub guest_memory: MemoryBudgetStats,
    /// Queue mode: events waiting in the rings now (all shards).
    pub queue_depth: u64,
    /// Queue mode: events waiting now, per shard.
    pub queue_shard_depths: Vec<u64>,
    /// Queue mode: the most events ever waiting at once, per shard (equal
    /// to `queue_capacity` once backpressure has engaged).
    pub queue_shard_depth_max: Vec<u64>,
    /// Queue mode: guest instances replaced after a failure.
    pub queue_restarts: u64,
    /// Guest modules reloaded (SIGHUP / `ServerHandle::reload`).
    pub reloads: u64,
}

impl std::fmt::Display for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections: {} accepted, {} refused, {} open, {} closed; bytes: {} in, {} out; \
             faults: {} traps, {} budget overruns, {} instruction-budget overruns, {} output-limit hits, {} bad pointers, {} idle closes, {} too slow, {} cut at shutdown; \
             envs: {} live, {} created, {} destroyed, peak {}, {} failures, {} faulted; \
             pool: {} hits, {} misses, {} idle, {} resets, {} not resettable; \
             guest memory: {} of {} KiB, {} grows refused (budget), {} over cap, {} envs refused; \
             queue: depth {}, {} restarts",
            self.accepted, self.refused, self.open, self.closed, self.bytes_in, self.bytes_out,
            self.traps, self.budget_overruns, self.instruction_budget_overruns, self.output_limit_hits, self.bad_pointers, self.idle_closes,
            self.slow_closes, self.shutdown_cuts, self.envs.live, self.envs.created, self.envs.destroyed, self.envs.peak, self.envs.failures,
            self.envs.faulted, self.pool.hits, self.pool.misses, self.pool.idle,
            self.env_resets, self.env_reset_refusals,
            self.guest_memory.used_bytes / 1024, self.guest_memory.limit_bytes / 1024,
            self.guest_memory.refused_grows, self.guest_memory.over_cap_grows, self.guest_memory.refused_envs,
            self.queue_depth, self.queue_restarts
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub closed: AtomicU64,
    /// Striped: every read adds to it, from every worker.
    pub bytes_in: StripedCounter,
    /// Striped: every write adds to it, from every worker.
    pub bytes_out: StripedCounter,
    pub traps: AtomicU64,
    pub budget_overruns: AtomicU64,
    pub instruction_budget_overruns: AtomicU64,
    pub output_limit_hits: AtomicU64,
    pub bad_pointers: AtomicU64,
    pub idle_closes: AtomicU64,
    pub slow_closes: AtomicU64,
    pub shutdown_cuts: AtomicU64,
}

impl Counters {
    /// Counts a guest fault that closed a connection (direct) or replaced
    /// the queue guest: a budget overrun, a call cut at shutdown, or
    /// otherwise a trap.
    pub(crate) fn count_fault(&self, e: &Error) {
        match e {
            Error::BudgetExceeded { .. } => self.budget_overruns.fetch_add(1, Ordering::Relaxed),
            Error::Interrupted { .. } => self.shutdown_cuts.fetch_add(1, Ordering::Relaxed),
            Error::InstructionBudgetExceeded { .. } => self.instruction_budget_overruns.fetch_add(1, Ordering::Relaxed),
            _ => self.traps.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Shared {
    /// A snapshot of every counter and gauge.
    pub(crate) fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let generation = self.generations.current();
        ServerStats {
            accepted: l(&c.accepted),
            refused: l(&c.refused),
            open: self.conns.lock().len() as u64,
            closed: l(&c.closed),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            traps: l(&c.traps),
            budget_overruns: l(&c.budget_overruns),
            instruction_budget_overruns: l(&c.instruction_budget_overruns),
            output_limit_hits: l(&c.output_limit_hits),
            bad_pointers: l(&c.bad_pointers),
            idle_closes: l(&c.idle_closes),
            shutdown_cuts: l(&c.shutdown_cuts),
            slow_closes: l(&c.slow_closes),
            envs: self.registry.stats(),
            pool: self.generations.pool_stats(),
            env_resets: self.generations.reset_counts().0,
            env_reset_refusals: self.generations.reset_counts().1,
            guest_memory: generation.pool.guest().memory_budget().stats(),
            queue_depth: self.generations.queue_depths().iter().sum(),
            queue_shard_depths: generation.queue.as_ref().map(|q| q.depths()).unwrap_or_default(),
            queue_shard_depth_max: generation.queue.as_ref().map(|q| q.high_waters()).unwrap_or_default(),
            queue_restarts: self.generations.queue_restarts(),
            reloads: self.generations.reloads(),
        }
    }
}
