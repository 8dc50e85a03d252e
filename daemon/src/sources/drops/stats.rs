//! The loss signals' section of the snapshot: plain data, no aya.

use std::collections::BTreeMap;

use telemetryd_common::drops::DROPS_ERROR_SLOTS;

use crate::sources::cardinality::Folded;
/// Peers per device (and retransmitting peers) that get series of their own.
pub const MAX_PEER_SERIES: usize = 32;
/// The peer label of the rolled-up rest.
pub const OTHER_PEERS: &str = "other";

/// What one poll read of the drop and retransmit programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Kernel packet drops by drop reason name (`skb:kfree_skb`), reasons
    /// seen so far.
    pub kernel_drops: BTreeMap<String, u64>,
    /// The kernel drops of skbs that named a device of this network
    /// namespace, by device name, then reason name (a subset of
    /// `kernel_drops`).
    pub device_drops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Devices of `device_drops` whose series are folded into
    /// `device="other"` (`[metrics] max_drop_devices`), and the roll-up.
    pub device_drops_folded: Folded<String>,
    /// The kernel drops of received packets, by the device they came in
    /// on, then their IP source address (the peer), then reason name (a
    /// subset of `device_drops`, bounded by the kernel map).
    pub peer_drops: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// What `telemetryd_peer_drops_total` shows: drops of the loss class by
    /// (device, peer), at most [`MAX_PEER_SERIES`] peers per device (the
    /// first seen), the rest summed under the peer [`OTHER_PEERS`].
    pub peer_series: BTreeMap<(String, String), u64>,
    /// TCP segments retransmitted by the remote address of their socket,
    /// at most [`MAX_PEER_SERIES`] peers, the rest under [`OTHER_PEERS`].
    pub peer_retransmits: BTreeMap<String, u64>,
    /// TCP counters of the node.
    pub tcp: TcpStats,
    /// The programs' own errors by `DropsError` slot.
    pub errors: [u64; DROPS_ERROR_SLOTS as usize],
    /// Programs attached (`kfree_skb_drops`, `tcp_retransmits`).
    pub attached: Vec<&'static str>,
}

impl DropStats {
    /// Whether `tcp_retransmits` is attached (before that, its counters
    /// and the TCP MIB's are not shown: a 0 would be a lie).
    pub fn retransmits_traced(&self) -> bool {
        self.attached
            .contains(&telemetryd_common::drops::RETRANSMITS_PROGRAM)
    }
}

/// TCP counters of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Retransmitted segments seen by `tcp:tcp_retransmit_skb`, IPv4.
    pub retransmits_ipv4: u64,
    /// Retransmitted segments seen by `tcp:tcp_retransmit_skb`, IPv6.
    pub retransmits_ipv6: u64,
    /// `Tcp: OutSegs` from /proc/net/snmp (and snmp6), all families.
    pub segments_out: u64,
    /// `Tcp: RetransSegs` from /proc/net/snmp.
    pub retrans_segs: u64,
}
