//! Polls the kernel maps once per interval into an immutable [`Snapshot`].

pub mod drops;
pub mod events;
pub mod snapshot;
pub mod syscalls;

use std::collections::{BTreeMap, HashSet};
use std::time::{Instant, SystemTime};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use telemetryd_common::xdp::{InterfaceCounters, PROGRAM_ERROR_LABELS, PROGRAM_NAME};
use tracing::debug;

pub use snapshot::{InterfaceStats, ProgramAttachment, Snapshot};
pub use syscalls::SyscallCollector;

use crate::bpf::xdp::{Attachment, PacketCounter};

/// Owns the XDP maps and turns them into snapshots.
pub struct XdpCollector {
    counters: PerCpuHashMap<MapData, u32, InterfaceCounters>,
    errors: PerCpuArray<MapData, u64>,
}

impl XdpCollector {
    pub fn new(
        counters: PerCpuHashMap<MapData, u32, InterfaceCounters>,
        errors: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self { counters, errors }
    }

    /// Fills the interface counters and the program's error counts of
    /// `snapshot` for the attached interfaces, and forgets map entries of
    /// interfaces no longer attached.
    /// `counter` is the loaded program, which owns the counter slots;
    /// `None` when XDP is off (then `attachments` is empty too).
    pub fn poll(
        &mut self,
        counter: Option<&PacketCounter<'_>>,
        attachments: &[Attachment],
        snapshot: &mut Snapshot,
    ) {
        let attached: HashSet<u32> = attachments.iter().map(|a| a.interface.ifindex).collect();
        let fast_path = counter.map_or_else(Vec::new, |c| c.fast_path_counters(attachments));
        for (i, attachment) in attachments.iter().enumerate() {
            let iface = &attachment.interface;
            let mut stats = InterfaceStats {
                ifindex: iface.ifindex,
                ..Default::default()
            };
            if let Some(counters) = fast_path.get(i) {
                add_summed(&mut stats, counters);
            }
            // Frames that took the fallback hash (no slot, or raced the attach).
            if let Ok(per_cpu) = self.counters.get(&iface.ifindex, 0) {
                add_counters(&mut stats, &per_cpu);
            }
            read_kernel_statistics(&iface.name, &mut stats);
            snapshot.interfaces.insert(iface.name.clone(), stats);
            snapshot.attachments.push(ProgramAttachment {
                program: PROGRAM_NAME.to_owned(),
                attach: attachment.mode.label().to_owned(),
                device: iface.name.clone(),
            });
        }
        for (slot, label) in PROGRAM_ERROR_LABELS.iter().enumerate() {
            let count = self
                .errors
                .get(&(slot as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            snapshot
                .program_errors
                .insert((PROGRAM_NAME.to_owned(), (*label).to_owned()), count);
        }
        self.forget_detached(&attached);
    }

    fn forget_detached(&mut self, attached: &HashSet<u32>) {
        let stale: Vec<u32> = self
            .counters
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !attached.contains(ifindex))
            .collect();
        for ifindex in stale {
            debug!(ifindex, "dropping counters of a detached interface");
            let _ = self.counters.remove(&ifindex);
        }
    }
}

/// Sums one interface's per-CPU counters into `stats`.
fn add_counters(stats: &mut InterfaceStats, per_cpu: &PerCpuValues<InterfaceCounters>) {
    for cpu in per_cpu.iter() {
        add_summed(stats, cpu);
    }
}

/// Adds counters (already summed over CPUs) into `stats`.
fn add_summed(stats: &mut InterfaceStats, counters: &InterfaceCounters) {
    for (family, row) in counters.packets.iter().enumerate() {
        for (protocol, packets) in row.iter().enumerate() {
            stats.packets[family][protocol] += packets;
            stats.bytes[family][protocol] += counters.bytes[family][protocol];
        }
    }
    stats.malformed += counters.malformed;
}

fn read_kernel_statistics(device: &str, stats: &mut InterfaceStats) {
    use crate::bpf::interfaces::statistic;
    // A vanished interface reads as zeros until the next attach pass drops it.
    stats.rx_dropped = statistic(device, "rx_dropped").unwrap_or(0);
    stats.rx_errors = statistic(device, "rx_errors").unwrap_or(0);
    stats.tx_dropped = statistic(device, "tx_dropped").unwrap_or(0);
    stats.tx_errors = statistic(device, "tx_errors").unwrap_or(0);
}

/// Numbers the snapshots and stamps them with the time of the poll.
pub struct SnapshotClock {
    started: Instant,
    seq: u64,
}

impl Default for SnapshotClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotClock {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            seq: 0,
        }
    }

    /// An empty snapshot for the next poll.
    pub fn start_poll(&mut self) -> Snapshot {
        self.seq += 1;
        Snapshot {
            seq: self.seq,
            uptime: self.started.elapsed(),
            taken_at: Some(SystemTime::now()),
            interfaces: BTreeMap::new(),
            ..Default::default()
        }
    }
}
