//! Top talkers: the peers that sent this node the most packets over a
//! sliding window, from sampled packet events, in bounded memory.
//!
//! The window is cut into [`SUB_WINDOWS`] sub-windows; each keeps a
//! space-saving summary (Metwally et al.) of at most `capacity` peers, so
//! memory is bounded by `SUB_WINDOWS * capacity` entries however many
//! distinct peers arrive. A peer's estimate is the sum of its counts over
//! the live sub-windows; each sub-window overestimates a tracked peer by at
//! most its `error`, itself at most that sub-window's packets / capacity,
//! and counts exactly while it has seen no more than `capacity` peers.
//! Counts are of sampled packets; estimates are scaled by the sample rate.
//!
//! Error bounds: a sub-window whose summary is full overestimates any
//! tracked peer by at most its smallest count, and any peer it does not
//! track sent it at most that many; a summary that is not full is exact
//! (bound 0). The report gives each peer its estimate (the sum of its
//! counts), its guaranteed count (the sum of count - error, a lower bound
//! of the truth) and its upper bound (the estimate plus the bounds of the
//! sub-windows that do not track it), and the summary's error bound (the
//! sum of the sub-windows' bounds: no peer left out of the report sent
//! more). A peer is a heavy hitter, and reported, only when its guaranteed
//! count exceeds the summary's error bound: below that, any of the peers
//! left out may have sent as much.
//!
//! Plain data, no aya: the drain feeds it, the poll reads it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// How many slices the window is cut into: the window slides by
/// `window / SUB_WINDOWS` at a time.
pub const SUB_WINDOWS: usize = 6;
/// Peers each sub-window tracks per reported peer (K), at least [`MIN_CAPACITY`].
pub const CAPACITY_PER_K: usize = 8;
pub const MIN_CAPACITY: usize = 64;

/// One peer's counts in one sub-window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    packets: u64,
    bytes: u64,
    /// Upper bound of the overestimate of `packets` (space-saving's error).
    error: u64,
}

/// A space-saving summary of at most `capacity` peers.
#[derive(Debug)]
struct SpaceSaving {
    capacity: usize,
    counts: HashMap<IpAddr, Counts>,
    /// (packets, peer), to find the smallest entry in O(log capacity).
    order: BTreeSet<(u64, IpAddr)>,
}

impl SpaceSaving {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            counts: HashMap::with_capacity(capacity),
            order: BTreeSet::new(),
        }
    }

    fn add(&mut self, peer: IpAddr, bytes: u64) {
        if let Some(c) = self.counts.get_mut(&peer) {
            self.order.remove(&(c.packets, peer));
            c.packets += 1;
            c.bytes += bytes;
            self.order.insert((c.packets, peer));
            return;
        }
        let counts = if self.counts.len() < self.capacity {
            Counts {
                packets: 1,
                bytes,
                error: 0,
            }
        } else {
            // Replace the smallest: the newcomer inherits its count as error.
            let Some((min, evicted)) = self.order.pop_first() else {
                return;
            };
            let old = self.counts.remove(&evicted).unwrap_or_default();
            Counts {
                packets: min + 1,
                bytes: old.bytes + bytes,
                error: min,
            }
        };
        self.order.insert((counts.packets, peer));
        self.counts.insert(peer, counts);
    }

    fn len(&self) -> usize {
        self.counts.len()
    }

    /// The most a tracked peer's count overestimates it, and the most an
    /// untracked peer sent: the smallest count once full, 0 before.
    fn error_bound(&self) -> u64 {
        if self.counts.len() < self.capacity {
            0
        } else {
            self.order.first().map_or(0, |(min, _)| *min)
        }
    }
}

#[derive(Debug)]
struct SubWindow {
    index: u64,
    summary: SpaceSaving,
    packets: u64,
    bytes: u64,
}

/// One peer of a [`TopTalkersReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopTalker {
    pub peer: String,
    /// `rx`: XDP sees frames arriving, so peers are source addresses.
    pub direction: &'static str,
    /// Estimated packets over the window (sampled count x sample rate): the
    /// summary's count, which overestimates by at most `packets - packets_min`.
    pub packets: f64,
    /// Guaranteed packets: the peer sent at least this many (count - error,
    /// x sample rate).
    pub packets_min: f64,
    /// The peer sent at most this many (its count plus the error bound of
    /// each sub-window that does not track it, x sample rate).
    pub packets_max: f64,
    /// Estimated bytes (L2 frame length) over the window.
    pub bytes: f64,
    /// Fraction of the window's sampled packets (0..=1).
    pub share: f64,
}

