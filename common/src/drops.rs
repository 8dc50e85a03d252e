//! Kernel packet drops (raw tracepoint `kfree_skb`) and TCP retransmits
//! (raw tracepoint `tcp_retransmit_skb`): program and map names, slots, and
//! the kernel struct layout user space reads from BTF and hands to the
//! programs.

use core::mem::size_of;

/// Program on the raw tracepoint `kfree_skb` (`skb:kfree_skb`).
pub const DROPS_PROGRAM: &str = "kfree_skb_drops";
/// Raw tracepoint [`DROPS_PROGRAM`] attaches to.
pub const DROPS_TRACEPOINT: &str = "kfree_skb";
/// Program on the raw tracepoint `tcp_retransmit_skb` (`tcp:tcp_retransmit_skb`).
pub const RETRANSMITS_PROGRAM: &str = "tcp_retransmits";
/// Raw tracepoint [`RETRANSMITS_PROGRAM`] attaches to.
pub const RETRANSMITS_TRACEPOINT: &str = "tcp_retransmit_skb";

/// `kfree_skb`'s `TP_PROTO` argument count from which on it passes
/// `enum skb_drop_reason reason` as its third argument (Linux 5.17).
pub const KFREE_SKB_ARGS_WITH_REASON: u32 = 3;
/// `kfree_skb`'s `TP_PROTO` argument count from which on it passes
/// `struct sock *rx_sk` as its fourth argument (Linux 6.11).
pub const KFREE_SKB_ARGS_WITH_RX_SK: u32 = 4;

/// Per-CPU array: drop reason (the kernel's `enum skb_drop_reason` value)
/// -> drops (`u64`). Values at or above [`MAX_DROP_REASONS`] go to
/// [`OVERFLOW_REASON_SLOT`].
pub const DROP_REASONS_MAP: &str = "DROP_REASONS";
/// Per-CPU hash map: [`DeviceDropKey`] -> drops (`u64`), for drops whose skb
/// names a device of the daemon's network namespace.
pub const DEVICE_DROPS_MAP: &str = "DEVICE_DROPS";
/// Per-CPU hash map: [`PeerDropKey`] -> drops (`u64`), for drops of
/// received packets (`skb_iif` set) on a device of the daemon's namespace,
/// by the packet's IP source address.
pub const PEER_DROPS_MAP: &str = "PEER_DROPS";
/// Per-CPU hash map: [`PeerKey`] -> retransmitted segments (`u64`), by the
/// socket's remote address.
pub const PEER_RETRANSMITS_MAP: &str = "PEER_RETRANSMITS";
/// Per-CPU array: [`FAMILY_SLOT_IPV4`], [`FAMILY_SLOT_IPV6`] -> retransmitted segments (`u64`).
pub const RETRANSMITS_MAP: &str = "TCP_RETRANSMITS";
/// Per-CPU array: [`DropsError`] slot -> times it happened (`u64`).
pub const DROPS_ERRORS_MAP: &str = "DROPS_ERRORS";
/// Global variable of type [`KernelLayout`], set at load time.
pub const LAYOUT_GLOBAL: &str = "DROPS_LAYOUT";

/// Reason values counted one by one (the kernel has ~130 today; subsystem
/// reasons carry the subsystem in bits 16 and up and land in the overflow slot).
pub const MAX_DROP_REASONS: u32 = 512;
pub const OVERFLOW_REASON_SLOT: u32 = MAX_DROP_REASONS;
pub const DROP_REASON_SLOTS: u32 = MAX_DROP_REASONS + 1;
/// Label of the overflow slot.
pub const OVERFLOW_REASON_LABEL: &str = "OTHER";

/// Entries of [`DEVICE_DROPS_MAP`] at most.
pub const MAX_DEVICE_DROP_KEYS: u32 = 4096;
/// Entries of [`PEER_DROPS_MAP`] at most ((device, peer, reason) triples);
/// drops past it are counted by device only (and as `peer_map_full`).
pub const MAX_PEER_DROP_KEYS: u32 = 4096;
/// Entries of [`PEER_RETRANSMITS_MAP`] at most.
pub const MAX_PEER_RETRANSMIT_KEYS: u32 = 1024;

pub const FAMILY_SLOT_IPV4: u32 = 0;
pub const FAMILY_SLOT_IPV6: u32 = 1;
pub const FAMILY_SLOTS: u32 = 2;

/// `AF_INET`, `AF_INET6` as `sock.__sk_common.skc_family` holds them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Key of [`DEVICE_DROPS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceDropKey {
    pub ifindex: u32,
    pub reason: u32,
}

const _: () = assert!(size_of::<DeviceDropKey>() == 8);

/// A peer: its address family ([`AF_INET`], [`AF_INET6`]) and address (an
/// IPv4 address in the first 4 bytes, network order, the rest 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub family: u32,
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<PeerKey>() == 20);

/// Key of [`PEER_DROPS_MAP`]: the device the packet came in on
/// (`skb->skb_iif`), the drop reason, the packet's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerDropKey {
    pub ifindex: u32,
    pub reason: u32,
    pub peer: PeerKey,
}

