//! Types and constants shared by the eBPF programs (kernel side) and the
//! `telemetryd` daemon (user side).
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides
//! agree on the layout byte for byte. The `user` feature adds `aya::Pod`
//! impls so user space can read the types out of maps.
#![no_std]

pub mod drops;
pub mod events;
pub mod syscalls;
pub mod xdp;
