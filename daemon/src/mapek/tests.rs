//! The loop end to end on synthetic snapshot series built by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::sources::drops::{DropStats, TcpStats};
use crate::sources::events::{EventStats, TopTalker, TopTalkersReport};
use crate::sources::syscalls::{SyscallStats, TracerStats};
use crate::sources::xdp::{InterfaceStats, XdpStats};

/// A node whose cumulative counters the test advances one poll (1 s) at a
/// time.
#[derive(Default)]
struct Node {
    seq: u64,
    interfaces: BTreeMap<String, InterfaceStats>,
    syscalls: BTreeMap<String, SyscallStats>,
    kernel_drops: BTreeMap<String, u64>,
    device_drops: BTreeMap<String, BTreeMap<String, u64>>,
    tcp: TcpStats,
    /// device -> peer -> reason -> drops.
    peer_drops: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// device -> peer -> sampled packets (sample rate 1).
    peer_packets: BTreeMap<String, BTreeMap<String, u64>>,
    /// (peer, share) the packet events source reports.
    top_talkers: Vec<(String, f64)>,
}

impl Node {
    fn packets(&mut self, device: &str, n: u64) -> &mut Self {
        let d = self.interfaces.entry(device.into()).or_default();
        d.packets[0][0] += n;
        d.bytes[0][0] += n * 100;
        self
    }

    fn rx_dropped(&mut self, device: &str, n: u64) -> &mut Self {
        self.interfaces.entry(device.into()).or_default().rx_dropped += n;
        self
    }

    /// `n` packets from `peer` into `device` (counted on the device too).
    fn peer_packets(&mut self, device: &str, peer: &str, n: u64) -> &mut Self {
        *self
            .peer_packets
            .entry(device.into())
            .or_default()
            .entry(peer.into())
            .or_default() += n;
        self.packets(device, n)
    }

    /// `n` kernel drops for `reason` of packets from `peer` on `device`
    /// (counted on the device and node-wide too).
    fn peer_drops(&mut self, device: &str, peer: &str, reason: &str, n: u64) -> &mut Self {
        *self
            .peer_drops
            .entry(device.into())
            .or_default()
            .entry(peer.into())
            .or_default()
            .entry(reason.into())
            .or_default() += n;
        self.device_drops(device, reason, n)
    }

    fn tcp(&mut self, segments: u64, retransmitted: u64) -> &mut Self {
        self.tcp.segments_out += segments;
        self.tcp.retrans_segs += retransmitted;
        self
    }

    fn drops(&mut self, reason: &str, n: u64) -> &mut Self {
        *self.kernel_drops.entry(reason.into()).or_default() += n;
        self
    }

    /// `n` kernel drops for `reason` on `device` (also counted node-wide).
    fn device_drops(&mut self, device: &str, reason: &str, n: u64) -> &mut Self {
        *self
            .device_drops
            .entry(device.into())
            .or_default()
            .entry(reason.into())
            .or_default() += n;
        self.drops(reason, n)
    }

    /// `n` calls of `ns` nanoseconds each, in the kernel's bucket of `ns`.
    fn calls(&mut self, name: &str, n: u64, ns: u64, errors: u64) -> &mut Self {
        let s = self.syscalls.entry(name.into()).or_default();
        s.buckets[telemetryd_common::syscalls::bucket_index(ns)] += n;
        s.count += n;
        s.sum_ns += n * ns;
        s.errors += errors;
        self
    }

    fn snapshot(&mut self) -> Snapshot {
        self.seq += 1;
        let peers = self
            .top_talkers
            .iter()
            .map(|(peer, share)| TopTalker {
                peer: peer.clone(),
                direction: "rx",
                packets: 0.0,
                packets_min: 0.0,
                packets_max: 0.0,
                bytes: 0.0,
                share: *share,
            })
            .collect();
        Snapshot {
            seq: self.seq,
            uptime: Duration::from_secs(self.seq),
            taken_at: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + self.seq)),
            xdp: Some(XdpStats {
                interfaces: self.interfaces.clone(),
                ..Default::default()
            }),
            drops: Some(DropStats {
                kernel_drops: self.kernel_drops.clone(),
                device_drops: self.device_drops.clone(),
                peer_drops: self.peer_drops.clone(),
                tcp: self.tcp.clone(),
                ..Default::default()
            }),
            events: Some(EventStats {
                peer_packets: self.peer_packets.clone(),
                top_talkers: TopTalkersReport {
                    peers,
                    ..Default::default()
                },
                ..Default::default()
            }),
            syscalls: Some(TracerStats {
                attach: crate::config::SyscallAttach::Tracepoint,
                sched_switch: true,
                syscalls: self.syscalls.clone(),
                errors: Default::default(),
                classic_buckets: crate::sources::syscalls::DEFAULT_CLASSIC_BUCKETS,
            }),
            ..Default::default()
        }
    }
}

