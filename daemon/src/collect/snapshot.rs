//! The immutable result of one poll: plain data, no aya types.
//!
//! Every counter is cumulative since the programs were loaded (they never go
//! down while the daemon runs). Consumers that want rates (the MAPE-K
//! monitor) take differences between consecutive snapshots.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use telemetryd_common::xdp::{FAMILIES, PROTOCOLS};

/// Number of log2 latency buckets: bucket `i` holds calls that took
/// `(2^(i-1), 2^i]` nanoseconds (bucket 0: 0 and 1 ns), so `2^i` ns is
/// exactly its Prometheus `le` bound; see
/// `telemetryd_common::syscalls::bucket_index`.
pub const LATENCY_BUCKETS: usize = telemetryd_common::syscalls::BUCKETS;

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
    /// Tracked syscalls whose start the tracer could not record because its
    /// in-flight map was full; `None` when the tracer is not running.
    pub syscall_in_flight_overflows: Option<u64>,
    /// eBPF programs' own errors, keyed by (program, reason).
    pub program_errors: BTreeMap<(String, String), u64>,
    /// Where each program is attached at the time of the poll.
    pub attachments: Vec<ProgramAttachment>,
    /// Sampled packet events; `None` when the XDP program is not loaded.
    pub packet_events: Option<PacketEventStats>,
    /// Top talkers over their window, from packet events.
    pub top_talkers: Option<crate::top_talkers::TopTalkersReport>,
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

/// Upper bounds (seconds) of the `telemetryd_event_delivery_seconds` buckets;
/// a last, implicit bucket holds everything slower (`+Inf`).
pub const DELIVERY_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Packet events from the XDP program's ring buffer, cumulative.
///
/// Every frame the sampler picked is in exactly one of: `delivered`,
/// `lost_kernel` (ring buffer full), `lost_user` (received but undecodable),
/// or still in the ring buffer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PacketEventStats {
    /// The `source` label: the ring buffer, by what it carries.
    pub source: String,
    /// Frames the kernel sampler picked.
    pub sampled: u64,
    pub delivered: u64,
    pub lost_kernel: u64,
    pub lost_user: u64,
    /// Kernel timestamp to user-space receipt.
    pub delivery: DeliveryLatency,
    /// Peers the top-talkers structure tracks now, and its bound.
    pub top_talkers_tracked: u64,
    pub top_talkers_bound: u64,
}

/// Non-cumulative counts over [`DELIVERY_BUCKETS`] plus `+Inf`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryLatency {
    pub counts: [u64; DELIVERY_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Default for DeliveryLatency {
    fn default() -> Self {
        Self {
            counts: [0; DELIVERY_BUCKETS.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

impl DeliveryLatency {
    pub fn record(&mut self, seconds: f64) {
        let bucket = DELIVERY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DELIVERY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}
