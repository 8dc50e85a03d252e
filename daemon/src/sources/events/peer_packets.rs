//! Sampled packets per (device, peer) since start: the denominator of a
//! peer's loss rate (its drops come from the drop tracer). Cumulative and
//! bounded: the first [`MAX_PEERS`] (device, peer) pairs get a counter of
//! their own, the rest of a device are summed as its `other`, so every
//! counter only grows.
//!
//! Plain data, no aya: the drain feeds it, the poll reads it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// (device, peer) pairs counted one by one at most.
pub const MAX_PEERS: usize = 1024;

#[derive(Debug, Default)]
pub struct PeerPackets {
    peers: HashMap<(u32, IpAddr), u64>,
    /// Sampled packets of pairs past [`MAX_PEERS`], by ifindex.
    other: HashMap<u32, u64>,
}

impl PeerPackets {
    pub fn record(&mut self, ifindex: u32, peer: IpAddr) {
        let full = self.peers.len() >= MAX_PEERS;
        match self.peers.get_mut(&(ifindex, peer)) {
            Some(n) => *n += 1,
            None if !full => {
                self.peers.insert((ifindex, peer), 1);
            }
            None => *self.other.entry(ifindex).or_default() += 1,
        }
    }

    /// Sampled packets by device name (from `names`, else `ifindex<n>`),
    /// then peer; the rolled-up rest under `other`.
    pub fn by_device(
        &self,
        names: &BTreeMap<u32, String>,
    ) -> BTreeMap<String, BTreeMap<String, u64>> {
        let name = |ifindex: u32| {
            names
                .get(&ifindex)
                .cloned()
                .unwrap_or_else(|| format!("ifindex{ifindex}"))
        };
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((ifindex, peer), n) in &self.peers {
            *out.entry(name(*ifindex))
                .or_default()
                .entry(peer.to_string())
                .or_default() += n;
        }
        for (ifindex, n) in &self.other {
            *out.entry(name(*ifindex))
                .or_default()
                .entry(crate::sources::drops::stats::OTHER_PEERS.to_owned())
                .or_default() += n;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.other.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_device_and_peer_and_rolls_up_the_rest() {
        let mut p = PeerPackets::default();
        let a: IpAddr = "10.1.0.7".parse().unwrap();
        p.record(3, a);
        p.record(3, a);
        p.record(4, a);
        for i in 0..MAX_PEERS as u32 {
            p.record(5, IpAddr::from([10, 2, (i >> 8) as u8, i as u8]));
        }
        let names = BTreeMap::from([(3, "b0".to_owned())]);
        let got = p.by_device(&names);
        assert_eq!(got["b0"]["10.1.0.7"], 2);
        assert_eq!(got["ifindex4"]["10.1.0.7"], 1);
        // Two pairs came first: the last two of device 5 are the rest.
        assert_eq!(got["ifindex5"].len(), MAX_PEERS - 2 + 1);
        assert_eq!(got["ifindex5"]["other"], 2);
    }
}
