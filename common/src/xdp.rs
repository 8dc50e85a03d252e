//! The XDP packet counter: map names, counter layout and classification slots.

use core::mem::size_of;

/// Name of the XDP program in the eBPF object, and in the daemon's metrics
/// and logs whichever of its two builds is loaded.
pub const PROGRAM_NAME: &str = "xdp_packet_counter";
/// The same program with packet events compiled in, loaded instead of
/// [`PROGRAM_NAME`] when `sample_rate` is not 0.
pub const SAMPLED_PROGRAM_NAME: &str = "xdp_packet_counter_sampled";

/// The object's entry point for a sample rate (0: events off).
pub const fn program_symbol(sample_rate: u32) -> &'static str {
    if sample_rate == 0 {
        PROGRAM_NAME
    } else {
        SAMPLED_PROGRAM_NAME
    }
}

/// Array (mmapable, so its values start on a page) of one
/// [`LowIfindexCounters`] table per CPU, indexed by CPU id; user space sets
/// its size to the highest possible CPU id + 1 at load. A table holds the
/// counters of every interface with an ifindex below [`LOW_IFINDEX_LIMIT`]
/// (a node's own NICs, bridges and tunnels, in practice), indexed by the
/// ifindex itself. The fastest path: the counter's address is computed
/// from the CPU id and the ifindex, with no load from the map (a per-CPU
/// map would need one, through its per-CPU pointer), so the only chain of
/// loads per frame is ctx -> ifindex -> counter. Each CPU writes only its
/// own table, as with a per-CPU map. User space never writes it (a write
/// would race the program); it notes an entry's value when it attaches and
/// counts from there.
pub const LOW_IFINDEX_COUNTERS_MAP: &str = "XDP_LOW_IFINDEX_COUNTERS";
/// The benchmark object's `xdp_count_floor` counts in a table like
/// [`LOW_IFINDEX_COUNTERS_MAP`], sized the same way at load (the daemon's
/// object has neither).
pub const FLOOR_COUNTERS_MAP: &str = "XDP_FLOOR_COUNTERS";
/// Array: interface index (`u32`, from [`LOW_IFINDEX_LIMIT`] up to
/// [`DIRECT_IFINDEX_LIMIT`]) -> its counter slot + 1 (0: no slot). Written
/// by user space at attach.
pub const SLOTS_MAP: &str = "XDP_SLOTS";
/// Per-CPU array: counter slot -> [`InterfaceCounters`]. The path of
/// ifindexes from [`LOW_IFINDEX_LIMIT`] up: two inlined array lookups per
/// frame, no hashing.
pub const SLOT_COUNTERS_MAP: &str = "XDP_SLOT_COUNTERS";
/// Per-CPU hash map: interface index (`u32`) -> [`InterfaceCounters`], for
/// frames on interfaces with neither a low-ifindex entry nor a slot (an
/// ifindex beyond [`DIRECT_IFINDEX_LIMIT`], every slot taken, or a frame
/// that raced the attach). User space adds it to the other source.
pub const COUNTERS_MAP: &str = "XDP_COUNTERS";
/// Per-CPU array: [`XdpError`] slot -> number of times it happened (`u64`).
pub const ERRORS_MAP: &str = "XDP_ERRORS";

/// Upper bound of interfaces tracked at once by [`COUNTERS_MAP`].
pub const MAX_INTERFACES: u32 = 1024;
/// Interfaces with an ifindex from [`LOW_IFINDEX_LIMIT`] up to below this
/// get a slot in [`SLOTS_MAP`].
pub const DIRECT_IFINDEX_LIMIT: u32 = 16384;
/// Number of counter slots in [`SLOT_COUNTERS_MAP`].
pub const COUNTER_SLOTS: u32 = 128;
/// Interfaces with an ifindex below this are counted in
/// [`LOW_IFINDEX_COUNTERS_MAP`]: 128 x 256 bytes, 32 KiB per CPU.
pub const LOW_IFINDEX_LIMIT: u32 = 128;

/// Address family slot, first index of the counter tables.
pub const FAMILY_IPV4: usize = 0;
pub const FAMILY_IPV6: usize = 1;
pub const FAMILY_OTHER: usize = 2;
pub const FAMILIES: usize = 3;

/// Transport protocol slot, second index of the counter tables.
pub const PROTOCOL_TCP: usize = 0;
pub const PROTOCOL_UDP: usize = 1;
/// ICMP for IPv4, ICMPv6 for IPv6.
pub const PROTOCOL_ICMP: usize = 2;
pub const PROTOCOL_OTHER: usize = 3;
pub const PROTOCOLS: usize = 4;

/// Label values, indexed by the slots above.
pub const FAMILY_LABELS: [&str; FAMILIES] = ["ipv4", "ipv6", "other"];
pub const PROTOCOL_LABELS: [&str; PROTOCOLS] = ["tcp", "udp", "icmp", "other"];

