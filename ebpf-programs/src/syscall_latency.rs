//! The syscall-latency tracer: per tracked syscall, a log2 histogram of
//! latencies in units of 2^-30 s (`bucket_index`: exact powers of two of
//! seconds, no multiply), the exact nanosecond sum and the error count, per CPU.
//!
//! Three attach strategies share one entry and one exit routine:
//! - raw tracepoints `sys_enter` / `sys_exit` (every syscall of the node
//!   fires them; untracked ones leave after one array lookup);
//! - kprobe + kretprobe on the syscall's entry symbol (`__x64_sys_read`);
//! - fentry + fexit on the same symbols.
//!
//! Observe only: every program returns 0 on every path, also on its own
//! errors, which it counts in `SYSCALL_ERRORS`. Nothing here can fail or
//! delay the traced call beyond the program's own run time.
//!
//! # The per-CPU fast path (tracepoint mode)
//!
//! A hash insert at entry and a lookup + delete at exit cost more than the
//! rest of the tracer together. Most calls do not block, so in tracepoint
//! mode the entry goes into a one-entry per-CPU array, `SYSCALL_PENDING`
//! (`{pid_tgid, start_ns, slot}`, `pid_tgid == 0` meaning empty; tid 0 is
//! the idle task, which makes no syscalls), and a third program on the
//! `sched_switch` raw tracepoint moves a pending entry into the in-flight
//! hash when its thread leaves the CPU. The exit uses the CPU's entry when
//! it is the current thread's, otherwise the hash.
//!
//! Why this is exact. Invariant: *a CPU's pending entry, when there is one,
//! belongs to the thread running on that CPU, which has not left the CPU
//! since that entry was written.* It holds because
//! - the entry program writes it in the context of the running thread;
//! - a thread only leaves a CPU (blocking, preemption, migration, which
//!   always switches the task out first, exit) through `__schedule`, which
//!   fires `sched_switch` on that CPU while the thread is still `prev`; our
//!   program there moves the entry to the hash (keyed by the tid stored in
//!   the entry, so it does not even need to ask whose context it is) and
//!   empties the slot. `__schedule` with `prev == next` fires nothing, and
//!   then the thread stays;
//! - the programs on `sys_enter`, `sys_exit` and `sched_switch` run with
//!   preemption disabled (syscall tracepoints wrap their BPF probes in
//!   `preempt_disable_notrace`, `sched_switch` runs under the runqueue
//!   lock), so on one CPU they never interleave with each other, and no
//!   other program touches the slot (the kprobe/fentry modes, which may be
//!   preempted while running, keep using the hash only);
//! - syscalls do not nest: `sys_enter` fires only on the way in from user
//!   space, so a thread has at most one call in flight.
//! Hence at exit, a thread's in-flight entry is either in its CPU's slot
//! (it never left the CPU) or in the hash (it left, and the switch moved
//! it); never in both, never lost. Filters (self tgid, pids, cgroup) are
//! applied at entry only, before anything is stored; the daemon's own
//! threads therefore never have an entry anywhere. A full hash at the
//! hand-off drops the entry and counts `in_flight_full`, as a full hash at
//! entry (kprobe and fentry modes) does.
//!
//! User space attaches `sched_switch` first and detaches it last, so the
//! invariant holds while the entry program is attached.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext,
    },
    Global,
};
use telemetryd_common::syscalls::{
    bucket_index, InFlight, SyscallHistogram, TracerError, DEFAULT_MAX_IN_FLIGHT, MAX_PIDS,
    MAX_SLOTS, MAX_SYSCALL_NR, PROGRAM_ERROR_SLOTS,
};

/// syscall number -> slot + 1 (0: untracked). Written once by user space.
#[map(name = "SYSCALL_SLOTS")]
static SYSCALL_SLOTS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// thread (pid_tgid) -> start of its tracked syscall in flight. The loader
/// sizes it from `syscalls.max_in_flight`.
#[map(name = "SYSCALL_IN_FLIGHT")]
static SYSCALL_IN_FLIGHT: HashMap<u64, InFlight> =
    HashMap::with_max_entries(DEFAULT_MAX_IN_FLIGHT, 0);

