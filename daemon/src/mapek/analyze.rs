//! Analyze: judges each signal of an [`Observation`] against its learned
//! baseline and the absolute floors of [`AnalyzerSettings`], and explains
//! anomalies in sentences an operator can act on.
//!
//! Baselines learn only from normal intervals: while a signal is anomalous
//! its baseline is frozen, so a fault does not become the new normal while
//! it waits to fire. No signal is judged before it has `warmup` of history.

use std::fmt::Write as _;
use std::time::Duration;

use super::anomaly::{AnomalyKind, AnomalyState, Severity};
use super::knowledge::{Knowledge, Metric, Sample, Signal, SignalId};
use super::monitor::{DeviceRates, Observation};
use crate::config::AnalyzerSettings;
use crate::sources::drops::stats::OTHER_PEERS;

/// Subject of node-wide signals.
pub const NODE: &str = "node";

/// Samples a baseline needs, whatever the warm-up, before it is trusted.
const MIN_BASELINE_SAMPLES: u64 = 2;

/// The judgement of one (kind, subject) for one observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub kind: AnomalyKind,
    pub subject: String,
    pub anomalous: bool,
    /// This interval's value of the deciding signal.
    pub value: f64,
    /// The deciding signal's baseline (EWMA mean) before this interval.
    pub baseline: f64,
    /// The value the signal had to cross (reach, or for traffic_drop fall to).
    pub threshold: f64,
    pub severity: Severity,
    /// The signal the verdict rests on (for packet_loss on the node, the
    /// worst of retransmit ratio and kernel drop rate).
    pub signal: SignalId,
    /// For packet_loss on a device whose drops one peer dominates: that
    /// peer (the subject is then "<device> from <peer>").
    pub peer: Option<String>,
}

/// A peer dominates a device's loss when its packets are at least this
/// share of the drops of the device's peers.
pub const DOMINANT_PEER_SHARE: f64 = 0.8;

/// The subject of an active packet_loss of a peer of `device`, if any.
fn active_peer_subject(k: &Knowledge, device: &str) -> Option<String> {
    let prefix = format!("{device} from ");
    k.active
        .keys()
        .find(|(kind, subject)| *kind == AnomalyKind::PacketLoss && subject.starts_with(&prefix))
        .map(|(_, subject)| subject.clone())
}

