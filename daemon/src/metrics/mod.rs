//! Renders a [`Snapshot`] in the Prometheus text format (0.0.4).
//!
//! Families are built straight from the snapshot at scrape time with the
//! `prometheus` crate's data model and text encoder: the kernel counters are
//! already cumulative, so nothing here keeps state of its own.

pub mod drops;
pub mod family;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};
use telemetryd_common::xdp::{FAMILY_LABELS, PROTOCOL_LABELS};

use crate::collect::Snapshot;
use family::{counter, gauge, Sample};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every family of one scrape: the snapshot's, plus `extra` (families other
/// parts of the daemon own, such as the anomaly board's), sorted by name.
/// Families without samples are left out (the format has no way to say
/// "no series yet"; the encoder refuses them).
pub fn render(snapshot: &Snapshot, extra: Vec<MetricFamily>) -> Result<String, prometheus::Error> {
    let mut families = snapshot_families(snapshot);
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

    let mut families = vec![
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
            "telemetryd_build_info",
            "Always 1; the labels describe this build.",
            vec![Sample::new(&[("version", VERSION)], 1.0)],
        ),
    ];
    families.extend(drops::families(snapshot));
    families
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
    fn an_empty_snapshot_renders_build_info_only() {
        let text = render(&Snapshot::default(), Vec::new()).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [format!("telemetryd_build_info{{version=\"{VERSION}\"}} 1")],
            "{text}"
        );
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