/// Observe and execute, as the running loop does.
fn step(mapek: &mut MapeK, snapshot: &Snapshot) -> Vec<StateChange> {
    let changes = mapek.observe(snapshot);
    mapek.execute(&changes);
    changes
}

fn settings() -> AnalyzerSettings {
    AnalyzerSettings {
        warmup: Duration::from_secs(10),
        fire_after: 3,
        resolve_after: 5,
        // The scenarios' reads take microseconds; the floor has its own tests.
        min_latency: Duration::ZERO,
        ..Default::default()
    }
}

/// One normal second: 1,000 packets on eth0, 1,000 TCP segments with one
/// retransmitted, 500 reads of ~4 µs.
fn normal(node: &mut Node) {
    node.packets("eth0", 1000)
        .tcp(1000, 1)
        .calls("read", 500, 4000, 0);
}

fn warm_up(loop_: &mut MapeK, node: &mut Node, seconds: usize) {
    for _ in 0..seconds {
        normal(node);
        let changes = step(loop_, &node.snapshot());
        assert!(changes.is_empty(), "normal traffic raised {changes:?}");
    }
}

#[test]
fn step_change_fires_after_exactly_n_and_resolves_after_exactly_m() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);

    // Fault: 10% of segments retransmitted, netfilter dropping 1,240/s.
    let mut fired_at = None;
    for i in 1..=6 {
        normal(&mut node);
        node.tcp(0, 99)
            .drops("NETFILTER_DROP", 1240)
            .drops("NO_SOCKET", 30);
        let changes = step(&mut mapek, &node.snapshot());
        if !changes.is_empty() {
            assert!(fired_at.is_none(), "fired twice: {changes:?}");
            assert_eq!(changes.len(), 1, "{changes:?}");
            let c = &changes[0];
            assert_eq!(
                (c.kind, c.subject.as_str()),
                (AnomalyKind::PacketLoss, "node")
            );
            assert_eq!(c.state, AnomalyState::Firing);
            assert_eq!(c.severity, Severity::Critical);
            assert!((c.value - 0.1).abs() < 1e-9, "{c:?}");
            assert!((c.baseline - 0.001).abs() < 1e-6, "{c:?}");
            assert_eq!(
                c.explanation,
                "packet loss on node: 10.0% of TCP segments retransmitted over the last 3 s \
                 (baseline 0.1%); kernel drops dominated by NETFILTER_DROP (1,240/s); \
                 traffic steady (1.0x baseline)"
            );
            fired_at = Some(i);
        }
    }
    assert_eq!(
        fired_at,
        Some(3),
        "must fire on exactly the fire_after-th anomalous poll"
    );
    assert_eq!(mapek.board().report().active.len(), 1);

    let mut resolved_at = None;
    for i in 1..=8 {
        normal(&mut node);
        let changes = step(&mut mapek, &node.snapshot());
        if !changes.is_empty() {
            assert!(resolved_at.is_none(), "resolved twice: {changes:?}");
            let c = &changes[0];
            assert_eq!(c.state, AnomalyState::Resolved);
            assert_eq!(
                (c.kind, c.subject.as_str()),
                (AnomalyKind::PacketLoss, "node")
            );
            assert!(
                c.explanation
                    .starts_with("packet loss on node resolved: 0.1% of TCP segments"),
                "{c:?}"
            );
            assert!(c.resolved_at.unwrap() > c.started_at);
            resolved_at = Some(i);
        }
    }
    assert_eq!(
        resolved_at,
        Some(5),
        "must resolve on exactly the resolve_after-th normal poll"
    );
    let report = mapek.board().report();
    assert!(report.active.is_empty());
    assert_eq!(report.resolved.len(), 1);
    assert_eq!(mapek.knowledge().resolved().count(), 1);
    assert_eq!(
        mapek.board().totals()[&(AnomalyKind::PacketLoss, Severity::Critical)],
        1
    );
}