/// The peer that dominates `rates`' drops: only when the packets of at
/// least two peers are known (packet events on) and one of them, not the
/// rolled-up rest, has [`DOMINANT_PEER_SHARE`] of the peers' drops. With a
/// single peer, naming it tells nothing the device does not.
pub fn dominant_peer(rates: &DeviceRates, unknown_as_loss: bool) -> Option<&str> {
    let senders = rates
        .peers
        .values()
        .filter(|p| p.packets_per_sec.is_some_and(|n| n > 0.0))
        .count();
    if senders < 2 {
        return None;
    }
    let total: f64 = rates.peers.values().map(|p| p.drops(unknown_as_loss)).sum();
    let (peer, top) = rates
        .peers
        .iter()
        .map(|(peer, p)| (peer.as_str(), p.drops(unknown_as_loss)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (total > 0.0 && top >= DOMINANT_PEER_SHARE * total && peer != OTHER_PEERS).then_some(peer)
}

/// How a signal departs from normal.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Anomalous at or above max(floor, mean + z·σ, mean · factor).
    Rise { floor: f64, factor: f64 },
    /// Anomalous at or below mean · ratio, for baselines of at least
    /// `min_baseline`.
    Fall { min_baseline: f64, ratio: f64 },
}

#[derive(Clone, Copy, Debug)]
struct Judgement {
    anomalous: bool,
    baseline: f64,
    threshold: f64,
    severity: Severity,
}

fn judge(
    signal: &Signal,
    value: f64,
    rule: Rule,
    s: &AnalyzerSettings,
    now: Duration,
) -> Judgement {
    let b = signal.baseline;
    let ready = b.samples >= MIN_BASELINE_SAMPLES && signal.age(now) >= s.warmup;
    match rule {
        Rule::Rise { floor, factor } => {
            let threshold = floor
                .max(b.mean + s.z_threshold * b.std_dev())
                .max(b.mean * factor);
            let anomalous = ready && value >= threshold && value > b.mean;
            let severity = if value >= threshold * s.critical_factor {
                Severity::Critical
            } else {
                Severity::Warning
            };
            Judgement {
                anomalous,
                baseline: b.mean,
                threshold,
                severity,
            }
        }
        Rule::Fall {
            min_baseline,
            ratio,
        } => {
            let threshold = b.mean * ratio;
            let anomalous = ready && b.mean >= min_baseline && b.mean > 0.0 && value <= threshold;
            let severity = if value <= threshold / s.critical_factor {
                Severity::Critical
            } else {
                Severity::Warning
            };
            Judgement {
                anomalous,
                baseline: b.mean,
                threshold,
                severity,
            }
        }
    }
}

/// Records `value` for `id`, judges it by every rule, and teaches the
/// baseline only when no rule found it anomalous.
fn assess<const N: usize>(
    k: &mut Knowledge,
    s: &AnalyzerSettings,
    obs: &Observation,
    id: &SignalId,
    value: f64,
    rules: [Rule; N],
) -> [Judgement; N] {
    let sample = Sample {
        value,
        interval: obs.interval,
    };
    let signal = k.record(id, sample, obs.uptime, obs.seq);
    let judgements = rules.map(|rule| judge(signal, value, rule, s, obs.uptime));
    if !judgements.iter().any(|j| j.anomalous) {
        k.learn(id, value, s.baseline_alpha);
    }
    judgements
}

fn verdict(kind: AnomalyKind, id: &SignalId, value: f64, j: Judgement) -> Verdict {
    Verdict {
        kind,
        subject: id.subject.clone(),
        anomalous: j.anomalous,
        value,
        baseline: j.baseline,
        threshold: j.threshold,
        severity: j.severity,
        signal: id.clone(),
        peer: None,
    }
}

/// A normal verdict for a signal that does not apply this interval (too few
/// calls to judge): it counts towards resolution, and nothing is learned.
fn not_applicable(
    kind: AnomalyKind,
    k: &Knowledge,
    s: &AnalyzerSettings,
    obs: &Observation,
    id: SignalId,
    value: f64,
    rule: Rule,
) -> Verdict {
    let threshold_of = |signal: &Signal| judge(signal, value, rule, s, obs.uptime);
    let j = match k.signal(&id) {
        Some(signal) => threshold_of(signal),
        None => threshold_of(&Signal {
            window: super::knowledge::Ring::new(1),
            baseline: Default::default(),
            first_seen: obs.uptime,
            last_seen_seq: obs.seq,
        }),
    };
    Verdict {
        anomalous: false,
        ..verdict(kind, &id, value, j)
    }
}

/// Judges every signal of `obs`, learning baselines as it goes. Returns one
/// verdict per (kind, subject) present in the observation.
pub fn evaluate(obs: &Observation, k: &mut Knowledge, s: &AnalyzerSettings) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(obs.devices.len() * 3 + obs.syscalls.len() * 2 + 1);
    let rise_loss = Rule::Rise {
        floor: s.min_drop_rate,
        factor: s.rise_factor,
    };
    let spike = Rule::Rise {
        floor: s.min_packets_per_second,
        factor: s.spike_factor,
    };
    let silence = Rule::Fall {
        min_baseline: s.min_packets_per_second,
        ratio: s.silence_ratio,
    };

    // Node traffic: only learned, for the "did traffic rise" correlation.
    let node_traffic = SignalId::new(Metric::NodePacketRate, NODE);
    assess(
        k,
        s,
        obs,
        &node_traffic,
        obs.node_packets_per_sec(),
        [spike],
    );

    for (device, rates) in &obs.devices {
        let id = SignalId::new(Metric::DevicePacketRate, device.as_str());
        let v = rates.packets_per_sec;
        let [up, down] = assess(k, s, obs, &id, v, [spike, silence]);
        verdicts.push(verdict(AnomalyKind::TrafficSpike, &id, v, up));
        verdicts.push(verdict(AnomalyKind::TrafficDrop, &id, v, down));

        let id = SignalId::new(Metric::DeviceLossRate, device.as_str());
        let v = rates.loss_per_sec(s.unknown_drops_are_loss());
        let [loss] = assess(k, s, obs, &id, v, [rise_loss]);
        let mut loss = verdict(AnomalyKind::PacketLoss, &id, v, loss);
        // Only an anomalous verdict moves to the peer's subject: one that
        // fired there resolves once the device's verdicts are its own again.
        if loss.anomalous {
            if let Some(peer) = dominant_peer(rates, s.unknown_drops_are_loss()) {
                loss.subject = format!("{device} from {peer}");
                loss.peer = Some(peer.to_owned());
            }
        } else if let Some(subject) = active_peer_subject(k, device) {
            // Normal again: the verdict counts towards resolving the
            // anomaly that fired on the peer's subject.
            loss.peer = subject
                .strip_prefix(&format!("{device} from "))
                .map(str::to_owned);
            loss.subject = subject;
        }
        verdicts.push(loss);
    }

    // Node packet loss: the worse of kernel drops and TCP retransmits.
    let drops_id = SignalId::new(Metric::KernelDropRate, NODE);
    let v = obs.kernel_drops_per_sec
        + if s.unknown_drops_are_loss() {
            obs.kernel_unknown_drops_per_sec
        } else {
            0.0
        };
    let [drops] = assess(k, s, obs, &drops_id, v, [rise_loss]);
    let mut node_loss = verdict(AnomalyKind::PacketLoss, &drops_id, v, drops);
    if let Some(tcp) = &obs.tcp {
        if let (Some(ratio), true) = (
            tcp.retransmit_ratio,
            tcp.segments_out_per_sec >= s.min_segments_per_second,
        ) {
            let id = SignalId::new(Metric::RetransmitRatio, NODE);
            let rule = Rule::Rise {
                floor: s.min_retransmit_ratio,
                factor: s.rise_factor,
            };
            let [j] = assess(k, s, obs, &id, ratio, [rule]);
            // Retransmits are the end-to-end symptom: they lead the verdict
            // unless only the kernel drops are anomalous.
            let retrans = verdict(AnomalyKind::PacketLoss, &id, ratio, j);
            if retrans.anomalous || !node_loss.anomalous {
                node_loss = retrans;
            }
        }
    }
    verdicts.push(node_loss);

    for (name, rates) in &obs.syscalls {
        let latency_id = SignalId::new(Metric::SyscallP99, name.as_str());
        let errors_id = SignalId::new(Metric::SyscallErrorRatio, name.as_str());
        let latency = Rule::Rise {
            floor: s.min_latency.as_secs_f64(),
            factor: s.latency_factor,
        };
        let errors = Rule::Rise {
            floor: s.min_error_ratio,
            factor: s.rise_factor,
        };
        let ratio = rates.error_ratio;
        match rates.p99_seconds {
            Some(p99) if rates.calls >= s.min_calls => {
                let [j] = assess(k, s, obs, &latency_id, p99, [latency]);
                verdicts.push(verdict(AnomalyKind::Latency, &latency_id, p99, j));
                let [j] = assess(k, s, obs, &errors_id, ratio, [errors]);
                verdicts.push(verdict(AnomalyKind::SyscallErrors, &errors_id, ratio, j));
            }
            _ => {
                let p99 = rates.p99_seconds.unwrap_or(0.0);
                let kind = AnomalyKind::Latency;
                verdicts.push(not_applicable(kind, k, s, obs, latency_id, p99, latency));
                let kind = AnomalyKind::SyscallErrors;
                verdicts.push(not_applicable(kind, k, s, obs, errors_id, ratio, errors));
            }
        }
    }
    verdicts
}

