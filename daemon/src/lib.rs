//! telemetryd: eBPF node telemetry daemon.
//!
//! Data flow: kernel programs -> maps -> one source per signal
//! ([`sources`], one poll per interval) -> immutable [`sources::Snapshot`]
//! -> the `/metrics` renderer ([`metrics`], per scrape) and [`mapek`]
//! (anomaly detection and explanation). Only [`sources`] and [`loader`]
//! touch aya; everything after the snapshot is plain data. [`service`] is
//! `telemetryd run`, [`check`] is `telemetryd check`.
#![deny(unsafe_code)]

pub mod check;
pub mod cli;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hotplug;
pub mod http;
pub mod http_connections;
pub mod kernel;
pub mod loader;
pub mod logging;
pub mod mapek;
pub mod metrics;
pub mod notify;
pub mod readiness;
pub mod reload;
pub mod service;
pub mod shutdown;
pub mod sources;
#[allow(
    unsafe_code,
    reason = "the few calls no safe API offers, each with its SAFETY comment"
)]
pub mod sys;
pub mod webconfig;

#[cfg(test)]
mod layout_tests;
