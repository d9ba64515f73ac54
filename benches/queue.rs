//! The event ring against a plain mutex queue, with the same parking
//! (`may` semaphores) so that only the queue differs.
//!
//! `cargo bench --bench queue`: 4 producer coroutines push 20,000 events
//! each; one consumer (an OS thread, like the queue runner) pops them all.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use may::sync::Semphore;
use parking_lot::Mutex;
use wamr_coro::internals::EventRing;

/// The baseline: a VecDeque under a mutex, bounded by the same semaphores.
struct MutexQueue<T> {
    q: Mutex<VecDeque<T>>,
    items: Semphore,
    space: Semphore,
}

impl<T> MutexQueue<T> {
    fn new(cap: usize) -> Self {
        MutexQueue { q: Mutex::new(VecDeque::with_capacity(cap)), items: Semphore::new(0), space: Semphore::new(cap) }
    }
    fn push(&self, v: T) {
        self.space.wait();
        self.q.lock().push_back(v);
        self.items.post();
    }
    fn pop(&self) -> T {
        self.items.wait();
        let v = self.q.lock().pop_front().expect("permit implies an item");
        self.space.post();
        v
    }
}

trait Queue: Send + Sync + 'static {
    fn push(&self, v: u64);
    fn pop(&self) -> u64;
}
impl Queue for EventRing<u64> {
    fn push(&self, v: u64) {
        EventRing::push(self, v, Duration::from_secs(60)).unwrap();
    }
    fn pop(&self) -> u64 {
        loop {
            if let Some(v) = EventRing::pop(self, Duration::from_secs(60)) {
                return v;
            }
        }
    }
}
impl Queue for MutexQueue<u64> {
    fn push(&self, v: u64) {
        MutexQueue::push(self, v)
    }
    fn pop(&self) -> u64 {
        MutexQueue::pop(self)
    }
}

const PRODUCERS: u64 = 4;
const PER: u64 = 20_000;

fn run<Q: Queue>(q: Arc<Q>) -> Duration {
    let t = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = Arc::clone(&q);
            wamr_coro::coro::spawn(move || {
                for i in 0..PER {
                    q.push(p << 32 | i);
                }
            })
        })
        .collect();
    let consumer = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            let mut last = [u64::MAX; PRODUCERS as usize];
            for _ in 0..PRODUCERS * PER {
                let v = q.pop();
                let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                // Per-producer order holds.
                assert!(last[p] == u64::MAX || i == last[p] + 1);
                last[p] = i;
            }
        })
    };
    for p in producers {
        p.join().unwrap();
    }
    consumer.join().unwrap();
    t.elapsed()
}

fn queues(c: &mut Criterion) {
    wamr_coro::coro::configure(2, 256 * 1024).unwrap();
    let mut g = c.benchmark_group("queue_80k_events");
    g.sample_size(20);
    for cap in [64usize, 1024] {
        g.bench_function(format!("ring_cap{cap}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(Arc::new(EventRing::<u64>::new(cap)))).sum())
        });
        g.bench_function(format!("mutex_cap{cap}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(Arc::new(MutexQueue::<u64>::new(cap)))).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, queues);
criterion_main!(benches);
