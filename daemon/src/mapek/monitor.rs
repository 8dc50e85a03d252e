//! Monitor: turns two consecutive cumulative [`Snapshot`]s into one
//! [`Observation`] of per-second rates over the interval between them.
//!
//! A counter that went down was reset (an interface disappeared and came
//! back): the affected device, drop reason or syscall is left out of this
//! one observation rather than turned into a huge or negative rate.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::sources::drops::classes::{classify, counts_as_loss, DropClass};
use crate::sources::drops::{DropStats, TcpStats};
use crate::sources::syscalls::{SyscallStats, LATENCY_BUCKETS};
use crate::sources::xdp::InterfaceStats;
use crate::sources::Snapshot;

/// Rates of one device over the interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceRates {
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
    pub rx_dropped_per_sec: f64,
    pub rx_errors_per_sec: f64,
    pub tx_dropped_per_sec: f64,
    pub tx_errors_per_sec: f64,
    /// Kernel drops (`skb:kfree_skb`) of skbs on this device whose reason
    /// is of the loss class.
    pub kernel_drops_per_sec: f64,
    /// Kernel drops on this device whose reason the class table does not
    /// know (loss or not by `analyzer.unknown_drop_reasons`).
    pub kernel_unknown_drops_per_sec: f64,
    /// The peers that sent packets in on this device or whose packets it
    /// dropped in the interval, by source address (`other`: the rest).
    pub peers: BTreeMap<String, PeerRates>,
}

/// One peer of one device over the interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerRates {
    /// Packets it sent in on the device (sampled packet events x sample
    /// rate); `None` without packet events.
    pub packets_per_sec: Option<f64>,
    /// Kernel drops of its packets of the loss class.
    pub drops_per_sec: f64,
    /// Kernel drops of its packets of unknown reasons.
    pub unknown_drops_per_sec: f64,
    /// The loss reason that dropped most of its packets, if any did.
    pub reason: Option<String>,
}

impl PeerRates {
    /// Its drops that count as loss.
    pub fn drops(&self, unknown_as_loss: bool) -> f64 {
        self.drops_per_sec
            + if unknown_as_loss {
                self.unknown_drops_per_sec
            } else {
                0.0
            }
    }

    /// Dropped / sent, when the packets it sent are known and some were.
    pub fn loss_ratio(&self, unknown_as_loss: bool) -> Option<f64> {
        self.packets_per_sec
            .filter(|p| *p > 0.0)
            .map(|p| (self.drops(unknown_as_loss) / p).min(1.0))
    }
}

impl DeviceRates {
    /// Dropped and errored packets per second, both directions, at the
    /// interface and further up the stack (kernel drops of the loss class
    /// on this device, and of unknown reasons when `unknown_as_loss`).
    pub fn loss_per_sec(&self, unknown_as_loss: bool) -> f64 {
        self.rx_dropped_per_sec
            + self.rx_errors_per_sec
            + self.tx_dropped_per_sec
            + self.tx_errors_per_sec
            + self.kernel_drops(unknown_as_loss)
    }

    /// Kernel drops on this device that count as loss.
    pub fn kernel_drops(&self, unknown_as_loss: bool) -> f64 {
        self.kernel_drops_per_sec
            + if unknown_as_loss {
                self.kernel_unknown_drops_per_sec
            } else {
                0.0
            }
    }
}

/// TCP over the interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpRates {
    pub segments_out_per_sec: f64,
    pub retransmits_per_sec: f64,
    /// Retransmitted / sent segments; `None` when no segment was sent.
    pub retransmit_ratio: Option<f64>,
}

