//! What an operator sees while the server runs: Prometheus metrics at
//! `/metrics` and a health check at `/healthz`, on their own address
//! (`ServerBuilder::metrics_listen`, `--metrics-listen`).
//!
//! Every figure is read from the same [`ServerStats`] snapshot embedders get
//! from `ServerHandle::stats` (prometheus-client encodes it at each scrape),
//! plus one histogram the request path feeds: how long guest callbacks (or
//! queue events) run. `/healthz` answers 200 while the server accepts and
//! 503 once it drains, so a balancer stops sending before connections end.
//!
//! The endpoint is served by plain threads, not coroutines: a scrape must
//! work even when every `may` worker is busy in a guest. One thread accepts;
//! each scrape is answered on a thread of its own, at most
//! [`MAX_SCRAPES`] at once (past that, connections wait in the listen
//! backlog), so a scraper that sends nothing, or reads slowly, holds one
//! of those and delays no other scrape or health check.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::striped::CallHistogram;
use super::{ServerStats, Shared};

/// Measurements the request path records (cheap: one histogram, striped
/// per thread, see `striped.rs`).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Time per guest callback (direct) or per queue event: buckets of
    /// 1 µs .. ~4 s, ×4 per bucket.
    pub call_seconds: CallHistogram,
}

/// Encodes a snapshot of the server's statistics at each scrape.
struct StatsCollector(Arc<Shared>);

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A gauge with one sample per queue shard, labelled `shard`.
fn shard_gauge(e: &mut DescriptorEncoder, name: &str, help: &str, values: &[u64]) -> Result<(), std::fmt::Error> {
    let mut fam = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (i, v) in values.iter().enumerate() {
        let labels = [("shard", i.to_string())];
        ConstGauge::new(*v as i64).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s: ServerStats = self.0.stats();
        let p = "wamr_coro_";
        let counters: [(&str, &str, u64); 25] = [
            ("connections_accepted", "Connections accepted and served", s.accepted),
            ("connections_refused", "Connections refused (limits, on_open < 0, no descriptors, no memory)", s.refused),
            ("connections_closed", "Connections closed", s.closed),
            ("bytes_in", "Bytes received from clients", s.bytes_in),
            ("bytes_out", "Bytes written to clients", s.bytes_out),
            ("traps", "Guest traps", s.traps),
            ("budget_overruns", "Guest calls stopped for overrunning the time budget", s.budget_overruns),
            (
                "instruction_budget_overruns",
                "Guest calls stopped for overrunning the instruction budget",
                s.instruction_budget_overruns,
            ),
            ("output_limit_hits", "send calls refused by the per-connection output limit", s.output_limit_hits),
            ("bad_pointers", "Bad guest pointers passed to the host", s.bad_pointers),
            ("idle_closes", "Connections closed for idleness", s.idle_closes),
            (
                "slow_closes",
                "Connections closed for delivering less than min_recv_bytes, or accepting less than min_send_bytes, per window",
                s.slow_closes,
            ),
            ("shutdown_cuts", "Guest calls terminated at shutdown", s.shutdown_cuts),
            ("env_creations", "Exec envs created", s.envs.created),
            ("env_destructions", "Exec envs destroyed", s.envs.destroyed),
            ("env_failures", "Exec env creations that failed", s.envs.failures),
            ("env_faults", "Exec envs discarded after a guest fault", s.envs.faulted),
            ("env_resets", "Exec envs reset to their initial state for reuse", s.env_resets),
            ("env_reset_refusals", "Exec envs destroyed because they could not be reset", s.env_reset_refusals),
            ("pool_hits", "Env pool acquisitions served by an idle env", s.pool.hits),
            ("pool_misses", "Env pool acquisitions that created an env", s.pool.misses),
            ("queue_restarts", "Queue guest instances replaced after a fault", s.queue_restarts),
            (
                "guest_memory_refused_grows",
                "memory.grow refused by the guest-memory budget",
                s.guest_memory.refused_grows,
            ),
            ("guest_memory_over_cap_grows", "memory.grow refused by the per-env cap", s.guest_memory.over_cap_grows),
            (
                "guest_memory_refused_envs",
                "Env creations refused by the guest-memory budget",
                s.guest_memory.refused_envs,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut e, &format!("{p}{name}"), help, v)?;
        }
        let gauges: [(&str, &str, i64); 6] = [
            ("connections_open", "Connections open now", s.open as i64),
            ("envs_live", "Exec envs alive now", s.envs.live as i64),
            ("pool_idle", "Envs idle in the pool now", s.pool.idle as i64),
            (
                "guest_memory_bytes",
                "Linear memory charged to the guest-memory budget now",
                s.guest_memory.used_bytes as i64,
            ),
            ("guest_memory_limit_bytes", "The guest-memory budget", s.guest_memory.limit_bytes as i64),
            ("draining", "1 while the server stops", self.0.stopping.load(Ordering::Relaxed) as i64),
        ];
        for (name, help, v) in gauges {
            gauge(&mut e, &format!("{p}{name}"), help, v)?;
        }
        let per_shard: [(&str, &str, &[u64]); 2] = [
            ("queue_depth", "Events waiting, per queue shard", &s.queue_shard_depths),
            (
                "queue_depth_max",
                "Most events ever waiting at once, per queue shard (the queue capacity once backpressure engaged)",
                &s.queue_shard_depth_max,
            ),
        ];
        for (name, help, values) in per_shard {
            shard_gauge(&mut e, &format!("{p}{name}"), help, values)?;
        }
        let h = self.0.metrics.call_seconds.snapshot();
        e.encode_descriptor(
            &format!("{p}guest_call_seconds"),
            "Time per guest callback (direct mode) or queue event",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        Ok(())
    }
}

/// The running endpoint; dropping it stops its thread.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves until dropped.
    pub(crate) fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        // Polled, so that stopping needs no connection to ourselves.
        listener.set_nonblocking(true)?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StatsCollector(Arc::clone(&shared))));
        let registry = Arc::new(registry);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("wamr-coro-metrics".into()).spawn(move || {
            let mut scrapes: Vec<std::thread::JoinHandle<()>> = Vec::new();
            while !flag.load(Ordering::Acquire) {
                let (done, busy): (Vec<_>, Vec<_>) = scrapes.drain(..).partition(|t| t.is_finished());
                done.into_iter().for_each(|t| drop(t.join()));
                scrapes = busy;
                if scrapes.len() >= MAX_SCRAPES {
                    // Every scrape slot is taken: the next connection waits
                    // in the backlog until one frees (within the deadlines).
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                match listener.accept() {
                    Ok((s, _)) => {
                        let (registry, shared) = (Arc::clone(&registry), Arc::clone(&shared));
                        let spawned = std::thread::Builder::new()
                            .name("wamr-coro-scrape".into())
                            .spawn(move || answer(s, &registry, &shared));
                        match spawned {
                            Ok(t) => scrapes.push(t),
                            // The connection went with the closure: closed.
                            Err(e) => tracing::warn!(error = %e, "metrics endpoint: cannot start a scrape"),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            // Each is bounded by its request and answer deadlines.
            scrapes.into_iter().for_each(|t| drop(t.join()));
        })?;
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// Where it listens.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Scrapes answered at once at most. Before, the endpoint answered one
/// connection at a time: a scraper that connected and sent nothing held
/// every other scrape and health check for its whole request deadline,
/// and a few of them in a row for a few times that.
pub(crate) const MAX_SCRAPES: usize = 8;

/// How long one scraper may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long one scraper may take to read its answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// One request, one answer, then close.
///
/// The request must arrive within [`REQUEST_DEADLINE`] in all, and the
/// answer be taken within [`ANSWER_DEADLINE`], not per read or write: with
/// a timeout per call a client trickling a byte a second kept its scrape
/// slot for as long as it liked.
fn answer(mut s: TcpStream, registry: &Registry, shared: &Shared) {
    let _ = s.set_nonblocking(false);
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let path = std::str::from_utf8(line).unwrap_or("").split(' ').nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
                Ok(()) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
                Err(_) => ("500 Internal Server Error", "text/plain", "encoding failed\n".into()),
            }
        }
        "/healthz" if shared.stopping.load(Ordering::Acquire) => {
            ("503 Service Unavailable", "text/plain", "draining\n".into())
        }
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    };
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let deadline = std::time::Instant::now() + ANSWER_DEADLINE;
    let mut left = out.as_bytes();
    while !left.is_empty() {
        let time = deadline.saturating_duration_since(std::time::Instant::now());
        if time.is_zero() || s.set_write_timeout(Some(time)).is_err() {
            return;
        }
        match s.write(left) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => return,
            Ok(n) => left = &left[n..],
        }
    }
}