/// Correlation inputs of an explanation.
pub struct Context<'a> {
    pub obs: &'a Observation,
    pub knowledge: &'a Knowledge,
    /// `analyzer.unknown_drop_reasons = "loss"`.
    pub unknown_as_loss: bool,
}

/// The value of `verdict`'s signal averaged over its newest `span` samples,
/// and a sentence explaining it (with correlated signals when firing).
pub fn explain(
    verdict: &Verdict,
    state: AnomalyState,
    span: usize,
    ctx: &Context<'_>,
) -> (f64, String) {
    let (value, period) = ctx
        .knowledge
        .signal(&verdict.signal)
        // A signal without a sample this time (not applicable) has only
        // stale samples: explain by this interval's value instead.
        .filter(|s| s.last_seen_seq == ctx.obs.seq)
        .map(|s| s.recent(span))
        .filter(|(_, period)| !period.is_zero())
        .unwrap_or((verdict.value, ctx.obs.interval));
    let b = verdict.baseline;
    let subject = &verdict.subject;
    let resolved = if state == AnomalyState::Resolved {
        " resolved"
    } else {
        ""
    };
    let over = fmt_period(period);
    let mut text = match verdict.signal.metric {
        Metric::RetransmitRatio => format!(
            "packet loss on {subject}{resolved}: {} of TCP segments retransmitted over the last {over} (baseline {})",
            fmt_pct(value),
            fmt_pct(b)
        ),
        Metric::KernelDropRate => format!(
            "packet loss on {subject}{resolved}: kernel dropped {} packets/s over the last {over} (baseline {}/s)",
            fmt_rate(value),
            fmt_rate(b)
        ),
        Metric::DeviceLossRate => {
            let from_peer = verdict
                .peer
                .as_deref()
                .and_then(|peer| peer_sentence(verdict, peer, ctx))
                .unwrap_or_default();
            format!(
                "packet loss on {subject}{resolved}: {from_peer}{} packets/s dropped or errored on the device over the last {over} (baseline {}/s)",
                fmt_rate(value),
                fmt_rate(b)
            )
        }
        Metric::DevicePacketRate | Metric::NodePacketRate => {
            let what = if verdict.kind == AnomalyKind::TrafficDrop {
                "traffic drop"
            } else {
                "traffic spike"
            };
            format!(
                "{what} on {subject}{resolved}: {} packets/s over the last {over} (baseline {}/s{})",
                fmt_rate(value),
                fmt_rate(b),
                fmt_times(value, b)
            )
        }
        Metric::SyscallP99 => format!(
            "latency of {subject}{resolved}: p99 {} over the last {over} (baseline {}{})",
            fmt_latency(value),
            fmt_latency(b),
            fmt_times(value, b)
        ),
        Metric::SyscallErrorRatio => format!(
            "syscall errors on {subject}{resolved}: {} of calls failed over the last {over} (baseline {})",
            fmt_pct(value),
            fmt_pct(b)
        ),
    };
    if state == AnomalyState::Firing {
        correlate(&mut text, verdict, ctx);
    }
    (value, text)
}

