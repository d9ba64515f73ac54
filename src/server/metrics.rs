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
//! The endpoint is served by a plain thread, not coroutines: a scrape must
//! work even when every `may` worker is busy in a guest. That one thread
//! polls (`poll(2)`) the listener and every open scrape connection, all
//! non-blocking, so a scraper that sends nothing, or reads slowly, holds
//! nothing but its own connection: each has its own deadlines (the request
//! within [`REQUEST_DEADLINE`], the answer taken within [`ANSWER_DEADLINE`],
//! what the client still sends drained for [`DRAIN_DEADLINE`] at most, then
//! closed), and past [`MAX_CONNECTIONS`] open at once a new connection
//! takes the place of the oldest one still waiting for its request. Before,
//! each scrape had a thread of its own, 8 at most, each held up to the 5 s
//! request deadline: a dozen connections that sent nothing kept `/healthz`
//! waiting for seconds, and stopping the server joined those threads, so
//! one idle connection delayed the process's exit by up to its deadlines
//! (5 s, 10 s with a slow reader) past the shutdown grace. Stopping now closes every connection and returns at once.
//!
//! Rendering `/metrics` is done on that thread too: it reads atomics and
//! takes only locks held briefly and never across a guest call (the
//! connection table's, the generations', the pools' slots), so no stuck
//! worker can hold it up.
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The other end is polled by the endpoint's thread: dropping this one
    /// wakes it (end of file there) and it returns.
    stop: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves until dropped.
    pub(crate) fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        // Stopping needs no connection to ourselves, nor a polling period.
        let (stop, stopped) = UnixStream::pair()?;
        stopped.set_nonblocking(true)?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StatsCollector(Arc::clone(&shared))));
        let endpoint = Endpoint { listener, stopped, registry, shared, conns: Vec::new(), accept_paused_until: None };
        let thread = std::thread::Builder::new().name("wamr-coro-metrics".into()).spawn(move || endpoint.run())?;
        Ok(MetricsServer { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// Where it listens.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    /// Returns at once: the thread wakes, drops (closes) every connection,
    /// answered or not, and ends; it waits on no client.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections open at once at most, far above any number of scrapers and
/// probes. Past it, a new connection takes the place of the oldest one still
/// waiting for its request (or, if every one is being answered, is closed).
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long a scraper may take to send its request, from its connection;
/// then it is answered from what came.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// How long a scraper may take to read its answer; then it is closed.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// How long an answered connection whose client may still be sending is
/// drained before it is closed (see [`Phase::Drain`]).
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

/// The most a draining connection discards; then it is closed.
const MAX_DRAINED: usize = 64 << 10;

/// The most of a request read: the request line is all that is used.
const MAX_REQUEST: usize = 8192;

/// How long accepting pauses when the process is out of descriptors and no
/// connection can make room (the pending one would be reported at once
/// again).
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// The endpoint's thread: the listener, the scrapes in progress (oldest
/// first) and what a scrape reads.
struct Endpoint {
    listener: TcpListener,
    /// Reads end of file once the [`MetricsServer`] is dropped.
    stopped: UnixStream,
    registry: Registry,
    shared: Arc<Shared>,
    conns: Vec<Scrape>,
    accept_paused_until: Option<Instant>,
}

/// One connection: one request, one answer, then close (after draining
/// what the client still sends, [`Phase::Drain`]).
///
/// The request must arrive within [`REQUEST_DEADLINE`] in all, and the
/// answer be taken within [`ANSWER_DEADLINE`], not per read or write: with
/// a timeout per call a client trickling a byte a second kept its scrape
/// for as long as it liked.
struct Scrape {
    stream: TcpStream,
    phase: Phase,
    deadline: Instant,
}

enum Phase {
    /// The request read so far.
    Request(Vec<u8>),
    /// The answer, and how much of it is written; whether the client has
    /// closed its side (then nothing is left to drain).
    Answer(Vec<u8>, usize, bool),
    /// Answered, output ended (a FIN after the answer), and what the client
    /// still sends (a second, pipelined request) read and discarded until it
    /// closes its side, [`DRAIN_DEADLINE`] passes or [`MAX_DRAINED`] bytes
    /// came: closing with unread input would reset the connection, and a
    /// client could lose the answer. How much was discarded.
    Drain(usize),
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

impl Endpoint {
    fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_CONNECTIONS + 2);
        loop {
            let now = Instant::now();
            self.expire(now);
            let paused = self.accept_paused_until.filter(|&t| t > now);
            self.accept_paused_until = paused;
            fds.clear();
            fds.push(pollfd(self.stopped.as_raw_fd(), libc::POLLIN));
            // A negative descriptor is skipped by poll.
            fds.push(pollfd(if paused.is_some() { -1 } else { self.listener.as_raw_fd() }, libc::POLLIN));
            for c in &self.conns {
                let events = match c.phase {
                    Phase::Request(_) | Phase::Drain(_) => libc::POLLIN,
                    Phase::Answer(..) => libc::POLLOUT,
                };
                fds.push(pollfd(c.stream.as_raw_fd(), events));
            }
            let next = self.conns.iter().map(|c| c.deadline).chain(paused).min();
            // Rounded up, so that the deadline has passed when poll returns.
            let timeout = next
                .map_or(-1, |t| i32::try_from(t.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX));
            // SAFETY: poll reads and writes (`revents`) exactly the `fds.len()`
            // initialised pollfds of `fds`, borrowed mutably for the call; each
            // descriptor in it is owned by `self` and open (or -1, skipped).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    tracing::debug!(error = %e, "metrics endpoint: poll failed");
                    std::thread::sleep(ACCEPT_PAUSE);
                }
                continue;
            }
            if fds[0].revents != 0 {
                // Stopped: every connection is closed as `self` drops.
                return;
            }
            // Connections first, in the order of `fds`; accepting (which
            // may close some) after.
            let mut ready = fds[2..].iter().map(|p| p.revents != 0);
            let (registry, shared) = (&self.registry, &self.shared);
            self.conns.retain_mut(|c| !ready.next().unwrap_or(false) || c.progress(registry, shared));
            if fds[1].revents != 0 {
                self.accept();
            }
        }
    }

    /// Answers every request past its deadline from what came, and closes
    /// every connection past its answer's.
    fn expire(&mut self, now: Instant) {
        let (registry, shared) = (&self.registry, &self.shared);
        self.conns.retain_mut(|c| {
            if c.deadline > now {
                return true;
            }
            match c.phase {
                Phase::Answer(..) => {
                    // A last write (the thread may be late), then closed,
                    // finished or not.
                    c.write();
                    return false;
                }
                Phase::Drain(_) => return false,
                Phase::Request(_) => {}
            }
            // What has arrived counts, however late this thread is to read
            // it (a busy machine, valgrind); then what came is answered.
            if !c.progress(registry, shared) {
                return false;
            }
            if let Phase::Request(_) = c.phase {
                c.answer(registry, shared, false);
                return c.write();
            }
            // Answered just now, the rest being written.
            true
        });
    }

    /// Accepts what is pending (a round at most).
    fn accept(&mut self) {
        for _ in 0..MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((s, _)) => self.admit(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE), the oldest
                    // connection still waiting for its request makes room
                    // for the one pending: a probe is answered even then.
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                    if !(out_of_fds && self.close_oldest_waiting()) {
                        tracing::debug!(error = %e, "metrics endpoint: accept failed");
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                        return;
                    }
                }
            }
        }
    }

    /// Keeps `s` unless the endpoint is full: at [`MAX_CONNECTIONS`], or
    /// near the descriptor limit (see [`fd_ceiling`]). Then the oldest
    /// connection still waiting for its request is closed for it; at
    /// [`MAX_CONNECTIONS`] with every one being answered, `s` is closed.
    fn admit(&mut self, s: TcpStream) {
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let full = self.conns.len() >= MAX_CONNECTIONS || {
            let ceiling = fd_ceiling();
            let high = |fd: RawFd| fd as u64 >= ceiling;
            high(s.as_raw_fd()) || self.conns.iter().any(|c| high(c.stream.as_raw_fd()))
        };
        if full {
            self.close_oldest_waiting();
        }
        if self.conns.len() < MAX_CONNECTIONS {
            let phase = Phase::Request(Vec::with_capacity(512));
            self.conns.push(Scrape { stream: s, phase, deadline: Instant::now() + REQUEST_DEADLINE });
        }
    }

    /// Closes the oldest connection being drained, or else the oldest still
    /// waiting for its request; false if there is neither.
    fn close_oldest_waiting(&mut self) -> bool {
        let draining = self.conns.iter().position(|c| matches!(c.phase, Phase::Drain(_)));
        match draining.or_else(|| self.conns.iter().position(|c| matches!(c.phase, Phase::Request(_)))) {
            Some(i) => {
                self.conns.remove(i);
                true
            }
            None => false,
        }
    }
}

