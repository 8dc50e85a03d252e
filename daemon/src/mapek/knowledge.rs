//! Knowledge: what the loop remembers between polls. Bounded rolling windows
//! and learned baselines per signal, the hysteresis state of Plan, active
//! anomalies and the last resolved ones.
//!
//! Memory is bounded whatever the node throws at it: at most
//! `max_signals` signals (the longest idle ones are evicted and counted),
//! windows of fixed capacity, at most [`RESOLVED_KEPT`] resolved anomalies.
//! A signal not seen for [`IDLE_WINDOWS`] windows (a device that is gone)
//! is forgotten, so that interface churn does not fill `max_signals`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::anomaly::{AnomalyKind, Severity, StateChange};

/// Resolved anomalies remembered.
pub const RESOLVED_KEPT: usize = 100;

/// A signal unseen for this many windows' worth of polls is forgotten.
pub const IDLE_WINDOWS: u64 = 10;

/// A fixed-capacity FIFO: pushing into a full ring drops the oldest item.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::with_capacity(capacity.min(64)),
            capacity,
        }
    }

    pub fn push(&mut self, item: T) {
        while self.items.len() >= self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.items.len() > self.capacity {
            self.items.pop_front();
        }
        self.items.shrink_to(self.capacity);
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    /// The newest `n` items (fewer if the ring holds fewer), newest first.
    pub fn newest(&self, n: usize) -> impl Iterator<Item = &T> {
        self.items.iter().rev().take(n)
    }
}

/// What a signal measures. With the subject it identifies one signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Node: TCP retransmitted segments / segments sent (ratio).
    RetransmitRatio,
    /// Node: kernel packet drops per second, all reasons.
    KernelDropRate,
    /// Node: packets per second over all devices.
    NodePacketRate,
    /// Device: XDP packets per second.
    DevicePacketRate,
    /// Device: rx/tx dropped + errors per second (kernel interface counters).
    DeviceLossRate,
    /// Syscall: p99 latency in seconds.
    SyscallP99,
    /// Syscall: failed calls / calls (ratio).
    SyscallErrorRatio,
}

/// One signal: a metric of one subject (`node`, a device, a syscall).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignalId {
    pub metric: Metric,
    pub subject: String,
}

impl SignalId {
    pub fn new(metric: Metric, subject: impl Into<String>) -> Self {
        Self {
            metric,
            subject: subject.into(),
        }
    }
}

/// One poll's value of a signal and the length of the poll interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub value: f64,
    pub interval: Duration,
}

/// Exponentially weighted mean and variance. Until `1 / alpha` samples have
/// been seen it is a plain running mean, so it settles quickly.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub variance: f64,
    /// Samples learned (frozen intervals not included).
    pub samples: u64,
}

impl Baseline {
    pub fn learn(&mut self, x: f64, alpha: f64) {
        if !x.is_finite() {
            return;
        }
        self.samples += 1;
        let a = alpha.max(1.0 / self.samples as f64);
        let diff = x - self.mean;
        let incr = a * diff;
        self.mean += incr;
        self.variance = (1.0 - a) * (self.variance + diff * incr);
    }

    pub fn std_dev(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }
}

/// History of one signal.
#[derive(Clone, Debug)]
pub struct Signal {
    pub window: Ring<Sample>,
    pub baseline: Baseline,
    /// Monotonic time of the first sample.
    pub first_seen: Duration,
    /// Sequence number of the last observation that carried a sample.
    pub last_seen_seq: u64,
}

impl Signal {
    /// Time since the first sample, as of `now` (monotonic).
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.first_seen)
    }

    /// Mean of the newest `n` samples and the time they span.
    pub fn recent(&self, n: usize) -> (f64, Duration) {
        let mut sum = 0.0;
        let mut span = Duration::ZERO;
        let mut count = 0usize;
        for s in self.window.newest(n) {
            sum += s.value;
            span += s.interval;
            count += 1;
        }
        if count == 0 {
            (0.0, Duration::ZERO)
        } else {
            (sum / count as f64, span)
        }
    }
}

/// Identifies one anomaly: deduplication is one active anomaly per key.
pub type AnomalyKey = (AnomalyKind, String);

/// Hysteresis counters of one (kind, subject).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streak {
    pub anomalous: u32,
    pub normal: u32,
    /// Consecutive observations without any verdict for this key.
    pub missing: u32,
}

/// An anomaly that has fired and not yet resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveAnomaly {
    pub severity: Severity,
    pub started_at: SystemTime,
    pub value: f64,
    pub baseline: f64,
    pub threshold: f64,
    pub explanation: String,
}

/// The loop's memory. See the module documentation for its bounds.
#[derive(Debug)]
pub struct Knowledge {
    signals: HashMap<SignalId, Signal>,
    window: usize,
    max_signals: usize,
    evictions: u64,
    pub(crate) streaks: HashMap<AnomalyKey, Streak>,
    pub(crate) active: BTreeMap<AnomalyKey, ActiveAnomaly>,
    resolved: Ring<StateChange>,
    observations: u64,
}

impl Knowledge {
    pub fn new(window: usize, max_signals: usize) -> Self {
        Self {
            signals: HashMap::new(),
            window: window.max(1),
            max_signals: max_signals.max(1),
            evictions: 0,
            streaks: HashMap::new(),
            active: BTreeMap::new(),
            resolved: Ring::new(RESOLVED_KEPT),
            observations: 0,
        }
    }

    /// Applies new bounds, keeping what was learned (windows are trimmed,
    /// excess signals evicted at the end of the next observation).
    pub fn resize(&mut self, window: usize, max_signals: usize) {
        self.window = window.max(1);
        self.max_signals = max_signals.max(1);
        for signal in self.signals.values_mut() {
            signal.window.set_capacity(self.window);
        }
    }