#[test]
fn a_short_spike_does_not_fire() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    // One bad poll, then fire_after - 1 bad polls: neither fires.
    for burst in [1, 2] {
        for _ in 0..burst {
            normal(&mut node);
            node.tcp(0, 300).drops("NETFILTER_DROP", 5000);
            node.calls("read", 500, 4000 * 50, 0)
                .packets("eth0", 20_000);
            assert!(step(&mut mapek, &node.snapshot()).is_empty());
        }
        for _ in 0..10 {
            normal(&mut node);
            assert!(step(&mut mapek, &node.snapshot()).is_empty());
        }
    }
    assert!(mapek.board().report().resolved.is_empty());
}

#[test]
fn warm_up_suppresses_and_first_observation_never_fires() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    // A fault for 8 s of the 10 s warm-up: nothing may fire.
    for t in 0..30 {
        normal(&mut node);
        if (2..10).contains(&t) {
            node.tcp(0, 200).drops("NETFILTER_DROP", 2000);
        }
        let changes = step(&mut mapek, &node.snapshot());
        assert!(changes.is_empty(), "t={t}: {changes:?}");
    }

    // Even with no warm-up and fire_after = 1, the first observation after
    // a start (the first snapshot pair) stays quiet.
    let quick = AnalyzerSettings {
        warmup: Duration::ZERO,
        fire_after: 1,
        resolve_after: 1,
        ..Default::default()
    };
    let mut mapek = MapeK::new(quick, AnomalyBoard::new());
    let mut node = Node::default();
    normal(&mut node);
    assert!(step(&mut mapek, &node.snapshot()).is_empty());
    normal(&mut node);
    assert!(step(&mut mapek, &node.snapshot()).is_empty());
    normal(&mut node);
    assert!(step(&mut mapek, &node.snapshot()).is_empty());
    normal(&mut node);
    node.drops("NETFILTER_DROP", 5000);
    let changes = step(&mut mapek, &node.snapshot());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].kind, AnomalyKind::PacketLoss);
}

/// Deterministic noise: a 64-bit LCG (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in `[base * (1 - spread), base * (1 + spread)]`.
    fn around(&mut self, base: u64, spread: f64) -> u64 {
        let u = (self.next() % 10_001) as f64 / 10_000.0;
        (base as f64 * (1.0 - spread + 2.0 * spread * u)).round() as u64
    }
}

#[test]
fn noisy_steady_series_stays_quiet_for_10000_polls() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    let mut rng = Lcg(42);
    let reasons = ["NETFILTER_DROP", "NO_SOCKET", "TCP_CSUM"];
    for t in 0..10_000 {
        node.packets("eth0", rng.around(1000, 0.2));
        node.packets("eth1", rng.around(200, 0.5));
        node.rx_dropped("eth0", rng.next() % 3);
        let segments = rng.around(1000, 0.3);
        node.tcp(segments, rng.next() % 4);
        node.drops(reasons[(rng.next() % 3) as usize], rng.next() % 6);
        let calls = rng.around(500, 0.2);
        node.calls(
            "read",
            calls * 95 / 100,
            rng.around(4000, 0.2),
            rng.next() % 5,
        );
        node.calls("read", calls * 4 / 100, rng.around(9000, 0.2), 0);
        node.calls("read", calls / 100, rng.around(20_000, 0.5), 0);
        node.calls("write", rng.around(100, 0.3), rng.around(30_000, 0.3), 0);
        let changes = step(&mut mapek, &node.snapshot());
        assert!(changes.is_empty(), "t={t}: {changes:?}");
    }
    assert_eq!(mapek.knowledge().observations(), 9_999);
}

