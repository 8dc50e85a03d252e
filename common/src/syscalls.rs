//! The syscall-latency tracer: map names, value layouts, slots and the log2
//! bucket layout shared by the kernel programs and the daemon.
//!
//! Flow: user space writes `syscall number -> slot + 1` into [`SLOTS_MAP`]
//! (0 = untracked). On entry of a tracked call the program stores an
//! [`InFlight`] record under the thread id in [`IN_FLIGHT_MAP`]; on exit it
//! removes it and adds the latency to the per-CPU [`SyscallHistogram`] of
//! the slot in [`HISTOGRAMS_MAP`]. In tracepoint mode the entry first goes
//! to a per-CPU slot and only reaches [`IN_FLIGHT_MAP`] if its thread
//! switches out before the exit ([`TRACEPOINT_SCHED_SWITCH`]).

use core::mem::size_of;

/// The tracer's programs, one pair per attach strategy.
pub const TRACEPOINT_ENTER: &str = "syscall_enter_tracepoint";
pub const TRACEPOINT_EXIT: &str = "syscall_exit_tracepoint";
/// BTF-typed variant of [`TRACEPOINT_EXIT`], preferred when BTF is there.
pub const TP_BTF_EXIT: &str = "syscall_exit_tp_btf";
/// `sched_switch` hand-off of the tracepoint mode's per-CPU fast path:
/// attached with (before) the tracepoint pair, detached after it.
pub const TRACEPOINT_SCHED_SWITCH: &str = "syscall_sched_switch";
pub const KPROBE_ENTER: &str = "syscall_enter_kprobe";
pub const KPROBE_EXIT: &str = "syscall_exit_kretprobe";
pub const FENTRY_ENTER: &str = "syscall_enter_fentry";
pub const FEXIT_EXIT: &str = "syscall_exit_fexit";
/// The syscall benchmark's references, in the benchmark object only
/// (`ebpf-programs/src/baselines.rs`). Empty programs on the same raw
/// tracepoints: the floor of the tracepoint method.
pub const EMPTY_ENTER: &str = "sys_enter_empty";
pub const EMPTY_EXIT: &str = "sys_exit_empty";
/// Benchmark floor of timing: two clock reads per tracked call on the same
/// raw tracepoints, nothing else (the exit one is BTF-typed, as the
/// tracer's).
pub const CLOCK_FLOOR_ENTER: &str = "sys_enter_clock_floor";
pub const CLOCK_FLOOR_EXIT: &str = "sys_exit_clock_floor";
/// Empty programs for the per-syscall tracepoints
/// (`syscalls:sys_enter_<name>` / `sys_exit_<name>`): the benchmark's
/// comparison with that way of hooking syscalls.
pub const SYSCALL_TP_EMPTY_ENTER: &str = "sys_enter_syscall_tp_empty";
pub const SYSCALL_TP_EMPTY_EXIT: &str = "sys_exit_syscall_tp_empty";
/// The `program` label of the tracer in `telemetryd_ebpf_program_attached`.
pub const PROGRAM_LABEL: &str = "syscall_latency";
/// The `program` label of [`TRACEPOINT_SCHED_SWITCH`] in
/// `telemetryd_ebpf_program_attached` (tracepoint mode only).
pub const SCHED_SWITCH_LABEL: &str = "syscall_latency_sched_switch";

/// Array: syscall number (`u32`) -> slot + 1 (`u32`); 0 = not tracked.
pub const SLOTS_MAP: &str = "SYSCALL_SLOTS";
/// Hash: thread (`pid_tgid`, `u64`) -> [`InFlight`]. Its size is
/// `syscalls.max_in_flight`, set by the loader.
pub const IN_FLIGHT_MAP: &str = "SYSCALL_IN_FLIGHT";
/// Per-CPU array: slot (`u32`) -> [`SyscallHistogram`].
pub const HISTOGRAMS_MAP: &str = "SYSCALL_HISTOGRAMS";
/// Hash: tgid (`u32`) -> 1 (`u32`); consulted only when [`FILTER_PIDS_GLOBAL`] is 1.
pub const PIDS_MAP: &str = "SYSCALL_PIDS";
/// Per-CPU array: [`TracerError`] slot -> count (`u64`).
pub const ERRORS_MAP: &str = "SYSCALL_ERRORS";

/// Global (`u32`): the daemon's own tgid, never traced.
pub const SELF_TGID_GLOBAL: &str = "SYSCALL_SELF_TGID";
/// Global (`u32`): 1 = trace only the tgids in [`PIDS_MAP`].
pub const FILTER_PIDS_GLOBAL: &str = "SYSCALL_FILTER_PIDS";
/// Global (`u64`): cgroup v2 id (inode of its directory) to trace; 0 = all.
pub const FILTER_CGROUP_GLOBAL: &str = "SYSCALL_FILTER_CGROUP";
/// Global (`u32`): byte offset of the syscall number in `struct pt_regs`
/// (`orig_ax` on x86_64, `syscallno` on aarch64), read by the exit
/// tracepoint and the kprobe/fentry entries.
pub const NR_OFFSET_GLOBAL: &str = "SYSCALL_NR_OFFSET";

