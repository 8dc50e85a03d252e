//! Bounded cardinality of the per-device families (`[metrics]`): a device
//! has series of its own when its name passes `device_include` /
//! `device_exclude` and one of `max` places is free; every other device is
//! folded into one `device="other"` roll-up.
//!
//! A device keeps the place it was given (or its fold) for as long as it
//! exists, so no series moves between a device and `other` while both
//! exist. The roll-up is a counter that never goes down: a folded device
//! that vanishes, or whose counters restart (detached and attached again),
//! leaves its last counts in `other`. Devices that are gone lose their
//! series at the next poll: the sets are rebuilt from the devices present.
//!
//! Plain data and no aya: the sources call it from their poll.

use std::collections::{BTreeMap, BTreeSet};

use regex_lite::Regex;
use tracing::warn;

use crate::config::MetricsConfig;

/// The `device` label of the roll-up.
pub const OTHER: &str = "other";

/// `device_include` and `device_exclude`, compiled, matched against the
/// whole name.
#[derive(Clone, Debug, Default)]
pub struct DevicePolicy {
    include: Option<Regex>,
    exclude: Option<Regex>,
}

impl DevicePolicy {
    pub fn from_config(config: &MetricsConfig) -> Self {
        Self {
            include: anchored("metrics.device_include", &config.device_include),
            exclude: anchored("metrics.device_exclude", &config.device_exclude),
        }
    }

    /// Whether `device` may have series of its own.
    pub fn admits(&self, device: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(device))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(device))
    }
}

/// `^(?:pattern)$`; `None` for "" (validation has already refused a bad
/// pattern; one that slips through is logged and ignored).
fn anchored(key: &str, pattern: &str) -> Option<Regex> {
    if pattern.is_empty() {
        return None;
    }
    match Regex::new(&format!("^(?:{pattern})$")) {
        Ok(regex) => Some(regex),
        Err(error) => {
            warn!(key, %error, "device pattern ignored");
            None
        }
    }
}

/// One poll's counters of one device, by any key (a reason, a slot).
pub type Counts<K> = BTreeMap<K, u64>;

/// The outcome of one poll: which devices were folded, and the roll-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded<K> {
    /// Devices present whose series go into `other`.
    pub devices: BTreeSet<String>,
    /// The `other` counters; `None` while no device was ever folded.
    pub other: Option<Counts<K>>,
}

impl<K> Default for Folded<K> {
    fn default() -> Self {
        Self {
            devices: BTreeSet::new(),
            other: None,
        }
    }
}

/// The places of one family group (the XDP and interface families, or the
/// drops by device), kept from poll to poll.
#[derive(Clone, Debug)]
pub struct DeviceCap<K> {
    policy: DevicePolicy,
    max: usize,
    kept: BTreeSet<String>,
    /// Folded devices and their counts at the last poll.
    folded: BTreeMap<String, Counts<K>>,
    /// Counts left by folded devices that vanished or restarted.
    retired: Counts<K>,
    ever_folded: bool,
}

impl<K: Ord + Clone> DeviceCap<K> {
    pub fn new(policy: DevicePolicy, max: usize) -> Self {
        Self {
            policy,
            max,
            kept: BTreeSet::new(),
            folded: BTreeMap::new(),
            retired: Counts::new(),
            ever_folded: false,
        }
    }

