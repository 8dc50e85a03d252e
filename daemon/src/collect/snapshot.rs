//! The immutable result of one poll: plain data, no aya types.
//!
//! Every counter is cumulative since the programs were loaded (they never go
//! down while the daemon runs). Consumers that want rates (the MAPE-K
//! monitor) take differences between consecutive snapshots.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use telemetryd_common::xdp::{FAMILIES, PROTOCOLS};

/// Number of log2 latency buckets: bucket `i` holds calls that took
/// `[2^i, 2^(i+1))` nanoseconds (bucket 0 also holds 0 ns).
pub const LATENCY_BUCKETS: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every poll.
    pub seq: u64,
    /// Monotonic time since the collector started, when this poll was taken.
    pub uptime: Duration,
    /// Wall clock time of the poll.
    pub taken_at: Option<SystemTime>,
    /// Per attached interface, keyed by device name.
    pub interfaces: BTreeMap<String, InterfaceStats>,
    /// Per tracked syscall, keyed by syscall name.
    pub syscalls: BTreeMap<String, SyscallStats>,
    /// Kernel packet drops by drop reason name (`skb:kfree_skb`).
    pub kernel_drops: BTreeMap<String, u64>,
    /// The kernel drops of skbs that named a device of this network
    /// namespace, by device name, then reason name (a subset of
    /// `kernel_drops`).
    pub device_drops: BTreeMap<String, BTreeMap<String, u64>>,
    /// TCP counters of the node.
    pub tcp: TcpStats,
    /// eBPF programs' own errors, keyed by (program, reason).
    pub program_errors: BTreeMap<(String, String), u64>,
    /// Where each program is attached at the time of the poll.
    pub attachments: Vec<ProgramAttachment>,
}

/// One attachment of one eBPF program.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProgramAttachment {
    pub program: String,
    /// `xdp-native`, `xdp-generic`, `tracepoint`, `kprobe` or `fentry`.
    pub attach: String,
    /// The interface for XDP; empty for tracing programs.
    pub device: String,
}

/// Counters of one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub ifindex: u32,
    /// `[family][protocol]` packets seen by XDP (slots from `telemetryd_common::xdp`).
    pub packets: [[u64; PROTOCOLS]; FAMILIES],
    /// `[family][protocol]` bytes seen by XDP.
    pub bytes: [[u64; PROTOCOLS]; FAMILIES],
    /// Frames XDP could not fully parse.
    pub malformed: u64,
    /// Kernel's own interface counters (`/sys/class/net/<dev>/statistics`).
    pub rx_dropped: u64,
    pub rx_errors: u64,
    pub tx_dropped: u64,
    pub tx_errors: u64,
}

impl InterfaceStats {
    pub fn total_packets(&self) -> u64 {
        self.packets.iter().flatten().sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().flatten().sum()
    }
}

/// Latency distribution of one syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallStats {
    /// Non-cumulative log2 buckets of nanoseconds (see [`LATENCY_BUCKETS`]).
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Exact sum of all latencies in nanoseconds.
    pub sum_ns: u64,
    /// Number of completed calls (the sum of `buckets`).
    pub count: u64,
    /// Calls that returned an error.
    pub errors: u64,
}

impl Default for SyscallStats {
    fn default() -> Self {
        Self {
            buckets: [0; LATENCY_BUCKETS],
            sum_ns: 0,
            count: 0,
            errors: 0,
        }
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
