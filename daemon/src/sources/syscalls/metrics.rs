//! The syscall tracer's metric families.

use prometheus::proto::MetricFamily;
use telemetryd_common::syscalls::{
    self as sc, PROGRAM_ERROR_LABELS, PROGRAM_LABEL, SCHED_SWITCH_LABEL,
};

use super::stats::{SyscallStats, TracerStats};
use crate::metrics::family::{counter, histogram, HistogramSeries, Series};
use crate::metrics::{NativeHistogram, NativeHistograms};
use crate::sources::snapshot::{ProgramAttachment, ProgramErrorCount, Section};

/// The family name, shared by its classic and native forms.
pub const LATENCY_FAMILY: &str = "telemetryd_syscall_latency_seconds";

impl Section for TracerStats {
    fn families(&self) -> Vec<MetricFamily> {
        let mut latency = Vec::new();
        let mut errors = Vec::new();
        for (name, stats) in &self.syscalls {
            let labels = [("syscall", name.as_str())];
            latency.push(HistogramSeries::new(
                &labels,
                latency_buckets(stats, self.classic_buckets),
                stats.sum_ns as f64 / NANOS_PER_SECOND,
                stats.count,
            ));
            errors.push(Series::new(&labels, stats.errors as f64));
        }
        vec![
            histogram(
                LATENCY_FAMILY,
                "Latency of the tracked syscalls, entry to exit, in power-of-two buckets of seconds.",
                latency,
            ),
            counter(
                "telemetryd_syscall_errors_total",
                "Tracked syscalls that returned an error.",
                errors,
            ),
            counter(
                "telemetryd_syscall_inflight_overflows_total",
                "Tracked syscalls not timed because the in-flight map (syscalls.max_in_flight) was full.",
                vec![Series::new::<&str, &str>(
                    &[],
                    self.in_flight_overflows() as f64,
                )],
            ),
        ]
    }

    fn native_histograms(&self, into: &mut NativeHistograms) {
        for (name, stats) in &self.syscalls {
            into.insert(
                LATENCY_FAMILY,
                &[("syscall", name.as_str())],
                native_histogram(stats),
            );
        }
    }

    fn attachments(&self) -> Vec<ProgramAttachment> {
        let attach = |program: &str| ProgramAttachment {
            program: program.to_owned(),
            attach: self.attach.label().to_owned(),
            device: String::new(),
        };
        let mut attachments = vec![attach(PROGRAM_LABEL)];
        if self.sched_switch {
            attachments.push(attach(SCHED_SWITCH_LABEL));
        }
        attachments
    }

    fn program_errors(&self) -> Vec<ProgramErrorCount> {
        PROGRAM_ERROR_LABELS
            .iter()
            .zip(self.errors)
            .map(|(reason, count)| (PROGRAM_LABEL, *reason, count))
            .collect()
    }
}

const NANOS_PER_SECOND: f64 = 1e9;

/// The finite `le` buckets of one syscall histogram: (upper bound in
/// seconds, cumulative count), the same fixed layout from the first scrape
/// on, zero or not: the bounds of kernel buckets `lowest..=highest`
/// (`classic`), `2^(i-30)` s each, exact. Calls below the lowest bound
/// count in the lowest bucket (it is cumulative), calls above the highest
/// only in `+Inf` (= `_count`, added by the encoder).
pub fn latency_buckets(stats: &SyscallStats, classic: (usize, usize)) -> Vec<(f64, u64)> {
    let (lowest, highest) = classic;
    let highest = highest.min(stats.buckets.len() - 1);
    let mut cumulative: u64 = stats.buckets[..lowest.min(highest)].iter().sum();
    (lowest..=highest)
        .map(|i| {
            cumulative += stats.buckets[i];
            (sc::bucket_upper_seconds(i), cumulative)
        })
        .collect()
}