#[test]
fn explanation_names_dominant_drop_reason_and_traffic_rise() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    let mut fired = Vec::new();
    for _ in 0..3 {
        // Traffic doubles while the kernel drops, mostly at netfilter. (The
        // baseline learns the first two polls, which are not yet anomalous for
        // traffic, so the rise reads 1.8x when it fires.)
        node.packets("eth0", 2000)
            .tcp(2000, 2)
            .calls("read", 500, 4000, 0);
        node.drops("NO_SOCKET", 40)
            .drops("NETFILTER_DROP", 1240)
            .drops("TCP_CSUM", 3);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        fired[0].explanation,
        "packet loss on node: kernel dropped 1,243 packets/s over the last 3 s (baseline 0/s); \
         kernel drops dominated by NETFILTER_DROP (1,240/s); 0.1% of TCP segments retransmitted; \
         traffic rose at the same time (1.8x baseline)"
    );
}

/// What 200 concurrent scrapers did to a node: sockets closing with data
/// queued, thousands a second. Local drops are not loss.
#[test]
fn local_drops_raise_no_packet_loss() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    for t in 0..20 {
        normal(&mut node);
        node.drops("QUEUE_PURGE", 5775)
            .drops("SOCKET_CLOSE", 900)
            .drops("TCP_OLD_DATA", 300)
            .drops("OTHERHOST", 200)
            .device_drops("eth0", "NO_SOCKET", 400)
            .device_drops("eth0", "TCP_CLOSE", 400);
        let changes = step(&mut mapek, &node.snapshot());
        assert!(changes.is_empty(), "t={t}: {changes:?}");
    }
}

/// A reason the table does not know counts as loss by default, and not
/// with `unknown_drop_reasons = "ignore"`; it is never named as the
/// dominant reason when ignored.
#[test]
fn unknown_drop_reasons_follow_the_setting() {
    for (setting, fires) in [
        (crate::config::UnknownDropReasons::Loss, true),
        (crate::config::UnknownDropReasons::Ignore, false),
    ] {
        let mut mapek = MapeK::new(
            AnalyzerSettings {
                unknown_drop_reasons: setting,
                ..settings()
            },
            AnomalyBoard::new(),
        );
        let mut node = Node::default();
        warm_up(&mut mapek, &mut node, 30);
        let mut fired = Vec::new();
        for _ in 0..3 {
            normal(&mut node);
            node.drops("A_NEWER_KERNELS_REASON", 500)
                .device_drops("eth0", "OTHER", 400);
            fired.extend(step(&mut mapek, &node.snapshot()));
        }
        let subjects: Vec<&str> = fired.iter().map(|c| c.subject.as_str()).collect();
        if fires {
            assert_eq!(subjects, ["eth0", "node"], "{fired:?}");
            assert!(
                fired[1]
                    .explanation
                    .contains("kernel drops dominated by A_NEWER_KERNELS_REASON (500/s)"),
                "{fired:?}"
            );
        } else {
            assert!(fired.is_empty(), "{setting:?}: {fired:?}");
        }
    }
}

/// Three peers send 300 packets/s each into b0; one of them loses 10% to
/// netfilter. The anomaly names b0 and that peer, with its loss rate and
/// the others'; the per-peer view lists all three. When it stops, the
/// peer's anomaly resolves after exactly resolve_after polls.
#[test]
fn one_lossy_peer_is_named_with_its_loss_rate() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    let peers = ["10.1.0.5", "10.1.0.6", "10.1.0.7"];
    let steady = |node: &mut Node| {
        for p in peers {
            node.peer_packets("b0", p, 300);
        }
    };
    for _ in 0..30 {
        steady(&mut node);
        assert!(step(&mut mapek, &node.snapshot()).is_empty());
    }
    let mut fired = Vec::new();
    for _ in 0..3 {
        steady(&mut node);
        node.peer_drops("b0", "10.1.0.7", "NETFILTER_DROP", 30);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let f = &fired[0];
    assert_eq!(f.subject, "b0 from 10.1.0.7");
    assert!(
        f.explanation.starts_with(
            "packet loss on b0 from 10.1.0.7: 10.0% of its packets dropped (NETFILTER_DROP), \
             other peers 0.0%; 30 packets/s dropped or errored on the device"
        ),
        "{}",
        f.explanation
    );
    let view: Vec<(&str, f64, Option<f64>)> = f
        .peers
        .iter()
        .map(|p| (p.peer.as_str(), p.drops_per_sec, p.loss_ratio))
        .collect();
    assert_eq!(
        view,
        [
            ("10.1.0.7", 30.0, Some(0.1)),
            ("10.1.0.5", 0.0, Some(0.0)),
            ("10.1.0.6", 0.0, Some(0.0))
        ]
    );
    let mut resolved = Vec::new();
    for i in 1..=5 {
        steady(&mut node);
        let changes = step(&mut mapek, &node.snapshot());
        if i < 5 {
            assert!(changes.is_empty(), "poll {i}: {changes:?}");
        }
        resolved.extend(changes);
    }
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].subject, "b0 from 10.1.0.7");
    assert_eq!(resolved[0].state, AnomalyState::Resolved);
}