/// One syscall over the interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyscallRates {
    /// Calls completed in the interval.
    pub calls: u64,
    pub calls_per_sec: f64,
    /// Failed calls / calls; 0 without calls.
    pub error_ratio: f64,
    /// Latency quantiles in seconds, interpolated inside the log2 buckets;
    /// `None` without calls.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// One interval's worth of rates.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Sequence number of the newer snapshot.
    pub seq: u64,
    /// Monotonic time of the newer snapshot.
    pub uptime: Duration,
    /// Length of the interval.
    pub interval: Duration,
    /// Wall-clock time of the newer snapshot (now when the snapshot has none).
    pub taken_at: SystemTime,
    /// The first observation since the loop (or the collector) started.
    pub first: bool,
    /// Devices present in both snapshots without a counter reset.
    pub devices: BTreeMap<String, DeviceRates>,
    /// Devices left out of this observation because a counter went down.
    pub reset_devices: Vec<String>,
    /// Kernel drops per second of the loss class, except those attributed
    /// to a device in `devices` (they are in its `kernel_drops_per_sec`).
    pub kernel_drops_per_sec: f64,
    /// Likewise, of reasons the class table does not know.
    pub kernel_unknown_drops_per_sec: f64,
    /// Kernel drops per second by reason (reasons that moved only), every
    /// class.
    pub kernel_drop_reasons: BTreeMap<String, f64>,
    /// `None` when the TCP counters went down.
    pub tcp: Option<TcpRates>,
    /// Syscalls present in both snapshots without a counter reset.
    pub syscalls: BTreeMap<String, SyscallRates>,
    /// Peers and their share (0..1) of the node's sampled packets over the
    /// top-talkers window, largest first, as of the newer snapshot; empty
    /// without packet events.
    pub top_talkers: Vec<(String, f64)>,
}

impl Observation {
    /// Packets per second over all observed devices.
    pub fn node_packets_per_sec(&self) -> f64 {
        self.devices.values().map(|d| d.packets_per_sec).sum()
    }

    /// The kernel drop reason that counts as loss with the highest rate,
    /// if any moved.
    pub fn dominant_drop_reason(&self, unknown_as_loss: bool) -> Option<(&str, f64)> {
        self.kernel_drop_reasons
            .iter()
            .filter(|(n, r)| **r > 0.0 && counts_as_loss(classify(n), unknown_as_loss))
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(n, r)| (n.as_str(), *r))
    }
}

/// Keeps the previous snapshot and turns each new one into an observation.
#[derive(Debug, Default)]
pub struct Monitor {
    previous: Option<Snapshot>,
    observed_since_start: bool,
}

impl Monitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns `None` for the first snapshot and whenever the collector
    /// restarted (sequence or uptime did not move forward); the next
    /// observation after that is marked `first`.
    pub fn observe(&mut self, current: &Snapshot) -> Option<Observation> {
        let previous = self.previous.replace(current.clone());
        let previous = previous?;
        if current.seq <= previous.seq || current.uptime <= previous.uptime {
            self.observed_since_start = false;
            return None;
        }
        let first = !self.observed_since_start;
        self.observed_since_start = true;
        Some(observe(&previous, current, first))
    }
}