/// Most 802.1Q / 802.1ad tags the parser walks through.
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers the parser walks through before it gives up
/// and counts the packet's protocol as `other`.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Counters of one interface on one CPU. User space sums them over all CPUs.
///
/// Every frame the program sees is counted exactly once in `packets`
/// (under the family and protocol the parser could determine), and once
/// more in `malformed` when its headers were cut short.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// `[family][protocol]` packet counts.
    pub packets: [[u64; PROTOCOLS]; FAMILIES],
    /// `[family][protocol]` byte counts (the L2 frame length XDP sees).
    pub bytes: [[u64; PROTOCOLS]; FAMILIES],
    /// Frames whose headers were truncated.
    pub malformed: u64,
}

const _: () = assert!(size_of::<InterfaceCounters>() == 2 * FAMILIES * PROTOCOLS * 8 + 8);

impl InterfaceCounters {
    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &Self) {
        for (family, row) in other.packets.iter().enumerate() {
            for (protocol, packets) in row.iter().enumerate() {
                self.packets[family][protocol] += packets;
                self.bytes[family][protocol] += other.bytes[family][protocol];
            }
        }
        self.malformed += other.malformed;
    }

    /// What these (monotonic) counters gained since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut gained = *self;
        for (family, row) in earlier.packets.iter().enumerate() {
            for (protocol, packets) in row.iter().enumerate() {
                gained.packets[family][protocol] =
                    gained.packets[family][protocol].wrapping_sub(*packets);
                gained.bytes[family][protocol] =
                    gained.bytes[family][protocol].wrapping_sub(earlier.bytes[family][protocol]);
            }
        }
        gained.malformed = gained.malformed.wrapping_sub(earlier.malformed);
        gained
    }
}

/// One interface's entry in a CPU's low-ifindex table: its counters,
/// padded to 256 bytes. A power of two, so the program finds the entry
/// (and the CPU's table) with a shift rather than a multiply, on every
/// frame's critical path; and every entry starts on a cache line of its
/// own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowIfindexEntry {
    pub counters: InterfaceCounters,
    /// Explicit, so the type has no implicit padding.
    pub _padding: [u64; 7],
}

const _: () = assert!(size_of::<LowIfindexEntry>() == 256);

/// One CPU's table in [`LOW_IFINDEX_COUNTERS_MAP`].
pub type LowIfindexCounters = [LowIfindexEntry; LOW_IFINDEX_LIMIT as usize];

// CPUs' tables must not share a cache line: the values start on a page,
// so a table must be a whole number of lines.
const _: () = assert!(size_of::<LowIfindexCounters>().is_multiple_of(64));

/// Slots of [`ERRORS_MAP`]: the program's own failures. On any of them the
/// packet still passes; only the counter moves.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpError {
    /// [`COUNTERS_MAP`] was full, the packet could not be counted.
    CountersMapFull = 0,
}

pub const PROGRAM_ERROR_SLOTS: u32 = 1;
pub const PROGRAM_ERROR_LABELS: [&str; PROGRAM_ERROR_SLOTS as usize] = ["counters_map_full"];

#[cfg(feature = "user")]
// SAFETY: `InterfaceCounters` is `#[repr(C)]`, made only of `u64`s (no
// padding, no pointers), so every bit pattern is a valid value.
unsafe impl aya::Pod for InterfaceCounters {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `u64`s only (the padding is an explicit field).
unsafe impl aya::Pod for LowIfindexEntry {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampled_build_is_chosen_by_the_rate() {
        assert_eq!(program_symbol(0), PROGRAM_NAME);
        assert_eq!(program_symbol(1), SAMPLED_PROGRAM_NAME);
        assert_eq!(program_symbol(100), SAMPLED_PROGRAM_NAME);
    }

    #[test]
    fn counters_add_and_gain_since_a_baseline() {
        let mut a = InterfaceCounters::default();
        a.packets[FAMILY_IPV4][PROTOCOL_UDP] = 5;
        a.bytes[FAMILY_IPV4][PROTOCOL_UDP] = 500;
        a.malformed = 1;
        let mut b = a;
        b.packets[FAMILY_IPV6][PROTOCOL_TCP] = 2;
        b.bytes[FAMILY_IPV6][PROTOCOL_TCP] = 120;
        let mut sum = a;
        sum.add(&b);
        assert_eq!(sum.packets[FAMILY_IPV4][PROTOCOL_UDP], 10);
        assert_eq!(sum.bytes[FAMILY_IPV6][PROTOCOL_TCP], 120);
        assert_eq!(sum.malformed, 2);
        let gained = sum.since(&a);
        assert_eq!(gained, b);
        assert_eq!(a.since(&a), InterfaceCounters::default());
    }
}
