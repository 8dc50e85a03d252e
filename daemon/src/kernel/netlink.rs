//! A minimal rtnetlink (NETLINK_ROUTE) socket: link notifications for
//! hotplug, and RTM_SETLINK to remove an XDP program that another tool
//! attached through netlink (`xdp.replace = true`). Kept by hand rather than
//! through a netlink crate: two message layouts (one sent, two counted)
//! are all the daemon needs, and every byte received is bounds-checked.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// `RTMGRP_LINK`: notifications about links appearing, changing, vanishing.
pub const RTMGRP_LINK: u32 = 1;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 1 << 15;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;

/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// A NETLINK_ROUTE socket in the caller's network namespace.
#[derive(Debug)]
pub struct RouteSocket {
    fd: OwnedFd,
}

/// What a received batch of notifications said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkEvents {
    pub new_link: u32,
    pub del_link: u32,
    pub other: u32,
}

impl RouteSocket {
    /// Opens the socket, non-blocking and close-on-exec, subscribed to
    /// `groups` (0: none, for requests only).
    pub fn open(groups: u32) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None, // NETLINK_ROUTE
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, groups))?;
        Ok(Self { fd })
    }

    /// One datagram into `buf`; `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (received, _) = rustix::net::recv(&self.fd, buf, RecvFlags::DONTWAIT)?;
        Ok(received)
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // pid 0 is the kernel.
        rustix::net::sendto(
            &self.fd,
            message,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        Ok(())
    }

    /// Sets (`prog_fd` >= 0) or removes (`prog_fd` = -1) the netlink-attached
    /// XDP program of `ifindex` in the mode `flags` names, and waits for the
    /// kernel's answer. Blocking, bounded by a 2 s receive timeout.
    pub fn set_xdp(&self, ifindex: u32, prog_fd: RawFd, flags: u32) -> io::Result<()> {
        let seq = 1;
        self.send(&set_xdp_message(ifindex, prog_fd, flags, seq))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match self.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no netlink answer within 2 s",
                        ));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(result) = ack_result(&buf[..n], seq) {
                return result;
            }
        }
    }
}

impl AsFd for RouteSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Walks the netlink messages of one datagram (bounds-checked; a
/// truncated or garbled datagram ends the walk).
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(data[8..12].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let payload = &data[NLMSG_HDRLEN..len];
        let advance = align4(len).min(data.len());
        data = &data[advance..];
        Some((kind, seq, payload))
    })
}

/// Counts the link notifications in one datagram.
pub fn link_events(data: &[u8]) -> LinkEvents {
    let mut events = LinkEvents::default();
    for (kind, _, _) in messages(data) {
        match kind {
            RTM_NEWLINK => events.new_link += 1,
            RTM_DELLINK => events.del_link += 1,
            _ => events.other += 1,
        }
    }
    events
}

/// The kernel's answer to request `seq`: `Some(Ok)` for an ACK, `Some(Err)`
/// for an error, `None` if this datagram does not answer it.
fn ack_result(data: &[u8], seq: u32) -> Option<io::Result<()>> {
    for (kind, got_seq, payload) in messages(data) {
        if got_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR if payload.len() >= 4 => {
                let code = i32::from_ne_bytes(payload[0..4].try_into().ok()?);
                return Some(if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                });
            }
            NLMSG_DONE => return Some(Ok(())),
            _ => {}
        }
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

/// RTM_SETLINK { ifinfomsg(ifindex), IFLA_XDP { FD, FLAGS } }.
fn set_xdp_message(ifindex: u32, prog_fd: RawFd, flags: u32, seq: u32) -> Vec<u8> {
    let mut nested = Vec::new();
    attr(&mut nested, IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    let mut body = Vec::new();
    // struct ifinfomsg { u8 family, u8 pad, u16 type, i32 index, u32 flags, u32 change }
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nested);
    let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    message.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, kind: u16, seq: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&0u16.to_ne_bytes());
        h.extend_from_slice(&seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    #[test]
    fn counts_link_notifications_and_survives_garbage() {
        let mut data = header(20, RTM_NEWLINK, 0);
        data.extend_from_slice(&[0; 4]);
        data.extend(header(16, RTM_DELLINK, 0));
        data.extend(header(16, 99, 0));
        assert_eq!(
            link_events(&data),
            LinkEvents {
                new_link: 1,
                del_link: 1,
                other: 1
            }
        );
        // Truncated, zero-length, oversized, random: never panics.
        for bad in [
            &data[..10],
            &header(0, RTM_NEWLINK, 0)[..],
            &header(9999, RTM_NEWLINK, 0)[..],
            &[0xff; 64][..],
            &[][..],
        ] {
            let _ = link_events(bad);
            let _ = ack_result(bad, 1);
        }
    }

    #[test]
    fn acks_and_errors() {
        let mut ack = header(36, NLMSG_ERROR, 7);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&header(16, RTM_SETLINK, 7));
        assert!(matches!(ack_result(&ack, 7), Some(Ok(()))));
        assert!(ack_result(&ack, 8).is_none());
        let mut err = header(36, NLMSG_ERROR, 7);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err.extend_from_slice(&header(16, RTM_SETLINK, 7));
        let e = ack_result(&err, 7).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn set_xdp_message_layout() {
        let m = set_xdp_message(5, -1, XDP_FLAGS_SKB_MODE, 1);
        // nlmsghdr 16 + ifinfomsg 16 + IFLA_XDP hdr 4 + 2 * (4 + 4)
        assert_eq!(m.len(), 16 + 16 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 5);
        assert_eq!(
            u16::from_ne_bytes(m[34..36].try_into().unwrap()),
            IFLA_XDP | NLA_F_NESTED
        );
        assert_eq!(i32::from_ne_bytes(m[40..44].try_into().unwrap()), -1);
        assert_eq!(
            u32::from_ne_bytes(m[48..52].try_into().unwrap()),
            XDP_FLAGS_SKB_MODE
        );
    }

    #[test]
    fn opens_a_link_subscription() {
        // Works unprivileged: subscribing to RTMGRP_LINK needs no capability.
        let socket = RouteSocket::open(RTMGRP_LINK).expect("netlink socket");
        let mut buf = [0u8; 64];
        let e = socket.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
