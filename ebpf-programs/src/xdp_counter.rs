//! `xdp_packet_counter`: counts every frame by interface, address family and
//! transport protocol. Observe only: it returns `XDP_PASS` on every path,
//! including its own errors, which it counts in `XDP_ERRORS`.

use core::{mem::size_of, ptr::NonNull};

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use aya_log_ebpf::error;

use crate::packet_events;
use telemetryd_common::xdp::{
    InterfaceCounters, LowIfindexCounters, XdpError, COUNTER_SLOTS, DIRECT_IFINDEX_LIMIT, FAMILIES,
    FAMILY_IPV4, FAMILY_IPV6, FAMILY_OTHER, LOW_IFINDEX_LIMIT, MAX_INTERFACES,
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PROGRAM_ERROR_SLOTS, PROTOCOLS, PROTOCOL_ICMP,
    PROTOCOL_OTHER, PROTOCOL_TCP, PROTOCOL_UDP,
};

/// One row per CPU, indexed by CPU id (user space sizes it to the
/// possible CPUs at load). Mmapable so that the kernel places the values on
/// a page boundary: rows are a multiple of 64 bytes, so no two CPUs ever
/// write the same cache line.
#[map(name = "XDP_LOW_IFINDEX_COUNTERS")]
static XDP_LOW_IFINDEX_COUNTERS: Array<LowIfindexCounters> =
    Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "XDP_SLOTS")]
static XDP_SLOTS: Array<u32> = Array::with_max_entries(DIRECT_IFINDEX_LIMIT, 0);

#[map(name = "XDP_SLOT_COUNTERS")]
static XDP_SLOT_COUNTERS: PerCpuArray<InterfaceCounters> =
    PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "XDP_COUNTERS")]
static XDP_COUNTERS: PerCpuHashMap<u32, InterfaceCounters> =
    PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);

#[map(name = "XDP_ERRORS")]
static XDP_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAM_ERROR_SLOTS, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// Smallest header a transport protocol must have for the frame to count
/// as well formed (only checked where the transport header is present,
/// i.e. not in non-first fragments).
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_MIN_HLEN: usize = 4;

/// Parser bound on offsets: no header we read starts beyond this. Keeps every
/// packet pointer the verifier sees within a known range.
const MAX_HEADER_OFFSET: usize = 512;

/// What the parser found out about one frame.
pub(crate) struct Classification {
    pub(crate) family: usize,
    pub(crate) protocol: usize,
    pub(crate) malformed: bool,
    /// Offset of the IP header when it is complete, else 0.
    pub(crate) l3: usize,
    /// Offset of the transport header when it is present and complete
    /// (not in later fragments), else 0.
    pub(crate) l4: usize,
}

impl Classification {
    const fn new(family: usize, protocol: usize) -> Self {
        Self {
            family,
            protocol,
            malformed: false,
            l3: 0,
            l4: 0,
        }
    }

    /// The fast path's frame: untagged IPv4 without options.
    const fn common_ipv4(protocol: usize) -> Self {
        Self {
            family: FAMILY_IPV4,
            protocol,
            malformed: false,
            l3: ETH_HLEN,
            l4: ETH_HLEN + IPV4_MIN_HLEN,
        }
    }

    const fn truncated(family: usize) -> Self {
        Self {
            family,
            protocol: PROTOCOL_OTHER,
            malformed: true,
            l3: 0,
            l4: 0,
        }
    }
}

