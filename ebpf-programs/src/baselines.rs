//! Empty programs the benchmarks measure telemetryd's programs against:
//! the floor of what attaching anything at the same hook costs.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

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
