//! Empty programs the benchmarks measure telemetryd's programs against:
//! the floor of what attaching anything at the same hook costs.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes every frame and does nothing else.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
