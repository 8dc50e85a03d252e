//! Drop reasons in classes: which kernel drops are packet loss and which
//! are the stack tidying up after itself.
//!
//! `skb:kfree_skb` fires for every skb freed as not consumed, and many of
//! those are no loss at all: a socket closed with data still queued
//! (`SOCKET_CLOSE`, `QUEUE_PURGE`), a duplicate TCP segment
//! (`TCP_OLD_DATA`), a frame for another host (`OTHERHOST`). Paging an
//! operator for them teaches them to ignore the alerts, so `packet_loss`
//! judges only the [`DropClass::Loss`] class.
//!
//! [`DROP_REASON_CLASSES`] sorts every name of `enum skb_drop_reason` (as
//! the kernel's BTF spells it, without `SKB_DROP_REASON_`) up to Linux
//! 6.18, after the kernel's own comments in
//! `include/net/dropreason-core.h`. A name it does not list (a newer
//! kernel's, a subsystem reason in the overflow slot `OTHER`, a numbered
//! `REASON_<n>` without BTF) is [`DropClass::Unknown`]: counted and shown
//! with that class, and judged as loss or not by
//! `analyzer.unknown_drop_reasons`.

use serde::Serialize;

/// The class of a drop reason: the `class` label of
/// `telemetryd_kernel_drops_total` (these three values only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropClass {
    /// The network or the node lost a packet a peer sent (or that was sent
    /// to a peer): a filter, a full queue, a bad checksum, no route.
    Loss,
    /// Local and benign: the packet was not lost to anyone who wanted it
    /// (a socket closed or purged, duplicate or old TCP data, a packet not
    /// for this host, nobody listening).
    Local,
    /// A name [`DROP_REASON_CLASSES`] does not know.
    Unknown,
}

impl DropClass {
    pub const ALL: [DropClass; 3] = [DropClass::Loss, DropClass::Local, DropClass::Unknown];

    /// The label value: `loss`, `local`, `unknown`.
    pub fn label(self) -> &'static str {
        match self {
            DropClass::Loss => "loss",
            DropClass::Local => "local",
            DropClass::Unknown => "unknown",
        }
    }
}

use DropClass::{Local, Loss};

