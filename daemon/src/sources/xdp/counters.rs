//! Where `xdp_packet_counter` counts an interface's frames: three tiers,
//! chosen by the interface's ifindex (see `telemetryd_common::xdp`):
//!
//! - ifindex below [`LOW_IFINDEX_LIMIT`]: its entry of the low-ifindex
//!   table, whose address the program computes from the CPU id and the
//!   ifindex (no map lookup);
//! - ifindex from there to [`DIRECT_IFINDEX_LIMIT`]: a counter slot, given
//!   out at attach (two dependent array lookups);
//! - anything else, and every frame that raced an attach: the hash.
//!
//! Measured side by side (`cargo xtask bench xdp`, README): each tier
//! costs clearly less than the next, so all three are kept.

use std::collections::{HashSet, VecDeque};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use telemetryd_common::xdp::{
    InterfaceCounters, LowIfindexCounters, COUNTERS_MAP, COUNTER_SLOTS, DIRECT_IFINDEX_LIMIT,
    ERRORS_MAP, LOW_IFINDEX_COUNTERS_MAP, LOW_IFINDEX_LIMIT, PROGRAM_ERROR_SLOTS, SLOTS_MAP,
    SLOT_COUNTERS_MAP,
};
use tracing::{debug, warn};

use crate::loader::{LoadError, LoadedObject};

/// Where the program counts an attached interface's frames, besides the
/// hash (which also catches frames that raced the attach).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterPlace {
    /// Its entry of the low-ifindex table; `baseline` is what the entry
    /// held when it was attached (left by an earlier interface with the same
    /// ifindex: user space never writes the table, which would race the
    /// program).
    LowIfindex { baseline: InterfaceCounters },
    /// A counter slot, zeroed when it was given out.
    Slot(u32),
    /// The hash alone.
    Hash,
}

impl CounterPlace {
    /// A label for the log.
    pub fn label(&self) -> &'static str {
        match self {
            CounterPlace::LowIfindex { .. } => "low-ifindex table",
            CounterPlace::Slot(_) => "slot",
            CounterPlace::Hash => "hash",
        }
    }
}

/// Which counter slots are free. A freed slot goes to the back of the
/// queue, so it is handed out again as late as possible: long after any
/// frame still in flight on the old interface (XDP runs under RCU, a grace
/// period is microseconds) could touch it.
#[derive(Debug)]
pub struct SlotAllocator {
    free: VecDeque<u32>,
}

impl SlotAllocator {
    pub fn new(slots: u32) -> Self {
        Self {
            free: (0..slots).collect(),
        }
    }

    /// Whether an interface of this ifindex is counted in a slot (when one
    /// is free) rather than the low-ifindex table or the hash.
    pub fn serves(ifindex: u32) -> bool {
        (LOW_IFINDEX_LIMIT..DIRECT_IFINDEX_LIMIT).contains(&ifindex)
    }

    /// The free slot freed longest ago, if any.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop_front()
    }

    /// Puts `slot` at the back of the queue.
    pub fn give_back(&mut self, slot: u32) {
        debug_assert!(!self.free.contains(&slot), "slot {slot} freed twice");
        self.free.push_back(slot);
    }

    /// Takes `slot` out of the free queue (a slot an adopted link's
    /// interface already counts in); false if it was not free.
    pub fn claim(&mut self, slot: u32) -> bool {
        let before = self.free.len();
        self.free.retain(|&s| s != slot);
        self.free.len() < before
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }
}

/// The program's counter maps, owned once taken out of the object.
pub struct CounterMaps {
    /// Read only: see [`CounterPlace::LowIfindex`].
    low_ifindex: Array<MapData, LowIfindexCounters>,
    slot_of_ifindex: Array<MapData, u32>,
    slot_counters: PerCpuArray<MapData, InterfaceCounters>,
    hash: PerCpuHashMap<MapData, u32, InterfaceCounters>,
    errors: PerCpuArray<MapData, u64>,
    slots: SlotAllocator,
}

impl CounterMaps {
    pub fn take(object: &mut LoadedObject) -> Result<Self, LoadError> {
        Ok(Self {
            low_ifindex: object.take_map(LOW_IFINDEX_COUNTERS_MAP)?,
            slot_of_ifindex: object.take_map(SLOTS_MAP)?,
            slot_counters: object.take_map(SLOT_COUNTERS_MAP)?,
            hash: object.take_map(COUNTERS_MAP)?,
            errors: object.take_map(ERRORS_MAP)?,
            slots: SlotAllocator::new(COUNTER_SLOTS),
        })
    }

