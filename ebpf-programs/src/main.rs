//! telemetryd's kernel side: every program of the daemon, built into one
//! eBPF object that the daemon embeds. One module per program; each module
//! declares the maps it writes.
#![no_std]
#![no_main]

mod baselines;
mod packet_drops;
mod packet_events;
mod syscall_latency;
mod xdp_counter;

/// The programs never panic (every index is checked); this only satisfies
/// `no_std`. The verifier rejects any program that could reach it, since
/// it is an endless loop. Only on the BPF target: a host build (`cargo
/// clippy --workspace`) unifies features with the daemon, pulls in `std`
/// through `aya`, and gets its panic handler from there.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so the tracing programs may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
