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

/// A 95 % bootstrap interval, in milliseconds, for the difference of the `p`-th percentiles of
/// two samples (`a` minus `b`): both resampled with replacement `iterations` times, the
/// difference taken each time, and the 2.5th and 97.5th percentiles of those differences
/// returned. A tail percentile of a few hundred latencies rests on a handful of them; this says
/// how far it could move with another run of the same size. Deterministic (a fixed seed).
pub fn bootstrap_delta_ms(a: &[Duration], b: &[Duration], p: f64, iterations: usize) -> (f64, f64) {
    if a.is_empty() || b.is_empty() || iterations == 0 {
        return (f64::NAN, f64::NAN);
    }
    // xorshift64*: enough for picking indices; no dependency for a benchmark statistic.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    };
    let mut resampled = |sample: &[Duration], buffer: &mut Vec<Duration>| {
        buffer.clear();
        buffer.extend((0..sample.len()).map(|_| sample[next(sample.len())]));
        buffer.sort_unstable();
        percentile(buffer, p).as_secs_f64() * 1000.0
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut deltas: Vec<f64> = (0..iterations)
        .map(|_| resampled(a, &mut x) - resampled(b, &mut y))
        .collect();
    deltas.sort_by(f64::total_cmp);
    let at = |q: f64| deltas[(((q / 100.0) * iterations as f64) as usize).min(iterations - 1)];
    (at(2.5), at(97.5))
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
    fn bootstrap_interval_of_a_constant_shift_is_the_shift() {
        let b: Vec<Duration> = vec![Duration::from_millis(2); 300];
        let a: Vec<Duration> = vec![Duration::from_millis(5); 300];
        let (lo, hi) = bootstrap_delta_ms(&a, &b, 99.0, 200);
        assert_eq!((lo, hi), (3.0, 3.0));
    }

    #[test]
    fn bootstrap_interval_of_a_tail_spans_its_few_samples() {
        // 1 % of `a` is slow (10 ms): its p99 sits on the edge of those, so resampling moves
        // it between the fast body and the slow tail; `b` has no tail at all.
        let mut a: Vec<Duration> = vec![Duration::from_millis(1); 297];
        a.extend([Duration::from_millis(10); 3]);
        let b: Vec<Duration> = vec![Duration::from_millis(1); 300];
        let (lo, hi) = bootstrap_delta_ms(&a, &b, 99.0, 1000);
        assert_eq!((lo, hi), (0.0, 9.0));
        // The median is untouched by the tail.
        assert_eq!(bootstrap_delta_ms(&a, &b, 50.0, 1000), (0.0, 0.0));
    }

    #[test]
    fn bootstrap_of_nothing_is_nan() {
        assert!(
            bootstrap_delta_ms(&[], &[Duration::ZERO], 50.0, 10)
                .0
                .is_nan()
        );
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        let m = memory(me);
        assert!(m.rss_mib > 0.0 && m.peak_mib >= m.rss_mib, "{m:?}");
        assert!(cpu_seconds(me) >= 0.0);
    }
}