/// The top K peers at one moment; what `/api/v1/top-talkers` serves.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopTalkersReport {
    pub window_seconds: f64,
    pub sample_rate: u32,
    /// Sampled packets in the window, over all peers: the summary's samples.
    pub sampled_packets: u64,
    /// The summary's error bound in packets (x sample rate): no peer left
    /// out of `peers` sent more, and no count is off by more. 0 while every
    /// sub-window counts exactly.
    pub error_bound: f64,
    /// Heavy hitters only: the top K peers whose guaranteed count exceeds
    /// `error_bound`, by estimate.
    pub peers: Vec<TopTalker>,
    /// Estimated packets and bytes of every peer outside the top K over
    /// the window (the `peer="other"` roll-up of the metrics).
    #[serde(skip)]
    pub other_packets: f64,
    #[serde(skip)]
    pub other_bytes: f64,
    /// Peers tracked in the window but not in the top K.
    #[serde(skip)]
    pub folded_peers: u64,
}

/// Heavy hitters over a sliding window.
#[derive(Debug)]
pub struct TopTalkers {
    k: usize,
    capacity: usize,
    window: Duration,
    sub_ns: u64,
    sample_rate: u32,
    subs: Vec<SubWindow>,
    /// Latest time seen (ns of CLOCK_MONOTONIC), by `record` or `report`.
    now_ns: u64,
}

impl TopTalkers {
    /// Reports the top `k` over `window`, from events sampled 1 in `sample_rate`.
    pub fn new(k: usize, window: Duration, sample_rate: u32) -> Self {
        let k = k.max(1);
        let sub_ns = (window.as_nanos() as u64 / SUB_WINDOWS as u64).max(1);
        Self {
            k,
            capacity: (k * CAPACITY_PER_K).max(MIN_CAPACITY),
            window,
            sub_ns,
            sample_rate,
            subs: Vec::with_capacity(SUB_WINDOWS),
            now_ns: 0,
        }
    }

    /// Counts one sampled frame from `peer` of `bytes`, seen at `now_ns`.
    pub fn record(&mut self, now_ns: u64, peer: IpAddr, bytes: u64) {
        self.advance(now_ns);
        let index = now_ns / self.sub_ns;
        // Events from several CPUs arrive slightly out of order: a late one
        // goes to its own sub-window if it is still live, else the newest.
        let position = self
            .subs
            .iter()
            .rposition(|s| s.index <= index)
            .unwrap_or(0);
        let capacity = self.capacity;
        if self.subs.last().is_none_or(|s| s.index < index) {
            self.subs.push(SubWindow {
                index,
                summary: SpaceSaving::new(capacity),
                packets: 0,
                bytes: 0,
            });
            self.add_to(self.subs.len() - 1, peer, bytes);
        } else {
            self.add_to(position, peer, bytes);
        }
    }

    fn add_to(&mut self, position: usize, peer: IpAddr, bytes: u64) {
        let sub = &mut self.subs[position];
        sub.summary.add(peer, bytes);
        sub.packets += 1;
        sub.bytes += bytes;
    }

    /// Moves the clock forward and forgets sub-windows that left the window.
    fn advance(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let current = self.now_ns / self.sub_ns;
        self.subs.retain(|s| s.index + SUB_WINDOWS as u64 > current);
    }

    /// The top K peers at `now_ns`, by estimated packets.
    pub fn report(&mut self, now_ns: u64) -> TopTalkersReport {
        self.advance(now_ns);
        self.summarize()
    }

    /// (peer, share of packets) of the top K as of the latest event or
    /// report: what the MAPE-K loop uses to explain a traffic spike.
    pub fn shares(&self) -> Vec<(String, f64)> {
        self.summarize()
            .peers
            .into_iter()
            .map(|p| (p.peer, p.share))
            .collect()
    }