/// Size of [`SLOTS_MAP`]: syscall numbers at or above it are never tracked.
pub const MAX_SYSCALL_NR: u32 = 1024;
/// Most tracked syscalls (`syscalls.track` allows 64).
pub const MAX_SLOTS: u32 = 64;
/// Most entries of `syscalls.pids` the kernel keeps.
pub const MAX_PIDS: u32 = 4096;
/// Default size of [`IN_FLIGHT_MAP`] when the loader does not set one.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16384;

/// Number of log2 buckets (see [`bucket_index`]).
pub const BUCKETS: usize = 64;

/// The histogram's unit: 2^-30 s (about 0.93 ns). Bucket `i` holds the
/// calls that took `(2^(i-1), 2^i]` of these units, that is
/// `(2^(i-31), 2^(i-30)]` seconds: a power of two of seconds, so bucket `i`
/// is exactly bucket `i - UNIT_LOG2_SECONDS` of a Prometheus native
/// histogram of schema 0 (`(2^(k-1), 2^k]` s) and its upper bound `2^(i-30)`
/// s is exactly representable as a classic `le` bound. A log2 histogram of
/// nanoseconds could not be mapped so: log2(1e9) is irrational.
pub const UNIT_LOG2_SECONDS: i32 = 30;

/// 5^9: one second is `5^9 * 2^9` ns, so the upper bound of bucket `i`,
/// `2^(i-30)` s, is `5^9 * 2^(i-21)` ns.
const FIVE_POW_9: u64 = 1_953_125;

/// The bucket of a latency of `ns` nanoseconds, in units of 2^-30 s (see
/// [`UNIT_LOG2_SECONDS`]): the `i` with `2^(i-31) < ns * 1e-9 <= 2^(i-30)`,
/// bucket 0 for `ns == 0` (0.93 ns is the top of bucket 0, so 1 ns is in
/// bucket 1), the last bucket for everything above 2^32 s.
///
/// Exact, with no multiply, division or overflow: with `k = floor(log2(ns))`,
/// `2^k <= ns < 2^(k+1)`, and since `2^20 < 5^9 < 2^21` the bound of bucket
/// `k + 1`, `E = 5^9 * 2^(k-20)` ns, lies in `(2^k, 2^(k+1))` while the bound
/// of bucket `k` is below `2^k` and that of bucket `k + 2` above `2^(k+1)`.
/// So `ns` is in bucket `k + 1` when `ns <= E`, else in bucket `k + 2`: one
/// comparison, done in integers on whichever side of it needs no
/// fraction (`ns <= 5^9 << (k-20)` for `k >= 20`, which fits in 64 bits
/// since `5^9 < 2^21` and `k <= 63`; `ns << (20-k) <= 5^9` below, where
/// `ns < 2^21` keeps the shift in range). The verifier sees a
/// `leading_zeros`, one shift by a bounded amount and a compare.
#[inline(always)]
pub const fn bucket_index(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let k = 63 - ns.leading_zeros();
    let within = if k >= 20 {
        ns <= FIVE_POW_9 << (k - 20)
    } else {
        (ns << (20 - k)) <= FIVE_POW_9
    };
    let i = if within { k + 1 } else { k + 2 } as usize;
    if i >= BUCKETS {
        BUCKETS - 1
    } else {
        i
    }
}

/// Upper bound (inclusive) of bucket `i` in seconds: `2^(i-30)`, exact in
/// an `f64`. (The last bucket also holds everything above it.)
pub fn bucket_upper_seconds(i: usize) -> f64 {
    // 2^(i-30) for i < 64 is a normal f64: build it from its exponent.
    f64::from_bits(((1023 + i as i64 - UNIT_LOG2_SECONDS as i64) as u64) << 52)
}

/// The index of bucket `i >= 1` in a Prometheus native histogram of
/// schema 0, whose bucket `k` is `(2^(k-1), 2^k]` s. Bucket 0
/// (`[0, 2^-30]` s) is the native histogram's zero bucket, with
/// [`ZERO_THRESHOLD_SECONDS`].
pub const fn native_bucket_index(i: usize) -> i32 {
    i as i32 - UNIT_LOG2_SECONDS
}

/// Upper bound of bucket 0, the native histogram's zero threshold: 2^-30 s.
pub const ZERO_THRESHOLD_SECONDS: f64 = 1.0 / (1u64 << UNIT_LOG2_SECONDS) as f64;

/// Start of one syscall in flight, keyed by thread.
///
/// The slot is kept here so the exit side needs only the thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// `bpf_ktime_get_ns()` at entry.
    pub start_ns: u64,
    /// Slot of the syscall (index into [`HISTOGRAMS_MAP`]).
    pub slot: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<InFlight>() == 16);

/// Latency distribution of one syscall on one CPU. User space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallHistogram {
    /// Calls per log2 bucket (see [`bucket_index`]).
    pub buckets: [u64; BUCKETS],
    /// Exact sum of the latencies in nanoseconds.
    pub sum_ns: u64,
    /// Completed calls (the sum of `buckets`).
    pub count: u64,
    /// Calls that returned a negative value (an errno).
    pub errors: u64,
}

