//! The XDP section of the snapshot: plain data, no aya.

use std::collections::BTreeMap;

use telemetryd_common::xdp::{FAMILIES, PROGRAM_ERROR_SLOTS, PROTOCOLS};

use crate::config::XdpMode;
use crate::sources::cardinality::{Counts, DeviceCap, Folded};

/// What one poll read of the packet counter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdpStats {
    /// Per attached interface, keyed by device name.
    pub interfaces: BTreeMap<String, InterfaceStats>,
    /// (device, mode) of each attachment, in the order they were made.
    pub attachments: Vec<(String, XdpMode)>,
    /// The program's own errors by `XdpError` slot.
    pub errors: [u64; PROGRAM_ERROR_SLOTS as usize],
    /// Devices whose series are folded into `device="other"` (`[metrics]`),
    /// and the roll-up, in [`InterfaceStats::to_counts`] slots.
    pub folded: Folded<usize>,
    /// The build loaded publishes packet events (`xdp.sample_rate` > 0 and
    /// the kernel accepted it).
    pub publishes_events: bool,
}

impl XdpStats {
    /// Sorts the interfaces into those with series of their own and those
    /// folded into `device="other"` as `cap` says (`[metrics]`), filling
    /// [`Self::folded`]; what each poll does once the counters are read.
    pub fn fold_devices(&mut self, cap: &mut DeviceCap<usize>) {
        let interfaces = &self.interfaces;
        self.folded = cap.fold(interfaces.keys().map(String::as_str), |device| {
            interfaces[device].to_counts()
        });
    }
}

/// Counters of one interface, cumulative since it was attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub ifindex: u32,
    /// `[family][protocol]` packets seen by XDP (slots from `telemetryd_common::xdp`).
    pub packets: [[u64; PROTOCOLS]; FAMILIES],
    /// `[family][protocol]` bytes seen by XDP.
    pub bytes: [[u64; PROTOCOLS]; FAMILIES],
    /// Frames XDP could not fully parse.
    pub malformed: u64,
    /// Kernel's own interface counters (`/sys/class/net/<dev>/statistics`).
    pub rx_dropped: u64,
    pub rx_errors: u64,
    pub tx_dropped: u64,
    pub tx_errors: u64,
}

impl InterfaceStats {
    pub fn total_packets(&self) -> u64 {
        self.packets.iter().flatten().sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().flatten().sum()
    }
}

const CELLS: usize = FAMILIES * PROTOCOLS;

impl InterfaceStats {
    /// Every counter in one flat map (packets, bytes, malformed, then the
    /// kernel's four), for the `other` roll-up.
    pub fn to_counts(&self) -> Counts<usize> {
        let cells = self
            .packets
            .iter()
            .flatten()
            .chain(self.bytes.iter().flatten());
        let rest = [
            self.malformed,
            self.rx_dropped,
            self.rx_errors,
            self.tx_dropped,
            self.tx_errors,
        ];
        cells.chain(rest.iter()).copied().enumerate().collect()
    }

    /// The inverse of [`Self::to_counts`] (missing slots are 0).
    pub fn from_counts(counts: &Counts<usize>) -> Self {
        let at = |i: usize| counts.get(&i).copied().unwrap_or(0);
        let mut stats = InterfaceStats::default();
        for f in 0..FAMILIES {
            for p in 0..PROTOCOLS {
                stats.packets[f][p] = at(f * PROTOCOLS + p);
                stats.bytes[f][p] = at(CELLS + f * PROTOCOLS + p);
            }
        }
        stats.malformed = at(2 * CELLS);
        stats.rx_dropped = at(2 * CELLS + 1);
        stats.rx_errors = at(2 * CELLS + 2);
        stats.tx_dropped = at(2 * CELLS + 3);
        stats.tx_errors = at(2 * CELLS + 4);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip() {
        let mut stats = InterfaceStats::default();
        for f in 0..FAMILIES {
            for p in 0..PROTOCOLS {
                stats.packets[f][p] = (f * 10 + p) as u64;
                stats.bytes[f][p] = (f * 1000 + p) as u64;
            }
        }
        (stats.malformed, stats.rx_dropped, stats.rx_errors) = (7, 8, 9);
        (stats.tx_dropped, stats.tx_errors) = (10, 11);
        let counts = stats.to_counts();
        assert_eq!(counts.len(), 2 * CELLS + 5);
        assert_eq!(InterfaceStats::from_counts(&counts), stats);
    }
}