    /// Merges the sub-windows still in the window as of `self.now_ns`.
    fn summarize(&self) -> TopTalkersReport {
        let current = self.now_ns / self.sub_ns;
        let live: Vec<&SubWindow> = self
            .subs
            .iter()
            .filter(|s| s.index + SUB_WINDOWS as u64 > current)
            .collect();
        #[derive(Default)]
        struct Merged {
            packets: u64,
            bytes: u64,
            guaranteed: u64,
            /// Sum of the error bounds of the sub-windows that track it.
            tracked_bounds: u64,
        }
        let mut merged: HashMap<IpAddr, Merged> = HashMap::new();
        let (mut total, mut total_bytes, mut error_bound) = (0, 0, 0);
        for sub in &live {
            total += sub.packets;
            total_bytes += sub.bytes;
            let bound = sub.summary.error_bound();
            error_bound += bound;
            for (peer, c) in &sub.summary.counts {
                let m = merged.entry(*peer).or_default();
                m.packets += c.packets;
                m.bytes += c.bytes;
                m.guaranteed += c.packets - c.error;
                m.tracked_bounds += bound;
            }
        }
        let tracked = merged.len();
        let mut peers: Vec<(IpAddr, Merged)> = merged
            .into_iter()
            .filter(|(_, m)| m.guaranteed > error_bound)
            .collect();
        peers.sort_by(|a, b| {
            (b.1.packets.cmp(&a.1.packets))
                .then(b.1.bytes.cmp(&a.1.bytes))
                .then(a.0.cmp(&b.0))
        });
        peers.truncate(self.k);
        let scale = f64::from(self.sample_rate.max(1));
        let top_packets: u64 = peers.iter().map(|p| p.1.packets).sum();
        let top_bytes: u64 = peers.iter().map(|p| p.1.bytes).sum();
        TopTalkersReport {
            window_seconds: self.window.as_secs_f64(),
            sample_rate: self.sample_rate,
            sampled_packets: total,
            other_packets: total.saturating_sub(top_packets) as f64 * scale,
            other_bytes: total_bytes.saturating_sub(top_bytes) as f64 * scale,
            folded_peers: (tracked - peers.len()) as u64,
            error_bound: error_bound as f64 * scale,
            peers: peers
                .into_iter()
                .map(|(peer, m)| TopTalker {
                    peer: peer.to_string(),
                    direction: "rx",
                    packets: m.packets as f64 * scale,
                    packets_min: m.guaranteed as f64 * scale,
                    packets_max: (m.packets + error_bound - m.tracked_bounds) as f64 * scale,
                    bytes: m.bytes as f64 * scale,
                    share: if total == 0 {
                        0.0
                    } else {
                        m.packets as f64 / total as f64
                    },
                })
                .collect(),
        }
    }

    /// Peers tracked now, over all sub-windows.
    pub fn entries(&self) -> usize {
        self.subs.iter().map(|s| s.summary.len()).sum()
    }

