//! Counters and the call-time histogram that every request updates, kept
//! in one cache line per thread stripe so that two workers never write the
//! same line.
//!
//! A plain `AtomicU64` that both `may` workers add to on every request moves
//! its cache line between the cores each time; so did `prometheus-client`'s
//! `Histogram`, whose `observe` takes one mutex for all threads. Here each
//! thread adds to its own stripe (assigned round-robin the first time it
//! records anything) and a reader sums the stripes. Threads beyond the
//! number of stripes share one, which stays correct (the adds are atomic),
//! only slower.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// How many stripes a counter has: four per core, so that the `may`
/// workers, the queue runners and the accept loop rarely share one.
fn stripe_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cores * 4).clamp(8, 256).next_power_of_two()
    })
}

/// This thread's stripe: the same index for every striped value.
///
/// Never inlined: a connection's coroutine moves between workers at its
/// yields, and inlined into its loop the compiler computed the stripe's
/// thread-local address once, on the first worker (`DirectConn::run` kept it
/// for the connection's life), so after a move two workers added to one
/// stripe. A call reads the running thread's.
#[inline(never)]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % stripe_count();
    }
    STRIPE.with(|s| *s)
}

/// A counter that threads add to without sharing a cache line.
#[derive(Debug)]
pub(crate) struct StripedCounter {
    stripes: Box<[CachePadded<AtomicU64>]>,
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter { stripes: (0..stripe_count()).map(|_| CachePadded::new(AtomicU64::new(0))).collect() }
    }
}

impl StripedCounter {
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe()].fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of every stripe (a snapshot: adds racing with it may or may
    /// not be in it).
    pub(crate) fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }
}

/// Buckets of [`CallHistogram`]: upper bounds of 1 µs × 4^i, i = 0..12
/// (1 µs .. ~4.2 s), then everything longer.
const BUCKETS: usize = 12;

/// One stripe of a [`CallHistogram`] (14 words: fits one 128-byte pad).
/// No separate count: the count is the buckets' sum, so that a scrape
/// racing with an observation still sees `_count` equal to the `+Inf`
/// bucket, as Prometheus requires.
#[derive(Debug, Default)]
struct HistogramStripe {
    sum_ns: AtomicU64,
    /// Non-cumulative: `buckets[i]` counts values in (bound(i-1), bound(i)];
    /// the last one counts values above every bound.
    buckets: [AtomicU64; BUCKETS + 1],
}

/// A merged view of a [`CallHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// `(upper bound in seconds, count in this bucket alone)`, the last
    /// bound being infinity: what `prometheus-client`'s encoder takes.
    pub buckets: Vec<(f64, u64)>,
}

/// How long guest callbacks take: a Prometheus histogram with fixed
/// exponential buckets, striped per thread.
#[derive(Debug)]
pub(crate) struct CallHistogram {
    stripes: Box<[CachePadded<HistogramStripe>]>,
}

impl Default for CallHistogram {
    fn default() -> Self {
        CallHistogram { stripes: (0..stripe_count()).map(|_| CachePadded::new(HistogramStripe::default())).collect() }
    }
}

/// Upper bound of bucket `i` in nanoseconds.
const fn bound_ns(i: usize) -> u64 {
    1_000 << (2 * i)
}

impl CallHistogram {
    /// Records one call of duration `d`.
    #[inline]
    pub(crate) fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is ≥ ns (at most 12 compares, most
        // calls stop at the first two or three).
        let mut i = 0;
        while i < BUCKETS && ns > bound_ns(i) {
            i += 1;
        }
        let s = &self.stripes[stripe()];
        s.sum_ns.fetch_add(ns, Ordering::Relaxed);
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Sums the stripes.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut sum_ns = 0u64;
        let mut buckets = [0u64; BUCKETS + 1];
        for s in self.stripes.iter() {
            sum_ns = sum_ns.wrapping_add(s.sum_ns.load(Ordering::Relaxed));
            for (b, v) in buckets.iter_mut().zip(&s.buckets) {
                *b = b.wrapping_add(v.load(Ordering::Relaxed));
            }
        }
        let count = buckets.iter().fold(0, |a: u64, b| a.wrapping_add(*b));
        let bounds = (0..BUCKETS).map(|i| bound_ns(i) as f64 / 1e9).chain(std::iter::once(f64::INFINITY));
        HistogramSnapshot { count, sum_seconds: sum_ns as f64 / 1e9, buckets: bounds.zip(buckets).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_every_thread() {
        let c = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(t + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 1000 * (1..=12).sum::<u64>());
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = CallHistogram::default();
        for ns in [0, 1_000, 1_001, 4_000, 4_001, 5_000_000_000] {
            h.observe(Duration::from_nanos(ns));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 5.000_010_002).abs() < 1e-9, "{}", s.sum_seconds);
        assert_eq!(s.buckets.len(), BUCKETS + 1);
        assert_eq!(s.buckets[0], (1e-6, 2), "0 and 1 µs are ≤ 1 µs");
        assert_eq!(s.buckets[1], (4e-6, 2), "1.001 and 4 µs");
        assert_eq!(s.buckets[2], (16e-6, 1), "4.001 µs");
        assert_eq!(s.buckets[BUCKETS], (f64::INFINITY, 1), "5 s is past the last bound (4.19 s)");
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 6);
        // The bounds are prometheus-client's exponential_buckets(1e-6, 4.0, 12).
        let theirs: Vec<f64> = prometheus_client::metrics::histogram::exponential_buckets(1e-6, 4.0, 12).collect();
        let ours: Vec<f64> = s.buckets[..BUCKETS].iter().map(|b| b.0).collect();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= b * 1e-12, "{ours:?} vs {theirs:?}");
        }
    }
}
