//! telemetryd: eBPF node telemetry daemon.
//!
//! Data flow: kernel programs -> maps -> [`collect`] (one poll per interval)
//! -> immutable [`collect::Snapshot`] -> [`metrics`] (rendered per scrape)
//! and [`mapek`] (anomaly detection and explanation).
//! Only [`bpf`] and [`collect`] touch aya.
#![deny(unsafe_code)]

pub mod bpf;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod http;
pub mod logging;
pub mod mapek;
pub mod metrics;
pub mod reload;
pub mod shutdown;
pub mod syscall_table;
