//! telemetryd: eBPF node telemetry daemon.
#![deny(unsafe_code)]

pub mod cli;
pub mod collect;
pub mod config;
pub mod syscall_table;