    /// Where `ifindex` is to be counted: its low-ifindex entry (noting
    /// what the entry holds now), else a zeroed slot, else the hash alone:
    /// its ifindex is beyond the slot table, every slot is taken, or a map
    /// access failed (logged). A slot's counters are zeroed before its
    /// ifindex mapping is written, and both before the program is attached.
    pub fn assign(&mut self, ifindex: u32) -> CounterPlace {
        if ifindex < LOW_IFINDEX_LIMIT {
            return match self.read_low_ifindex() {
                Some(table) => CounterPlace::LowIfindex {
                    baseline: low_ifindex_entry(&table, ifindex),
                },
                None => {
                    warn!(
                        ifindex,
                        "reading the low-ifindex table; counted through the hash"
                    );
                    CounterPlace::Hash
                }
            };
        }
        if !SlotAllocator::serves(ifindex) {
            debug!(
                ifindex,
                "ifindex beyond the slot table; counted through the hash"
            );
            return CounterPlace::Hash;
        }
        let Some(slot) = self.slots.take() else {
            debug!(
                ifindex,
                "every counter slot is taken; counted through the hash"
            );
            return CounterPlace::Hash;
        };
        let zeroed = PerCpuValues::try_from(vec![InterfaceCounters::default(); nr_cpus()])
            .map_err(|e| e.to_string())
            .and_then(|zero| {
                self.slot_counters
                    .set(slot, zero, 0)
                    .map_err(|e| e.to_string())
            })
            .and_then(|()| {
                self.slot_of_ifindex
                    .set(ifindex, slot + 1, 0)
                    .map_err(|e| e.to_string())
            });
        match zeroed {
            Ok(()) => CounterPlace::Slot(slot),
            Err(error) => {
                warn!(ifindex, slot, %error, "assigning a counter slot; counted through the hash");
                let _ = self.slot_of_ifindex.set(ifindex, 0, 0);
                self.slots.give_back(slot);
                CounterPlace::Hash
            }
        }
    }

    /// Where an interface whose link was adopted from its pin already
    /// counts: its low-ifindex entry from zero (the earlier run's baseline is
    /// gone; an earlier interface of this ifindex in the same pinned table
    /// would show through), its mapped slot (claimed, not zeroed), or the hash.
    pub fn adopt(&mut self, ifindex: u32) -> CounterPlace {
        if ifindex < LOW_IFINDEX_LIMIT {
            return CounterPlace::LowIfindex {
                baseline: InterfaceCounters::default(),
            };
        }
        if SlotAllocator::serves(ifindex) {
            if let Ok(mapped) = self.slot_of_ifindex.get(&ifindex, 0) {
                if mapped > 0 && self.slots.claim(mapped - 1) {
                    return CounterPlace::Slot(mapped - 1);
                }
            }
        }
        CounterPlace::Hash
    }

    /// Unmaps `ifindex` and queues its slot for reuse. A low-ifindex entry
    /// needs nothing: the next interface with this ifindex notes where it
    /// starts from.
    pub fn release(&mut self, ifindex: u32, place: &CounterPlace) {
        let CounterPlace::Slot(slot) = *place else {
            return;
        };
        if let Err(error) = self.slot_of_ifindex.set(ifindex, 0, 0) {
            // The slot stays mapped; never hand it to another interface.
            warn!(ifindex, slot, %error, "unmapping a counter slot; it is not reused");
            return;
        }
        self.slots.give_back(slot);
    }

    /// The counters of each `(ifindex, place)` (in order) from its
    /// low-ifindex entry or its slot, summed over CPUs; zero for those
    /// counted by the hash alone. Reads the low-ifindex table once.
    pub fn fast_path(&self, places: &[(u32, &CounterPlace)]) -> Vec<InterfaceCounters> {
        let needs_table = places
            .iter()
            .any(|(_, p)| matches!(p, CounterPlace::LowIfindex { .. }));
        let table = if needs_table {
            self.read_low_ifindex()
        } else {
            None
        };
        places
            .iter()
            .map(|(ifindex, place)| match place {
                CounterPlace::LowIfindex { baseline } => table
                    .as_ref()
                    .map(|table| low_ifindex_entry(table, *ifindex))
                    .unwrap_or_default()
                    .since(baseline),
                CounterPlace::Slot(slot) => {
                    let mut sum = InterfaceCounters::default();
                    if let Ok(per_cpu) = self.slot_counters.get(slot, 0) {
                        per_cpu.iter().for_each(|cpu| sum.add(cpu));
                    }
                    sum
                }
                CounterPlace::Hash => InterfaceCounters::default(),
            })
            .collect()
    }

    /// What the hash holds for `ifindex`, summed over CPUs.
    pub fn hashed(&self, ifindex: u32) -> InterfaceCounters {
        let mut sum = InterfaceCounters::default();
        if let Ok(per_cpu) = self.hash.get(&ifindex, 0) {
            per_cpu.iter().for_each(|cpu| sum.add(cpu));
        }
        sum
    }