/// "9.8% of its packets dropped (NETFILTER_DROP), other peers 0%; " for
/// the peer that dominates the device's drops, from this interval.
fn peer_sentence(verdict: &Verdict, peer: &str, ctx: &Context<'_>) -> Option<String> {
    let rates = ctx.obs.devices.get(&verdict.signal.subject)?;
    let u = ctx.unknown_as_loss;
    let p = rates.peers.get(peer)?;
    let ratio = p.loss_ratio(u)?;
    let reason = p
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let (drops, packets) = rates
        .peers
        .iter()
        .filter(|(name, _)| name.as_str() != peer)
        .fold((0.0, 0.0), |(d, n), (_, o)| {
            (d + o.drops(u), n + o.packets_per_sec.unwrap_or(0.0))
        });
    let others = if packets > 0.0 {
        (drops / packets).min(1.0)
    } else {
        0.0
    };
    Some(format!(
        "{} of its packets dropped{reason}, other peers {}; ",
        fmt_pct(ratio),
        fmt_pct(others)
    ))
}

/// The peers of a device's packet loss, most drops first: at most
/// [`PEERS_SHOWN`], the rest summed as `other` (what `/api/v1/anomalies`
/// shows beside the anomaly).
pub fn peer_view(verdict: &Verdict, ctx: &Context<'_>) -> Vec<PeerLoss> {
    if verdict.signal.metric != Metric::DeviceLossRate {
        return Vec::new();
    }
    let Some(rates) = ctx.obs.devices.get(&verdict.signal.subject) else {
        return Vec::new();
    };
    let u = ctx.unknown_as_loss;
    let mut peers: Vec<PeerLoss> = rates
        .peers
        .iter()
        .map(|(peer, p)| PeerLoss {
            peer: peer.clone(),
            packets_per_sec: p.packets_per_sec,
            drops_per_sec: p.drops(u),
            loss_ratio: p.loss_ratio(u),
            reason: p.reason.clone(),
        })
        .collect();
    peers.sort_by(|a, b| {
        b.drops_per_sec
            .total_cmp(&a.drops_per_sec)
            .then(a.peer.cmp(&b.peer))
    });
    if peers.len() > PEERS_SHOWN {
        let rest = peers.split_off(PEERS_SHOWN);
        let packets: Option<f64> = rest.iter().map(|p| p.packets_per_sec).sum();
        let drops: f64 = rest.iter().map(|p| p.drops_per_sec).sum();
        peers.push(PeerLoss {
            peer: OTHER_PEERS.to_owned(),
            packets_per_sec: packets,
            drops_per_sec: drops,
            loss_ratio: packets.filter(|n| *n > 0.0).map(|n| (drops / n).min(1.0)),
            reason: None,
        });
    }
    peers
}