/// The same loss spread evenly over the three peers keeps the device as
/// the subject; so does one peer alone (naming it adds nothing).
#[test]
fn evenly_spread_or_single_peer_loss_keeps_the_device_subject() {
    for lossy in [&["10.1.0.5", "10.1.0.6", "10.1.0.7"][..], &["10.1.0.5"][..]] {
        let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
        let mut node = Node::default();
        for _ in 0..30 {
            for p in lossy {
                node.peer_packets("b0", p, 300);
            }
            assert!(step(&mut mapek, &node.snapshot()).is_empty());
        }
        let mut fired = Vec::new();
        for _ in 0..3 {
            for p in lossy {
                node.peer_packets("b0", p, 300)
                    .peer_drops("b0", p, "NETFILTER_DROP", 30);
            }
            fired.extend(step(&mut mapek, &node.snapshot()));
        }
        assert_eq!(fired.len(), 1, "{lossy:?}: {fired:?}");
        assert_eq!(fired[0].subject, "b0", "{lossy:?}: {fired:?}");
        assert_eq!(fired[0].peers.len(), lossy.len(), "{fired:?}");
    }
}

#[test]
fn device_drops_are_attributed_to_the_device() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    let mut fired = Vec::new();
    for _ in 0..3 {
        normal(&mut node);
        node.rx_dropped("eth0", 800);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].kind, fired[0].subject.as_str()),
        (AnomalyKind::PacketLoss, "eth0")
    );
    assert!(
        fired[0].explanation.starts_with(
            "packet loss on eth0: 800 packets/s dropped or errored on the device over the last 3 s \
             (baseline 0/s); rx_dropped 800/s"
        ),
        "{}",
        fired[0].explanation
    );
}

#[test]
fn kernel_drops_on_a_device_name_the_device_and_the_reason() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    let mut fired = Vec::new();
    for _ in 0..3 {
        normal(&mut node);
        node.device_drops("eth0", "NETFILTER_DROP", 100);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    // One fault, one anomaly: the node's kernel drop signal leaves out
    // drops attributed to a device.
    let device: Vec<_> = fired.iter().filter(|c| c.subject == "eth0").collect();
    assert_eq!((fired.len(), device.len()), (1, 1), "{fired:?}");
    assert_eq!(device[0].kind, AnomalyKind::PacketLoss);
    assert!(
        device[0].explanation.starts_with(
            "packet loss on eth0: 100 packets/s dropped or errored on the device over the last 3 s \
             (baseline 0/s); kernel drops 100/s; kernel drops dominated by NETFILTER_DROP (100/s)"
        ),
        "{}",
        device[0].explanation
    );
}

#[test]
fn latency_step_of_20x_on_read_fires_for_read() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    for _ in 0..30 {
        normal(&mut node);
        node.calls("write", 300, 8000, 0);
        assert!(step(&mut mapek, &node.snapshot()).is_empty());
    }
    let mut fired = Vec::new();
    for i in 1..=4 {
        node.packets("eth0", 1000)
            .tcp(1000, 1)
            .calls("read", 500, 4000 * 20, 0);
        node.calls("write", 300, 8000, 0);
        let changes = step(&mut mapek, &node.snapshot());
        if !changes.is_empty() {
            fired.push((i, changes));
        }
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (at, changes) = &fired[0];
    assert_eq!(*at, 3);
    let c = &changes[0];
    assert_eq!((c.kind, c.subject.as_str()), (AnomalyKind::Latency, "read"));
    assert!(c.value > 15.0 * c.baseline, "{c:?}");
    assert!(
        c.explanation.starts_with("latency of read: p99 "),
        "{}",
        c.explanation
    );
    assert!(c.explanation.contains("500 calls/s"), "{}", c.explanation);
}

