//! The packet counter's metric families.

use prometheus::proto::MetricFamily;
use telemetryd_common::xdp::{FAMILY_LABELS, PROGRAM_ERROR_LABELS, PROGRAM_NAME, PROTOCOL_LABELS};

use super::stats::XdpStats;
use crate::metrics::family::{counter, Series};
use crate::sources::snapshot::{ProgramAttachment, ProgramErrorCount, Section};

impl Section for XdpStats {
    fn families(&self) -> Vec<MetricFamily> {
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        let mut malformed = Vec::new();
        let mut dropped = Vec::new();
        let mut errors = Vec::new();
        for (device, stats) in &self.interfaces {
            for (f, family) in FAMILY_LABELS.iter().enumerate() {
                for (p, protocol) in PROTOCOL_LABELS.iter().enumerate() {
                    let labels = [
                        ("device", device.as_str()),
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
                let labels = [("device", device.as_str()), ("direction", direction)];
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
                device: device.clone(),
            })
            .collect()
    }

    fn program_errors(&self) -> Vec<ProgramErrorCount> {
        PROGRAM_ERROR_LABELS
            .iter()
            .zip(self.errors)
            .map(|(reason, count)| (PROGRAM_NAME, *reason, count))
            .collect()
    }
}
