//! Renders a [`Snapshot`] in the Prometheus text format (0.0.4).
//!
//! Families are built straight from the snapshot at scrape time with the
//! `prometheus` crate's data model and text encoder: the kernel counters are
//! already cumulative, so nothing here keeps state of its own.

pub mod drops;
pub mod events;
pub mod family;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};
use telemetryd_common::xdp::{FAMILY_LABELS, PROTOCOL_LABELS};

use crate::collect::snapshot::SyscallStats;
use crate::collect::Snapshot;
use family::{counter, gauge, histogram, HistogramSample, Sample};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every family of one scrape: the snapshot's, plus `extra` (families other
/// parts of the daemon own, such as the anomaly board's), sorted by name.
/// Families without samples are left out (the format has no way to say
/// "no series yet"; the encoder refuses them).
pub fn render(snapshot: &Snapshot, extra: Vec<MetricFamily>) -> Result<String, prometheus::Error> {
    let mut families = snapshot_families(snapshot);
    families.extend(events::families(snapshot));
    families.extend(extra);
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

fn snapshot_families(snapshot: &Snapshot) -> Vec<MetricFamily> {
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    let mut malformed = Vec::new();
    let mut dropped = Vec::new();
    let mut errors = Vec::new();
    for (device, stats) in &snapshot.interfaces {
        for (f, family) in FAMILY_LABELS.iter().enumerate() {
            for (p, protocol) in PROTOCOL_LABELS.iter().enumerate() {
                let labels = [
                    ("device", device.as_str()),
                    ("family", family),
                    ("protocol", protocol),
                ];
                packets.push(Sample::new(&labels, stats.packets[f][p] as f64));
                bytes.push(Sample::new(&labels, stats.bytes[f][p] as f64));
            }
        }
        malformed.push(Sample::new(&[("device", device)], stats.malformed as f64));
        for (direction, d, e) in [
            ("rx", stats.rx_dropped, stats.rx_errors),
            ("tx", stats.tx_dropped, stats.tx_errors),
        ] {
            let labels = [("device", device.as_str()), ("direction", direction)];
            dropped.push(Sample::new(&labels, d as f64));
            errors.push(Sample::new(&labels, e as f64));
        }
    }

    let program_errors = snapshot
        .program_errors
        .iter()
        .map(|((program, reason), n)| {
            Sample::new(&[("program", program), ("reason", reason)], *n as f64)
        })
        .collect();
    let attached = snapshot
        .attachments
        .iter()
        .map(|a| {
            Sample::new(
                &[
                    ("program", &a.program),
                    ("attach", &a.attach),
                    ("device", &a.device),
                ],
                1.0,
            )
        })
        .collect();

    let mut latency = Vec::new();
    let mut syscall_errors = Vec::new();
    for (name, stats) in &snapshot.syscalls {
        let labels = [("syscall", name.as_str())];
        latency.push(HistogramSample::new(
            &labels,
            latency_buckets(stats),
            stats.sum_ns as f64 / NANOS_PER_SECOND,
            stats.count,
        ));
        syscall_errors.push(Sample::new(&labels, stats.errors as f64));
    }
    let overflows = snapshot
        .syscall_in_flight_overflows
        .map(|n| Sample::new::<&str, &str>(&[], n as f64))
        .into_iter()
        .collect();

    let mut families = vec![
        histogram(
            "telemetryd_syscall_latency_seconds",
            "Latency of the tracked syscalls, entry to exit, in log2 buckets of nanoseconds.",
            latency,
        ),
        counter(
            "telemetryd_syscall_errors_total",
            "Tracked syscalls that returned an error.",
            syscall_errors,
        ),
        counter(
            "telemetryd_syscall_inflight_overflows_total",
            "Tracked syscalls not timed because the in-flight map (syscalls.max_in_flight) was full.",
            overflows,
        ),
        counter(
            "telemetryd_xdp_packets_total",
            "Packets seen by XDP on arrival, by device, address family and transport protocol.",
            packets,
        ),
        counter(
            "telemetryd_xdp_bytes_total",
            "Bytes (L2 frame length) seen by XDP on arrival, by device, address family and transport protocol.",
            bytes,
        ),
        counter(
            "telemetryd_xdp_malformed_packets_total",
            "Frames XDP could not fully parse (truncated headers); also counted in telemetryd_xdp_packets_total.",
            malformed,
        ),
        counter(
            "telemetryd_interface_dropped_total",
            "Packets the kernel dropped on the interface (its own rx/tx_dropped counters).",
            dropped,
        ),
        counter(
            "telemetryd_interface_errors_total",
            "Receive and transmit errors of the interface (its own rx/tx_errors counters).",
            errors,
        ),
        counter(
            "telemetryd_ebpf_program_errors_total",
            "Errors of telemetryd's eBPF programs themselves; the traffic or call was still let through.",
            program_errors,
        ),
        gauge(
            "telemetryd_ebpf_program_attached",
            "1 for each place an eBPF program of telemetryd is attached, with how.",
            attached,
        ),
        gauge(
            "telemetryd_source_up",
            "1 while the signal's eBPF programs are attached and polled, else 0.",
            source_up(snapshot),
        ),
        gauge(
            "telemetryd_build_info",
            "Always 1; the labels describe this build.",
            vec![Sample::new(&[("version", VERSION)], 1.0)],
        ),
    ];
    families.extend(drops::families(snapshot));
    families
}

/// The signals of `telemetryd_source_up` and the program each one needs
/// attached: packet counts (XDP), syscall latency, kernel drops and TCP
/// retransmits.
pub const SOURCES: [(&str, &str); 4] = [
    ("xdp", telemetryd_common::xdp::PROGRAM_NAME),
    ("syscalls", telemetryd_common::syscalls::PROGRAM_LABEL),
    ("kernel_drops", telemetryd_common::drops::DROPS_PROGRAM),
    (
        "tcp_retransmits",
        telemetryd_common::drops::RETRANSMITS_PROGRAM,
    ),
];

/// Every source, 1 when this poll found its program attached.
fn source_up(snapshot: &Snapshot) -> Vec<Sample> {
    SOURCES
        .iter()
        .map(|(source, program)| {
            let up = snapshot.attachments.iter().any(|a| a.program == *program);
            Sample::new(&[("source", source)], f64::from(u8::from(up)))
        })
        .collect()
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
    use crate::collect::snapshot::{InterfaceStats, ProgramAttachment};
    use telemetryd_common::xdp::{FAMILY_IPV4, FAMILY_IPV6, PROTOCOL_ICMP, PROTOCOL_UDP};

    fn sample_snapshot() -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut stats = InterfaceStats::default();
        stats.packets[FAMILY_IPV4][PROTOCOL_UDP] = 7;
        stats.bytes[FAMILY_IPV4][PROTOCOL_UDP] = 700;
        stats.packets[FAMILY_IPV6][PROTOCOL_ICMP] = 3;
        stats.bytes[FAMILY_IPV6][PROTOCOL_ICMP] = 3 * 118;
        stats.malformed = 2;
        snapshot.interfaces.insert("veth0".into(), stats);
        snapshot.attachments.push(ProgramAttachment {
            program: "xdp_packet_counter".into(),
            attach: "xdp-generic".into(),
            device: "veth0".into(),
        });
        snapshot
    }

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
        let mut snapshot = Snapshot::default();
        snapshot.syscalls.insert("read".into(), read_stats());
        snapshot
            .syscalls
            .insert("write".into(), SyscallStats::default());
        snapshot.syscall_in_flight_overflows = Some(0);
        let text = render(&snapshot, Vec::new()).unwrap();
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

    #[test]
    fn renders_exact_counter_lines() {
        let text = render(&sample_snapshot(), Vec::new()).unwrap();
        for line in [
            r#"telemetryd_xdp_packets_total{device="veth0",family="ipv4",protocol="udp"} 7"#,
            r#"telemetryd_xdp_bytes_total{device="veth0",family="ipv4",protocol="udp"} 700"#,
            r#"telemetryd_xdp_packets_total{device="veth0",family="ipv6",protocol="icmp"} 3"#,
            r#"telemetryd_xdp_bytes_total{device="veth0",family="ipv6",protocol="icmp"} 354"#,
            r#"telemetryd_xdp_packets_total{device="veth0",family="other",protocol="other"} 0"#,
            r#"telemetryd_xdp_malformed_packets_total{device="veth0"} 2"#,
            r#"telemetryd_ebpf_program_attached{attach="xdp-generic",device="veth0",program="xdp_packet_counter"} 1"#,
            r#"telemetryd_source_up{source="xdp"} 1"#,
            r#"telemetryd_source_up{source="syscalls"} 0"#,
            "# TYPE telemetryd_xdp_packets_total counter",
            "# TYPE telemetryd_build_info gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn every_family_combination_exists_from_the_start() {
        let mut snapshot = Snapshot::default();
        snapshot
            .interfaces
            .insert("eth0".into(), InterfaceStats::default());
        let text = render(&snapshot, Vec::new()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("telemetryd_xdp_packets_total{"))
            .count();
        assert_eq!(series, 12, "3 families x 4 protocols for one device");
    }

    #[test]
    fn an_empty_snapshot_renders_build_info_and_every_source_down() {
        let text = render(&Snapshot::default(), Vec::new()).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let mut want = vec![format!("telemetryd_build_info{{version=\"{VERSION}\"}} 1")];
        for (source, _) in SOURCES {
            want.push(format!("telemetryd_source_up{{source=\"{source}\"}} 0"));
        }
        assert_eq!(samples, want, "{text}");
    }

    #[test]
    fn families_are_sorted_and_counters_end_in_total() {
        let text = render(&sample_snapshot(), Vec::new()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for entry in names {
            let (name, kind) = entry.split_once(' ').unwrap();
            assert!(name.starts_with("telemetryd_"), "{name}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
        }
    }
}
