//! Families of the loss signals: kernel drops by reason (and by device),
//! TCP retransmits by family, and the TCP MIB's segment counters.

use prometheus::proto::MetricFamily;

use telemetryd_common::drops::DROPS_ERROR_LABELS;

use super::classes::classify;
use super::stats::DropStats;
use crate::metrics::family::{counter, Series};
use crate::sources::cardinality::OTHER;
use crate::sources::snapshot::{ProgramAttachment, ProgramErrorCount, Section};

impl Section for DropStats {
    fn families(&self) -> Vec<MetricFamily> {
        families(self)
    }

    fn attachments(&self) -> Vec<ProgramAttachment> {
        self.attached
            .iter()
            .map(|program| ProgramAttachment {
                program: (*program).to_owned(),
                attach: "tracepoint".to_owned(),
                device: String::new(),
            })
            .collect()
    }

    fn program_errors(&self) -> Vec<ProgramErrorCount> {
        DROPS_ERROR_LABELS
            .iter()
            .zip(self.errors)
            .map(|((program, reason), count)| (*program, *reason, count))
            .collect()
    }

    fn folded_series(&self) -> Vec<(&'static str, u64)> {
        let folded = &self.device_drops_folded.devices;
        let series = self
            .device_drops
            .iter()
            .filter(|(device, _)| folded.contains(*device))
            .map(|(_, reasons)| reasons.len() as u64)
            .sum();
        vec![("telemetryd_kernel_device_drops_total", series)]
    }
}

fn families(snapshot: &DropStats) -> Vec<MetricFamily> {
    let reasons = snapshot
        .kernel_drops
        .iter()
        .map(|(reason, n)| {
            let class = classify(reason).label();
            Series::new(&[("reason", reason.as_str()), ("class", class)], *n as f64)
        })
        .collect();
    let folded = &snapshot.device_drops_folded;
    let by_device = snapshot
        .device_drops
        .iter()
        .filter(|(device, _)| !folded.devices.contains(*device))
        .map(|(device, reasons)| (device.as_str(), reasons))
        .chain(folded.other.as_ref().map(|other| (OTHER, other)))
        .flat_map(|(device, reasons)| {
            reasons.iter().map(move |(reason, n)| {
                Series::new(&[("device", device), ("reason", reason)], *n as f64)
            })
        })
        .collect();
    let by_peer = snapshot
        .peer_series
        .iter()
        .map(|((device, peer), n)| Series::new(&[("device", device), ("peer", peer)], *n as f64))
        .collect();
    let retransmits_by_peer = snapshot
        .peer_retransmits
        .iter()
        .map(|(peer, n)| Series::new(&[("peer", peer)], *n as f64))
        .collect();
    let tcp = &snapshot.tcp;
    let traced = snapshot.retransmits_traced();
    let tcp_samples = |samples: Vec<Series>| if traced { samples } else { Vec::new() };
    let retransmits = if traced {
        vec![
            Series::new(&[("family", "ipv4")], tcp.retransmits_ipv4 as f64),
            Series::new(&[("family", "ipv6")], tcp.retransmits_ipv6 as f64),
        ]
    } else {
        Vec::new()
    };
    vec![
        counter(
            "telemetryd_kernel_drops_total",
            "Packets the kernel freed as dropped (skb:kfree_skb), by drop reason (enum skb_drop_reason without its SKB_DROP_REASON_ prefix; reasons seen so far) and its class (loss, local, unknown: README's drop reason classes).",
            reasons,
        ),
        counter(
            "telemetryd_kernel_device_drops_total",
            "The kernel drops whose packet named a device of this network namespace, by device and drop reason.",
            by_device,
        ),
        counter(
            "telemetryd_peer_drops_total",
            "Kernel drops of the loss class of packets received on a device of this network namespace, by device and the packet's IP source address (peer); at most 32 peers per device, the first seen, the rest as peer=\"other\".",
            by_peer,
        ),
        counter(
            "telemetryd_peer_tcp_retransmits_total",
            "TCP segments retransmitted (tcp:tcp_retransmit_skb) in this network namespace, by the socket's remote address (peer); at most 32 peers, the first seen, the rest as peer=\"other\".",
            retransmits_by_peer,
        ),
        counter(
            "telemetryd_tcp_retransmits_total",
            "TCP segments retransmitted (tcp:tcp_retransmit_skb) in this network namespace, by address family.",
            retransmits,
        ),
        counter(
            "telemetryd_tcp_segments_sent_total",
            "TCP segments sent (/proc/net/snmp Tcp OutSegs, this network namespace, both families).",
            tcp_samples(vec![Series::new::<&str, &str>(&[], tcp.segments_out as f64)]),
        ),
        counter(
            "telemetryd_tcp_segments_retransmitted_total",
            "TCP segments retransmitted (/proc/net/snmp Tcp RetransSegs, this network namespace, both families).",
            tcp_samples(vec![Series::new::<&str, &str>(&[], tcp.retrans_segs as f64)]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::snapshot::Snapshot;

    #[test]
    fn renders_loss_signals() {
        let mut s = DropStats::default();
        s.kernel_drops.insert("NETFILTER_DROP".into(), 12);
        s.kernel_drops.insert("QUEUE_PURGE".into(), 7);
        s.kernel_drops.insert("OTHER".into(), 1);
        s.device_drops
            .entry("veth0".into())
            .or_default()
            .insert("NETFILTER_DROP".into(), 10);
        s.peer_series.insert(("veth0".into(), "10.1.0.7".into()), 9);
        s.peer_retransmits.insert("10.1.0.8".into(), 2);
        s.tcp.retransmits_ipv4 = 3;
        s.tcp.segments_out = 1000;
        s.tcp.retrans_segs = 4;
        s.attached.push("tcp_retransmits");
        let snapshot = Snapshot {
            drops: Some(s),
            ..Default::default()
        };
        let text = snapshot.render(Vec::new()).unwrap();
        for line in [
            r#"telemetryd_kernel_drops_total{class="loss",reason="NETFILTER_DROP"} 12"#,
            r#"telemetryd_kernel_drops_total{class="local",reason="QUEUE_PURGE"} 7"#,
            r#"telemetryd_kernel_drops_total{class="unknown",reason="OTHER"} 1"#,
            r#"telemetryd_kernel_device_drops_total{device="veth0",reason="NETFILTER_DROP"} 10"#,
            r#"telemetryd_tcp_retransmits_total{family="ipv4"} 3"#,
            r#"telemetryd_peer_drops_total{device="veth0",peer="10.1.0.7"} 9"#,
            r#"telemetryd_peer_tcp_retransmits_total{peer="10.1.0.8"} 2"#,
            r#"telemetryd_tcp_retransmits_total{family="ipv6"} 0"#,
            "telemetryd_tcp_segments_sent_total 1000",
            "telemetryd_tcp_segments_retransmitted_total 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
