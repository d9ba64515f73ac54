//! Stops guest calls that overrun their time budget.
//!
//! A spinning guest occupies its `may` worker thread completely (`may` cannot
//! preempt it), so the budget is enforced from outside: one OS thread scans
//! the registry every tick and calls `wasm_runtime_terminate` on envs
//! whose call passed its deadline (through `InterruptHandle`, which
//! serialises with the env's own call bookkeeping and destruction, so a
//! late terminate can never hit the next call or a destroyed instance).
//! WAMR notices within 10–100 µs; the call fails with `BudgetExceeded` and
//! the env is discarded. Overrun detection is thus within budget + tick.
//!
//! The scan reads one word per env and locks only an env whose deadline has
//! passed, so it does not pull every env's cache line away from the worker
//! that runs it. The server picks the tick from the budget
//! ([`Watchdog::for_budget`]): a twentieth of it, between 1 and 50 ms.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::registry::Registry;

/// Shortest and longest tick [`Watchdog::for_budget`] picks.
const TICK_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

/// A running watchdog; stops (and joins its thread) when dropped.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Scan period of [`Watchdog::start`]: 10 ms.
    pub const TICK: Duration = Duration::from_millis(10);

    /// Starts watching `registry`, scanning every [`TICK`](Self::TICK).
    pub fn start(registry: &Arc<Registry>) -> std::io::Result<Watchdog> {
        Self::with_tick(registry, Self::TICK)
    }

    /// Starts watching `registry` for calls with `budget`: the tick is a
    /// twentieth of it (a call is stopped within 5 % past its budget),
    /// at least 1 and at most 50 ms.
    pub fn for_budget(registry: &Arc<Registry>, budget: Duration) -> std::io::Result<Watchdog> {
        Self::with_tick(registry, Self::tick_for(budget))
    }

    /// The tick [`for_budget`](Self::for_budget) uses for `budget`.
    pub fn tick_for(budget: Duration) -> Duration {
        (budget / 20).clamp(TICK_RANGE.0, TICK_RANGE.1)
    }

    /// Starts watching `registry`, scanning every `tick`.
    pub fn with_tick(registry: &Arc<Registry>, tick: Duration) -> std::io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicU64::new(0));
        let weak: Weak<Registry> = Arc::downgrade(registry);
        let (s, f) = (Arc::clone(&stop), Arc::clone(&fired));
        let thread = std::thread::Builder::new().name("wamr-coro-watchdog".into()).spawn(move || {
            while !s.load(Ordering::Acquire) {
                std::thread::sleep(tick);
                let Some(reg) = weak.upgrade() else { break };
                let now = Instant::now();
                reg.for_each_handle(|h| {
                    if h.expire_if_due(now) {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })?;
        Ok(Watchdog { stop, fired, thread: Some(thread) })
    }

    /// How many calls it has terminated.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_a_twentieth_of_the_budget_within_its_range() {
        assert_eq!(Watchdog::tick_for(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(Watchdog::tick_for(Duration::from_millis(200)), Duration::from_millis(10));
        assert_eq!(Watchdog::tick_for(Duration::from_millis(5)), Duration::from_millis(1));
        assert_eq!(Watchdog::tick_for(Duration::from_secs(60)), Duration::from_millis(50));
    }
}
