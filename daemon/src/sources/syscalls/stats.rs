//! The syscall tracer's section of the snapshot: plain data, no aya.

use std::collections::BTreeMap;

use telemetryd_common::syscalls::PROGRAM_ERROR_SLOTS;

use crate::config::SyscallAttach;

/// Number of log2 latency buckets: bucket `i` holds calls that took
/// `(2^(i-31), 2^(i-30)]` seconds (bucket 0: up to 2^-30 s, i.e. 0 ns), so
/// `2^(i-30)` s is exactly its Prometheus `le` bound and it is native
/// bucket `i - 30` of schema 0; see
/// `telemetryd_common::syscalls::bucket_index`.
pub const LATENCY_BUCKETS: usize = telemetryd_common::syscalls::BUCKETS;

/// The default classic layout (`syscalls.latency_buckets_min` = 250ns,
/// `..._max` = 16s): the bounds of kernel buckets 8 (2^-22 s) to 34 (2^4 s).
pub const DEFAULT_CLASSIC_BUCKETS: (usize, usize) = (8, 34);

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
    /// The kernel buckets, lowest and highest, whose bounds are the classic
    /// histogram's finite `le` bounds (`SyscallsConfig::classic_buckets`).
    pub classic_buckets: (usize, usize),
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
    /// Non-cumulative log2 buckets of 2^-30 s (see [`LATENCY_BUCKETS`]).
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
