//! Packet events: `xdp_packet_counter_sampled` (the build of
//! `xdp_packet_counter` loaded when sampling is on) publishes one frame in
//! `PACKET_SAMPLE_RATE` to the `PACKET_EVENTS` ring buffer. Observe only:
//! a full ring buffer costs the event (counted in `PACKET_EVENT_COUNTS`),
//! never the frame.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::XdpContext,
    Global,
};
use telemetryd_common::events::{
    EventCounter, PacketEvent, DEFAULT_RING_BUFFER_SIZE, EVENT_COUNTER_SLOTS, EVENT_HAS_ADDRESSES,
    EVENT_HAS_PORTS, EVENT_HAS_TCP_FLAGS, EVENT_MALFORMED,
};
use telemetryd_common::xdp::{FAMILY_IPV4, FAMILY_IPV6, PROTOCOL_TCP, PROTOCOL_UDP};

use crate::xdp_counter::{bytes_at, Classification};

/// 1 in N frames is published; 0 = off. Set by user space at load time
/// (read-only data, so the verifier sees a constant).
#[unsafe(no_mangle)]
static PACKET_SAMPLE_RATE: Global<u32> = Global::new(0);
/// `floor(2^32 / PACKET_SAMPLE_RATE)`, set with it (see
/// `telemetryd_common::events::sample_threshold`).
#[unsafe(no_mangle)]
static PACKET_SAMPLE_THRESHOLD: Global<u32> = Global::new(0);

#[map(name = "PACKET_EVENTS")]
static PACKET_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_SIZE, 0);

#[map(name = "PACKET_EVENT_COUNTS")]
static PACKET_EVENT_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(EVENT_COUNTER_SLOTS, 0);

/// What the parser found, handed to [`publish`] through map memory. The
/// verifier tracks every parser path's constants (family, offsets) exactly;
/// passing them as values would make it verify `publish` once per path and
/// exceed its 1M-instruction budget. Read back from a map they are plain
/// bounded scalars, so `publish` is verified once.
#[repr(C)]
struct Parsed {
    family: u32,
    protocol: u32,
    malformed: u32,
    l3: u32,
    l4: u32,
    len: u32,
}

#[map(name = "PACKET_EVENT_PARSED")]
static PACKET_EVENT_PARSED: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);

/// Decides whether this frame is published and, if so, stores what its
/// event needs for [`publish`]. Called only by `xdp_packet_counter_sampled`,
/// which user space loads when the rate is not 0; with the rate 0 the
/// verifier removes the rest. Returns whether to call [`publish`] (after
/// the frame is counted, see `xdp_counter::count_and_sample`).
#[inline(always)]
pub fn pick(class: &Classification, len: u64) -> bool {
    let rate = PACKET_SAMPLE_RATE.load();
    if rate == 0 {
        return false;
    }
    // 1 in `rate`: a uniform random number below floor(2^32 / rate), a
    // compare instead of a division on every frame.
    // SAFETY: the helper has no arguments or preconditions.
    if rate != 1 && unsafe { bpf_get_prandom_u32() } >= PACKET_SAMPLE_THRESHOLD.load() {
        return false;
    }
    bump(EventCounter::Sampled);
    let Some(parsed) = PACKET_EVENT_PARSED.get_ptr_mut(0) else {
        bump(EventCounter::Lost);
        return false;
    };
    // SAFETY: this CPU's slot from a successful lookup; only this program
    // on this CPU uses it, between this write and `publish` reading it
    // (XDP does not nest on a CPU).
    unsafe {
        *parsed = Parsed {
            family: class.family as u32,
            protocol: class.protocol as u32,
            malformed: class.malformed as u32,
            l3: class.l3 as u32,
            l4: class.l4 as u32,
            len: len as u32,
        };
    }
    true
}

/// Builds the event of the frame [`pick`] picked and submits it.
#[inline(never)]
pub fn publish(ctx: &XdpContext) {
    let Some(parsed) = PACKET_EVENT_PARSED.get_ptr(0) else {
        bump(EventCounter::Lost);
        return;
    };
    // SAFETY: this CPU's slot from a successful lookup, written by `pick`.
    let parsed = unsafe { &*parsed };
    let class = Classification {
        family: parsed.family as usize,
        protocol: parsed.protocol as usize,
        malformed: parsed.malformed != 0,
        l3: parsed.l3 as usize,
        l4: parsed.l4 as usize,
    };
    // Reserve first: a full ring buffer costs only this check, and the
    // event is written in place (the stack of two BPF frames is 512 bytes).
    let Some(mut entry) = PACKET_EVENTS.reserve::<PacketEvent>(0) else {
        bump(EventCounter::Lost);
        return;
    };
    let event = entry.write(PacketEvent {
        // SAFETY: a helper without arguments or preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        frame_len: parsed.len,
        family: class.family as u8,
        protocol: class.protocol as u8,
        ..PacketEvent::default()
    });
    if class.malformed {
        event.flags |= EVENT_MALFORMED;
    }
    if class.l3 != 0 {
        if class.family == FAMILY_IPV4 {
            if let Some(addresses) = bytes_at::<8>(ctx, class.l3 + 12) {
                event.src[..4].copy_from_slice(&addresses[..4]);
                event.dst[..4].copy_from_slice(&addresses[4..]);
                event.flags |= EVENT_HAS_ADDRESSES;
            }
        } else if class.family == FAMILY_IPV6 {
            if let Some(src) = bytes_at::<16>(ctx, class.l3 + 8) {
                if let Some(dst) = bytes_at::<16>(ctx, class.l3 + 24) {
                    event.src = src;
                    event.dst = dst;
                    event.flags |= EVENT_HAS_ADDRESSES;
                }
            }
        }
    }
    if class.l4 != 0 && (class.protocol == PROTOCOL_TCP || class.protocol == PROTOCOL_UDP) {
        if let Some(ports) = bytes_at::<4>(ctx, class.l4) {
            event.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            event.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            event.flags |= EVENT_HAS_PORTS;
        }
        if class.protocol == PROTOCOL_TCP {
            if let Some(flags) = bytes_at::<1>(ctx, class.l4 + 13) {
                event.tcp_flags = flags[0];
                event.flags |= EVENT_HAS_TCP_FLAGS;
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn bump(counter: EventCounter) {
    if let Some(slot) = PACKET_EVENT_COUNTS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot from a successful lookup; nothing else
        // writes it while XDP runs on this CPU.
        unsafe { *slot += 1 };
    }
}