/// Peers of a device shown one by one beside its packet loss.
pub const PEERS_SHOWN: usize = 8;

/// One peer of a device's packet loss, over the interval it fired in.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerLoss {
    pub peer: String,
    /// Packets it sent in on the device; `null` without packet events.
    pub packets_per_sec: Option<f64>,
    /// Kernel drops of its packets that count as loss.
    pub drops_per_sec: f64,
    /// drops / packets; `null` when its packets are not known.
    pub loss_ratio: Option<f64>,
    /// The loss reason that dropped most of them.
    pub reason: Option<String>,
}

/// Appends what else moved: interface counters, the dominant kernel drop
/// reason, retransmits, whether traffic rose, top talkers, syscall context.
fn correlate(text: &mut String, verdict: &Verdict, ctx: &Context<'_>) {
    let obs = ctx.obs;
    let unknown_as_loss = ctx.unknown_as_loss;
    // The device, syscall or node the signal is of (the subject may add
    // the peer).
    let subject = verdict.signal.subject.as_str();
    match verdict.kind {
        AnomalyKind::PacketLoss => {
            if let Some(dev) = obs.devices.get(subject) {
                let parts: Vec<String> = [
                    ("rx_dropped", dev.rx_dropped_per_sec),
                    ("rx_errors", dev.rx_errors_per_sec),
                    ("tx_dropped", dev.tx_dropped_per_sec),
                    ("tx_errors", dev.tx_errors_per_sec),
                    ("kernel drops", dev.kernel_drops(unknown_as_loss)),
                ]
                .iter()
                .filter(|(_, r)| *r > 0.0)
                .map(|(n, r)| format!("{n} {}/s", fmt_rate(*r)))
                .collect();
                if !parts.is_empty() {
                    let _ = write!(text, "; {}", parts.join(", "));
                }
            }
            if let Some((reason, rate)) = obs.dominant_drop_reason(unknown_as_loss) {
                let _ = write!(
                    text,
                    "; kernel drops dominated by {reason} ({}/s)",
                    fmt_rate(rate)
                );
            }
            if verdict.signal.metric != Metric::RetransmitRatio {
                if let Some(ratio) = obs.tcp.as_ref().and_then(|t| t.retransmit_ratio) {
                    if ratio > 0.0 {
                        let _ = write!(text, "; {} of TCP segments retransmitted", fmt_pct(ratio));
                    }
                }
            }
            traffic_trend(text, subject, ctx);
        }
        AnomalyKind::TrafficSpike => {
            if let Some((peer, share)) = ctx.obs.top_talkers.first() {
                let _ = write!(text, "; {} of packets from {peer}", fmt_pct(*share));
            }
        }
        AnomalyKind::Latency | AnomalyKind::SyscallErrors => {
            if let Some(rates) = obs.syscalls.get(subject) {
                if let Some(p50) = rates.p50_seconds {
                    let _ = write!(text, "; p50 {}", fmt_latency(p50));
                }
                let _ = write!(text, "; {} calls/s", fmt_rate(rates.calls_per_sec));
            }
        }
        AnomalyKind::TrafficDrop => {}
    }
}