/// Every reason name telemetryd knows, its class, and why (the kernel's
/// comment, shortened, and the judgement where it is not obvious).
/// Kept in the kernel's enum order; README's "Drop reason classes" lists it.
pub const DROP_REASON_CLASSES: &[(&str, DropClass, &str)] = &[
    ("NOT_DROPPED_YET", Local, "not a drop (the no-drop value)"),
    ("CONSUMED", Local, "packet consumed, not dropped"),
    // `kfree_skb()` without a reason: on this kernel's receive and
    // transmit paths the drops that lose packets have reasons of their
    // own (below); what remains is mostly the clean-up of skbs the stack
    // built itself. Interface-level loss still shows in rx/tx_dropped.
    (
        "NOT_SPECIFIED",
        Local,
        "kfree_skb() without a reason: mostly clean-up of local skbs",
    ),
    (
        "NO_SOCKET",
        Local,
        "no socket listens: the packet arrived, nobody wanted it",
    ),
    (
        "SOCKET_CLOSE",
        Local,
        "socket closed with the packet queued",
    ),
    (
        "SOCKET_FILTER",
        Local,
        "a socket filter (BPF) chose to drop it",
    ),
    ("SOCKET_RCVBUFF", Loss, "socket receive buffer full"),
    ("UNIX_DISCONNECT", Local, "unix socket disconnected"),
    (
        "UNIX_SKIP_OOB",
        Local,
        "unix socket out-of-band data skipped",
    ),
    ("PKT_TOO_SMALL", Loss, "packet too small (truncated)"),
    ("TCP_CSUM", Loss, "TCP checksum error"),
    ("UDP_CSUM", Loss, "UDP checksum error"),
    ("NETFILTER_DROP", Loss, "dropped by netfilter"),
    (
        "OTHERHOST",
        Local,
        "packet for another host (L2 address not ours)",
    ),
    ("IP_CSUM", Loss, "IP checksum error"),
    ("IP_INHDR", Loss, "invalid IP header"),
    (
        "IP_RPFILTER",
        Loss,
        "reverse path filter: source not routable back",
    ),
    (
        "UNICAST_IN_L2_MULTICAST",
        Local,
        "L2 multicast carrying L3 unicast: not for us",
    ),
    ("XFRM_POLICY", Loss, "xfrm (IPsec) policy check failed"),
    (
        "IP_NOPROTO",
        Local,
        "no handler for the IP protocol: nobody wanted it",
    ),
    (
        "PROTO_MEM",
        Loss,
        "protocol memory limit (udp_memory_allocated, ...)",
    ),
    (
        "TCP_AUTH_HDR",
        Loss,
        "TCP-MD5/TCP-AO option duplicated or wrong",
    ),
    ("TCP_MD5NOTFOUND", Loss, "TCP-MD5 hash expected, none"),
    ("TCP_MD5UNEXPECTED", Loss, "TCP-MD5 hash not expected"),
    ("TCP_MD5FAILURE", Loss, "TCP-MD5 hash wrong"),
    ("TCP_AONOTFOUND", Loss, "TCP-AO hash expected, none"),
    ("TCP_AOUNEXPECTED", Loss, "TCP-AO hash not expected"),
    ("TCP_AOKEYNOTFOUND", Loss, "TCP-AO key unknown"),
    ("TCP_AOFAILURE", Loss, "TCP-AO hash wrong"),
    ("SOCKET_BACKLOG", Loss, "socket backlog full"),
    ("TCP_FLAGS", Local, "TCP flags invalid for the state"),
    (
        "TCP_ABORT_ON_DATA",
        Local,
        "data for a socket being aborted",
    ),
    (
        "TCP_ZEROWINDOW",
        Loss,
        "TCP receive window is zero: receiver overrun",
    ),
    (
        "TCP_OLD_DATA",
        Local,
        "TCP data received before (spurious retransmit)",
    ),
    (
        "TCP_OVERWINDOW",
        Local,
        "TCP data beyond the receive window (sender's error)",
    ),
    (
        "TCP_OFOMERGE",
        Local,
        "TCP data already in the out-of-order queue",
    ),
    ("TCP_RFC7323_PAWS", Local, "PAWS: old timestamp (duplicate)"),
    (
        "TCP_RFC7323_PAWS_ACK",
        Local,
        "PAWS on a pure ACK (duplicate)",
    ),
    (
        "TCP_RFC7323_TW_PAWS",
        Local,
        "PAWS in TIME_WAIT (duplicate)",
    ),
    ("TCP_RFC7323_TSECR", Local, "TCP timestamp echo invalid"),
    (
        "TCP_LISTEN_OVERFLOW",
        Loss,
        "TCP listen (accept) queue full",
    ),
    (
        "TCP_OLD_SEQUENCE",
        Local,
        "old TCP sequence (duplicate packet)",
    ),
    ("TCP_INVALID_SEQUENCE", Local, "TCP sequence not acceptable"),
    (
        "TCP_INVALID_END_SEQUENCE",
        Local,
        "TCP end sequence not acceptable",
    ),
    (
        "TCP_INVALID_ACK_SEQUENCE",
        Local,
        "TCP ACK sequence not acceptable",
    ),
    ("TCP_RESET", Local, "TCP RST received (or invalid)"),
    ("TCP_INVALID_SYN", Local, "unexpected TCP SYN"),
    ("TCP_CLOSE", Local, "TCP socket in CLOSE state"),
    (
        "TCP_FASTOPEN",
        Local,
        "dropped by a TCP Fast Open request socket",
    ),
    ("TCP_OLD_ACK", Local, "old TCP ACK, in window"),
    ("TCP_TOO_OLD_ACK", Local, "TCP ACK too old"),
    (
        "TCP_ACK_UNSENT_DATA",
        Local,
        "TCP ACK for data not sent yet",
    ),
    (
        "TCP_OFO_QUEUE_PRUNE",
        Loss,
        "pruned from the TCP out-of-order queue (memory)",
    ),
    (
        "TCP_OFO_DROP",
        Local,
        "TCP data already in the receive queue",
    ),
    ("IP_OUTNOROUTES", Loss, "no route out"),
    ("BPF_CGROUP_EGRESS", Loss, "dropped by a cgroup BPF program"),
    (
        "IPV6DISABLED",
        Local,
        "IPv6 disabled on the device (configuration)",
    ),
    (
        "NEIGH_CREATEFAIL",
        Loss,
        "neighbour entry could not be created",
    ),
    (
        "NEIGH_FAILED",
        Loss,
        "neighbour entry failed (no ARP/NDISC answer)",
    ),
    ("NEIGH_QUEUEFULL", Loss, "neighbour resolution queue full"),
    ("NEIGH_DEAD", Loss, "neighbour entry dead"),
    (
        "NEIGH_HH_FILLFAIL",
        Loss,
        "neighbour hardware header could not be filled",
    ),
    ("TC_EGRESS", Loss, "dropped at the tc egress hook"),
    ("SECURITY_HOOK", Loss, "dropped by a security hook (LSM)"),
    ("QDISC_DROP", Loss, "qdisc could not enqueue"),
    ("QDISC_OVERLIMIT", Loss, "qdisc over its limit"),
    ("QDISC_CONGESTED", Loss, "qdisc congestion (AQM)"),
    ("CAKE_FLOOD", Loss, "CAKE flood protection"),
    ("FQ_BAND_LIMIT", Loss, "fq band limit"),
    ("FQ_HORIZON_LIMIT", Loss, "fq horizon limit"),
    ("FQ_FLOW_LIMIT", Loss, "fq flow limit"),
    (
        "CPU_BACKLOG",
        Loss,
        "per-CPU backlog full (netdev_max_backlog)",
    ),
    ("XDP", Loss, "dropped by XDP"),
    ("TC_INGRESS", Loss, "dropped at the tc ingress hook"),
    (
        "UNHANDLED_PROTO",
        Local,
        "protocol not implemented here: nobody wanted it",
    ),
    ("SKB_CSUM", Loss, "skb checksum computation error"),
    ("SKB_GSO_SEG", Loss, "GSO segmentation error"),
    (
        "SKB_UCOPY_FAULT",
        Local,
        "copy from user space failed (the sender's fault)",
    ),
    ("DEV_HDR", Loss, "device header or metadata invalid"),
    (
        "DEV_READY",
        Loss,
        "device not ready (down, queue not set up)",
    ),
    ("FULL_RING", Loss, "ring buffer full"),
    ("NOMEM", Loss, "out of memory"),
    ("HDR_TRUNC", Loss, "header truncated (pskb_may_pull failed)"),
    ("TAP_FILTER", Local, "tun/tap BPF filter chose to drop it"),
    ("TAP_TXFILTER", Local, "tun/tap tx filter chose to drop it"),
    ("ICMP_CSUM", Loss, "ICMP checksum error"),
    ("INVALID_PROTO", Loss, "packet breaks its protocol's RFC"),
    ("IP_INADDRERRORS", Loss, "host unreachable (InAddrErrors)"),
    ("IP_INNOROUTES", Loss, "network unreachable"),
    (
        "IP_LOCAL_SOURCE",
        Loss,
        "source address is local (spoofed or looped)",
    ),
    (
        "IP_INVALID_SOURCE",
        Loss,
        "source address invalid (martian)",
    ),
    (
        "IP_LOCALNET",
        Loss,
        "local network address where not allowed",
    ),
    ("IP_INVALID_DEST", Loss, "destination address invalid"),
    ("PKT_TOO_BIG", Loss, "packet too big (past the MTU)"),
    ("DUP_FRAG", Local, "duplicate fragment"),
    (
        "FRAG_REASM_TIMEOUT",
        Loss,
        "fragment reassembly timed out (a fragment lost)",
    ),
    (
        "FRAG_TOO_FAR",
        Loss,
        "IPv4 fragment too far (ipfrag_max_dist)",
    ),
    ("TCP_MINTTL", Loss, "TTL or hop limit below IP_MINTTL"),
    ("IPV6_BAD_EXTHDR", Loss, "bad IPv6 extension header"),
    ("IPV6_NDISC_FRAG", Loss, "fragmented NDISC message"),
    ("IPV6_NDISC_HOP_LIMIT", Loss, "NDISC hop limit invalid"),
    ("IPV6_NDISC_BAD_CODE", Loss, "NDISC ICMPv6 code invalid"),
    ("IPV6_NDISC_BAD_OPTIONS", Loss, "NDISC options invalid"),
    (
        "IPV6_NDISC_NS_OTHERHOST",
        Local,
        "neighbour solicitation for another host",
    ),
    (
        "QUEUE_PURGE",
        Local,
        "bulk free of a queue (socket or device closing)",
    ),
    ("TC_COOKIE_ERROR", Loss, "tc extension cookie error"),
    (
        "PACKET_SOCK_ERROR",
        Local,
        "packet socket (tap copy) error after its filter",
    ),
    ("TC_CHAIN_NOTFOUND", Loss, "tc chain not found"),
    ("TC_RECLASSIFY_LOOP", Loss, "tc reclassify loop limit"),
    ("VXLAN_INVALID_HDR", Loss, "VXLAN header invalid"),
    ("VXLAN_VNI_NOT_FOUND", Loss, "VXLAN VNI not found"),
    ("MAC_INVALID_SOURCE", Loss, "source MAC invalid"),
    ("VXLAN_ENTRY_EXISTS", Loss, "VXLAN FDB entry exists"),
    ("NO_TX_TARGET", Loss, "no transmit target (tunnel, FDB)"),
    ("IP_TUNNEL_ECN", Loss, "tunnel ECN decapsulation error"),
    ("TUNNEL_TXINFO", Loss, "tunnel metadata missing on transmit"),
    (
        "LOCAL_MAC",
        Local,
        "source MAC is this host's (a looped frame)",
    ),
    (
        "ARP_PVLAN_DISABLE",
        Local,
        "ARP proxy for private VLAN off (configuration)",
    ),
    (
        "MAC_IEEE_MAC_CONTROL",
        Local,
        "IEEE MAC control frame (pause)",
    ),
    (
        "BRIDGE_INGRESS_STP_STATE",
        Local,
        "bridge port not forwarding (STP)",
    ),
    ("CAN_RX_INVALID_FRAME", Loss, "CAN frame invalid"),
    ("CANFD_RX_INVALID_FRAME", Loss, "CAN FD frame invalid"),
    ("CANXL_RX_INVALID_FRAME", Loss, "CAN XL frame invalid"),
    (
        "PFMEMALLOC",
        Loss,
        "pfmemalloc skb to a socket without SOCK_MEMALLOC",
    ),
    ("DUALPI2_STEP_DROP", Loss, "DualPI2 qdisc step drop"),
    ("PSP_INPUT", Loss, "PSP input policy"),
    ("PSP_OUTPUT", Loss, "PSP output policy"),
    ("RECURSION_LIMIT", Loss, "recursion limit (nested devices)"),
    ("SKB_RX_HEADROOM", Loss, "not enough receive headroom"),
];

