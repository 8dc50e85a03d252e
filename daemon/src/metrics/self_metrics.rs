//! telemetryd's own health, as every exporter has it, present from the first
//! scrape: how long its polls and scrapes take (and polls that overran the
//! interval), whether the last configuration reload worked and which
//! configuration runs, the kernel release, and the process metrics
//! ([`super::process`]). The service records into [`SelfMetrics`]; the
//! `/metrics` handler renders it with the snapshot's families.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::proto::MetricFamily;

use super::family::{counter, gauge, histogram, HistogramSeries, Series};
use super::process::ProcessStats;

/// Upper bounds (seconds) of `telemetryd_poll_duration_seconds` and
/// `telemetryd_scrape_duration_seconds`: 100 us to 2.5 s, written from the
/// first scrape on, zero or not (+Inf holds anything slower).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram over [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
pub struct DurationHistogram {
    inner: Mutex<Counts>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    /// Non-cumulative, one per bound, then +Inf.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl DurationHistogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        let mut counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        counts.buckets[slot] += 1;
        counts.sum += seconds;
        counts.count += 1;
    }

    fn family(&self, name: &str, help: &str) -> MetricFamily {
        let counts = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(counts.buckets)
            .map(|(bound, n)| {
                cumulative += n;
                (*bound, cumulative)
            })
            .collect();
        histogram(
            name,
            help,
            vec![HistogramSeries::new::<&str, &str>(
                &[],
                buckets,
                counts.sum,
                counts.count,
            )],
        )
    }
}

/// The configuration running, and how its last reload went.
#[derive(Clone, Debug, PartialEq)]
struct ConfigState {
    successful: bool,
    /// Seconds since the epoch of the last load that took effect (the start,
    /// or a SIGHUP).
    success_at: f64,
    hash: String,
}

/// What the service records about itself.
#[derive(Debug)]
pub struct SelfMetrics {
    pub polls: DurationHistogram,
    poll_overruns: AtomicU64,
    pub scrapes: DurationHistogram,
    config: Mutex<ConfigState>,
    kernel_release: String,
}

impl SelfMetrics {
    /// At start, once the configuration (whose [`crate::config::Config::fingerprint`]
    /// is `config_hash`) was loaded.
    pub fn new(config_hash: String) -> Self {
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self::with_kernel(config_hash, kernel_release)
    }

    fn with_kernel(config_hash: String, kernel_release: String) -> Self {
        Self {
            polls: DurationHistogram::default(),
            poll_overruns: AtomicU64::new(0),
            scrapes: DurationHistogram::default(),
            config: Mutex::new(ConfigState {
                successful: true,
                success_at: epoch_seconds(SystemTime::now()),
                hash: config_hash,
            }),
            kernel_release,
        }
    }