/// "; traffic rose at the same time (2.4x baseline)" for the subject's
/// traffic (a device's, or the node's).
fn traffic_trend(text: &mut String, subject: &str, ctx: &Context<'_>) {
    let (id, now) = match ctx.obs.devices.get(subject) {
        Some(d) => (
            SignalId::new(Metric::DevicePacketRate, subject),
            d.packets_per_sec,
        ),
        None => (
            SignalId::new(Metric::NodePacketRate, NODE),
            ctx.obs.node_packets_per_sec(),
        ),
    };
    let Some(base) = ctx.knowledge.signal(&id).map(|s| s.baseline.mean) else {
        return;
    };
    if base <= 0.0 {
        return;
    }
    let x = now / base;
    let trend = if x >= 1.5 {
        "traffic rose at the same time"
    } else if x <= 2.0 / 3.0 {
        "traffic fell at the same time"
    } else {
        "traffic steady"
    };
    let _ = write!(text, "; {trend} ({x:.1}x baseline)");
}

/// ", 20.0x" when both are positive.
fn fmt_times(value: f64, baseline: f64) -> String {
    if baseline > 0.0 && value > 0.0 {
        format!(", {:.1}x", value / baseline)
    } else {
        String::new()
    }
}

/// A ratio as a percentage: "9.8%", "0.05%".
pub fn fmt_pct(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p != 0.0 && p.abs() < 0.1 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A rate: "1,240", "12.5", "0.3".
pub fn fmt_rate(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.abs() < 100.0 && x.fract().abs() > 1e-9 {
        return format!("{x:.1}");
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in seconds: "850 ns", "12.3 µs", "4.1 ms", "1.20 s".
pub fn fmt_latency(secs: f64) -> String {
    if secs < 1e-6 {
        format!("{:.0} ns", secs * 1e9)
    } else if secs < 1e-3 {
        format!("{:.1} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// A period: "5 s", "2.5 s", "500 ms".
pub fn fmt_period(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else if (secs - secs.round()).abs() < 0.05 {
        format!("{:.0} s", secs)
    } else {
        format!("{secs:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(fmt_rate(1240.0), "1,240");
        assert_eq!(fmt_rate(1_234_567.4), "1,234,567");
        assert_eq!(fmt_rate(12.5), "12.5");
        assert_eq!(fmt_rate(3.0), "3");
        assert_eq!(fmt_pct(0.098), "9.8%");
        assert_eq!(fmt_pct(0.001), "0.1%");
        assert_eq!(fmt_pct(0.0005), "0.05%");
        assert_eq!(fmt_latency(0.0021), "2.1 ms");
        assert_eq!(fmt_latency(0.000105), "105.0 µs");
        assert_eq!(fmt_period(Duration::from_secs(5)), "5 s");
        assert_eq!(fmt_period(Duration::from_millis(500)), "500 ms");
    }
}