/// The rates between `previous` and `current`. `current` must be later.
pub fn observe(previous: &Snapshot, current: &Snapshot, first: bool) -> Observation {
    let interval = current.uptime.saturating_sub(previous.uptime);
    let secs = interval.as_secs_f64().max(1e-9);
    // A section that is absent (its source is off) reads as empty.
    let no_interfaces = BTreeMap::new();
    let [prev_interfaces, cur_interfaces] =
        [previous, current].map(|s| s.xdp.as_ref().map_or(&no_interfaces, |x| &x.interfaces));
    let no_drops = DropStats::default();
    let [prev_drops, cur_drops] =
        [previous, current].map(|s| s.drops.as_ref().unwrap_or(&no_drops));
    let no_syscalls = BTreeMap::new();
    let [prev_syscalls, cur_syscalls] =
        [previous, current].map(|s| s.syscalls.as_ref().map_or(&no_syscalls, |t| &t.syscalls));

    let mut devices = BTreeMap::new();
    let mut reset_devices = Vec::new();
    for (name, cur) in cur_interfaces {
        let Some(prev) = prev_interfaces.get(name) else {
            continue;
        };
        match device_rates(prev, cur, secs) {
            Some(mut rates) => {
                // Attributed kernel drops by class; a reset leaves them at 0
                // this once.
                let total = |d: &DropStats, class: DropClass| -> u64 {
                    d.device_drops.get(name).map_or(0, |r| {
                        r.iter()
                            .filter(|(reason, _)| classify(reason) == class)
                            .map(|(_, n)| n)
                            .sum()
                    })
                };
                let rate = |class| {
                    total(cur_drops, class)
                        .checked_sub(total(prev_drops, class))
                        .map_or(0.0, |d| d as f64 / secs)
                };
                rates.kernel_drops_per_sec = rate(DropClass::Loss);
                rates.kernel_unknown_drops_per_sec = rate(DropClass::Unknown);
                rates.peers = peer_rates(previous, current, name, secs);
                devices.insert(name.clone(), rates);
            }
            None => reset_devices.push(name.clone()),
        }
    }

    let mut kernel_drop_reasons = BTreeMap::new();
    let (mut loss_drops, mut unknown_drops) = (0u64, 0u64);
    for (reason, &cur) in &cur_drops.kernel_drops {
        // A reason appears with its first drop: a missing entry counts as 0.
        let prev = prev_drops.kernel_drops.get(reason).copied().unwrap_or(0);
        if let Some(d) = cur.checked_sub(prev) {
            match classify(reason) {
                DropClass::Loss => loss_drops += d,
                DropClass::Unknown => unknown_drops += d,
                DropClass::Local => {}
            }
            if d > 0 {
                kernel_drop_reasons.insert(reason.clone(), d as f64 / secs);
            }
        }
    }

    let attributed: f64 = devices.values().map(|d| d.kernel_drops_per_sec).sum();
    let attributed_unknown: f64 = devices
        .values()
        .map(|d| d.kernel_unknown_drops_per_sec)
        .sum();

    let mut syscalls = BTreeMap::new();
    for (name, cur) in cur_syscalls {
        let prev = prev_syscalls.get(name);
        let empty = SyscallStats::default();
        if let Some(rates) = syscall_rates(prev.unwrap_or(&empty), cur, secs) {
            syscalls.insert(name.clone(), rates);
        }
    }

    Observation {
        seq: current.seq,
        uptime: current.uptime,
        interval,
        taken_at: current.taken_at.unwrap_or_else(SystemTime::now),
        first,
        devices,
        reset_devices,
        // Drops attributed to an observed device are that device's loss;
        // the node's signal keeps the rest, so one fault raises one anomaly.
        kernel_drops_per_sec: (loss_drops as f64 / secs - attributed).max(0.0),
        kernel_unknown_drops_per_sec: (unknown_drops as f64 / secs - attributed_unknown).max(0.0),
        kernel_drop_reasons,
        tcp: tcp_rates(&prev_drops.tcp, &cur_drops.tcp, secs),
        syscalls,
        top_talkers: current
            .events
            .as_ref()
            .map(|e| {
                e.top_talkers
                    .peers
                    .iter()
                    .map(|p| (p.peer.clone(), p.share))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The peers of `device` over the interval: drops by class from the drop
/// tracer, packets from packet events. A counter that went down (a reset)
/// leaves that peer's value out this once.
fn peer_rates(
    previous: &Snapshot,
    current: &Snapshot,
    device: &str,
    secs: f64,
) -> BTreeMap<String, PeerRates> {
    type Drops = BTreeMap<String, BTreeMap<String, u64>>;
    let no_peers = Drops::new();
    let drops_of = |s: &'_ Snapshot| -> Drops {
        s.drops
            .as_ref()
            .and_then(|d| d.peer_drops.get(device))
            .unwrap_or(&no_peers)
            .clone()
    };
    let packets_of = |s: &Snapshot| -> Option<BTreeMap<String, u64>> {
        s.events
            .as_ref()
            .map(|e| e.peer_packets.get(device).cloned().unwrap_or_default())
    };
    let mut out: BTreeMap<String, PeerRates> = BTreeMap::new();
    let (prev_drops, cur_drops) = (drops_of(previous), drops_of(current));
    for (peer, reasons) in &cur_drops {
        let mut rates = PeerRates::default();
        let mut top: Option<(&str, u64)> = None;
        for (reason, &n) in reasons {
            let before = prev_drops
                .get(peer)
                .and_then(|r| r.get(reason))
                .copied()
                .unwrap_or(0);
            let Some(d) = n.checked_sub(before).filter(|d| *d > 0) else {
                continue;
            };
            match classify(reason) {
                DropClass::Loss => {
                    rates.drops_per_sec += d as f64 / secs;
                    if top.is_none_or(|(_, t)| d > t) {
                        top = Some((reason.as_str(), d));
                    }
                }
                DropClass::Unknown => rates.unknown_drops_per_sec += d as f64 / secs,
                DropClass::Local => {}
            }
        }
        rates.reason = top.map(|(r, _)| r.to_owned());
        if rates.drops_per_sec > 0.0 || rates.unknown_drops_per_sec > 0.0 {
            out.insert(peer.clone(), rates);
        }
    }
    if let (Some(prev), Some(cur)) = (packets_of(previous), packets_of(current)) {
        let scale = current
            .events
            .as_ref()
            .map_or(1, |e| e.top_talkers.sample_rate.max(1));
        for (peer, &n) in &cur {
            let before = prev.get(peer).copied().unwrap_or(0);
            if let Some(d) = n.checked_sub(before).filter(|d| *d > 0) {
                out.entry(peer.clone()).or_default().packets_per_sec =
                    Some((d * u64::from(scale)) as f64 / secs);
            }
        }
        // Packet events are on: a peer with drops and no sampled packet
        // sent none that were sampled.
        for rates in out.values_mut() {
            rates.packets_per_sec.get_or_insert(0.0);
        }
    }
    out
}

fn device_rates(prev: &InterfaceStats, cur: &InterfaceStats, secs: f64) -> Option<DeviceRates> {
    let packets = cur.total_packets().checked_sub(prev.total_packets())?;
    let bytes = cur.total_bytes().checked_sub(prev.total_bytes())?;
    // Any single slot going down is a reset too, even if the total grew.
    for (c, p) in cur
        .packets
        .iter()
        .flatten()
        .zip(prev.packets.iter().flatten())
    {
        c.checked_sub(*p)?;
    }
    let rate = |c: u64, p: u64| c.checked_sub(p).map(|d| d as f64 / secs);
    Some(DeviceRates {
        packets_per_sec: packets as f64 / secs,
        bytes_per_sec: bytes as f64 / secs,
        rx_dropped_per_sec: rate(cur.rx_dropped, prev.rx_dropped)?,
        rx_errors_per_sec: rate(cur.rx_errors, prev.rx_errors)?,
        tx_dropped_per_sec: rate(cur.tx_dropped, prev.tx_dropped)?,
        tx_errors_per_sec: rate(cur.tx_errors, prev.tx_errors)?,
        ..Default::default()
    })
}

fn tcp_rates(prev: &TcpStats, cur: &TcpStats, secs: f64) -> Option<TcpRates> {
    let segments = cur.segments_out.checked_sub(prev.segments_out)?;
    // RetransSegs (/proc/net/snmp) counts against OutSegs from the same
    // source; fall back to the tracepoint when the kernel gave none.
    let retrans = if cur.retrans_segs > 0 || prev.retrans_segs > 0 {
        cur.retrans_segs.checked_sub(prev.retrans_segs)?
    } else {
        let c = cur.retransmits_ipv4 + cur.retransmits_ipv6;
        let p = prev.retransmits_ipv4 + prev.retransmits_ipv6;
        c.checked_sub(p)?
    };
    Some(TcpRates {
        segments_out_per_sec: segments as f64 / secs,
        retransmits_per_sec: retrans as f64 / secs,
        retransmit_ratio: (segments > 0).then(|| retrans as f64 / segments as f64),
    })
}

fn syscall_rates(prev: &SyscallStats, cur: &SyscallStats, secs: f64) -> Option<SyscallRates> {
    let calls = cur.count.checked_sub(prev.count)?;
    let errors = cur.errors.checked_sub(prev.errors)?;
    let mut delta = [0u64; LATENCY_BUCKETS];
    for (i, d) in delta.iter_mut().enumerate() {
        *d = cur.buckets[i].checked_sub(prev.buckets[i])?;
    }
    Some(SyscallRates {
        calls,
        calls_per_sec: calls as f64 / secs,
        error_ratio: if calls > 0 {
            (errors as f64 / calls as f64).min(1.0)
        } else {
            0.0
        },
        p50_seconds: quantile_ns(&delta, 0.50).map(|ns| ns * 1e-9),
        p99_seconds: quantile_ns(&delta, 0.99).map(|ns| ns * 1e-9),
    })
}

/// The `q` quantile in nanoseconds of a log2 histogram (bucket `i` holds
/// `(2^(i-31), 2^(i-30)]` s, bucket 0 up to 2^-30 s: the kernel's
/// `bucket_index`), interpolating linearly inside the bucket that holds it.
/// `None` for an empty histogram.
pub fn quantile_ns(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let target = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (below + n) as f64 >= target {
            let hi = upper_ns(i);
            let lo = if i == 0 { 0.0 } else { hi / 2.0 };
            let fraction = ((target - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lo + fraction * (hi - lo));
        }
        below += n;
    }
    // Rounding: the quantile is in the last non-empty bucket.
    let last = buckets.iter().rposition(|&n| n > 0)?;
    Some(upper_ns(last))
}

/// Upper bound of kernel bucket `i` in nanoseconds: `2^(i-30)` s.
fn upper_ns(i: usize) -> f64 {
    telemetryd_common::syscalls::bucket_upper_seconds(i) * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(seq: u64, packets: u64, rx_dropped: u64) -> Snapshot {
        let mut dev = InterfaceStats::default();
        dev.packets[0][0] = packets;
        dev.bytes[0][0] = packets * 100;
        dev.rx_dropped = rx_dropped;
        let mut xdp = crate::sources::xdp::XdpStats::default();
        xdp.interfaces.insert("eth0".into(), dev);
        Snapshot {
            seq,
            uptime: Duration::from_secs(seq),
            xdp: Some(xdp),
            drops: Some(DropStats::default()),
            ..Default::default()
        }
    }

    #[test]
    fn rates_per_second() {
        let mut a = snap(1, 1000, 0);
        let mut b = snap(3, 3000, 20);
        let (ad, bd) = (a.drops.as_mut().unwrap(), b.drops.as_mut().unwrap());
        ad.tcp.segments_out = 1000;
        bd.tcp.segments_out = 2000;
        bd.tcp.retrans_segs = 50;
        ad.kernel_drops.insert("NETFILTER_DROP".into(), 10);
        bd.kernel_drops.insert("NETFILTER_DROP".into(), 110);
        bd.kernel_drops.insert("NO_SOCKET".into(), 4);
        let o = observe(&a, &b, false);
        assert_eq!(o.interval, Duration::from_secs(2));
        let d = &o.devices["eth0"];
        assert_eq!(d.packets_per_sec, 1000.0);
        assert_eq!(d.bytes_per_sec, 100_000.0);
        assert_eq!(d.loss_per_sec(true), 10.0);
        // NO_SOCKET is of the local class: not loss.
        assert_eq!(o.kernel_drops_per_sec, 50.0);
        assert_eq!(o.kernel_drop_reasons["NO_SOCKET"], 2.0);
        assert_eq!(o.dominant_drop_reason(true), Some(("NETFILTER_DROP", 50.0)));
        let tcp = o.tcp.unwrap();
        assert_eq!(tcp.retransmit_ratio, Some(0.05));
    }

    #[test]
    fn decrease_is_a_reset_not_a_rate() {
        let a = snap(1, 1_000_000, 500);
        let b = snap(2, 10, 0);
        let o = observe(&a, &b, false);
        assert!(o.devices.is_empty());
        assert_eq!(o.reset_devices, vec!["eth0".to_string()]);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut b = [0u64; LATENCY_BUCKETS];
        b[20] = 100; // (2^-11, 2^-10] s = (488.28125, 976.5625] us
        assert_eq!(quantile_ns(&b, 0.5), Some(732_421.875));
        b[30] = 1; // one slow call
        let p99 = quantile_ns(&b, 0.99).unwrap();
        assert!((488_281.25..=976_562.5).contains(&p99), "{p99}");
        // The buckets are the kernel's: a call of 12 ms is counted in the
        // bucket whose upper bound is 2^-6 s (15.6 ms), and its quantiles
        // lie in (7.8 ms, 15.6 ms].
        let mut b = [0u64; LATENCY_BUCKETS];
        b[telemetryd_common::syscalls::bucket_index(12_000_000)] = 100;
        for q in [0.01, 0.5, 0.99] {
            let ns = quantile_ns(&b, q).unwrap();
            assert!((7_812_500.0..=15_625_000.0).contains(&ns), "{q}: {ns}");
        }
        assert_eq!(quantile_ns(&[0; LATENCY_BUCKETS], 0.5), None);
    }

    #[test]
    fn monitor_skips_first_snapshot_and_restarts() {
        let mut m = Monitor::new();
        assert!(m.observe(&snap(1, 0, 0)).is_none());
        assert!(m.observe(&snap(2, 10, 0)).unwrap().first);
        assert!(!m.observe(&snap(3, 20, 0)).unwrap().first);
        assert!(m.observe(&snap(1, 0, 0)).is_none()); // collector restarted
        assert!(m.observe(&snap(2, 10, 0)).unwrap().first);
    }
}