/// The program attached when packet events are off (the default): no
/// sampling code at all. With sampling compiled in but off, the verifier
/// removes the sampling branch but not the load of the rate that decides
/// it, a cache line of its own on every frame (README, "What it costs").
#[xdp]
pub fn xdp_packet_counter(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

/// The same program with packet events: the one user space loads when
/// `sample_rate` is not 0. The kernel shows both as `xdp_packet_coun`
/// (names are cut at 15 bytes).
#[xdp]
pub fn xdp_packet_counter_sampled(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

#[inline(always)]
fn run<const SAMPLED: bool>(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // The fast path ends on its own rather than joining the full parser's
    // result: with its classification constant, the compiler keeps it in
    // registers, where a shared tail would spill the struct to the stack on
    // every frame. The full parser is a function of its own so that the
    // compiler cannot merge the two tails back into one.
    if let Some(class) = classify_common_ipv4(ctx) {
        count_and_sample::<SAMPLED>(ctx, &class, len);
        return xdp_action::XDP_PASS;
    }
    count_parsed::<SAMPLED>(ctx, len);
    xdp_action::XDP_PASS
}

/// Everything off the fast path: the full parser, then the same counting.
#[inline(never)]
fn count_parsed<const SAMPLED: bool>(ctx: &XdpContext, len: u64) {
    let class = classify_full(ctx);
    count_and_sample::<SAMPLED>(ctx, &class, len);
}

/// Counts the frame and, in the sampled build, publishes it when picked.
///
/// The order is for the verifier: the sampler picks the frame and stores
/// what the event needs *before* the counting tiers, so that nothing of
/// the classification is live across them. Each tier (and the first
/// insert into the hash, a call) ends in a state of its own; had the
/// classification still been needed after them, the verifier would walk
/// the event path once per tier and per parser outcome. Before 6.4 the
/// verifier cannot follow precision marks through calls and marks every
/// scalar precise instead, so states that differ in any constant never
/// prune each other: 6.1 gave up after 1M instructions. Only `picked`
/// (true or false) crosses the tiers now: about 86,000 instructions on
/// 6.1 (`packet_events`' verifier-cost test guards it). Two orders that
/// look cheaper fail there: publishing before counting (111,000 to
/// 122,000 on 6.1, and no faster), and looking up the counters before the
/// pick (over 1M again: the counter pointer then crosses the pick). This
/// order costs the sampled build about 1 ns per frame over counting first
/// (`TELEMETRYD_BENCH_BASELINE=... cargo xtask bench xdp`); the build
/// without events is unchanged.
#[inline(always)]
fn count_and_sample<const SAMPLED: bool>(ctx: &XdpContext, class: &Classification, len: u64) {
    let picked = SAMPLED && packet_events::pick(class, len);
    count(ctx, class, len);
    if picked {
        packet_events::publish(ctx);
    }
}

/// Reads `N` bytes at `offset`, or `None` when the frame is shorter.
#[inline(always)]
pub(crate) fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    let start = ctx.data() + offset;
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: `start..start + N` lies inside the packet, checked just above
    // against `data_end` in the form the verifier tracks; `[u8; N]` has no
    // alignment requirement.
    Some(unsafe { *(start as *const [u8; N]) })
}

#[inline(always)]
fn u16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    bytes_at::<2>(ctx, offset).map(u16::from_be_bytes)
}

/// The common case in one bounds check: an untagged IPv4 packet without
/// options, not a later fragment, whose TCP/UDP/ICMP header is complete.
/// `None` sends the frame through the full parser, which classifies
/// everything (this one only saves it the work).
#[inline(always)]
fn classify_common_ipv4(ctx: &XdpContext) -> Option<Classification> {
    const HEADERS: usize = ETH_HLEN + IPV4_MIN_HLEN;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + HEADERS + UDP_HLEN > end {
        return None;
    }
    // SAFETY: every byte read below lies in `start..start + HEADERS + 8`,
    // inside the frame per the check above; u8 reads need no alignment.
    let (ether_hi, ether_lo, version_ihl, fragment_hi, fragment_lo, protocol) = unsafe {
        let p = start as *const u8;
        (
            *p.add(12),
            *p.add(13),
            *p.add(ETH_HLEN),
            *p.add(ETH_HLEN + 6),
            *p.add(ETH_HLEN + 7),
            *p.add(ETH_HLEN + 9),
        )
    };
    if ether_hi != 0x08
        || ether_lo != 0x00
        || version_ihl != 0x45
        || fragment_lo != 0
        || fragment_hi & 0x1f != 0
    {
        return None;
    }
    match protocol {
        IPPROTO_UDP => Some(Classification::common_ipv4(PROTOCOL_UDP)),
        IPPROTO_ICMP => Some(Classification::common_ipv4(PROTOCOL_ICMP)),
        IPPROTO_TCP if start + HEADERS + TCP_MIN_HLEN <= end => {
            Some(Classification::common_ipv4(PROTOCOL_TCP))
        }
        _ => None,
    }
}

