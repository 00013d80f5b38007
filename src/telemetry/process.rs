//! Standard Prometheus process metrics, read from `/proc` at scrape time (Linux only;
//! elsewhere they are left out).

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on every Linux port).
const TICKS: f64 = 100.0;

/// Appends `process_*` metrics to `out`.
pub fn render(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Field numbers in proc(5) are 1-based and count pid and comm: field N is f[N - 3].
    let cpu = (num(14 - 3) + num(15 - 3)) / TICKS;
    let start_ticks = num(22 - 3);
    let vsize = num(23 - 3);
    let boot = boot_time().unwrap_or(0.0);
    let rss = status_kib("VmRSS:").unwrap_or(0.0) * 1024.0;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = max_open_files().unwrap_or(0.0);
    let lines: [(&str, &str, &str, f64); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
            cpu,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start_ticks / TICKS,
        ),
    ];
    for (name, kind, help, value) in lines {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Resident set size in bytes, for tests and the benchmark.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| (k * 1024.0) as u64)
}

fn status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_open_files() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_process_metrics_on_linux() {
        let mut out = String::new();
        super::render(&mut out);
        if cfg!(target_os = "linux") {
            assert!(out.contains("process_resident_memory_bytes "));
            assert!(out.contains("process_open_fds "));
            assert!(super::rss_bytes().unwrap() > 0);
        }
    }
}
