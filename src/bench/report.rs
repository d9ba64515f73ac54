//! What a bench run reports: one [`Run`] per server in closed-loop mode,
//! one [`HoldRun`] per server in hold mode, as a table and as JSON.
use std::fmt::Write as _;

use serde::Serialize;

/// One closed-loop run against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `native`, `direct` or `queue`.
    pub name: String,
    /// `http` or `echo`.
    pub protocol: String,
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Seconds measured.
    pub duration_s: f64,
    /// Correct responses.
    pub requests: u64,
    /// Correct responses per second.
    pub req_s: f64,
    /// Latency percentiles, µs (write to last response byte).
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
    /// Errors (resets, timeouts, refused, wrong bytes).
    pub errors: u64,
    /// Responses with wrong bytes (also counted in `errors`).
    pub wrong_bytes: u64,
    /// `req_s` over the native server's (1.0 for native itself).
    pub ratio_to_native: Option<f64>,
    /// Server CPU time (user + system) during the measured window, s.
    pub cpu_s: f64,
    /// Server CPU time per request, µs.
    pub cpu_us_per_req: f64,
    /// Server resident memory before the load, KiB.
    pub base_rss_kib: u64,
    /// Server peak resident memory, KiB.
    pub peak_rss_kib: u64,
    /// (Peak − before) / conns, KiB.
    pub rss_per_conn_kib: f64,
    /// Exec envs alive in the server at the end of the run (before stop).
    pub live_envs_end: u64,
    /// Server processes.
    pub server_processes: usize,
    /// Load-generator processes.
    pub client_processes: usize,
}

/// One hold run: N connections opened, answered once, held.
#[derive(Debug, Clone, Serialize)]
pub struct HoldRun {
    /// `native`, `direct` or `queue`.
    pub name: String,
    /// `http` or `echo`.
    pub protocol: String,
    /// Connections asked for.
    pub conns: usize,
    /// Connections open and answered.
    pub held: u64,
    /// Errors (refused, reset, timeouts, wrong bytes).
    pub errors: u64,
    /// Seconds from starting the clients until every connection was answered.
    pub open_s: f64,
    /// Growth of the servers' resident memory, KiB (sum over processes).
    pub rss_kib: u64,
    /// `rss_kib / held`.
    pub rss_per_conn_kib: f64,
    /// New memory mappings per held connection (`vm.max_map_count` caps
    /// mappings per process).
    pub maps_per_conn: f64,
    /// Connections open in each server process (the kernel spreads them).
    pub open_per_server: Vec<u64>,
    /// Exec envs alive, summed over server processes.
    pub live_envs: u64,
    /// Server processes (`--reuse-port` on one port).
    pub server_processes: usize,
    /// Client processes.
    pub client_processes: usize,
    /// Source addresses the clients connected from.
    pub source_addresses: Vec<String>,
    /// Why that many processes: the limits that chose them.
    pub plan: String,
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// When (UTC).
    pub date: String,
    /// CPUs, memory, kernel.
    pub machine: String,
    /// Closed-loop runs.
    pub runs: Vec<Run>,
    /// Hold runs.
    pub holds: Vec<HoldRun>,
}

impl Report {
    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut t = String::new();
        if !self.runs.is_empty() {
            let _ = writeln!(
                t,
                "{:<7} {:>5} {:>10} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>9} {:>9} {:>6} {:>7}",
                "name",
                "conns",
                "req/s",
                "p50 µs",
                "p99 µs",
                "p999 µs",
                "errors",
                "cpu s",
                "cpu µs/r",
                "peak MiB",
                "KiB/conn",
                "envs",
                "×native"
            );
            for r in &self.runs {
                let _ = writeln!(
                    t,
                    "{:<7} {:>5} {:>10.0} {:>8} {:>8} {:>8} {:>6} {:>7.2} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>7}",
                    r.name,
                    r.conns,
                    r.req_s,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.errors,
                    r.cpu_s,
                    r.cpu_us_per_req,
                    r.peak_rss_kib as f64 / 1024.0,
                    r.rss_per_conn_kib,
                    r.live_envs_end,
                    r.ratio_to_native.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
                );
            }
        }
        if !self.holds.is_empty() {
            let _ = writeln!(
                t,
                "{:<7} {:>7} {:>7} {:>6} {:>7} {:>9} {:>9} {:>9} {:>7} {:>7}  open per server",
                "name", "conns", "held", "errors", "open s", "RSS MiB", "KiB/conn", "maps/conn", "envs", "procs"
            );
            for h in &self.holds {
                let _ = writeln!(
                    t,
                    "{:<7} {:>7} {:>7} {:>6} {:>7.2} {:>9.1} {:>9.1} {:>9.2} {:>7} {:>3}+{:<3}  {:?}",
                    h.name,
                    h.conns,
                    h.held,
                    h.errors,
                    h.open_s,
                    h.rss_kib as f64 / 1024.0,
                    h.rss_per_conn_kib,
                    h.maps_per_conn,
                    h.live_envs,
                    h.server_processes,
                    h.client_processes,
                    h.open_per_server
                );
            }
            for h in &self.holds {
                let _ = writeln!(t, "{}: {}; clients from {}", h.name, h.plan, h.source_addresses.join(", "));
            }
        }
        t
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