const _: () = assert!(size_of::<PeerDropKey>() == 28);

/// Byte offsets of the kernel struct fields the programs follow, read from
/// the running kernel's BTF (Rust eBPF gets no CO-RE relocations).
///
/// With `enabled == 0` (BTF lacked a field) the programs count reasons
/// only: no device attribution, no namespace filter, and retransmits of an
/// unknown family (the family is read from the socket).
///
/// `kfree_skb_args` is set from BTF whether or not `enabled` is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// 1 when every offset below is valid.
    pub enabled: u32,
    /// `struct sk_buff` -> `dev` (`struct net_device *`).
    pub skb_dev: u32,
    /// `struct net_device` -> `ifindex` (`int`).
    pub dev_ifindex: u32,
    /// `struct net_device` -> `nd_net.net` (`struct net *`).
    pub dev_net: u32,
    /// `struct sock` -> `__sk_common.skc_net.net` (`struct net *`).
    pub sk_net: u32,
    /// `struct net` -> `ns.inum` (`unsigned int`).
    pub net_inum: u32,
    /// `struct sk_buff` -> `sk` (`struct sock *`, the owning socket).
    pub skb_sk: u32,
    /// `struct sock` -> `__sk_common.skc_family` (`unsigned short`).
    pub sk_family: u32,
    /// Inode number of the daemon's network namespace
    /// (`stat /proc/self/ns/net`): only drops and retransmits there count.
    pub netns_inum: u32,
    /// 1 when the daemon runs in the host's network namespace (that of
    /// PID 1): drops whose skb names neither a device nor a socket are
    /// then counted too; in any other namespace they are not, since they
    /// may belong to any namespace.
    pub count_unowned: u32,
    /// Number of `TP_PROTO` arguments of the `kfree_skb` tracepoint, from
    /// the parameter count of BTF's `btf_trace_kfree_skb` typedef (minus
    /// its leading `void *`); 0 when unknown. Arguments past this count are
    /// never read (the kernel refuses to attach a program that reads them).
    pub kfree_skb_args: u32,
    /// 1 when every offset below is valid (and `enabled` is): drops and
    /// retransmits are then attributed to peers.
    pub peers: u32,
    /// `struct sk_buff` -> `skb_iif` (`int`: the device it was received on,
    /// 0 for packets this host sent).
    pub skb_iif: u32,
    /// `struct sk_buff` -> `head` (`unsigned char *`).
    pub skb_head: u32,
    /// `struct sk_buff` -> `network_header` (`__u16`, from `head`).
    pub skb_network_header: u32,
    /// `struct sk_buff` -> `protocol` (`__be16`).
    pub skb_protocol: u32,
    /// `struct sock` -> `__sk_common.skc_daddr` (`__be32`).
    pub sk_daddr: u32,
    /// `struct sock` -> `__sk_common.skc_v6_daddr` (`struct in6_addr`).
    pub sk_v6_daddr: u32,
}

const _: () = assert!(size_of::<KernelLayout>() == 72);

/// Slots of [`DROPS_ERRORS_MAP`]: the programs' own failures. The traced
/// packet is never affected; only the counter moves.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropsError {
    /// [`DEVICE_DROPS_MAP`] was full: the drop was counted by reason only.
    DeviceMapFull = 0,
    /// `kfree_skb_drops` could not read its record or a kernel struct.
    DropReadFailed = 1,
    /// `tcp_retransmits` could not read its record or a kernel struct.
    RetransmitReadFailed = 2,
    /// `tcp_retransmits` saw a family other than AF_INET and AF_INET6, or
    /// could not know it (no [`KernelLayout`] from BTF).
    RetransmitUnknownFamily = 3,
    /// [`PEER_DROPS_MAP`] or [`PEER_RETRANSMITS_MAP`] was full: counted
    /// without its peer.
    PeerMapFull = 4,
    /// The source address of a dropped packet (or the remote address of a
    /// retransmitting socket) did not read: counted without its peer.
    PeerReadFailed = 5,
}

pub const DROPS_ERROR_SLOTS: u32 = 6;
/// (program, reason) of each [`DropsError`] slot.
pub const DROPS_ERROR_LABELS: [(&str, &str); DROPS_ERROR_SLOTS as usize] = [
    (DROPS_PROGRAM, "device_map_full"),
    (DROPS_PROGRAM, "read_failed"),
    (RETRANSMITS_PROGRAM, "read_failed"),
    (RETRANSMITS_PROGRAM, "unknown_family"),
    (DROPS_PROGRAM, "peer_map_full"),
    (DROPS_PROGRAM, "peer_read_failed"),
];

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, two `u32`s, no padding: every bit pattern is valid.
unsafe impl aya::Pod for DeviceDropKey {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, eighteen `u32`s, no padding: every bit pattern is valid.
unsafe impl aya::Pod for KernelLayout {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, a `u32` and 16 bytes, no padding: every bit pattern is valid.
unsafe impl aya::Pod for PeerKey {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, two `u32`s and a `PeerKey`, no padding: every bit pattern is valid.
unsafe impl aya::Pod for PeerDropKey {}
