//! The packet counter's metric families.

use prometheus::proto::MetricFamily;
use telemetryd_common::xdp::{FAMILY_LABELS, PROGRAM_ERROR_LABELS, PROGRAM_NAME, PROTOCOL_LABELS};

use super::stats::{InterfaceStats, XdpStats};
use crate::metrics::family::{counter, Series};
use crate::sources::cardinality::OTHER;
use crate::sources::snapshot::{ProgramAttachment, ProgramErrorCount, Section};

impl Section for XdpStats {
    fn families(&self) -> Vec<MetricFamily> {
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        let mut malformed = Vec::new();
        let mut dropped = Vec::new();
        let mut errors = Vec::new();
        let other = self.folded.other.as_ref().map(InterfaceStats::from_counts);
        let own = self
            .interfaces
            .iter()
            .filter(|(device, _)| !self.folded.devices.contains(*device))
            .map(|(device, stats)| (device.as_str(), stats));
        for (device, stats) in own.chain(other.as_ref().map(|o| (OTHER, o))) {
            for (f, family) in FAMILY_LABELS.iter().enumerate() {
                for (p, protocol) in PROTOCOL_LABELS.iter().enumerate() {
                    let labels = [
                        ("device", device),
                        ("family", family),
                        ("protocol", protocol),
                    ];
                    packets.push(Series::new(&labels, stats.packets[f][p] as f64));
                    bytes.push(Series::new(&labels, stats.bytes[f][p] as f64));
                }
            }
            malformed.push(Series::new(&[("device", device)], stats.malformed as f64));
            for (direction, d, e) in [
                ("rx", stats.rx_dropped, stats.rx_errors),
                ("tx", stats.tx_dropped, stats.tx_errors),
            ] {
                let labels = [("device", device), ("direction", direction)];
                dropped.push(Series::new(&labels, d as f64));
                errors.push(Series::new(&labels, e as f64));
            }
        }
        vec![
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
        ]
    }

    fn attachments(&self) -> Vec<ProgramAttachment> {
        self.attachments
            .iter()
            .map(|(device, mode)| ProgramAttachment {
                program: PROGRAM_NAME.to_owned(),
                attach: mode.label().to_owned(),
                device: if self.folded.devices.contains(device) {
                    OTHER.to_owned()
                } else {
                    device.clone()
                },
            })
            .collect()
    }

    fn folded_series(&self) -> Vec<(&'static str, u64)> {
        let devices = self.folded.devices.len() as u64;
        let cells = (FAMILY_LABELS.len() * PROTOCOL_LABELS.len()) as u64;
        let attached = self
            .attachments
            .iter()
            .filter(|(device, _)| self.folded.devices.contains(device))
            .count() as u64;
        vec![
            ("telemetryd_xdp_packets_total", devices * cells),
            ("telemetryd_xdp_bytes_total", devices * cells),
            ("telemetryd_xdp_malformed_packets_total", devices),
            ("telemetryd_interface_dropped_total", devices * 2),
            ("telemetryd_interface_errors_total", devices * 2),
            ("telemetryd_ebpf_program_attached", attached),
        ]
    }

    fn program_errors(&self) -> Vec<ProgramErrorCount> {
        PROGRAM_ERROR_LABELS
            .iter()
            .zip(self.errors)
            .map(|(reason, count)| (PROGRAM_NAME, *reason, count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::XdpMode;
    use crate::sources::cardinality::{DeviceCap, DevicePolicy};
    use crate::sources::snapshot::Snapshot;
    use telemetryd_common::xdp::{FAMILY_IPV4, PROTOCOL_UDP};

    #[test]
    fn folded_devices_render_as_other_and_are_counted() {
        let mut xdp = XdpStats::default();
        for (name, packets) in [("eth0", 5), ("veth1", 7), ("veth2", 11)] {
            let mut stats = InterfaceStats::default();
            stats.packets[FAMILY_IPV4][PROTOCOL_UDP] = packets;
            stats.rx_dropped = 1;
            xdp.interfaces.insert(name.into(), stats);
            xdp.attachments.push((name.into(), XdpMode::Generic));
        }
        let mut cap = DeviceCap::new(DevicePolicy::default(), 1);
        let interfaces = &xdp.interfaces;
        xdp.folded = cap.fold(interfaces.keys().map(String::as_str), |d| {
            interfaces[d].to_counts()
        });
        let text = Snapshot {
            xdp: Some(xdp),
            ..Default::default()
        }
        .render(Vec::new())
        .unwrap();
        for line in [
            r#"telemetryd_xdp_packets_total{device="eth0",family="ipv4",protocol="udp"} 5"#,
            r#"telemetryd_xdp_packets_total{device="other",family="ipv4",protocol="udp"} 18"#,
            r#"telemetryd_interface_dropped_total{device="other",direction="rx"} 2"#,
            r#"telemetryd_ebpf_program_attached{attach="xdp-generic",device="eth0",program="xdp_packet_counter"} 1"#,
            r#"telemetryd_ebpf_program_attached{attach="xdp-generic",device="other",program="xdp_packet_counter"} 2"#,
            r#"telemetryd_series_folded{family="telemetryd_xdp_packets_total"} 24"#,
            r#"telemetryd_series_folded{family="telemetryd_xdp_malformed_packets_total"} 2"#,
            r#"telemetryd_series_folded{family="telemetryd_ebpf_program_attached"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("veth"), "{text}");
        let packets = text
            .lines()
            .filter(|l| l.starts_with("telemetryd_xdp_packets_total{"))
            .count();
        assert_eq!(packets, 2 * 12, "eth0 and other");
    }
}
