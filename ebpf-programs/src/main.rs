//! telemetryd's kernel side: every program the daemon loads, built into one
//! eBPF object that the daemon embeds. One module per program; each module
//! declares the maps it writes. The benchmarks' reference programs are in
//! a second object (`bench.rs`), so production loads never create them.
#![no_std]
#![no_main]

mod object;
mod packet_drops;
mod packet_events;
mod syscall_latency;
mod xdp_counter;
