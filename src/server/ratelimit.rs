//! Rate-limited warnings: a hostile client can make a guest fault on every
//! message, and one WARN line per fault would let it flood the log. Each
//! call site gets a small budget of lines per second; what is suppressed is
//! counted and reported with the next line that gets through.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Lines per second a call site may log.
const PER_SECOND: u64 = 10;

/// One call site's budget.
#[derive(Debug)]
pub(crate) struct LogLimit {
    window: Mutex<(Instant, u64)>,
    suppressed: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

impl LogLimit {
    pub(crate) fn new() -> LogLimit {
        LogLimit { window: Mutex::new((Instant::now(), 0)), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were
    /// suppressed since the last one; `None` (and counted) otherwise.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut w = self.window.lock();
        if w.0.elapsed().as_secs() >= 1 {
            *w = (Instant::now(), 0);
        }
        if w.1 >= PER_SECOND {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        w.1 += 1;
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// The server's rate-limited call sites.
#[derive(Debug, Default)]
pub(crate) struct LogLimits {
    pub guest_fault: LogLimit,
    pub no_env: LogLimit,
    pub queue_fault: LogLimit,
    pub accept: LogLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_counted() {
        let l = LogLimit::new();
        let allowed = (0..1000).filter(|_| l.allow().is_some()).count();
        assert_eq!(allowed as u64, PER_SECOND);
        // The next window reports what was suppressed.
        *l.window.lock() = (Instant::now() - std::time::Duration::from_secs(2), PER_SECOND);
        assert_eq!(l.allow(), Some(1000 - PER_SECOND));
    }
}
