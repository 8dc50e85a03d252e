//! The syscall tracer's section of the snapshot: plain data, no aya.

use std::collections::BTreeMap;

use telemetryd_common::syscalls::PROGRAM_ERROR_SLOTS;

use crate::config::SyscallAttach;

/// Number of log2 latency buckets: bucket `i` holds calls that took
/// `(2^(i-1), 2^i]` nanoseconds (bucket 0: 0 and 1 ns), so `2^i` ns is
/// exactly its Prometheus `le` bound; see
/// `telemetryd_common::syscalls::bucket_index`.
pub const LATENCY_BUCKETS: usize = telemetryd_common::syscalls::BUCKETS;

/// What one poll read of the tracer.
#[derive(Clone, Debug, PartialEq)]
pub struct TracerStats {
    pub attach: SyscallAttach,
    /// The tracepoint mode's `sched_switch` hand-off is attached.
    pub sched_switch: bool,
    /// Per tracked syscall (every one, zero until its first call), keyed by name.
    pub syscalls: BTreeMap<String, SyscallStats>,
    /// The tracer's own errors by `TracerError` slot.
    pub errors: [u64; PROGRAM_ERROR_SLOTS as usize],
}

impl TracerStats {
    /// Tracked syscalls not timed because the in-flight map was full.
    pub fn in_flight_overflows(&self) -> u64 {
        self.errors[telemetryd_common::syscalls::TracerError::InFlightFull as usize]
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