/// Classifies any frame (the fast path's frames too, the same way).
#[inline(always)]
fn classify_full(ctx: &XdpContext) -> Classification {
    let Some(mut ether_type) = u16_at(ctx, ETH_HLEN - 2) else {
        return Classification::truncated(FAMILY_OTHER);
    };
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // The tag is TCI (2 bytes) then the inner EtherType.
        match u16_at(ctx, offset + 2) {
            Some(inner) => ether_type = inner,
            None => return Classification::truncated(FAMILY_OTHER),
        }
        offset += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => classify_ipv4(ctx, offset),
        ETH_P_IPV6 => classify_ipv6(ctx, offset),
        _ => Classification::new(FAMILY_OTHER, PROTOCOL_OTHER),
    }
}

#[inline(always)]
fn classify_ipv4(ctx: &XdpContext, offset: usize) -> Classification {
    let Some(header) = bytes_at::<IPV4_MIN_HLEN>(ctx, offset) else {
        return Classification::truncated(FAMILY_IPV4);
    };
    let version = header[0] >> 4;
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if version != 4 || header_len < IPV4_MIN_HLEN {
        return Classification::truncated(FAMILY_IPV4);
    }
    // Options, if any, must be there too.
    if bytes_at::<1>(ctx, offset + header_len - 1).is_none() {
        return Classification::truncated(FAMILY_IPV4);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let protocol = match header[9] {
        IPPROTO_TCP => PROTOCOL_TCP,
        IPPROTO_UDP => PROTOCOL_UDP,
        IPPROTO_ICMP => PROTOCOL_ICMP,
        _ => PROTOCOL_OTHER,
    };
    transport(
        ctx,
        FAMILY_IPV4,
        protocol,
        offset,
        offset + header_len,
        fragment_offset == 0,
    )
}

#[inline(always)]
fn classify_ipv6(ctx: &XdpContext, offset: usize) -> Classification {
    let Some(header) = bytes_at::<8>(ctx, offset) else {
        return Classification::truncated(FAMILY_IPV6);
    };
    if bytes_at::<1>(ctx, offset + IPV6_HLEN - 1).is_none() {
        return Classification::truncated(FAMILY_IPV6);
    }
    let mut next_header = header[6];
    let l3 = offset;
    let mut offset = offset + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = bytes_at::<2>(ctx, offset) else {
                    return Classification::truncated(FAMILY_IPV6);
                };
                next_header = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = bytes_at::<4>(ctx, offset) else {
                    return Classification::truncated(FAMILY_IPV6);
                };
                next_header = ext[0];
                first_fragment = u16::from_be_bytes([ext[2], ext[3]]) >> 3 == 0;
                8
            }
            IPPROTO_AH => {
                let Some(ext) = bytes_at::<2>(ctx, offset) else {
                    return Classification::truncated(FAMILY_IPV6);
                };
                next_header = ext[0];
                (ext[1] as usize + 2) * 4
            }
            _ => break,
        };
        // The whole extension header must be in the frame.
        if bytes_at::<1>(ctx, offset + header_len - 1).is_none() {
            return Classification::truncated(FAMILY_IPV6);
        }
        offset += header_len;
    }
    let protocol = match next_header {
        IPPROTO_TCP => PROTOCOL_TCP,
        IPPROTO_UDP => PROTOCOL_UDP,
        IPPROTO_ICMPV6 => PROTOCOL_ICMP,
        // Includes a chain longer than the parser walks.
        _ => PROTOCOL_OTHER,
    };
    transport(ctx, FAMILY_IPV6, protocol, l3, offset, first_fragment)
}

/// Checks that the transport header is complete where it must be present.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    family: usize,
    protocol: usize,
    l3: usize,
    offset: usize,
    has_transport_header: bool,
) -> Classification {
    let min_len = match protocol {
        PROTOCOL_TCP => TCP_MIN_HLEN,
        PROTOCOL_UDP => UDP_HLEN,
        PROTOCOL_ICMP => ICMP_MIN_HLEN,
        _ => 0,
    };
    let complete =
        !has_transport_header || min_len == 0 || bytes_at::<1>(ctx, offset + min_len - 1).is_some();
    Classification {
        family,
        protocol,
        malformed: !complete,
        l3,
        l4: if has_transport_header && complete && min_len != 0 {
            offset
        } else {
            0
        },
    }
}

