//! The syscall tracer's metric families.

use prometheus::proto::MetricFamily;
use telemetryd_common::syscalls::{PROGRAM_ERROR_LABELS, PROGRAM_LABEL, SCHED_SWITCH_LABEL};

use super::stats::{SyscallStats, TracerStats};
use crate::metrics::family::{counter, histogram, HistogramSeries, Series};
use crate::sources::snapshot::{ProgramAttachment, ProgramErrorCount, Section};

impl Section for TracerStats {
    fn families(&self) -> Vec<MetricFamily> {
        let mut latency = Vec::new();
        let mut errors = Vec::new();
        for (name, stats) in &self.syscalls {
            let labels = [("syscall", name.as_str())];
            latency.push(HistogramSeries::new(
                &labels,
                latency_buckets(stats),
                stats.sum_ns as f64 / NANOS_PER_SECOND,
                stats.count,
            ));
            errors.push(Series::new(&labels, stats.errors as f64));
        }
        vec![
            histogram(
                "telemetryd_syscall_latency_seconds",
                "Latency of the tracked syscalls, entry to exit, in log2 buckets of nanoseconds.",
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
/// seconds, cumulative count).
///
/// Bucket `i` of the kernel histogram is `(2^(i-1), 2^i]` ns, so its bound
/// is exactly `2^i` ns (`2^i / 1e9` s, the nearest f64). Only the range
/// from the lowest to the highest non-empty bucket is written: below it the
/// cumulative count is 0, above it equal to `+Inf`, so nothing is lost.
/// Counts only grow, so that range only widens while the daemon runs: a
/// bound once written stays in every later scrape (series never flap). A
/// syscall never called has no finite bucket, only `+Inf` (the format
/// needs it), `_sum` and `_count`.
pub fn latency_buckets(stats: &SyscallStats) -> Vec<(f64, u64)> {
    let Some(lo) = stats.buckets.iter().position(|&n| n != 0) else {
        return Vec::new();
    };
    let hi = stats.buckets.iter().rposition(|&n| n != 0).unwrap_or(lo);
    let below: u64 = stats.buckets[..lo].iter().sum();
    let mut cumulative = below;
    (lo..=hi)
        .map(|i| {
            cumulative += stats.buckets[i];
            let upper = telemetryd_common::syscalls::bucket_upper_ns(i) as f64 / NANOS_PER_SECOND;
            (upper, cumulative)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyscallAttach;
    use crate::sources::snapshot::Snapshot;

    fn read_stats() -> SyscallStats {
        let mut stats = SyscallStats::default();
        // 3 calls of 200..256 ns, 1 of 1000 ns, 2 of 3 ms.
        stats.buckets[8] = 3;
        stats.buckets[10] = 1;
        stats.buckets[22] = 2;
        stats.count = 6;
        stats.sum_ns = 3 * 250 + 1000 + 2 * 3_000_000;
        stats.errors = 1;
        stats
    }

    #[test]
    fn latency_buckets_are_cumulative_powers_of_two_in_seconds() {
        let buckets = latency_buckets(&read_stats());
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        let counts: Vec<u64> = buckets.iter().map(|b| b.1).collect();
        assert_eq!(
            bounds.len(),
            22 - 8 + 1,
            "lowest to highest non-empty bucket"
        );
        assert_eq!(bounds[0], 256e-9);
        assert_eq!(bounds[2], 1024e-9);
        assert_eq!(*bounds.last().unwrap(), 4_194_304e-9);
        assert_eq!(counts[0], 3);
        assert_eq!(counts[1], 3);
        assert_eq!(counts[2], 4);
        assert_eq!(*counts.last().unwrap(), 6);
        assert!(latency_buckets(&SyscallStats::default()).is_empty());
    }

    #[test]
    fn renders_the_syscall_histogram() {
        let mut tracer = TracerStats {
            attach: SyscallAttach::Tracepoint,
            sched_switch: true,
            syscalls: Default::default(),
            errors: Default::default(),
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
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.000000256"} 3"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.000000512"} 3"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.000001024"} 4"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="0.004194304"} 6"#,
            r#"telemetryd_syscall_latency_seconds_bucket{syscall="read",le="+Inf"} 6"#,
            r#"telemetryd_syscall_latency_seconds_sum{syscall="read"} 0.00600175"#,
            r#"telemetryd_syscall_latency_seconds_count{syscall="read"} 6"#,
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
        let read_buckets = text
            .lines()
            .filter(|l| {
                l.starts_with(r#"telemetryd_syscall_latency_seconds_bucket{syscall="read""#)
            })
            .count();
        assert_eq!(read_buckets, 15 + 1, "2^8..2^22 ns and +Inf");
        let write_buckets = text
            .lines()
            .filter(|l| {
                l.starts_with(r#"telemetryd_syscall_latency_seconds_bucket{syscall="write""#)
            })
            .count();
        assert_eq!(write_buckets, 1, "an idle syscall has only +Inf");
    }
}
