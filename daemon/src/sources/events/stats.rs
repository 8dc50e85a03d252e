//! The packet events' section of the snapshot: plain data, no aya.

use super::top_talkers::TopTalkersReport;

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
pub struct EventStats {
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
    /// The top talkers over their window, as of the poll.
    pub top_talkers: TopTalkersReport,
    /// Sampled packets since start by device, then peer (source address),
    /// the rest of a device under `other` (see `peer_packets`).
    pub peer_packets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

/// Non-cumulative counts over [`DELIVERY_BUCKETS`] plus `+Inf`, and the
/// same observations in the syscall tracer's power-of-two buckets of
/// seconds, for the native histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryLatency {
    pub counts: [u64; DELIVERY_BUCKETS.len() + 1],
    /// Counts per `telemetryd_common::syscalls::bucket_index` of the
    /// latency in whole nanoseconds: bucket `i` is `(2^(i-31), 2^(i-30)]` s.
    pub native: [u64; telemetryd_common::syscalls::BUCKETS],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Default for DeliveryLatency {
    fn default() -> Self {
        Self {
            counts: [0; DELIVERY_BUCKETS.len() + 1],
            native: [0; telemetryd_common::syscalls::BUCKETS],
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
        // Whole ns (the kernel's and the receiver's clocks are in ns);
        // a negative latency (clock skew) is 0.
        let ns = (seconds.max(0.0) * 1e9).round() as u64;
        self.native[telemetryd_common::syscalls::bucket_index(ns)] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}
