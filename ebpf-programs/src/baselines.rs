//! Programs the benchmarks measure telemetryd's programs against: the
//! floor of what attaching anything at the same hook costs, and the floor
//! of what counting anything per interface costs.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE},
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use telemetryd_common::xdp::{LowIfindexCounters, FAMILY_OTHER, LOW_IFINDEX_LIMIT, PROTOCOL_OTHER};

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