#[test]
fn syscall_errors_fire() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    let mut fired = Vec::new();
    for _ in 0..3 {
        node.packets("eth0", 1000)
            .tcp(1000, 1)
            .calls("read", 500, 4000, 250);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].kind, fired[0].subject.as_str()),
        (AnomalyKind::SyscallErrors, "read")
    );
    assert!(fired[0]
        .explanation
        .starts_with("syscall errors on read: 50.0% of calls failed"));
}

#[test]
fn traffic_drop_and_spike_with_top_talker() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    let talkers = vec![
        ("10.1.0.7".to_string(), 0.82),
        ("10.1.0.9".to_string(), 0.1),
    ];
    let mut fired = Vec::new();
    for _ in 0..3 {
        node.packets("eth0", 12_000)
            .tcp(1000, 1)
            .calls("read", 500, 4000, 0);
        node.top_talkers = talkers.clone();
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].kind, fired[0].subject.as_str()),
        (AnomalyKind::TrafficSpike, "eth0")
    );
    assert_eq!(
        fired[0].explanation,
        "traffic spike on eth0: 12,000 packets/s over the last 3 s (baseline 1,000/s, 12.0x); \
         82.0% of packets from 10.1.0.7"
    );
    node.top_talkers.clear();
    for _ in 0..5 {
        normal(&mut node);
        step(&mut mapek, &node.snapshot());
    }
    assert!(mapek.board().report().active.is_empty());

    let mut fired = Vec::new();
    for _ in 0..3 {
        node.packets("eth0", 0)
            .tcp(1000, 1)
            .calls("read", 500, 4000, 0);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].kind, fired[0].subject.as_str()),
        (AnomalyKind::TrafficDrop, "eth0")
    );
    assert_eq!(fired[0].severity, Severity::Critical);
}

#[test]
fn counter_reset_does_not_fire() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    node.rx_dropped("eth0", 5_000_000);
    node.drops("NETFILTER_DROP", 9_000_000);
    normal(&mut node);
    // Big cumulative counters on the way up would look like a fault if
    // they were rates: make them the baseline by starting over here.
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    warm_up(&mut mapek, &mut node, 30);

    // eth0 disappears and comes back with zeroed counters, the drop reason
    // map and the syscall histogram are reset too.
    node.interfaces
        .insert("eth0".into(), InterfaceStats::default());
    node.kernel_drops.insert("NETFILTER_DROP".into(), 0);
    node.syscalls.insert("read".into(), SyscallStats::default());
    for t in 0..30 {
        normal(&mut node);
        let changes = step(&mut mapek, &node.snapshot());
        assert!(changes.is_empty(), "t={t}: {changes:?}");
    }
}

#[test]
fn memory_stays_bounded_with_10000_devices() {
    let bounded = AnalyzerSettings {
        max_signals: 500,
        window: 8,
        ..settings()
    };
    let mut mapek = MapeK::new(bounded, AnomalyBoard::new());
    let mut node = Node::default();
    // 100 polls; each brings 100 new devices that live for 3 polls:
    // 10,000 distinct devices in all.
    for t in 0..100u64 {
        node.interfaces.retain(|name, _| {
            let born: u64 = name[3..].parse::<u64>().unwrap() / 100;
            t - born < 3
        });
        for i in 0..100 {
            node.packets(&format!("dev{}", t * 100 + i), 0);
        }
        let names: Vec<String> = node.interfaces.keys().cloned().collect();
        for name in names {
            node.packets(&name, 100);
        }
        step(&mut mapek, &node.snapshot());
        assert!(mapek.knowledge().signal_count() <= 500, "t={t}");
        assert!(mapek.knowledge().streak_count() <= 500, "t={t}");
    }
    assert!(mapek.knowledge().evictions() > 0);
    // All 10,000 at once, for a few polls.
    node.interfaces.clear();
    for _ in 0..3 {
        for i in 0..10_000 {
            node.packets(&format!("big{i}"), 100);
        }
        step(&mut mapek, &node.snapshot());
        assert!(mapek.knowledge().signal_count() <= 500);
    }
    assert!(mapek.knowledge().resolved().count() <= knowledge::RESOLVED_KEPT);
}