impl Default for SyscallHistogram {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum_ns: 0,
            count: 0,
            errors: 0,
        }
    }
}

const _: () = assert!(size_of::<SyscallHistogram>() == (BUCKETS + 3) * 8);

/// Slots of [`ERRORS_MAP`]: the tracer's own failures. The traced call is
/// never affected; only the counter moves.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracerError {
    /// [`IN_FLIGHT_MAP`] was full: the call was not timed.
    InFlightFull = 0,
    /// Reading the syscall number from `pt_regs` failed.
    ReadRegs = 1,
}

pub const PROGRAM_ERROR_SLOTS: u32 = 2;
pub const PROGRAM_ERROR_LABELS: [&str; PROGRAM_ERROR_SLOTS as usize] =
    ["in_flight_full", "read_regs"];

#[cfg(feature = "user")]
// SAFETY: `InFlight` is `#[repr(C)]` of two `u32`s after a `u64` with no
// implicit padding (asserted size 16); every bit pattern is valid.
unsafe impl aya::Pod for InFlight {}

#[cfg(feature = "user")]
// SAFETY: `SyscallHistogram` is `#[repr(C)]` and made only of `u64`s (no
// padding, no pointers), so every bit pattern is a valid value.
unsafe impl aya::Pod for SyscallHistogram {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bucket, from the definition, in 128-bit integers: the
    /// smallest `i` with `ns * 2^30 <= 1e9 * 2^i`.
    fn reference_bucket(ns: u64) -> usize {
        let scaled = u128::from(ns) << UNIT_LOG2_SECONDS;
        (0..BUCKETS)
            .find(|&i| scaled <= 1_000_000_000u128 << i)
            .unwrap_or(BUCKETS - 1)
    }

    /// The largest whole number of nanoseconds in bucket `i`:
    /// `floor(1e9 * 2^(i-30))`.
    fn last_ns_of(i: usize) -> u64 {
        ((1_000_000_000u128 << i) >> UNIT_LOG2_SECONDS) as u64
    }

    #[test]
    fn every_bucket_edge_is_exact() {
        // bucket_index is monotonic (each step of ns moves k or the
        // comparison one way), so checking both sides of every edge proves
        // it exact everywhere.
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 1, "1 ns > 2^-30 s");
        for i in 1..BUCKETS - 1 {
            let last = last_ns_of(i);
            assert_eq!(bucket_index(last), i, "{last} ns is the top of bucket {i}");
            assert_eq!(
                bucket_index(last + 1),
                i + 1,
                "{} ns starts bucket {}",
                last + 1,
                i + 1
            );
            assert_eq!(reference_bucket(last), i);
            assert_eq!(reference_bucket(last + 1), i + 1);
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_index(1 << 63), BUCKETS - 1);
    }

    #[test]
    fn whole_powers_of_two_of_seconds_sit_on_their_upper_edge() {
        // 2^-21 s .. 2^33 s are whole numbers of ns: each is the top of its
        // bucket, one more ns is in the next.
        for i in 21..BUCKETS - 1 {
            let ns = FIVE_POW_9 << (i - 21);
            assert_eq!(ns as f64 * 1e-9, bucket_upper_seconds(i));
            assert_eq!(bucket_index(ns), i);
            assert_eq!(bucket_index(ns + 1), i + 1);
        }
        assert_eq!(bucket_index(1_000_000_000), 30, "1 s: le=1");
        assert_eq!(bucket_index(16_000_000_000), 34, "16 s: le=16");
        assert_eq!(bucket_index(45_000_000), 26, "45 ms: (2^-5, 2^-4] s");
    }

    #[test]
    fn matches_the_definition_across_the_range() {
        // A deterministic spread of values (every scale, odd offsets).
        let mut ns = 1u64;
        while ns < u64::MAX / 3 {
            for probe in [ns - 1, ns, ns + 1, ns / 3 * 2 + 1] {
                assert_eq!(bucket_index(probe), reference_bucket(probe), "{probe} ns");
            }
            ns = ns * 3 / 2 + 7;
        }
        for probe in 0..5_000u64 {
            assert_eq!(bucket_index(probe), reference_bucket(probe), "{probe} ns");
        }
    }

    #[test]
    fn bucket_maps_onto_native_and_classic_bounds() {
        for i in 1..BUCKETS {
            let k = native_bucket_index(i);
            let upper = bucket_upper_seconds(i);
            assert_eq!(upper, 2f64.powi(k), "bucket {i}: le = 2^{k} s");
            assert_eq!(bucket_upper_seconds(i - 1) * 2.0, upper);
        }
        assert_eq!(bucket_upper_seconds(0), ZERO_THRESHOLD_SECONDS);
        assert_eq!(native_bucket_index(30), 0, "(0.5, 1] s is native bucket 0");
        assert_eq!(bucket_upper_seconds(8), 2f64.powi(-22));
        assert_eq!(bucket_upper_seconds(34), 16.0);
    }
}