/// The native histogram of schema 0 of one syscall: kernel bucket `i >= 1`
/// is native bucket `i - 30` count for count (both are `(2^(i-31),
/// 2^(i-30)]` s), kernel bucket 0 the zero bucket (`[0, 2^-30]` s).
pub fn native_histogram(stats: &SyscallStats) -> NativeHistogram {
    NativeHistogram::from_seconds_buckets(&stats.buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyscallAttach;
    use crate::sources::snapshot::Snapshot;
    use crate::sources::syscalls::DEFAULT_CLASSIC_BUCKETS;
    use telemetryd_common::syscalls::bucket_index;

    /// Calls recorded as the kernel records them.
    fn stats_of(latencies_ns: &[u64]) -> SyscallStats {
        let mut stats = SyscallStats::default();
        for &ns in latencies_ns {
            stats.buckets[bucket_index(ns)] += 1;
            stats.count += 1;
            stats.sum_ns += ns;
        }
        stats
    }

    fn read_stats() -> SyscallStats {
        // 3 calls of 200 ns (below the lowest bound, 2^-22 s = 238 ns),
        // 1 of 1000 ns, 2 of 3 ms, 1 of 20 s (above the highest, 16 s).
        let mut stats = stats_of(&[200, 200, 200, 1000, 3_000_000, 3_000_000, 20_000_000_000]);
        stats.errors = 1;
        stats
    }

    #[test]
    fn the_classic_layout_is_fixed_and_exact() {
        let layout = DEFAULT_CLASSIC_BUCKETS;
        for stats in [SyscallStats::default(), read_stats()] {
            let bounds: Vec<f64> = latency_buckets(&stats, layout)
                .iter()
                .map(|b| b.0)
                .collect();
            let expected: Vec<f64> = (-22..=4).map(|e| 2f64.powi(e)).collect();
            assert_eq!(bounds, expected, "2^-22 s .. 2^4 s, busy or idle");
        }
        let buckets = latency_buckets(&read_stats(), layout);
        let le = |bound: f64| buckets.iter().find(|b| b.0 == bound).unwrap().1;
        assert_eq!(le(2f64.powi(-22)), 3, "below the lowest bound: in it");
        assert_eq!(le(2f64.powi(-21)), 3);
        assert_eq!(le(2f64.powi(-19)), 4, "1 us <= 2^-19 s (1.9 us)");
        assert_eq!(le(2f64.powi(-9)), 4, "3 ms > 2^-9 s (1.95 ms)");
        assert_eq!(le(2f64.powi(-8)), 6, "3 ms <= 2^-8 s (3.9 ms)");
        assert_eq!(le(16.0), 6, "20 s only in +Inf");
        // A narrower layout from the config.
        let narrow = latency_buckets(&read_stats(), (20, 22));
        assert_eq!(
            narrow,
            [(2f64.powi(-10), 4), (2f64.powi(-9), 4), (2f64.powi(-8), 6)]
        );
    }

    #[test]
    fn kernel_buckets_are_native_buckets_one_for_one() {
        let stats = stats_of(&[0, 1, 45_000_000, 45_000_000, 1_000_000_000, 1_000_000_001]);
        let native = native_histogram(&stats);
        assert_eq!(native.zero_threshold, 2f64.powi(-30));
        assert_eq!(native.zero_count, 1, "0 ns");
        assert_eq!(
            native.buckets,
            [(-29, 1), (-4, 2), (0, 1), (1, 1)],
            "1 ns in (2^-30, 2^-29]; 45 ms in (2^-5, 2^-4]; 1 s in (0.5, 1]; 1 s + 1 ns in (1, 2]"
        );
        let total: u64 = native.zero_count + native.buckets.iter().map(|b| b.1).sum::<u64>();
        assert_eq!(total, stats.count);
        // Each native bucket's bounds contain every latency counted in it.
        for ns in [
            3u64, 238, 239, 477, 1_953_125, 1_953_126, 33_554_432, 45_000_000,
        ] {
            let k = sc::native_bucket_index(bucket_index(ns));
            let s = ns as f64 * 1e-9;
            assert!(
                s > 2f64.powi(k - 1) && s <= 2f64.powi(k),
                "{ns} ns in bucket {k}"
            );
        }
    }

    #[test]
    fn renders_the_syscall_histogram() {
        let mut tracer = TracerStats {
            attach: SyscallAttach::Tracepoint,
            sched_switch: true,
            syscalls: Default::default(),
            errors: Default::default(),
            classic_buckets: DEFAULT_CLASSIC_BUCKETS,
        };
        tracer.syscalls.insert("read".into(), read_stats());
        tracer
            .syscalls
            .insert("write".into(), SyscallStats::default());
        let snapshot = Snapshot {
            syscalls: Some(tracer),
            ..Default::default()
        };
        let text = snapshot.render(Vec::new()).unwrap();
        for line in [
            "# TYPE telemetryd_syscall_latency_seconds histogram",
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.0000002384185791015625"} 3"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.000003814697265625"} 4"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.00390625"} 6"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="16"} 6"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="+Inf"} 7"#,
            r#"telemetryd_syscall_latency_seconds_sum{syscall="read"} 20.0060016"#,
            r#"telemetryd_syscall_latency_seconds_count{syscall="read"} 7"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="write",le="0.0000002384185791015625"} 0"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="write",le="16"} 0"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="write",le="+Inf"} 0"#,
            r#"telemetryd_syscall_latency_seconds_count{syscall="write"} 0"#,
            r#"telemetryd_syscall_errors_total{syscall="read"} 1"#,
            r#"telemetryd_syscall_errors_total{syscall="write"} 0"#,
            "telemetryd_syscall_inflight_overflows_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        for syscall in ["read", "write"] {
            let prefix =
                format!(r#"telemetryd_syscall_latency_seconds_bucket{{syscall="{syscall}""#);
            let series = text.lines().filter(|l| l.starts_with(&prefix)).count();
            assert_eq!(
                series,
                27 + 1,
                "{syscall}: 2^-22..2^4 s and +Inf, busy or idle"
            );
        }
        let native = snapshot.native_histograms();
        assert_eq!(native.len(), 2);
    }
}