#[test]
fn reload_keeps_baselines_and_refuses_invalid_settings() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    let signals = mapek.knowledge().signal_count();
    let err = mapek
        .update_settings(AnalyzerSettings {
            fire_after: 0,
            ..settings()
        })
        .unwrap_err();
    assert!(err.contains("analyzer.fire_after"), "{err}");
    assert_eq!(mapek.settings().fire_after, 3);
    mapek
        .update_settings(AnalyzerSettings {
            fire_after: 1,
            ..settings()
        })
        .unwrap();
    assert_eq!(mapek.knowledge().signal_count(), signals);
    // Learned baselines still apply: one bad poll now fires.
    normal(&mut node);
    node.tcp(0, 200);
    let changes = step(&mut mapek, &node.snapshot());
    assert_eq!(changes.len(), 1, "{changes:?}");
}

/// Runs 30 normal seconds, then 4 seconds in which reads take `slow_ns`,
/// under the default `min_latency` (1 ms); returns what fired.
fn reads_slow_down_to(slow_ns: u64, base_ns: u64) -> Vec<StateChange> {
    let mut mapek = MapeK::new(
        AnalyzerSettings {
            min_latency: AnalyzerSettings::default().min_latency,
            ..settings()
        },
        AnomalyBoard::new(),
    );
    let mut node = Node::default();
    for _ in 0..30 {
        node.packets("eth0", 1000)
            .tcp(1000, 1)
            .calls("read", 500, base_ns, 0);
        assert!(step(&mut mapek, &node.snapshot()).is_empty());
    }
    let mut fired = Vec::new();
    for _ in 0..4 {
        node.packets("eth0", 1000)
            .tcp(1000, 1)
            .calls("read", 500, slow_ns, 0);
        fired.extend(step(&mut mapek, &node.snapshot()));
    }
    fired
}

#[test]
fn latency_rise_that_stays_under_min_latency_does_not_fire() {
    // 4 µs to 80 µs: 20x, sustained, and still far below 1 ms.
    let fired = reads_slow_down_to(80_000, 4_000);
    assert!(fired.is_empty(), "{fired:?}");
}

#[test]
fn latency_rise_past_min_latency_fires() {
    // 300 µs to 6 ms: 20x, past the 1 ms floor.
    let fired = reads_slow_down_to(6_000_000, 300_000);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].kind, fired[0].subject.as_str()),
        (AnomalyKind::Latency, "read")
    );
    assert!(fired[0].threshold >= 0.001, "{:?}", fired[0]);
}

#[test]
fn latency_resolves_when_calls_stop_with_a_finite_threshold() {
    let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
    let mut node = Node::default();
    warm_up(&mut mapek, &mut node, 30);
    for _ in 0..3 {
        node.packets("eth0", 1000)
            .tcp(1000, 1)
            .calls("read", 500, 4000 * 20, 0);
        step(&mut mapek, &node.snapshot());
    }
    assert_eq!(mapek.board().report().active.len(), 1);
    let mut resolved = Vec::new();
    for _ in 0..5 {
        // Too few reads to judge: counts as normal, learns nothing.
        node.packets("eth0", 1000)
            .tcp(1000, 1)
            .calls("read", 3, 4000 * 20, 0);
        resolved.extend(step(&mut mapek, &node.snapshot()));
    }
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    let c = &resolved[0];
    assert_eq!(
        (c.kind, c.state),
        (AnomalyKind::Latency, AnomalyState::Resolved)
    );
    assert!(c.threshold.is_finite() && c.threshold > c.baseline, "{c:?}");
    assert!(
        c.explanation.contains("over the last 1 s"),
        "{}",
        c.explanation
    );
}

mod log_event {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;

