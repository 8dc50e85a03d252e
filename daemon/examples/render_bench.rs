//! `/metrics` render benchmark (`cargo xtask bench render`). Prints, measured
//! side by side in one run, the time of one scrape's body:
//!
//! - text: the snapshot's families built and encoded by the `prometheus`
//!   crate's `TextEncoder` (what `/metrics` serves by default);
//! - protobuf: the same families and the native histograms, encoded by
//!   telemetryd's own encoder (`metrics::protobuf`, what a Prometheus with
//!   `--enable-feature=native-histograms` gets);
//! - and the encoders alone on the same, already built families: the
//!   crate's `TextEncoder` beside ours; and building the families alone.
//!
//! Three sets of series: the default (4 interfaces, 7 syscalls, the drop
//! tracers' families; target < 1 ms) and 500 interfaces (target < 10 ms),
//! twice: with the default `[metrics]` (`max_devices = 64`: 64 devices of
//! their own, the rest folded into `device="other"`, what an operator gets
//! on a node with 500 container veths) and uncapped (`max_devices = 500`).
//! The XDP section is built as `XdpSource::poll` builds it, the interfaces
//! and their attachments then `XdpStats::fold_devices` with the daemon's
//! `DeviceCap` from the `[metrics]` config. The variants take turns in each
//! round, so all see the same machine load; the figures are medians over the
//! rounds with quartiles. No kernel state is touched: the snapshot is built
//! in memory.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::time::Instant;

use prometheus::{Encoder, TextEncoder};
use telemetryd::config::{MetricsConfig, XdpMode};
use telemetryd::sources::cardinality::{DeviceCap, DevicePolicy};
use telemetryd::sources::drops::DropStats;
use telemetryd::sources::syscalls::{SyscallStats, TracerStats, DEFAULT_CLASSIC_BUCKETS};
use telemetryd::sources::xdp::{InterfaceStats, XdpStats};
use telemetryd::sources::Snapshot;

use bench_support::{quantile, spread};

const ROUNDS: usize = 200;

fn main() {
    println!("== /metrics render time (one scrape's body; medians [quartiles] of {ROUNDS} rounds)");
    let defaults = MetricsConfig::default();
    let uncapped = MetricsConfig {
        max_devices: 500,
        ..MetricsConfig::default()
    };
    let cases = [
        ("default series".to_owned(), 4, &defaults, 1.0),
        (
            format!(
                "500 interfaces, default caps (max_devices = {})",
                defaults.max_devices
            ),
            500,
            &defaults,
            10.0,
        ),
        (
            format!(
                "500 interfaces, uncapped (max_devices = {})",
                uncapped.max_devices
            ),
            500,
            &uncapped,
            10.0,
        ),
    ];
    for (label, interfaces, metrics, target_ms) in cases {
        let snapshot = snapshot(interfaces, metrics);
        measure(&label, &snapshot, target_ms);
    }
}