/// This interface's counters on this CPU: its entry of the low-ifindex
/// table (an inlined lookup whose address is computed from the CPU id and
/// the ifindex, no memory load), else its slot when user space gave it one
/// (two array lookups, both inlined by the verifier, each depending on the
/// last), else the hash. `NonNull`, not `*mut`: `Option` of it is one
/// register, where an `Option<*mut _>` is two words the compiler keeps on
/// the stack.
#[inline(always)]
fn counters_of(ifindex: u32) -> Option<NonNull<InterfaceCounters>> {
    if ifindex < LOW_IFINDEX_LIMIT {
        // SAFETY: a helper without arguments; the verifier inlines it as a
        // read of the current CPU's number. XDP runs with migration off, so
        // the CPU cannot change under the program.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        if let Some(table) = XDP_LOW_IFINDEX_COUNTERS.get_ptr_mut(cpu) {
            // SAFETY: this CPU's row from a successful lookup; only this
            // CPU writes it, and XDP does not nest on a CPU.
            let table = unsafe { &mut *table };
            if let Some(entry) = table.get_mut(ifindex as usize) {
                return Some(NonNull::from(&mut entry.counters));
            }
        }
    }
    if let Some(&slot) = XDP_SLOTS.get(ifindex) {
        if slot != 0 {
            if let Some(counters) = XDP_SLOT_COUNTERS.get_ptr_mut(slot - 1) {
                return NonNull::new(counters);
            }
        }
    }
    XDP_COUNTERS.get_ptr_mut(ifindex).and_then(NonNull::new)
}

#[inline(always)]
fn count(ctx: &XdpContext, class: &Classification, len: u64) {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(counters) = counters_of(ifindex).or_else(|| first_counters(ctx, ifindex)) else {
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup of this CPU's
    // value; nothing else writes this CPU's slot while XDP runs on it.
    let counters = unsafe { &mut *counters.as_ptr() };
    if let Some(packets) = counters
        .packets
        .get_mut(class.family)
        .and_then(|row| row.get_mut(class.protocol))
    {
        *packets += 1;
    }
    if let Some(bytes) = counters
        .bytes
        .get_mut(class.family)
        .and_then(|row| row.get_mut(class.protocol))
    {
        *bytes += len;
    }
    if class.malformed {
        counters.malformed += 1;
    }
}

/// What a new entry of the hash starts from: all zeros, in read-only data.
/// The insert copies it from there; built on the stack instead, it would
/// be 200 bytes of stores in the program and 25 stack slots in every state
/// the verifier keeps below it.
static ZERO_COUNTERS: InterfaceCounters = InterfaceCounters {
    packets: [[0; PROTOCOLS]; FAMILIES],
    bytes: [[0; PROTOCOLS]; FAMILIES],
    malformed: 0,
};

/// The first frame on an interface with neither a table entry nor a slot:
/// a zeroed entry in the hash. A failed insert (map full) is the only way
/// to get here twice for one interface. A function of its own: the error
/// path's log call needs stack the fast path should not carry.
#[inline(never)]
fn first_counters(ctx: &XdpContext, ifindex: u32) -> Option<NonNull<InterfaceCounters>> {
    let _ = XDP_COUNTERS.insert(ifindex, &ZERO_COUNTERS, BPF_NOEXIST as u64);
    let counters = XDP_COUNTERS.get_ptr_mut(ifindex).and_then(NonNull::new);
    if counters.is_none() {
        record_error(ctx, XdpError::CountersMapFull, ifindex);
    }
    counters
}

/// Counts one of the program's own errors; logs it the first time it
/// happens on this CPU, so a persistent fault costs one log line per CPU.
#[inline(never)]
fn record_error(ctx: &XdpContext, error: XdpError, ifindex: u32) {
    if let Some(slot) = XDP_ERRORS.get_ptr_mut(error as u32) {
        // SAFETY: per-CPU slot from a successful lookup, see `count`.
        let slot = unsafe { &mut *slot };
        if *slot == 0 {
            error!(
                ctx,
                "xdp_packet_counter: counters map full, ifindex {} not counted", ifindex
            );
        }
        *slot += 1;
    }
}

const _: () = assert!(size_of::<InterfaceCounters>().is_multiple_of(8));