    pub fn signal(&self, id: &SignalId) -> Option<&Signal> {
        self.signals.get(id)
    }

    /// Appends a sample to a signal's window, creating the signal if needed.
    /// Does not touch the baseline (see [`Knowledge::learn`]).
    pub fn record(&mut self, id: &SignalId, sample: Sample, now: Duration, seq: u64) -> &Signal {
        let window = self.window;
        if !self.signals.contains_key(id) {
            let signal = Signal {
                window: Ring::new(window),
                baseline: Baseline::default(),
                first_seen: now,
                last_seen_seq: seq,
            };
            self.signals.insert(id.clone(), signal);
        }
        let signal = self.signals.get_mut(id).expect("inserted above");
        signal.window.push(sample);
        signal.last_seen_seq = seq;
        signal
    }

    /// Teaches a signal's baseline one value.
    pub fn learn(&mut self, id: &SignalId, value: f64, alpha: f64) {
        if let Some(signal) = self.signals.get_mut(id) {
            signal.baseline.learn(value, alpha);
        }
    }

    /// Evicts signals beyond `max_signals`: the longest idle first, and among
    /// equally idle ones those with the least learned history.
    pub fn evict_excess(&mut self) {
        let excess = self.signals.len().saturating_sub(self.max_signals);
        if excess == 0 {
            return;
        }
        let mut order: Vec<(u64, u64, SignalId)> = self
            .signals
            .iter()
            .map(|(id, s)| (s.last_seen_seq, s.baseline.samples, id.clone()))
            .collect();
        order.select_nth_unstable_by(excess - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, _, id) in order.into_iter().take(excess) {
            self.signals.remove(&id);
        }
        self.evictions += excess as u64;
    }

    /// Forgets the signals not seen for [`IDLE_WINDOWS`] windows as of
    /// poll `seq` (not counted as evictions: nothing was lost that was in
    /// use). Found by `cargo xtask bench soak`: each veth that came and went
    /// left its signals behind until `max_signals`, a steady RSS climb.
    pub fn forget_idle(&mut self, seq: u64) {
        let limit = IDLE_WINDOWS * self.window as u64;
        self.signals
            .retain(|_, s| seq.saturating_sub(s.last_seen_seq) <= limit);
    }

    pub fn signal_count(&self) -> usize {
        self.signals.len()
    }

    /// Signals evicted to keep within `max_signals`, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn active(&self) -> impl Iterator<Item = (&AnomalyKey, &ActiveAnomaly)> {
        self.active.iter()
    }

    /// The last [`RESOLVED_KEPT`] resolved anomalies, oldest first.
    pub fn resolved(&self) -> impl Iterator<Item = &StateChange> {
        self.resolved.iter()
    }

    pub(crate) fn push_resolved(&mut self, change: StateChange) {
        self.resolved.push(change);
    }

    /// Observations analysed since start.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    pub(crate) fn count_observation(&mut self) {
        self.observations += 1;
    }

    /// (kind, subject) pairs with hysteresis state (bounded by `max_signals`).
    pub fn streak_count(&self) -> usize {
        self.streaks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_oldest() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(r.newest(2).copied().collect::<Vec<_>>(), vec![4, 3]);
        r.set_capacity(1);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn baseline_tracks_mean_and_variance() {
        let mut b = Baseline::default();
        for i in 0..1000 {
            b.learn(if i % 2 == 0 { 9.0 } else { 11.0 }, 0.05);
        }
        assert!((b.mean - 10.0).abs() < 0.1, "{b:?}");
        assert!((b.std_dev() - 1.0).abs() < 0.1, "{b:?}");
    }

    #[test]
    fn eviction_prefers_idle_signals() {
        let mut k = Knowledge::new(4, 2);
        let sample = Sample {
            value: 1.0,
            interval: Duration::from_secs(1),
        };
        let a = SignalId::new(Metric::DevicePacketRate, "a");
        let b = SignalId::new(Metric::DevicePacketRate, "b");
        let c = SignalId::new(Metric::DevicePacketRate, "c");
        k.record(&a, sample, Duration::ZERO, 1);
        k.record(&b, sample, Duration::ZERO, 1);
        k.record(&a, sample, Duration::ZERO, 2);
        k.record(&c, sample, Duration::ZERO, 2);
        k.evict_excess();
        assert_eq!(k.signal_count(), 2);
        assert!(k.signal(&b).is_none());
        assert_eq!(k.evictions(), 1);
    }

    /// A device's signals are forgotten once unseen for 10 windows (here
    /// 4 polls each), not before; the ones still seen stay.
    #[test]
    fn idle_signals_are_forgotten() {
        let mut k = Knowledge::new(4, 100);
        let sample = Sample {
            value: 1.0,
            interval: Duration::from_secs(1),
        };
        let gone = SignalId::new(Metric::DevicePacketRate, "veth-gone");
        let live = SignalId::new(Metric::DevicePacketRate, "eth0");
        k.record(&gone, sample, Duration::ZERO, 1);
        for seq in 1..=41 {
            k.record(&live, sample, Duration::ZERO, seq);
            k.forget_idle(seq);
        }
        assert!(k.signal(&gone).is_some(), "unseen for exactly 40 polls");
        k.record(&live, sample, Duration::ZERO, 42);
        k.forget_idle(42);
        assert!(k.signal(&gone).is_none());
        assert!(k.signal(&live).is_some());
        assert_eq!(k.evictions(), 0);
    }
}