fn measure(label: &str, snapshot: &Snapshot, target_ms: f64) {
    let families = snapshot.families();
    let native = snapshot.native_histograms();
    let series = snapshot
        .render(Vec::new())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    let text_bytes = snapshot.render(Vec::new()).unwrap().len();
    let proto_bytes = snapshot.render_protobuf(Vec::new()).len();

    let mut text = Vec::with_capacity(ROUNDS);
    let mut proto = Vec::with_capacity(ROUNDS);
    let mut crate_text = Vec::with_capacity(ROUNDS);
    let mut our_proto = Vec::with_capacity(ROUNDS);
    let mut build = Vec::with_capacity(ROUNDS);
    let mut sorted = families.clone();
    sorted.sort_by(|a, b| a.name().cmp(b.name()));
    sorted.retain(|f| !f.get_metric().is_empty());
    let time_us = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64() * 1e6
    };
    for round in 0..ROUNDS {
        for i in 0..5 {
            match (round + i) % 5 {
                0 => text.push(time_us(&mut || {
                    std::hint::black_box(snapshot.render(Vec::new()).unwrap());
                })),
                1 => proto.push(time_us(&mut || {
                    std::hint::black_box(snapshot.render_protobuf(Vec::new()));
                })),
                2 => crate_text.push(time_us(&mut || {
                    let mut out = Vec::with_capacity(64 * 1024);
                    TextEncoder::new().encode(&sorted, &mut out).unwrap();
                    std::hint::black_box(out);
                })),
                3 => build.push(time_us(&mut || {
                    std::hint::black_box((snapshot.families(), snapshot.native_histograms()));
                })),
                _ => our_proto.push(time_us(&mut || {
                    let mut out = Vec::with_capacity(64 * 1024);
                    telemetryd::metrics::protobuf::encode(&sorted, &native, &mut out);
                    std::hint::black_box(out);
                })),
            }
        }
    }
    println!(
        "{label}: {series} text samples in {} families ({} native histograms); text {text_bytes} bytes, protobuf {proto_bytes} bytes",
        sorted.len(),
        native.len()
    );
    println!(
        "  /metrics text (build + prometheus TextEncoder): {} us; protobuf (build + ours): {} us (target < {target_ms} ms)",
        spread(&text, 1),
        spread(&proto, 1),
    );
    println!(
        "  encoders alone, same families: prometheus crate TextEncoder {} us; ours (protobuf) {} us; ours / crate's {:.2}",
        spread(&crate_text, 1),
        spread(&our_proto, 1),
        quantile(&our_proto, 0.5) / quantile(&crate_text, 0.5),
    );
    println!(
        "  building the families alone (the snapshot's sections into the prometheus crate's model, and the native histograms): {} us",
        spread(&build, 1),
    );
    let worst = quantile(&text, 0.5).max(quantile(&proto, 0.5)) / 1000.0;
    println!(
        "  {}: slower format's median {worst:.3} ms vs target {target_ms} ms",
        if worst < target_ms {
            "within target"
        } else {
            "OVER TARGET"
        }
    );
}

/// A snapshot as the daemon would serve it: `interfaces` attached with
/// traffic in every family and protocol, folded as `metrics` says; the 7
/// default syscalls with calls spread over 30 buckets; the drop tracers'
/// families at zero.
fn snapshot(interfaces: usize, metrics: &MetricsConfig) -> Snapshot {
    let mut xdp = XdpStats::default();
    for i in 0..interfaces {
        let mut stats = InterfaceStats {
            ifindex: i as u32 + 2,
            ..Default::default()
        };
        for f in 0..3 {
            for p in 0..4 {
                stats.packets[f][p] = 1_000_000 * (f * 4 + p) as u64 + i as u64;
                stats.bytes[f][p] = 1_500_000_000 * (f * 4 + p) as u64;
            }
        }
        let name = if interfaces <= 4 {
            ["eth0", "eth1", "wg0", "br0"][i].to_owned()
        } else {
            format!("veth{i:04}")
        };
        xdp.interfaces.insert(name.clone(), stats);
        xdp.attachments.push((name, XdpMode::Native));
    }
    // What XdpSource::set_device_cap and XdpSource::poll do.
    let mut cap = DeviceCap::new(
        DevicePolicy::from_config(metrics),
        metrics.max_devices as usize,
    );
    xdp.fold_devices(&mut cap);
    let own = xdp.interfaces.len() - xdp.folded.devices.len();
    assert_eq!(
        own,
        interfaces.min(metrics.max_devices as usize),
        "devices with series of their own"
    );
    let mut tracer = TracerStats {
        attach: telemetryd::config::SyscallAttach::Tracepoint,
        sched_switch: true,
        syscalls: Default::default(),
        errors: Default::default(),
        classic_buckets: DEFAULT_CLASSIC_BUCKETS,
    };
    for name in [
        "read", "write", "sendto", "recvfrom", "connect", "accept", "accept4",
    ] {
        let mut stats = SyscallStats::default();
        for (i, b) in stats.buckets.iter_mut().enumerate().skip(5).take(30) {
            *b = (i as u64 + 1) * 1000;
        }
        stats.count = stats.buckets.iter().sum();
        stats.sum_ns = stats.count * 2000;
        tracer.syscalls.insert(name.into(), stats);
    }
    Snapshot {
        xdp: Some(xdp),
        drops: Some(DropStats::default()),
        syscalls: Some(tracer),
        ..Default::default()
    }
}