/// The per-CPU fast path: this CPU's pending entry, see the module comment.
#[map(name = "SYSCALL_PENDING")]
static SYSCALL_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// A call in flight on this CPU whose thread has not switched out since.
#[repr(C)]
struct Pending {
    /// The thread; 0 = no entry.
    pid_tgid: u64,
    call: InFlight,
}

#[map(name = "SYSCALL_HISTOGRAMS")]
static SYSCALL_HISTOGRAMS: PerCpuArray<SyscallHistogram> =
    PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// tgids to trace when `SYSCALL_FILTER_PIDS` is 1.
#[map(name = "SYSCALL_PIDS")]
static SYSCALL_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PIDS, 0);

#[map(name = "SYSCALL_ERRORS")]
static SYSCALL_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAM_ERROR_SLOTS, 0);

// Read-only globals set by the loader (`EbpfLoader::override_global`). They
// live in .rodata, which the kernel freezes, so the verifier prunes the
// filters that are off.
#[unsafe(no_mangle)]
static SYSCALL_SELF_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYSCALL_FILTER_PIDS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYSCALL_FILTER_CGROUP: Global<u64> = Global::new(0);
/// x86_64 default: `offsetof(struct pt_regs, orig_ax)`, see below.
#[unsafe(no_mangle)]
static SYSCALL_NR_OFFSET: Global<u32> = Global::new(120);

// include/trace/events/syscalls.h (raw tracepoint arguments = TP_PROTO):
//
//   TRACE_EVENT_FN(sys_enter,
//       TP_PROTO(struct pt_regs *regs, long id), ...
//   TRACE_EVENT_FN(sys_exit,
//       TP_PROTO(struct pt_regs *regs, long ret), ...
//
// so `ctx.arg(0)` is `regs` and `ctx.arg(1)` the syscall number at entry,
// its return value at exit. The exit side does not get the number: it reads
// it from `regs` (arch/x86/include/asm/ptrace.h):
//
//   struct pt_regs {
//       unsigned long r15, r14, r13, r12, bp, bx;      /* 0..40 */
//       unsigned long r11, r10, r9, r8, ax, cx, dx;    /* 48..96 */
//       unsigned long si, di;                          /* 104, 112 */
//       unsigned long orig_ax;                         /* 120: syscall nr */
//       unsigned long ip, cs, flags, sp, ss;
//   };
//
// (arm64: `u64 regs[31], sp, pc, pstate, orig_x0; s32 syscallno;` at 280;
// user space passes the right offset in SYSCALL_NR_OFFSET.)

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter_tracepoint(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if let Some((pid_tgid, slot)) = admit(nr) {
        enter_pending(pid_tgid, slot);
    }
    0
}

