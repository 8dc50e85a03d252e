//! The standard process metrics every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` at scrape time.
//! Parsing is kept apart from reading so it is tested on fixed text.

use std::path::Path;

use prometheus::proto::MetricFamily;

use super::family::{counter, gauge, Series};

/// One reading of the process' figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFields {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Ticks after boot the process started.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses: fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let after = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(StatFields {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft "Max open files" limit of `/proc/<pid>/limits`; `None` when
/// unlimited or absent.
pub fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl ProcessStats {
    /// This process, now. A file that cannot be read leaves its figures at 0
    /// (the families stay, so a dashboard never loses the series).
    pub fn read_self() -> Self {
        Self::read(Path::new("/proc/self"), Path::new("/proc/stat"))
    }

    fn read(proc_dir: &Path, proc_stat: &Path) -> Self {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let mut stats = ProcessStats::default();
        let stat = std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t));
        if let Some(stat) = stat {
            stats.cpu_seconds = stat.cpu_ticks as f64 / ticks;
            stats.virtual_bytes = stat.vsize_bytes as f64;
            stats.resident_bytes = stat.rss_pages as f64 * page;
            let boot = std::fs::read_to_string(proc_stat)
                .ok()
                .and_then(|t| parse_boot_time(&t));
            if let Some(boot) = boot {
                stats.start_time_seconds = boot as f64 + stat.start_ticks as f64 / ticks;
            }
        }
        stats.open_fds = std::fs::read_dir(proc_dir.join("fd"))
            .map(|dir| dir.count() as f64)
            .unwrap_or(0.0);
        stats.max_fds = std::fs::read_to_string(proc_dir.join("limits"))
            .ok()
            .and_then(|t| parse_max_open_files(&t))
            .map_or(0.0, |n| n as f64);
        stats
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        let one = |value: f64| vec![Series::new::<&str, &str>(&[], value)];
        vec![
            counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                one(self.cpu_seconds),
            ),
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                one(self.resident_bytes),
            ),
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                one(self.virtual_bytes),
            ),
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                one(self.open_fds),
            ),
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                one(self.max_fds),
            ),
            gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                one(self.start_time_seconds),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real /proc/self/stat line (Linux 6.18), with a name holding ") (".
    const STAT: &str = "4242 (tele) (md) S 1 4242 4242 0 -1 4194560 2170 0 0 0 37 12 0 0 20 0 \
        9 0 123456 1052672000 2304 18446744073709551615 1 1 0 0 0 0 0 4096 17134 0 0 0 17 1 0 0 \
        0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let f = parse_stat(STAT).unwrap();
        assert_eq!(f.cpu_ticks, 37 + 12);
        assert_eq!(f.start_ticks, 123456);
        assert_eq!(f.vsize_bytes, 1_052_672_000);
        assert_eq!(f.rss_pages, 2304);
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn boot_time_and_fd_limit() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764633600\nprocesses 9\n"),
            Some(1_764_633_600)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_reads_plausibly() {
        let stats = ProcessStats::read_self();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started before now, and not before the test binary was built.
        assert!(stats.start_time_seconds > 1.0e9 && stats.start_time_seconds <= now + 1.0);
        assert!(stats.resident_bytes > 0.0 && stats.resident_bytes < stats.virtual_bytes);
        // stdin, stdout, stderr at least, and the directory being read.
        assert!(stats.open_fds >= 3.0, "{stats:?}");
        assert!(stats.max_fds >= stats.open_fds, "{stats:?}");
        let names: Vec<String> = stats
            .families()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds"
            ]
        );
    }
}
