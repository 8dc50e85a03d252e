//! telemetryd: eBPF node telemetry daemon.
#![deny(unsafe_code)]

pub mod collect;
pub mod mapek;