/// The hand-off of the per-CPU fast path (see the module comment): runs on
/// every context switch of the node, so its common case is one inlined
/// per-CPU array lookup and a compare. `sched_switch` runs in the context
/// of `prev`; the pending entry, if any, is `prev`'s by the invariant, and
/// it carries its own tid, so no helper is needed to know whose it is.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn syscall_sched_switch(_ctx: RawTracePointContext) -> i32 {
    let Some(pending) = SYSCALL_PENDING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's element of a per-CPU array; the programs touching
    // it run with preemption disabled, so nothing else accesses it now.
    let pending = unsafe { &mut *pending };
    let pid_tgid = pending.pid_tgid;
    if pid_tgid == 0 {
        return 0;
    }
    pending.pid_tgid = 0;
    if SYSCALL_IN_FLIGHT
        .insert(pid_tgid, pending.call, BPF_ANY as u64)
        .is_err()
    {
        count_error(TracerError::InFlightFull);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit_tracepoint(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    // Only calls whose number is tracked pay for the in-flight lookup.
    let Some(nr) = syscall_nr(regs) else {
        return 0;
    };
    if slot_of(nr).is_none() {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    exit_pending(ret);
    0
}

/// `offsetof(struct pt_regs, <syscall number>)` for this build's target
/// architecture, as a constant: a BTF pointer may only be read at constant
/// offsets the verifier checks against the struct.
#[cfg(bpf_target_arch = "aarch64")]
pub(crate) const PT_REGS_NR_INDEX: usize = 35;
#[cfg(not(bpf_target_arch = "aarch64"))]
pub(crate) const PT_REGS_NR_INDEX: usize = 15;

/// The same exit as [`syscall_exit_tracepoint`], as a BTF tracepoint: the
/// kernel types `regs`, so the syscall number is a plain load (turned into
/// a fault-safe one by the verifier) instead of a `bpf_probe_read_kernel`
/// call, which matters because every syscall of the node comes through
/// here. Preferred when the kernel has BTF; the raw one is the fallback.
#[btf_tracepoint(function = "sys_exit")]
pub fn syscall_exit_tp_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: `regs` is the kernel's `struct pt_regs *` (BTF-typed); the
    // verifier checks the field at this constant offset and makes the load
    // fault-safe.
    let nr = unsafe { *regs.wrapping_add(PT_REGS_NR_INDEX) };
    if slot_of(nr).is_none() {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    exit_pending(ret);
    0
}

// Syscall entry symbols with CONFIG_ARCH_HAS_SYSCALL_WRAPPER (x86_64 since
// 4.17, arm64 since 4.19) take the user registers:
//
//   long __x64_sys_read(const struct pt_regs *regs);
//
// so the kprobe's first argument (and the fentry's) is `regs`, and the
// syscall number is at SYSCALL_NR_OFFSET in it.

#[kprobe]
pub fn syscall_enter_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(regs) = ctx.arg::<*const u8>(0) {
        if let Some(nr) = syscall_nr(regs) {
            enter(nr);
        }
    }
    0
}

#[kretprobe]
pub fn syscall_exit_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    exit(ret);
    0
}

#[fentry(function = "__x64_sys_read")]
pub fn syscall_enter_fentry(ctx: FEntryContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    if let Some(nr) = syscall_nr(regs) {
        enter(nr);
    }
    0
}

/// fexit context: the function's arguments, then its return value. Every
/// syscall wrapper has exactly one argument (`regs`), so the return value
/// is argument 1 (no need for `bpf_get_func_ret`, 5.17+).
#[fexit(function = "__x64_sys_read")]
pub fn syscall_exit_fexit(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    exit(ret);
    0
}

/// Slot of syscall `nr`, or `None` when it is not tracked.
#[inline(always)]
pub(crate) fn slot_of(nr: u64) -> Option<u32> {
    if nr >= MAX_SYSCALL_NR as u64 {
        return None;
    }
    match SYSCALL_SLOTS.get(nr as u32) {
        Some(&slot) if slot != 0 => Some(slot - 1),
        _ => None,
    }
}

/// The syscall number in the user registers `regs`.
#[inline(always)]
fn syscall_nr(regs: *const u8) -> Option<u64> {
    let offset = SYSCALL_NR_OFFSET.load() as usize;
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-safe
    // path; a bad pointer yields an error, never a fault.
    match unsafe { bpf_probe_read_kernel(regs.wrapping_add(offset) as *const u64) } {
        Ok(nr) => Some(nr),
        Err(_) => {
            count_error(TracerError::ReadRegs);
            None
        }
    }
}

/// The tracked slot of `nr` and the current thread, if this call is to be
/// timed: tracked, not the daemon itself, and passing the pid and cgroup
/// filters.
#[inline(always)]
fn admit(nr: u64) -> Option<(u64, u32)> {
    let slot = slot_of(nr)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == SYSCALL_SELF_TGID.load() {
        return None;
    }
    if SYSCALL_FILTER_PIDS.load() != 0 && SYSCALL_PIDS.get_ptr(tgid).is_none() {
        return None;
    }
    let cgroup = SYSCALL_FILTER_CGROUP.load();
    // SAFETY: takes no pointers and cannot fail.
    if cgroup != 0 && unsafe { bpf_get_current_cgroup_id() } != cgroup {
        return None;
    }
    Some((pid_tgid, slot))
}

