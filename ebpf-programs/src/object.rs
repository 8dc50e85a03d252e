//! What every eBPF object of telemetryd carries besides its programs: the
//! license the kernel checks and the panic handler `no_std` needs.

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
