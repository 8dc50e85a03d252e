//! Hand-built Ethernet frames and an AF_PACKET socket to send them, so a
//! test knows every byte the XDP program sees.

use std::ffi::CString;
use std::io;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_SCTP: u8 = 132;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// A unicast MAC that is nobody's: frames sent to it reach the receiver's
/// XDP hook, then its stack drops them as "other host", so it never answers.
pub const NOBODY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xde, 0xad];
pub const SENDER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

pub fn ethernet(ether_type: u16, vlans: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 4 * vlans.len() + payload.len());
    frame.extend_from_slice(&NOBODY_MAC);
    frame.extend_from_slice(&SENDER_MAC);
    for (i, vid) in vlans.iter().enumerate() {
        // Outer tag 802.1ad when there are two, as QinQ does.
        let tpid = if vlans.len() == 2 && i == 0 {
            ETH_P_8021AD
        } else {
            ETH_P_8021Q
        };
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// IPv4 header (no checksum: the receiver drops these frames before it
/// would look) followed by `payload`. `options` must be a multiple of 4.
pub fn ipv4(protocol: u8, options: &[u8], fragment_offset: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = (20 + options.len()) / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1]); // id
    p.extend_from_slice(&(fragment_offset & 0x1fff).to_be_bytes());
    p.extend_from_slice(&[64, protocol, 0, 0]);
    p.extend_from_slice(&[10, 203, 0, 2, 10, 203, 0, 1]);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

/// IPv6 header with the given extension headers (each `(next_header_of_this_ext, bytes)`)
/// chained in front of `payload` whose protocol is `protocol`.
pub fn ipv6(protocol: u8, extensions: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    let first = extensions
        .first()
        .map(|(kind, _)| *kind)
        .unwrap_or(protocol);
    let body_len: usize = extensions.iter().map(|(_, e)| e.len()).sum::<usize>() + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body_len as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    for (i, (_, ext)) in extensions.iter().enumerate() {
        let next = extensions
            .get(i + 1)
            .map(|(kind, _)| *kind)
            .unwrap_or(protocol);
        let mut ext = ext.clone();
        ext[0] = next;
        p.extend_from_slice(&ext);
    }
    p.extend_from_slice(payload);
    p
}

/// An options-style extension header (hop-by-hop, routing, destination
/// options) of `8 * (len_units + 1)` bytes; byte 0 is filled in by [`ipv6`].
pub fn ipv6_options_header(len_units: u8) -> Vec<u8> {
    let mut ext = vec![0u8; 8 * (len_units as usize + 1)];
    ext[1] = len_units;
    ext
}

/// An IPv6 fragment header for the fragment at `offset_units` (8-byte units).
pub fn ipv6_fragment_header(offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | more as u16;
    let mut ext = vec![0u8; 8];
    ext[2..4].copy_from_slice(&field.to_be_bytes());
    ext
}

pub fn udp(payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x30, 0x39, 0x1f, 0x90];
    p.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend(std::iter::repeat_n(0xab, payload_len));
    p
}

