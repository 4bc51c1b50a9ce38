//! Figures for the benchmarks: a process' resident memory and CPU time, the local control
//! plane's own processes, the machine's load, latency percentiles. Linux `/proc` only.

use std::path::Path;
use std::time::Duration;

/// Resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_mib: f64,
    /// `VmHWM`: the most it has been resident since it started.
    pub peak_mib: f64,
}

/// The resident memory of `pid` now and at its peak (NaN when the process is gone).
pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    };
    Memory {
        rss_mib: field("VmRSS:"),
        peak_mib: field("VmHWM:"),
    }
}

/// User plus system CPU time `pid` has used so far, in seconds (Linux's `USER_HZ` of 100).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let Some((_, fields)) = stat.rsplit_once(") ") else {
        return f64::NAN;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// The processes whose command line names a path under `dir`: for the local control plane,
/// its etcd and kube-apiserver (started with their data and certificate directories there).
/// Returns `(program name, pid)`.
pub fn processes_under(dir: &Path) -> Vec<(String, u32)> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args
            .first()
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        if matches!(program.as_str(), "etcd" | "kube-apiserver")
            && args.iter().any(|a| a.contains(&needle))
        {
            found.push((program, pid));
        }
    }
    found.sort();
    found
}

/// The CPU seconds etcd and kube-apiserver of the local control plane in `dir` have used so far
/// ([`processes_under`], [`cpu_seconds`]).
pub fn control_plane_cpu(dir: &Path) -> f64 {
    processes_under(dir)
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid))
        .sum()
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages, and the number of CPUs.
pub fn load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {} on {cpus} CPUs", averages.join(" "))
}

/// The `p`-th percentile (0–100) of `sorted` latencies, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&sorted[..1], 90.0), Duration::from_millis(1));
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        let m = memory(me);
        assert!(m.rss_mib > 0.0 && m.peak_mib >= m.rss_mib, "{m:?}");
        assert!(cpu_seconds(me) >= 0.0);
    }
}
