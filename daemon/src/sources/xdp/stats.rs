//! The XDP section of the snapshot: plain data, no aya.

use std::collections::BTreeMap;

use telemetryd_common::xdp::{FAMILIES, PROGRAM_ERROR_SLOTS, PROTOCOLS};

use crate::config::XdpMode;

/// What one poll read of the packet counter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdpStats {
    /// Per attached interface, keyed by device name.
    pub interfaces: BTreeMap<String, InterfaceStats>,
    /// (device, mode) of each attachment, in the order they were made.
    pub attachments: Vec<(String, XdpMode)>,
    /// The program's own errors by `XdpError` slot.
    pub errors: [u64; PROGRAM_ERROR_SLOTS as usize],
    /// The build loaded publishes packet events (`xdp.sample_rate` > 0 and
    /// the kernel accepted it).
    pub publishes_events: bool,
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