/// The class of a reason name (`NETFILTER_DROP`).
pub fn classify(reason: &str) -> DropClass {
    DROP_REASON_CLASSES
        .iter()
        .find(|(name, _, _)| *name == reason)
        .map_or(DropClass::Unknown, |(_, class, _)| *class)
}

/// Whether drops of `class` are packet loss for `packet_loss`.
pub fn counts_as_loss(class: DropClass, unknown_as_loss: bool) -> bool {
    match class {
        DropClass::Loss => true,
        DropClass::Local => false,
        DropClass::Unknown => unknown_as_loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::KernelBtf;
    use crate::sources::drops::DropReasonNames;
    use telemetryd_common::drops::{MAX_DROP_REASONS, OVERFLOW_REASON_LABEL};

    #[test]
    fn the_table_has_each_name_once_and_every_class() {
        let mut names: Vec<&str> = DROP_REASON_CLASSES.iter().map(|(n, _, _)| *n).collect();
        let listed = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), listed, "a name is listed twice");
        for (name, _, why) in DROP_REASON_CLASSES {
            assert!(!why.is_empty(), "{name} has no reason given");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{name} is not spelled as BTF spells it"
            );
        }
        assert_eq!(classify("NETFILTER_DROP"), DropClass::Loss);
        assert_eq!(classify("QDISC_DROP"), DropClass::Loss);
        assert_eq!(classify("SOCKET_RCVBUFF"), DropClass::Loss);
        assert_eq!(classify("QUEUE_PURGE"), DropClass::Local);
        assert_eq!(classify("SOCKET_CLOSE"), DropClass::Local);
        assert_eq!(classify("TCP_OLD_DATA"), DropClass::Local);
        assert_eq!(classify("OTHERHOST"), DropClass::Local);
        assert_eq!(classify(OVERFLOW_REASON_LABEL), DropClass::Unknown);
        assert_eq!(classify("REASON_300"), DropClass::Unknown);
        assert_eq!(classify("SOME_FUTURE_REASON"), DropClass::Unknown);
        assert!(counts_as_loss(DropClass::Unknown, true));
        assert!(!counts_as_loss(DropClass::Unknown, false));
        assert!(!counts_as_loss(DropClass::Local, true));
    }

    /// README's "Drop reason classes" lists the table as it is.
    #[test]
    fn readme_lists_the_table() {
        let readme = include_str!("../../../../README.md");
        for (name, class, why) in DROP_REASON_CLASSES {
            let row = format!("| `{name}` | {} | {why} |", class.label());
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }

    /// Every reason the running kernel's BTF names is in the table; the
    /// ones it does not know are listed in the failure.
    #[test]
    fn every_reason_of_this_kernel_is_classified() {
        let btf = KernelBtf::from_sys_fs()
            .unwrap_or_else(|e| panic!("this machine has no usable kernel BTF: {e}"));
        let names = DropReasonNames::from_btf(&btf).unwrap();
        let kernel: Vec<&str> = (0..MAX_DROP_REASONS)
            .map(|slot| names.name(slot))
            .filter(|n| !n.starts_with("REASON_"))
            .collect();
        // Linux 6.18 has 129 (NOT_DROPPED_YET .. SKB_RX_HEADROOM); older
        // kernels fewer, and every one of them is in the table too.
        assert!(
            kernel.len() >= 60,
            "only {} names: {kernel:?}",
            kernel.len()
        );
        let unknown: Vec<&str> = kernel
            .iter()
            .copied()
            .filter(|n| classify(n) == DropClass::Unknown)
            .collect();
        assert!(
            unknown.is_empty(),
            "reasons of this kernel the table does not know: {unknown:?}"
        );
        let loss = kernel
            .iter()
            .filter(|n| classify(n) == DropClass::Loss)
            .count();
        eprintln!(
            "{} reasons: {loss} loss, {} local",
            kernel.len(),
            kernel.len() - loss
        );
    }
}