    /// The most peers it can ever track: its memory bound.
    pub fn bound(&self) -> usize {
        SUB_WINDOWS * self.capacity
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SEC: u64 = 1_000_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn exact_while_peers_fit() {
        let mut top = TopTalkers::new(3, Duration::from_secs(60), 1);
        for (peer, n) in [(1, 50), (2, 30), (3, 20), (4, 5)] {
            for _ in 0..n {
                top.record(SEC, ip(peer), 100);
            }
        }
        let report = top.report(2 * SEC);
        assert_eq!(report.sampled_packets, 105);
        let got: Vec<(String, f64, f64)> = report
            .peers
            .iter()
            .map(|p| (p.peer.clone(), p.packets, p.bytes))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_owned(), 50.0, 5000.0),
                ("10.0.0.2".to_owned(), 30.0, 3000.0),
                ("10.0.0.3".to_owned(), 20.0, 2000.0)
            ]
        );
        assert_eq!(top.shares()[0], ("10.0.0.1".to_owned(), 50.0 / 105.0));
    }

    #[test]
    fn scales_by_the_sample_rate() {
        let mut top = TopTalkers::new(1, Duration::from_secs(60), 100);
        top.record(SEC, ip(1), 60);
        let report = top.report(SEC);
        assert_eq!(report.peers[0].packets, 100.0);
        assert_eq!(report.peers[0].bytes, 6000.0);
        assert_eq!(report.peers[0].share, 1.0);
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let mut top = TopTalkers::new(2, Duration::from_secs(60), 1);
        top.record(SEC, ip(1), 100);
        top.record(30 * SEC, ip(2), 100);
        assert_eq!(top.report(59 * SEC).peers.len(), 2);
        // 10 s sub-windows: the one of t=1 s leaves at t=60 s.
        let report = top.report(61 * SEC);
        assert_eq!(report.peers.len(), 1);
        assert_eq!(report.peers[0].peer, "10.0.0.2");
        assert!(top.report(200 * SEC).peers.is_empty());
        assert_eq!(top.entries(), 0);
    }

    #[test]
    fn memory_stays_bounded_with_many_distinct_peers() {
        let mut top = TopTalkers::new(10, Duration::from_secs(60), 1);
        // Two heavy peers among 100,000 one-packet peers, over 60 s.
        for i in 0..100_000u64 {
            let now = i * 600_000; // 60 s in total
            top.record(now, ip(1_000_000 + i as u32), 64);
            if i % 10 == 0 {
                top.record(now, ip(1), 64);
            }
            if i % 20 == 0 {
                top.record(now, ip(2), 64);
            }
            assert!(top.entries() <= top.bound());
        }
        assert_eq!(top.bound(), SUB_WINDOWS * 80);
        let report = top.report(60 * SEC);
        assert_eq!(report.peers[0].peer, "10.0.0.1");
        assert_eq!(report.peers[1].peer, "10.0.0.2");
        assert_eq!(
            report.peers.len(),
            2,
            "one-packet peers are no heavy hitters"
        );
        // Space-saving overestimates by at most packets/capacity per sub-window.
        let true_share = 1.0 / 11.5;
        assert!(
            (report.peers[0].share - true_share).abs() < 0.03,
            "{report:?}"
        );
    }

    /// Checks every bound of `report` against the truth (`sent`, sampled
    /// packets by peer): estimates and guaranteed counts bracket it, no
    /// left-out peer sent more than the error bound, and every reported
    /// peer's guaranteed count exceeds the error bound.
    fn check_bounds(report: &TopTalkersReport, sent: &HashMap<IpAddr, u64>) {
        for p in &report.peers {
            let truth = sent[&p.peer.parse::<IpAddr>().unwrap()] as f64;
            assert!(
                p.packets_min <= truth && truth <= p.packets_max && p.packets <= p.packets_max,
                "{p:?}: true {truth}"
            );
            assert!(p.packets_min > report.error_bound, "{p:?} in {report:?}");
        }
        for (peer, n) in sent {
            if !report.peers.iter().any(|p| p.peer == peer.to_string()) {
                assert!(
                    *n as f64 <= report.error_bound || report.peers.len() == 1,
                    "{peer}: {n}"
                );
            }
        }
    }

    /// 50,000 peers sending 24 packets each, interleaved: the summary is
    /// full, its error bound is far above 24, so no peer is a heavy hitter
    /// (the ten peers of "10,000 packets" were the error).
    #[test]
    fn uniform_small_senders_are_no_heavy_hitters() {
        let mut top = TopTalkers::new(10, Duration::from_secs(60), 1);
        let mut sent = HashMap::new();
        let mut t = 0;
        for _ in 0..24 {
            for i in 0..50_000u32 {
                t += 10_000; // 1.2 M packets over 12 s: two sub-windows
                top.record(t, ip(0x10_0000 + i), 64);
                *sent.entry(ip(0x10_0000 + i)).or_insert(0u64) += 1;
            }
        }
        let report = top.report(t);
        assert_eq!(report.sampled_packets, 1_200_000);
        // About packets / capacity (80) per sub-window, summed: ~15,000.
        assert!(report.error_bound >= 14_000.0, "{report:?}");
        assert!(report.peers.is_empty(), "{:?}", report.peers);
        check_bounds(&report, &sent);
        assert!(top.shares().is_empty());
    }

    /// Three heavy senders among 50,000 small ones: exactly those three,
    /// each within its bounds.
    #[test]
    fn three_heavy_senders_among_many_small_ones() {
        let mut top = TopTalkers::new(100, Duration::from_secs(60), 1);
        let mut sent = HashMap::new();
        let heavy = [ip(1), ip(2), ip(3)];
        let mut t = 0;
        let mut n = 0u64;
        for _ in 0..24 {
            for i in 0..50_000u32 {
                t += 10_000;
                let peer = ip(0x10_0000 + i);
                top.record(t, peer, 64);
                *sent.entry(peer).or_insert(0u64) += 1;
                n += 1;
                if n.is_multiple_of(40) {
                    let h = heavy[(n / 40 % 3) as usize];
                    top.record(t, h, 1500);
                    *sent.entry(h).or_insert(0) += 1;
                }
            }
        }
        let report = top.report(t);
        let mut got: Vec<&str> = report.peers.iter().map(|p| p.peer.as_str()).collect();
        got.sort_unstable();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "{report:?}");
        check_bounds(&report, &sent);
        for p in &report.peers {
            assert_eq!(sent[&p.peer.parse::<IpAddr>().unwrap()], 10_000);
        }
    }

    #[test]
    fn late_events_and_ipv6() {
        let mut top = TopTalkers::new(2, Duration::from_secs(60), 1);
        let v6: IpAddr = "fd00::2".parse().unwrap();
        top.record(25 * SEC, v6, 100);
        top.record(5 * SEC, v6, 100); // earlier timestamp from another CPU
        let report = top.report(25 * SEC);
        assert_eq!(report.peers[0].peer, "fd00::2");
        assert_eq!(report.peers[0].packets, 2.0);
    }
}