/// The lowest descriptor of the top half of those the listener keeps from
/// clients (`listener::fd_reserve`), which the endpoint leaves to the
/// runtime's own opens. Descriptors are handed out lowest first, so once one
/// of its connections holds a descriptor that high, the process is nearly
/// out: from then on (until those connections close) each new connection
/// takes the place of the oldest one still waiting for its request, and the
/// endpoint holds no more descriptors than it had. Without this, once
/// clients had taken theirs, connections that sent nothing took all but one
/// of the descriptors the reserve had kept (20 of them under a limit of 48:
/// `tests/overload.rs`), leaving the runtime's own opens one at most.
fn fd_ceiling() -> u64 {
    super::fd_limit().map_or(u64::MAX, |l| l.saturating_sub(super::listener::fd_reserve(l) / 2))
}

impl Scrape {
    /// Does what its socket is ready for; false once done with it (it is
    /// closed when dropped).
    fn progress(&mut self, registry: &Registry, shared: &Shared) -> bool {
        let mut buf = [0u8; 1024];
        if let Phase::Drain(drained) = &mut self.phase {
            loop {
                match self.stream.read(&mut buf) {
                    Ok(n) if n > 0 && *drained + n < MAX_DRAINED => *drained += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // Its end, too much, or a failure.
                    _ => return false,
                }
            }
        }
        if let Phase::Request(head) = &mut self.phase {
            let mut eof = false;
            loop {
                if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_REQUEST {
                    break;
                }
                match self.stream.read(&mut buf) {
                    // End of file: answered from what came.
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            self.answer(registry, shared, eof);
        }
        self.write()
    }

    /// Renders the answer to the request read (the deadline is now the
    /// answer's); `eof`: the client has closed its side.
    fn answer(&mut self, registry: &Registry, shared: &Shared, eof: bool) {
        let Phase::Request(head) = &self.phase else { return };
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
        self.phase = Phase::Answer(out.into_bytes(), 0, eof);
        self.deadline = Instant::now() + ANSWER_DEADLINE;
    }

    /// Writes what the socket takes of the answer; false once done with
    /// the connection: the answer is all written and the client has closed
    /// its side, or the connection failed. All written to a client that has
    /// not closed, the connection is drained ([`Phase::Drain`]).
    fn write(&mut self) -> bool {
        let Phase::Answer(out, sent, eof) = &mut self.phase else { return true };
        while *sent < out.len() {
            match self.stream.write(&out[*sent..]) {
                Ok(0) => return false,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if *eof || self.stream.shutdown(std::net::Shutdown::Write).is_err() {
            return false;
        }
        self.phase = Phase::Drain(0);
        self.deadline = Instant::now() + DRAIN_DEADLINE;
        true
    }
}