/// Entry of the kprobe and fentry modes: straight into the hash.
#[inline(always)]
fn enter(nr: u64) {
    let Some((pid_tgid, slot)) = admit(nr) else {
        return;
    };
    let record = InFlight {
        // SAFETY: takes no pointers and cannot fail.
        start_ns: unsafe { bpf_ktime_get_ns() },
        slot,
        _pad: 0,
    };
    if SYSCALL_IN_FLIGHT
        .insert(pid_tgid, record, BPF_ANY as u64)
        .is_err()
    {
        count_error(TracerError::InFlightFull);
    }
}

/// Entry of the tracepoint mode: into this CPU's pending slot. By the
/// invariant the slot is empty here (its previous owner either exited its
/// call on this CPU or switched out, which emptied it).
#[inline(always)]
fn enter_pending(pid_tgid: u64, slot: u32) {
    let Some(pending) = SYSCALL_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; preemption is off in
    // the tracepoint programs, see `syscall_sched_switch`.
    let pending = unsafe { &mut *pending };
    pending.pid_tgid = pid_tgid;
    // SAFETY: takes no pointers and cannot fail.
    pending.call.start_ns = unsafe { bpf_ktime_get_ns() };
    pending.call.slot = slot;
}

/// Exit of the kprobe and fentry modes: the entry is in the hash.
#[inline(always)]
fn exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some((start_ns, slot)) = take_in_flight(pid_tgid) {
        record(start_ns, slot, ret);
    }
}

/// Exit of the tracepoint mode: this CPU's pending entry if there is one,
/// else the hash (the thread switched out, and `syscall_sched_switch`
/// moved its entry there).
///
/// A pending entry here is the current thread's without asking (which
/// saves the `bpf_get_current_pid_tgid` call on the fast path): by the
/// invariant (module comment) it belongs to the thread running on this
/// CPU, and as syscalls do not nest it is the entry of this very call.
/// The thread can only have no entry for a tracked call when the filters
/// turned it away at entry, and then the slot is empty too.
#[inline(always)]
fn exit_pending(ret: i64) {
    let Some(pending) = SYSCALL_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; preemption is off in
    // the tracepoint programs, see `syscall_sched_switch`.
    let pending = unsafe { &mut *pending };
    let (start_ns, slot) = if pending.pid_tgid != 0 {
        pending.pid_tgid = 0;
        (pending.call.start_ns, pending.call.slot)
    } else {
        match take_in_flight(bpf_get_current_pid_tgid()) {
            Some(entry) => entry,
            None => return,
        }
    };
    record(start_ns, slot, ret);
}

/// Removes and returns the hash entry of `pid_tgid`.
#[inline(always)]
fn take_in_flight(pid_tgid: u64) -> Option<(u64, u32)> {
    let entry = SYSCALL_IN_FLIGHT.get_ptr(pid_tgid)?;
    // SAFETY: a value pointer from a successful lookup; only this thread
    // writes its own key, and it is running here.
    let InFlight { start_ns, slot, .. } = unsafe { *entry };
    let _ = SYSCALL_IN_FLIGHT.remove(pid_tgid);
    Some((start_ns, slot))
}

/// Adds one call that started at `start_ns` to the histogram of `slot`.
#[inline(always)]
fn record(start_ns: u64, slot: u32, ret: i64) {
    // SAFETY: takes no pointers, cannot fail.
    let delta = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
    let Some(histogram) = SYSCALL_HISTOGRAMS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's value of a per-CPU array slot; tracing programs do
    // not migrate while they run.
    let histogram = unsafe { &mut *histogram };
    if let Some(bucket) = histogram.buckets.get_mut(bucket_index(delta)) {
        *bucket += 1;
    }
    histogram.sum_ns += delta;
    histogram.count += 1;
    if ret < 0 {
        histogram.errors += 1;
    }
}

#[inline(always)]
fn count_error(error: TracerError) {
    if let Some(slot) = SYSCALL_ERRORS.get_ptr_mut(error as u32) {
        // SAFETY: per-CPU slot from a successful lookup, see `exit`.
        unsafe { *slot += 1 };
    }
}
