//! What the bench reads from (and asks of) the operating system: another
//! process's CPU time and memory, the file-descriptor limit, and the kernel
//! limits that decide how many connections one machine can hold.
use std::io;

/// One look at a process (Linux `/proc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU time consumed so far, seconds.
    pub cpu_s: f64,
    /// Resident memory now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident memory so far, KiB (`VmHWM`).
    pub peak_rss_kib: u64,
}

/// Samples process `pid`: CPU time from `/proc/PID/stat`, memory from
/// `/proc/PID/status`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let cpu_s = (ticks(11) + ticks(12)) as f64 / clock_ticks_per_s();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample { cpu_s, rss_kib: kib("VmRSS:"), peak_rss_kib: kib("VmHWM:") })
}

/// Memory mappings process `pid` has now (lines of `/proc/PID/maps`; the
/// kernel caps them per process at `vm.max_map_count`).
pub fn mappings(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/maps"))?.lines().count())
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A sysctl's first number (`/proc/sys/...`), if readable.
pub fn sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{path}")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Local ports the kernel hands out to outgoing connections
/// (`net.ipv4.ip_local_port_range`): how many connections one source
/// address can open to one destination address and port.
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// CPUs and kernel, for the report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib / (1 << 20))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem_gib} GiB, Linux {}", kernel.trim())
}
