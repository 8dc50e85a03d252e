//! Programs the benchmarks measure telemetryd's programs against (only in
//! the benchmark object): the floor of what attaching anything at the same
//! hook costs, the floor of what counting anything per interface costs, the
//! floor of timing a syscall at all, and the XDP benchmark's traffic source.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint, xdp},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext, XdpContext},
};
use telemetryd_common::xdp::{LowIfindexCounters, FAMILY_OTHER, LOW_IFINDEX_LIMIT, PROTOCOL_OTHER};

use crate::syscall_latency::{slot_of, PT_REGS_NR_INDEX};

/// `xdp_count_floor`'s counters, laid out as `xdp_packet_counter`'s
/// low-ifindex table (and sized by the loader the same way).
#[map(name = "XDP_FLOOR_COUNTERS")]
static XDP_FLOOR_COUNTERS: Array<LowIfindexCounters> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Passes every frame and does nothing else.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Reads the frame's EtherType and passes it: the floor of any program that
/// looks at the packet at all (the first touch of packet memory).
#[xdp]
pub fn xdp_touch_baseline(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 <= ctx.data_end() {
        // SAFETY: bytes 12..14 are inside the frame, checked just above.
        let ether_type = unsafe { core::ptr::read_volatile((start + 12) as *const u16) };
        core::hint::black_box(ether_type);
    }
    xdp_action::XDP_PASS
}

/// Counts every frame's packets and bytes per interface the way
/// `xdp_packet_counter` does on its fastest path, without looking at the
/// frame: the floor of any per-interface packet and byte counter (the
/// ingress ifindex, this CPU's row, one counter pair).
#[xdp]
pub fn xdp_count_floor(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    if ifindex < LOW_IFINDEX_LIMIT {
        // SAFETY: no arguments; inlined by the verifier (see xdp_counter).
        let cpu = unsafe { bpf_get_smp_processor_id() };
        if let Some(table) = XDP_FLOOR_COUNTERS.get_ptr_mut(cpu) {
            // SAFETY: this CPU's row from a successful lookup, written by
            // this CPU alone.
            let table = unsafe { &mut *table };
            if let Some(entry) = table.get_mut(ifindex as usize) {
                entry.counters.packets[FAMILY_OTHER][PROTOCOL_OTHER] += 1;
                entry.counters.bytes[FAMILY_OTHER][PROTOCOL_OTHER] += len;
            }
        }
    }
    xdp_action::XDP_PASS
}

/// Not a reference but the XDP benchmark's traffic source: run through
/// BPF_PROG_TEST_RUN in live-frames mode on one end of a veth pair, it
/// sends each frame out of that device (XDP_TX), so the other end receives
/// them in NAPI batches, as from a NIC under load.
#[xdp]
pub fn xdp_bench_transmit(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Benchmark floor: programs that do nothing, on the same raw tracepoints.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Benchmark floor of timing at all: the two clock reads any latency
/// tracer on these tracepoints must make for a tracked call (one at entry,
/// one at exit), behind the same tracked-or-not test, and nothing else: no
/// thread, no filters, no histogram. The benchmark shows how much of the
/// tracer's cost is this floor.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_clock_floor(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if slot_of(nr).is_some() {
        if let Some(start) = CLOCK_FLOOR.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array, preemption off.
            unsafe { *start = bpf_ktime_get_ns() };
        }
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_clock_floor(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: as in `syscall_exit_tp_btf`.
    let nr = unsafe { *regs.wrapping_add(PT_REGS_NR_INDEX) };
    if slot_of(nr).is_some() {
        if let Some(start) = CLOCK_FLOOR.get_ptr_mut(0) {
            // SAFETY: as above.
            unsafe { *start = bpf_ktime_get_ns().wrapping_sub(*start) };
        }
    }
    0
}

/// Scratch of the clock-floor programs (benchmark only).
#[map(name = "SYSCALL_CLOCK_FLOOR")]
static CLOCK_FLOOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// The per-syscall tracepoints `syscalls:sys_enter_<name>` /
// `sys_exit_<name>` are the other way to hook syscalls: the kernel runs one
// C probe on the raw tracepoints that tests a bitmap of enabled syscalls, so
// an untracked call never enters BPF, but a tracked one pays for the perf
// trace buffer and argument copies before the program runs. The benchmark
// puts empty programs there, on the tracked syscalls, to show that trade.

#[tracepoint]
pub fn sys_enter_syscall_tp_empty(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn sys_exit_syscall_tp_empty(_ctx: TracePointContext) -> u32 {
    0
}