    /// One poll took `took`; an overrun when that is longer than the
    /// interval it had.
    pub fn poll_done(&self, took: Duration, interval: Duration) {
        self.polls.observe(took);
        if took > interval {
            self.poll_overruns.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A SIGHUP's outcome: `Some(hash)` of the configuration now running
    /// when the new file was applied, `None` when it was refused.
    pub fn reloaded(&self, applied: Option<String>) {
        let mut state = self.config.lock().unwrap_or_else(|e| e.into_inner());
        match applied {
            Some(hash) => {
                state.successful = true;
                state.success_at = epoch_seconds(SystemTime::now());
                state.hash = hash;
            }
            None => state.successful = false,
        }
    }

    /// Every family, the process metrics read now.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut families = self.own_families();
        families.extend(ProcessStats::read_self().families());
        families
    }

    fn own_families(&self) -> Vec<MetricFamily> {
        let config = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let one = |value: f64| vec![Series::new::<&str, &str>(&[], value)];
        vec![
            self.polls.family(
                "telemetryd_poll_duration_seconds",
                "Time one poll of every source took (reading the maps into a snapshot).",
            ),
            counter(
                "telemetryd_poll_overruns_total",
                "Polls that took longer than daemon.poll_interval.",
                one(self.poll_overruns.load(Ordering::Relaxed) as f64),
            ),
            self.scrapes.family(
                "telemetryd_scrape_duration_seconds",
                "Time rendering /metrics took, for the scrapes before this one.",
            ),
            gauge(
                "telemetryd_config_last_reload_successful",
                "1 when the last configuration load (the start or SIGHUP) took effect, 0 when the last SIGHUP's file was refused.",
                one(f64::from(u8::from(config.successful))),
            ),
            gauge(
                "telemetryd_config_last_reload_success_timestamp_seconds",
                "When the running configuration took effect (the start or the last good SIGHUP), seconds since the epoch.",
                one(config.success_at),
            ),
            gauge(
                "telemetryd_config_info",
                "Always 1; hash is a fingerprint of the running configuration (defaults and flags applied): equal on nodes that run the same.",
                vec![Series::new(&[("hash", config.hash.as_str())], 1.0)],
            ),
            gauge(
                "telemetryd_kernel_info",
                "Always 1; release is the running kernel's (uname -r).",
                vec![Series::new(&[("release", self.kernel_release.as_str())], 1.0)],
            ),
        ]
    }
}

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &SelfMetrics) -> String {
        super::super::render(metrics.families()).unwrap()
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn every_family_is_there_before_the_first_poll_or_reload() {
        let metrics = SelfMetrics::with_kernel("0123abcd".into(), "6.18.0-test".into());
        let text = text(&metrics);
        for line in [
            "telemetryd_poll_duration_seconds_count 0",
            "telemetryd_poll_duration_seconds_bucket{le=\"0.0001\"} 0",
            "telemetryd_poll_duration_seconds_bucket{le=\"2.5\"} 0",
            "telemetryd_poll_duration_seconds_bucket{le=\"+Inf\"} 0",
            "telemetryd_poll_overruns_total 0",
            "telemetryd_scrape_duration_seconds_count 0",
            "telemetryd_scrape_duration_seconds_bucket{le=\"0.001\"} 0",
            "telemetryd_config_last_reload_successful 1",
            "telemetryd_config_info{hash=\"0123abcd\"} 1",
            "telemetryd_kernel_info{release=\"6.18.0-test\"} 1",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_virtual_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_max_fds gauge",
            "# TYPE process_start_time_seconds gauge",
        ] {
            assert!(has(&text, line), "missing {line:?} in:\n{text}");
        }
        // Every bucket is written from the start: 14 bounds and +Inf, each histogram.
        for name in ["poll", "scrape"] {
            let prefix = format!("telemetryd_{name}_duration_seconds_bucket{{");
            let n = text.lines().filter(|l| l.starts_with(&prefix)).count();
            assert_eq!(n, DURATION_BUCKETS.len() + 1, "{name}");
        }
        let started: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("telemetryd_config_last_reload_success_timestamp_seconds ")
            })
            .unwrap()
            .parse()
            .unwrap();
        let now = epoch_seconds(SystemTime::now());
        assert!(started <= now && now - started < 60.0, "{started} vs {now}");
    }

    #[test]
    fn polls_overruns_and_reloads_are_recorded() {
        let metrics = SelfMetrics::with_kernel("aaaa".into(), "6.18".into());
        let interval = Duration::from_millis(100);
        metrics.poll_done(Duration::from_micros(300), interval);
        metrics.poll_done(Duration::from_millis(30), interval);
        metrics.poll_done(Duration::from_millis(150), interval);
        metrics.scrapes.observe(Duration::from_micros(50));
        let text = text(&metrics);
        for line in [
            "telemetryd_poll_duration_seconds_bucket{le=\"0.00025\"} 0",
            "telemetryd_poll_duration_seconds_bucket{le=\"0.0005\"} 1",
            "telemetryd_poll_duration_seconds_bucket{le=\"0.025\"} 1",
            "telemetryd_poll_duration_seconds_bucket{le=\"0.05\"} 2",
            "telemetryd_poll_duration_seconds_bucket{le=\"0.1\"} 2",
            "telemetryd_poll_duration_seconds_bucket{le=\"0.25\"} 3",
            "telemetryd_poll_duration_seconds_bucket{le=\"+Inf\"} 3",
            "telemetryd_poll_duration_seconds_sum 0.1803",
            "telemetryd_poll_duration_seconds_count 3",
            "telemetryd_poll_overruns_total 1",
            "telemetryd_scrape_duration_seconds_bucket{le=\"0.0001\"} 1",
            "telemetryd_scrape_duration_seconds_count 1",
        ] {
            assert!(has(&text, line), "missing {line:?} in:\n{text}");
        }

        metrics.reloaded(None);
        let text = super::super::render(metrics.own_families()).unwrap();
        assert!(
            has(&text, "telemetryd_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(
            has(&text, "telemetryd_config_info{hash=\"aaaa\"} 1"),
            "{text}"
        );

        metrics.reloaded(Some("bbbb".into()));
        let text = super::super::render(metrics.own_families()).unwrap();
        assert!(
            has(&text, "telemetryd_config_last_reload_successful 1"),
            "{text}"
        );
        assert!(
            has(&text, "telemetryd_config_info{hash=\"bbbb\"} 1"),
            "{text}"
        );
        assert!(!text.contains("aaaa"), "{text}");
    }
}