    type Event = (tracing::Level, BTreeMap<String, String>);

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Event>>>);

    #[derive(Default)]
    struct Fields(BTreeMap<String, String>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
        fn record_f64(&mut self, field: &Field, value: f64) {
            self.0.insert(field.name().into(), value.to_string());
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() != execute::LOG_TARGET {
                return;
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), fields.0));
        }
    }

    #[test]
    fn one_event_per_state_change_with_the_contract_fields() {
        let recorder = Recorder::default();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
            let mut node = Node::default();
            warm_up(&mut mapek, &mut node, 30);
            for _ in 0..3 {
                normal(&mut node);
                node.tcp(0, 99).drops("NETFILTER_DROP", 1240);
                step(&mut mapek, &node.snapshot());
            }
            for _ in 0..5 {
                normal(&mut node);
                step(&mut mapek, &node.snapshot());
            }
        });
        let events = recorder.0.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "{events:?}");
        let keys = [
            "baseline",
            "event",
            "explanation",
            "kind",
            "severity",
            "state",
            "subject",
            "threshold",
            "value",
        ];
        for ((level, fields), (want_level, state)) in events.iter().zip([
            (tracing::Level::WARN, "firing"),
            (tracing::Level::INFO, "resolved"),
        ]) {
            assert_eq!(*level, want_level);
            assert_eq!(fields.keys().map(String::as_str).collect::<Vec<_>>(), keys);
            assert_eq!(fields["event"], "anomaly");
            assert_eq!(fields["kind"], "packet_loss");
            assert_eq!(fields["subject"], "node");
            assert_eq!(fields["state"], state);
            assert_eq!(fields["severity"], "critical");
            assert!(fields["explanation"].contains("NETFILTER_DROP") || state == "resolved");
        }
    }
}

#[tokio::test]
async fn run_observes_published_snapshots_and_reloads_settings() {
    let quick = AnalyzerSettings {
        warmup: Duration::ZERO,
        fire_after: 1,
        resolve_after: 1,
        ..Default::default()
    };
    let board = AnomalyBoard::new();
    let mapek = MapeK::new(quick.clone(), board.clone());
    let mut node = Node::default();
    normal(&mut node);
    let (snapshots, snapshot_rx) = tokio::sync::watch::channel(Arc::new(node.snapshot()));
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(quick.clone());
    let task = tokio::spawn(mapek.run(snapshot_rx, settings_rx));

    // An invalid reload is refused and the loop keeps running.
    settings_tx
        .send(AnalyzerSettings {
            fire_after: 0,
            ..quick
        })
        .unwrap();
    for t in 0..40 {
        normal(&mut node);
        if t >= 20 {
            node.drops("NETFILTER_DROP", 5000);
        }
        snapshots.send(Arc::new(node.snapshot())).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if t >= 20 && !board.report().active.is_empty() {
            break;
        }
    }
    let report = board.report();
    assert_eq!(report.active.len(), 1, "{report:?}");
    assert_eq!(report.active[0].kind, AnomalyKind::PacketLoss);
    drop(snapshots);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops when the snapshot sender is dropped")
        .unwrap();
}

/// The loop's decisions are a function of the snapshots (and settings)
/// alone: two loops fed the same series decide the same, whatever ran
/// before or beside them, and executing (or not) changes nothing.
#[test]
fn observe_is_a_function_of_the_snapshots() {
    let mut series = Vec::new();
    let mut node = Node::default();
    for t in 0..60 {
        normal(&mut node);
        if (35..40).contains(&t) {
            node.tcp(0, 150).drops("NETFILTER_DROP", 900);
            node.top_talkers = vec![("10.1.0.7".into(), 0.9)];
        } else {
            node.top_talkers.clear();
        }
        series.push(node.snapshot());
    }
    let run = |execute: bool| {
        let mut mapek = MapeK::new(settings(), AnomalyBoard::new());
        let mut all = Vec::new();
        for snapshot in &series {
            let changes = mapek.observe(snapshot);
            if execute {
                mapek.execute(&changes);
            }
            all.push(changes);
        }
        all
    };
    let (a, b) = (run(true), run(false));
    assert_eq!(a, b);
    assert!(
        a.iter().flatten().count() >= 2,
        "a fault fired and resolved: {a:?}"
    );
}
