//! The loss signals' section of the snapshot: plain data, no aya.

use std::collections::BTreeMap;

use telemetryd_common::drops::DROPS_ERROR_SLOTS;

use crate::sources::cardinality::Folded;

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
