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

/// The log2 bucket of a latency of `ns` nanoseconds: bucket `i` holds the
/// calls with `2^(i-1) < ns <= 2^i`, bucket 0 the calls of 0 and 1 ns, and
/// the last bucket everything above 2^62 ns. So `2^i` ns is exactly the
/// Prometheus `le` bound of bucket `i`: no call sits on the wrong side of a
/// boundary.
#[inline(always)]
pub const fn bucket_index(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    // ceil(log2(ns)) for ns >= 2: 64 - lz(ns - 1), which is 1..=64.
    let i = 64 - (ns - 1).leading_zeros() as usize;
    if i >= BUCKETS {
        BUCKETS - 1
    } else {
        i
    }
}

/// Upper bound (inclusive) of bucket `i` in nanoseconds: `2^i`.
pub const fn bucket_upper_ns(i: usize) -> u64 {
    1u64 << i
}

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

    #[test]
    fn bucket_bounds_are_inclusive_powers_of_two() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 0);
        assert_eq!(bucket_index(2), 1);
        assert_eq!(bucket_index(3), 2);
        assert_eq!(bucket_index(4), 2);
        assert_eq!(bucket_index(5), 3);
        for i in 1..63 {
            let upper = bucket_upper_ns(i);
            assert_eq!(bucket_index(upper), i, "2^{i} is the top of bucket {i}");
            assert_eq!(
                bucket_index(upper + 1),
                i + 1,
                "2^{i}+1 starts bucket {}",
                i + 1
            );
            assert_eq!(
                bucket_index(upper / 2 + 1),
                i,
                "2^({i}-1)+1 is in bucket {i}"
            );
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_index(1 << 63), BUCKETS - 1);
        // 3 ms lands in (2^21, 2^22] ns.
        assert_eq!(bucket_index(3_000_000), 22);
    }
}