    /// Removes hash entries of interfaces not in `attached`.
    pub fn forget_detached(&mut self, attached: &HashSet<u32>) {
        let stale: Vec<u32> = self
            .hash
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !attached.contains(ifindex))
            .collect();
        for ifindex in stale {
            debug!(ifindex, "dropping counters of a detached interface");
            let _ = self.hash.remove(&ifindex);
        }
    }

    /// The program's own errors by slot, summed over CPUs.
    pub fn errors(&self) -> [u64; PROGRAM_ERROR_SLOTS as usize] {
        std::array::from_fn(|slot| {
            self.errors
                .get(&(slot as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        })
    }

    /// The low-ifindex table's entry of `ifindex`, summed over CPUs, as it
    /// stands (no baseline): for tests that drive the program themselves.
    pub fn low_ifindex_counters(&self, ifindex: u32) -> Option<InterfaceCounters> {
        (ifindex < LOW_IFINDEX_LIMIT)
            .then(|| self.read_low_ifindex())
            .flatten()
            .map(|table| low_ifindex_entry(&table, ifindex))
    }

    /// The same entry in each CPU's table, indexed by CPU id.
    pub fn low_ifindex_counters_by_cpu(&self, ifindex: u32) -> Option<Vec<InterfaceCounters>> {
        let table = self.read_low_ifindex()?;
        table
            .iter()
            .map(|cpu| cpu.get(ifindex as usize).map(|entry| entry.counters))
            .collect()
    }

    /// The low-ifindex table of every CPU, `None` when a read failed.
    fn read_low_ifindex(&self) -> Option<Vec<LowIfindexCounters>> {
        (0..self.low_ifindex.len())
            .map(|cpu| self.low_ifindex.get(&cpu, 0).ok())
            .collect()
    }
}

/// `ifindex`'s entry of the low-ifindex table, summed over CPUs.
fn low_ifindex_entry(table: &[LowIfindexCounters], ifindex: u32) -> InterfaceCounters {
    let mut sum = InterfaceCounters::default();
    for cpu in table {
        if let Some(entry) = cpu.get(ifindex as usize) {
            sum.add(&entry.counters);
        }
    }
    sum
}

/// Possible CPUs, the length of a per-CPU map value.
fn nr_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

/// Highest possible CPU id + 1: the rows of the low-ifindex table, which
/// the program indexes by CPU id. Possible CPUs are `0..n` on every kernel
/// we know; should the list have holes, the table still covers the highest
/// id. Unreadable: as many rows as aya counts CPUs (a CPU beyond the table
/// is counted through the hash, so nothing is lost).
pub fn cpu_id_bound() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|list| highest_cpu_in(&list))
        .map(|highest| highest + 1)
        .unwrap_or_else(|| aya::util::nr_cpus().map_or(1, |n| n as u32))
}

/// The highest id of a kernel CPU list ("0-3,8-11\n" -> 11).
fn highest_cpu_in(list: &str) -> Option<u32> {
    list.trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.trim().parse::<u32>().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_as_late_as_possible() {
        let mut slots = SlotAllocator::new(3);
        assert_eq!((slots.take(), slots.take()), (Some(0), Some(1)));
        slots.give_back(0);
        // Slot 2 was never used: it goes before the freed 0.
        assert_eq!(slots.take(), Some(2));
        assert_eq!(slots.take(), Some(0));
        assert_eq!(slots.take(), None, "all taken");
        slots.give_back(1);
        slots.give_back(2);
        assert_eq!(slots.free(), 2);
        assert_eq!((slots.take(), slots.take()), (Some(1), Some(2)));
    }

    #[test]
    fn a_slot_comes_back_after_every_other_slot_went_out_once() {
        let mut slots = SlotAllocator::new(COUNTER_SLOTS);
        let first = slots.take().unwrap();
        slots.give_back(first);
        let rounds: Vec<u32> = (0..COUNTER_SLOTS)
            .map(|_| {
                let slot = slots.take().unwrap();
                slots.give_back(slot);
                slot
            })
            .collect();
        assert_eq!(*rounds.last().unwrap(), first);
        assert!(!rounds[..rounds.len() - 1].contains(&first));
    }

    #[test]
    fn slots_serve_the_middle_ifindexes_only() {
        assert!(!SlotAllocator::serves(LOW_IFINDEX_LIMIT - 1));
        assert!(SlotAllocator::serves(LOW_IFINDEX_LIMIT));
        assert!(SlotAllocator::serves(300));
        assert!(SlotAllocator::serves(DIRECT_IFINDEX_LIMIT - 1));
        assert!(!SlotAllocator::serves(DIRECT_IFINDEX_LIMIT));
    }

    #[test]
    fn the_cpu_table_covers_the_highest_possible_cpu() {
        assert_eq!(highest_cpu_in("0\n"), Some(0));
        assert_eq!(highest_cpu_in("0-1\n"), Some(1));
        assert_eq!(highest_cpu_in("0-3,8-11\n"), Some(11));
        assert_eq!(highest_cpu_in("0,2,5"), Some(5));
        assert_eq!(highest_cpu_in(""), None);
        assert_eq!(highest_cpu_in("x-y"), None);
        let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
        assert!(
            cpu_id_bound() as usize >= aya::util::nr_cpus().unwrap(),
            "{possible}"
        );
    }
}
