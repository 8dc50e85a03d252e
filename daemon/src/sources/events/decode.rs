//! Decoding a packet event from the ring buffer, field by field from its
//! bytes (no casts): any byte string is either an event or an error.

use std::mem::offset_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use telemetryd_common::events::{
    PacketEvent, EVENT_HAS_ADDRESSES, EVENT_HAS_PORTS, EVENT_HAS_TCP_FLAGS, EVENT_KNOWN_FLAGS,
    EVENT_MALFORMED, PACKET_EVENT_SIZE,
};
use telemetryd_common::xdp::{FAMILIES, FAMILY_IPV4, FAMILY_IPV6, PROTOCOLS};

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    /// CLOCK_MONOTONIC nanoseconds when XDP saw the frame.
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub frame_len: u32,
    /// `FAMILY_*` and `PROTOCOL_*` slots of `telemetryd_common::xdp`.
    pub family: usize,
    pub protocol: usize,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub tcp_flags: Option<u8>,
    pub malformed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {PACKET_EVENT_SIZE}")]
    Length(usize),
    #[error("unknown family slot {0}")]
    Family(u8),
    #[error("unknown protocol slot {0}")]
    Protocol(u8),
    #[error("unknown flags {0:#x}")]
    Flags(u32),
    #[error("addresses flagged on a frame that is neither IPv4 nor IPv6")]
    Addresses,
}

fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<PacketRecord, DecodeError> {
    if bytes.len() != PACKET_EVENT_SIZE {
        return Err(DecodeError::Length(bytes.len()));
    }
    let u32_at = |o| u32::from_ne_bytes(field(bytes, o));
    let u16_at = |o| u16::from_ne_bytes(field(bytes, o));
    let family = bytes[offset_of!(PacketEvent, family)];
    let protocol = bytes[offset_of!(PacketEvent, protocol)];
    let flags = u32_at(offset_of!(PacketEvent, flags));
    if usize::from(family) >= FAMILIES {
        return Err(DecodeError::Family(family));
    }
    if usize::from(protocol) >= PROTOCOLS {
        return Err(DecodeError::Protocol(protocol));
    }
    if flags & !EVENT_KNOWN_FLAGS != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let (src, dst) = if flags & EVENT_HAS_ADDRESSES == 0 {
        (None, None)
    } else {
        let src: [u8; 16] = field(bytes, offset_of!(PacketEvent, src));
        let dst: [u8; 16] = field(bytes, offset_of!(PacketEvent, dst));
        match usize::from(family) {
            FAMILY_IPV4 => (
                Some(IpAddr::V4(Ipv4Addr::from(field::<4>(&src, 0)))),
                Some(IpAddr::V4(Ipv4Addr::from(field::<4>(&dst, 0)))),
            ),
            FAMILY_IPV6 => (
                Some(IpAddr::V6(Ipv6Addr::from(src))),
                Some(IpAddr::V6(Ipv6Addr::from(dst))),
            ),
            _ => return Err(DecodeError::Addresses),
        }
    };
    let has_ports = flags & EVENT_HAS_PORTS != 0;
    Ok(PacketRecord {
        timestamp_ns: u64::from_ne_bytes(field(bytes, offset_of!(PacketEvent, timestamp_ns))),
        ifindex: u32_at(offset_of!(PacketEvent, ifindex)),
        frame_len: u32_at(offset_of!(PacketEvent, frame_len)),
        family: family.into(),
        protocol: protocol.into(),
        src,
        dst,
        src_port: has_ports.then(|| u16_at(offset_of!(PacketEvent, src_port))),
        dst_port: has_ports.then(|| u16_at(offset_of!(PacketEvent, dst_port))),
        tcp_flags: (flags & EVENT_HAS_TCP_FLAGS != 0)
            .then(|| bytes[offset_of!(PacketEvent, tcp_flags)]),
        malformed: flags & EVENT_MALFORMED != 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use telemetryd_common::xdp::{FAMILY_OTHER, PROTOCOL_OTHER, PROTOCOL_TCP, PROTOCOL_UDP};

    pub(crate) fn bytes_of(event: &PacketEvent) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&event.timestamp_ns.to_ne_bytes());
        out.extend_from_slice(&event.src);
        out.extend_from_slice(&event.dst);
        out.extend_from_slice(&event.ifindex.to_ne_bytes());
        out.extend_from_slice(&event.frame_len.to_ne_bytes());
        out.extend_from_slice(&event.flags.to_ne_bytes());
        out.extend_from_slice(&event.src_port.to_ne_bytes());
        out.extend_from_slice(&event.dst_port.to_ne_bytes());
        out.extend_from_slice(&[event.family, event.protocol, event.tcp_flags]);
        out.extend_from_slice(&event._pad);
        assert_eq!(out.len(), PACKET_EVENT_SIZE);
        out
    }

    pub(crate) fn tcp4() -> PacketEvent {
        let mut e = PacketEvent {
            timestamp_ns: 123,
            ifindex: 7,
            frame_len: 74,
            flags: EVENT_HAS_ADDRESSES | EVENT_HAS_PORTS | EVENT_HAS_TCP_FLAGS,
            src_port: 12345,
            dst_port: 80,
            family: FAMILY_IPV4 as u8,
            protocol: PROTOCOL_TCP as u8,
            tcp_flags: 0x02,
            ..Default::default()
        };
        e.src[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        e
    }

    #[test]
    fn decodes_every_field() {
        let got = decode(&bytes_of(&tcp4())).unwrap();
        assert_eq!(
            got,
            PacketRecord {
                timestamp_ns: 123,
                ifindex: 7,
                frame_len: 74,
                family: FAMILY_IPV4,
                protocol: PROTOCOL_TCP,
                src: Some("10.0.0.2".parse().unwrap()),
                dst: Some("10.0.0.1".parse().unwrap()),
                src_port: Some(12345),
                dst_port: Some(80),
                tcp_flags: Some(0x02),
                malformed: false,
            }
        );
        let mut v6 = tcp4();
        v6.family = FAMILY_IPV6 as u8;
        v6.protocol = PROTOCOL_UDP as u8;
        v6.flags = EVENT_HAS_ADDRESSES | EVENT_HAS_PORTS;
        v6.src = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let got = decode(&bytes_of(&v6)).unwrap();
        assert_eq!(got.src, Some("fd00::2".parse().unwrap()));
        assert_eq!(got.tcp_flags, None);
        let other = PacketEvent {
            family: FAMILY_OTHER as u8,
            protocol: PROTOCOL_OTHER as u8,
            flags: EVENT_MALFORMED,
            ..Default::default()
        };
        let got = decode(&bytes_of(&other)).unwrap();
        assert_eq!((got.src, got.src_port, got.malformed), (None, None, true));
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        let good = bytes_of(&tcp4());
        assert_eq!(decode(&good[..10]), Err(DecodeError::Length(10)));
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        let mut bad = tcp4();
        bad.family = 9;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Family(9)));
        let mut bad = tcp4();
        bad.protocol = 4;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Protocol(4)));
        let mut bad = tcp4();
        bad.flags |= 1 << 20;
        assert!(matches!(
            decode(&bytes_of(&bad)),
            Err(DecodeError::Flags(_))
        ));
        let mut bad = tcp4();
        bad.family = FAMILY_OTHER as u8;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Addresses));
        // Every byte string of every length decodes or errs.
        for len in 0..80 {
            let _ = decode(&vec![0xff; len]);
        }
    }
}
