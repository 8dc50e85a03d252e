//! The benchmark object: the daemon's programs (the same modules as
//! `main.rs`) and the references the benchmarks measure them against
//! (`baselines`). Embedded only by `daemon/examples`, never by the daemon.
#![no_std]
#![no_main]

mod baselines;
mod object;
mod packet_drops;
mod packet_events;
mod syscall_latency;
mod xdp_counter;
