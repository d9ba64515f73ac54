//! Stops guest calls that overrun their time budget.
//!
//! A spinning guest occupies its `may` worker thread completely (`may` cannot
//! preempt it), so the budget is enforced from outside: one OS thread scans
//! the registry every [`TICK`] and calls `wasm_runtime_terminate` on envs
//! whose call passed its deadline (through `InterruptHandle`, which
//! serialises with the env's own call bookkeeping and destruction, so a
//! late terminate can never hit the next call or a destroyed instance).
//! WAMR notices within 10–100 µs; the call fails with `BudgetExceeded` and
//! the env is discarded. Overrun detection is thus within budget + TICK.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::registry::Registry;

/// Scan period.
pub const TICK: Duration = Duration::from_millis(10);

/// A running watchdog; stops (and joins its thread) when dropped.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `registry`.
    pub fn start(registry: &Arc<Registry>) -> std::io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicU64::new(0));
        let weak: Weak<Registry> = Arc::downgrade(registry);
        let (s, f) = (Arc::clone(&stop), Arc::clone(&fired));
        let thread = std::thread::Builder::new().name("wamr-coro-watchdog".into()).spawn(move || {
            while !s.load(Ordering::Acquire) {
                std::thread::sleep(TICK);
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