pub fn tcp(payload_len: usize) -> Vec<u8> {
    let mut p = vec![
        0x30, 0x39, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    p.extend(std::iter::repeat_n(0xcd, payload_len));
    p
}

/// ICMP or ICMPv6 echo request.
pub fn icmp_echo(kind: u8, payload_len: usize) -> Vec<u8> {
    let mut p = vec![kind, 0, 0, 0, 0, 1, 0, 1];
    p.extend(std::iter::repeat_n(0xef, payload_len));
    p
}

/// An AF_PACKET socket bound to one interface, for sending raw frames.
pub struct PacketSocket {
    fd: i32,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open(interface: &str) -> io::Result<Self> {
        let name = CString::new(interface).expect("interface name without NUL");
        // SAFETY: plain libc calls with valid arguments; the fd is owned by
        // the returned value and closed in Drop.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { fd, ifindex })
        }
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
        // SAFETY: frame and addr are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        assert_eq!(sent as usize, frame.len(), "short AF_PACKET send");
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// One kind of frame, how many to send, and where it must be counted.
pub struct Case {
    pub what: &'static str,
    pub frame: Vec<u8>,
    pub count: u64,
    pub family: &'static str,
    pub protocol: &'static str,
    pub malformed: bool,
}

fn case(
    what: &'static str,
    frame: Vec<u8>,
    count: u64,
    family: &'static str,
    protocol: &'static str,
    malformed: bool,
) -> Case {
    Case {
        what,
        frame,
        count,
        family,
        protocol,
        malformed,
    }
}

/// Every kind of frame the parser must classify, with the expected result.
pub fn cases() -> Vec<Case> {
    let udp4 = ipv4(IPPROTO_UDP, &[], 0, &udp(50));
    let mut tcp4_cut = ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_TCP, &[], 0, &tcp(0)));
    tcp4_cut.truncate(14 + 20 + 10);
    let mut ipv6_cut = ethernet(ETH_P_IPV6, &[], &ipv6(IPPROTO_UDP, &[], &udp(8)));
    ipv6_cut.truncate(14 + 30);
    let mut bad_ihl = ipv4(IPPROTO_UDP, &[], 0, &udp(8));
    bad_ihl[0] = 0x44;
    let seven_dstopts: Vec<(u8, Vec<u8>)> = (0..7)
        .map(|_| (IPPROTO_DSTOPTS, ipv6_options_header(0)))
        .collect();
    vec![
        case(
            "ipv4 udp",
            ethernet(ETH_P_IP, &[], &udp4),
            5,
            "ipv4",
            "udp",
            false,
        ),
        case(
            "ipv4 tcp",
            ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_TCP, &[], 0, &tcp(100))),
            4,
            "ipv4",
            "tcp",
            false,
        ),
        case(
            "ipv4 icmp",
            ethernet(
                ETH_P_IP,
                &[],
                &ipv4(IPPROTO_ICMP, &[], 0, &icmp_echo(8, 56)),
            ),
            3,
            "ipv4",
            "icmp",
            false,
        ),
        case(
            "ipv6 udp",
            ethernet(ETH_P_IPV6, &[], &ipv6(IPPROTO_UDP, &[], &udp(200))),
            6,
            "ipv6",
            "udp",
            false,
        ),
        case(
            "ipv6 icmpv6",
            ethernet(
                ETH_P_IPV6,
                &[],
                &ipv6(IPPROTO_ICMPV6, &[], &icmp_echo(128, 56)),
            ),
            2,
            "ipv6",
            "icmp",
            false,
        ),
        case(
            "802.1Q ipv4 udp",
            ethernet(ETH_P_IP, &[100], &udp4),
            3,
            "ipv4",
            "udp",
            false,
        ),
        case(
            "QinQ ipv6 tcp",
            ethernet(ETH_P_IPV6, &[10, 20], &ipv6(IPPROTO_TCP, &[], &tcp(0))),
            2,
            "ipv6",
            "tcp",
            false,
        ),
        case(
            "ipv4 with options",
            ethernet(
                ETH_P_IP,
                &[],
                &ipv4(IPPROTO_UDP, &[1, 1, 1, 0], 0, &udp(10)),
            ),
            2,
            "ipv4",
            "udp",
            false,
        ),
        case(
            "ipv4 later fragment",
            ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_UDP, &[], 185, &[1, 2, 3])),
            2,
            "ipv4",
            "udp",
            false,
        ),
        case(
            "ipv6 hop-by-hop, routing, destination options",
            ethernet(
                ETH_P_IPV6,
                &[],
                &ipv6(
                    IPPROTO_UDP,
                    &[
                        (IPPROTO_HOPOPTS, ipv6_options_header(0)),
                        (IPPROTO_ROUTING, ipv6_options_header(2)),
                        (IPPROTO_DSTOPTS, ipv6_options_header(1)),
                    ],
                    &udp(30),
                ),
            ),
            2,
            "ipv6",
            "udp",
            false,
        ),
        case(
            "ipv6 later fragment",
            ethernet(
                ETH_P_IPV6,
                &[],
                &ipv6(
                    IPPROTO_TCP,
                    &[(IPPROTO_FRAGMENT, ipv6_fragment_header(100, false))],
                    &[9, 9, 9, 9],
                ),
            ),
            1,
            "ipv6",
            "tcp",
            false,
        ),
        case(
            "ipv6 chain longer than the parser walks",
            ethernet(ETH_P_IPV6, &[], &ipv6(IPPROTO_UDP, &seven_dstopts, &udp(8))),
            1,
            "ipv6",
            "other",
            false,
        ),
        case(
            "ipv4 sctp",
            ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_SCTP, &[], 0, &[0; 12])),
            1,
            "ipv4",
            "other",
            false,
        ),
        case(
            "arp",
            ethernet(ETH_P_ARP, &[], &[0; 28]),
            2,
            "other",
            "other",
            false,
        ),
        case(
            "ethernet header only",
            ethernet(ETH_P_IP, &[], &[]),
            2,
            "ipv4",
            "other",
            true,
        ),
        case("ipv4 tcp header cut", tcp4_cut, 1, "ipv4", "tcp", true),
        case("ipv6 header cut", ipv6_cut, 1, "ipv6", "other", true),
        case(
            "vlan tag cut",
            ethernet(ETH_P_8021Q, &[], &[0, 100]),
            1,
            "other",
            "other",
            true,
        ),
        case(
            "ipv4 header length below 20",
            ethernet(ETH_P_IP, &[], &bad_ihl),
            1,
            "ipv4",
            "other",
            true,
        ),
    ]
}