    /// Sorts this poll's devices into kept and folded (new ones in name
    /// order) and sums the folded ones into the roll-up. `counts` gives a
    /// device's counters; it is only called for folded devices.
    pub fn fold<'a>(
        &mut self,
        devices: impl IntoIterator<Item = &'a str>,
        counts: impl Fn(&str) -> Counts<K>,
    ) -> Folded<K> {
        let present: BTreeSet<&str> = devices.into_iter().collect();
        self.kept.retain(|d| present.contains(d.as_str()));
        let mut folded_now: BTreeMap<String, Counts<K>> = BTreeMap::new();
        for device in present {
            if self.kept.contains(device) {
                continue;
            }
            let was_folded = self.folded.contains_key(device);
            if !was_folded && self.kept.len() < self.max && self.policy.admits(device) {
                self.kept.insert(device.to_owned());
                continue;
            }
            folded_now.insert(device.to_owned(), counts(device));
        }
        // What the folded devices of the last poll leave behind.
        for (device, last) in std::mem::take(&mut self.folded) {
            let now = folded_now.get(&device);
            for (key, n) in last {
                let restarted = now.is_none_or(|now| now.get(&key).copied().unwrap_or(0) < n);
                if restarted {
                    *self.retired.entry(key).or_default() += n;
                }
            }
        }
        self.ever_folded |= !folded_now.is_empty();
        let other = self.ever_folded.then(|| {
            let mut other = self.retired.clone();
            for counts in folded_now.values() {
                for (key, n) in counts {
                    *other.entry(key.clone()).or_default() += n;
                }
            }
            other
        });
        let devices = folded_now.keys().cloned().collect();
        self.folded = folded_now;
        Folded { devices, other }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(include: &str, exclude: &str) -> DevicePolicy {
        DevicePolicy::from_config(&MetricsConfig {
            device_include: include.into(),
            device_exclude: exclude.into(),
            ..MetricsConfig::default()
        })
    }

    #[test]
    fn patterns_match_whole_names() {
        let p = policy("", "veth.*|cali[0-9]+");
        assert!(p.admits("eth0"));
        assert!(!p.admits("veth12"));
        assert!(!p.admits("cali7"));
        assert!(p.admits("cali7x"), "anchored at the end");
        assert!(p.admits("myveth0"), "anchored at the start");
        let p = policy("eth[0-9]+|bond0", "eth9");
        assert!(p.admits("eth1") && p.admits("bond0"));
        assert!(!p.admits("eth9") && !p.admits("wlan0"));
        assert!(policy("", "").admits("anything"));
    }

    fn one(n: u64) -> Counts<u8> {
        Counts::from([(0, n)])
    }

    #[test]
    fn places_are_kept_and_the_roll_up_never_goes_down() {
        let mut cap: DeviceCap<u8> = DeviceCap::new(policy("", "veth.*"), 2);
        let counts: BTreeMap<&str, u64> =
            BTreeMap::from([("a", 1), ("b", 2), ("c", 4), ("veth0", 8)]);
        let f = cap.fold(counts.keys().copied(), |d| one(counts[d]));
        assert_eq!(f.devices, BTreeSet::from(["c".into(), "veth0".into()]));
        assert_eq!(f.other, Some(one(12)));

        // "a" leaves: its place is free, but "c" stays folded while it exists;
        // a newcomer takes the place.
        let counts: BTreeMap<&str, u64> =
            BTreeMap::from([("b", 3), ("c", 5), ("d", 1), ("veth0", 9)]);
        let f = cap.fold(counts.keys().copied(), |d| one(counts[d]));
        assert_eq!(f.devices, BTreeSet::from(["c".into(), "veth0".into()]));
        assert_eq!(f.other, Some(one(14)));

        // veth0 vanishes (its 9 stay in other), c restarts from 0 (its 5 stay).
        let counts: BTreeMap<&str, u64> = BTreeMap::from([("b", 3), ("c", 1), ("d", 1)]);
        let f = cap.fold(counts.keys().copied(), |d| one(counts[d]));
        assert_eq!(f.devices, BTreeSet::from(["c".into()]));
        assert_eq!(f.other, Some(one(9 + 5 + 1)));

        // Everything folded is gone: other stays, at what it reached.
        let f = cap.fold(["b", "d"], |d| one(counts[d]));
        assert!(f.devices.is_empty());
        assert_eq!(f.other, Some(one(15)));
    }

    #[test]
    fn no_roll_up_until_something_is_folded() {
        let mut cap: DeviceCap<u8> = DeviceCap::new(DevicePolicy::default(), 8);
        let f = cap.fold(["eth0", "eth1"], |_| unreachable!("nothing is folded"));
        assert_eq!(f, Folded::default());
        let mut none: DeviceCap<u8> = DeviceCap::new(DevicePolicy::default(), 0);
        let f = none.fold(["eth0"], |_| one(0));
        assert_eq!(f.other, Some(one(0)));
    }
}
