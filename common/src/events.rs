//! Packet events: what `xdp_packet_counter` publishes through the
//! [`EVENTS_MAP`] ring buffer for one sampled frame, and the counters that
//! account for every sampled frame.

use core::mem::size_of;

/// Ring buffer of [`PacketEvent`]s. Its size is set by user space at load
/// (`xdp.ring_buffer_size`); [`DEFAULT_RING_BUFFER_SIZE`] otherwise.
pub const EVENTS_MAP: &str = "PACKET_EVENTS";
/// The `source` label of the event metrics: the ring buffer, by what it carries.
pub const EVENTS_SOURCE: &str = "packet_events";
/// Per-CPU array: [`EventCounter`] slot -> count (`u64`).
pub const EVENT_COUNTERS_MAP: &str = "PACKET_EVENT_COUNTS";
/// Global (`u32`, read-only data): publish 1 frame in N; 0 = off, 1 = every frame.
pub const SAMPLE_RATE_GLOBAL: &str = "PACKET_SAMPLE_RATE";
/// Global (`u32`, read-only data): [`sample_threshold`] of the rate. A frame
/// is picked when `bpf_get_prandom_u32() < threshold`: a compare instead of
/// a division per frame.
pub const SAMPLE_THRESHOLD_GLOBAL: &str = "PACKET_SAMPLE_THRESHOLD";

/// The threshold that picks 1 frame in `rate` from a uniform 32-bit random
/// number: `floor(2^32 / rate)`, so the chance is `1/rate` to within
/// `rate / 2^32` (2.3e-8 at 1 in 100). Rates 0 (off) and 1 (every frame)
/// never reach the compare; they give 0.
pub const fn sample_threshold(rate: u32) -> u32 {
    if rate <= 1 {
        0
    } else {
        ((1u64 << 32) / rate as u64) as u32
    }
}

pub const DEFAULT_RING_BUFFER_SIZE: u32 = 256 * 1024;

/// Slots of [`EVENT_COUNTERS_MAP`]. `sampled = published + lost` exactly.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventCounter {
    /// Frames the sampler picked.
    Sampled = 0,
    /// Picked frames whose ring buffer reservation failed (buffer full).
    Lost = 1,
}

pub const EVENT_COUNTER_SLOTS: u32 = 2;

/// [`PacketEvent::flags`]: `src` and `dst` hold the frame's addresses.
pub const EVENT_HAS_ADDRESSES: u32 = 1 << 0;
/// [`PacketEvent::flags`]: `src_port` and `dst_port` are set (TCP, UDP).
pub const EVENT_HAS_PORTS: u32 = 1 << 1;
/// [`PacketEvent::flags`]: `tcp_flags` is set (TCP).
pub const EVENT_HAS_TCP_FLAGS: u32 = 1 << 2;
/// [`PacketEvent::flags`]: the parser found the headers cut short.
pub const EVENT_MALFORMED: u32 = 1 << 3;
pub const EVENT_KNOWN_FLAGS: u32 =
    EVENT_HAS_ADDRESSES | EVENT_HAS_PORTS | EVENT_HAS_TCP_FLAGS | EVENT_MALFORMED;

/// One sampled frame, as seen by XDP on arrival.
///
/// Layout (64 bytes, no implicit padding):
/// ```text
///  0 timestamp_ns u64   bpf_ktime_get_ns (CLOCK_MONOTONIC)
///  8 src [u8; 16]       network order; IPv4 in the first 4 bytes, rest zero
/// 24 dst [u8; 16]
/// 40 ifindex u32        ingress interface
/// 44 frame_len u32      L2 frame length
/// 48 flags u32          EVENT_* bits
/// 52 src_port u16       host order, 0 without EVENT_HAS_PORTS
/// 54 dst_port u16
/// 56 family u8          FAMILY_* slot of `xdp`
/// 57 protocol u8        PROTOCOL_* slot of `xdp`
/// 58 tcp_flags u8       CWR ECE URG ACK PSH RST SYN FIN, 0 unless TCP
/// 59 _pad [u8; 5]       zero
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketEvent {
    pub timestamp_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub frame_len: u32,
    pub flags: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}

pub const PACKET_EVENT_SIZE: usize = 64;
const _: () = assert!(size_of::<PacketEvent>() == PACKET_EVENT_SIZE);
const _: () = assert!(core::mem::offset_of!(PacketEvent, family) == 56);

#[cfg(feature = "user")]
// SAFETY: `PacketEvent` is `#[repr(C)]` of integers and byte arrays with
// the padding spelled out as a field (asserted 64 bytes above), so it has no
// implicit padding and every bit pattern is a valid value.
unsafe impl aya::Pod for PacketEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_picks_one_in_rate() {
        assert_eq!(sample_threshold(0), 0);
        assert_eq!(sample_threshold(1), 0);
        assert_eq!(sample_threshold(2), 1 << 31);
        assert_eq!(sample_threshold(100), 42_949_672);
        assert_eq!(sample_threshold(u32::MAX), 1);
        // The chance threshold / 2^32 is within rate / 2^32 of 1 / rate.
        for rate in [2u32, 3, 7, 100, 1000, 65_537, 1 << 20] {
            let chance = f64::from(sample_threshold(rate)) / 2f64.powi(32);
            let error = (chance - 1.0 / f64::from(rate)).abs();
            assert!(
                error <= f64::from(rate) / 2f64.powi(32),
                "rate {rate}: {chance}"
            );
        }
    }
}
