//! `kfree_skb_drops` on the raw tracepoint `kfree_skb` and `tcp_retransmits`
//! on the raw tracepoint `tcp_retransmit_skb`: count kernel packet drops by
//! reason (and by device where the skb names one) and TCP retransmits by
//! address family. Raw tracepoints attach by name (bpf_raw_tracepoint_open),
//! without tracefs, which a hardened unit cannot read or mount.
//!
//! Observe only: tracepoint programs cannot change what they trace, and on
//! their own errors they count the error in `DROPS_ERRORS` and go on.
//! Kernel struct offsets come from user space (`DROPS_LAYOUT`, read from the
//! running kernel's BTF), never from constants compiled in here.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
    Global,
};
use telemetryd_common::drops::{
    DeviceDropKey, DropsError, KernelLayout, PeerDropKey, PeerKey, AF_INET, AF_INET6,
    DROPS_ERROR_SLOTS, DROP_REASON_SLOTS, FAMILY_SLOTS, FAMILY_SLOT_IPV4, FAMILY_SLOT_IPV6,
    KFREE_SKB_ARGS_WITH_REASON, KFREE_SKB_ARGS_WITH_RX_SK, MAX_DEVICE_DROP_KEYS, MAX_DROP_REASONS,
    MAX_PEER_DROP_KEYS, MAX_PEER_RETRANSMIT_KEYS, OVERFLOW_REASON_SLOT,
};

#[map(name = "DROP_REASONS")]
static DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASON_SLOTS, 0);

#[map(name = "DEVICE_DROPS")]
static DEVICE_DROPS: PerCpuHashMap<DeviceDropKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_DEVICE_DROP_KEYS, 0);

#[map(name = "PEER_DROPS")]
static PEER_DROPS: PerCpuHashMap<PeerDropKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_PEER_DROP_KEYS, 0);

#[map(name = "PEER_RETRANSMITS")]
static PEER_RETRANSMITS: PerCpuHashMap<PeerKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_PEER_RETRANSMIT_KEYS, 0);

#[map(name = "TCP_RETRANSMITS")]
static TCP_RETRANSMITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FAMILY_SLOTS, 0);

#[map(name = "DROPS_ERRORS")]
static DROPS_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROPS_ERROR_SLOTS, 0);

/// Set by the loader (`EbpfLoader::override_global`) before the programs
/// load; read-only data, which the kernel freezes, so the verifier prunes
/// the reads a kernel without the fields cannot do.
#[unsafe(no_mangle)]
static DROPS_LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    enabled: 0,
    skb_dev: 0,
    dev_ifindex: 0,
    dev_net: 0,
    sk_net: 0,
    net_inum: 0,
    skb_sk: 0,
    sk_family: 0,
    netns_inum: 0,
    count_unowned: 0,
    kfree_skb_args: 0,
    peers: 0,
    skb_iif: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_protocol: 0,
    sk_daddr: 0,
    sk_v6_daddr: 0,
});

// Raw tracepoints: the programs get the tracepoint's TP_PROTO arguments as
// u64s (`args[0]` is the first), not the trace_event record, so neither
// tracefs nor the record's format is involved.
//
// Linux 6.18, /sys/kernel/btf/vmlinux (`bpftool btf dump ... format c`):
//   typedef void (*btf_trace_kfree_skb)(void *, struct sk_buff *, void *,
//                                       enum skb_drop_reason, struct sock *);
// i.e. TP_PROTO(struct sk_buff *skb, void *location,
//               enum skb_drop_reason reason, struct sock *rx_sk)
// Older kernels pass fewer arguments: no `rx_sk` before 6.11
// (TP_PROTO(skb, location, reason)), no `reason` before 5.17
// (TP_PROTO(skb, location)). User space counts them in BTF's typedef
// (`KernelLayout::kfree_skb_args`); arguments past that count are never
// read: the check is against a constant of the frozen `.rodata`, so the
// verifier prunes the read and the kernel does not refuse the attach.
const KFREE_SKB_SKB: usize = 0;
const KFREE_SKB_REASON: usize = 2;
const KFREE_SKB_RX_SK: usize = 3;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb_drops(ctx: RawTracePointContext) -> i32 {
    if count_drop(&ctx).is_err() {
        count_error(DropsError::DropReadFailed);
    }
    0
}

// Linux 6.18, /sys/kernel/btf/vmlinux:
//   typedef void (*btf_trace_tcp_retransmit_skb)(void *, const struct sock *,
//                                                const struct sk_buff *, int);
// i.e. TP_PROTO(const struct sock *sk, const struct sk_buff *skb, int err)
// Older kernels lack `err` (TP_PROTO(sk, skb)); only `sk`, the first
// argument on every kernel, is read.
const TCP_RETRANSMIT_SKB_SK: usize = 0;

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmits(ctx: RawTracePointContext) -> i32 {
    if count_retransmit(&ctx).is_err() {
        count_error(DropsError::RetransmitReadFailed);
    }
    0
}

#[inline(always)]
fn layout() -> KernelLayout {
    DROPS_LAYOUT.load()
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn kernel_read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly
    // on a bad one; nothing is dereferenced directly.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

/// Inode number of the network namespace `net` (a `struct net *`).
#[inline(always)]
fn netns_of(net: *const u8, l: &KernelLayout) -> Result<u32, i32> {
    kernel_read::<u32>(net, l.net_inum)
}

/// Whose drop it is, as far as the kernel structs tell.
enum Owner {
    /// A device of the daemon's namespace (its ifindex).
    Device(u32),
    /// The daemon's namespace, no device (a socket's drop).
    Namespace,
    /// Another network namespace: not counted.
    Elsewhere,
    /// Neither a device nor a socket (or they did not read): counted only
    /// when the daemon watches the host's namespace (`count_unowned`).
    Unknown,
}

fn count_drop(ctx: &RawTracePointContext) -> Result<(), i32> {
    let l = layout();
    let skb: *const u8 = ctx.arg(KFREE_SKB_SKB);
    // Without the argument (or without BTF to tell) the reason is unknown:
    // the overflow slot.
    let reason: u32 = if l.kfree_skb_args >= KFREE_SKB_ARGS_WITH_REASON {
        ctx.arg(KFREE_SKB_REASON)
    } else {
        OVERFLOW_REASON_SLOT
    };
    let rx_sk: *const u8 = if l.kfree_skb_args >= KFREE_SKB_ARGS_WITH_RX_SK {
        ctx.arg(KFREE_SKB_RX_SK)
    } else {
        core::ptr::null()
    };
    let owner = if l.enabled != 0 {
        // A pointer that does not read (skb->dev shares a union with
        // dev_scratch once UDP queued the skb) still counts the reason.
        owner(skb, rx_sk, &l).unwrap_or_else(|_| {
            count_error(DropsError::DropReadFailed);
            Owner::Unknown
        })
    } else {
        Owner::Unknown
    };
    match owner {
        Owner::Elsewhere => return Ok(()),
        Owner::Unknown if l.enabled != 0 && l.count_unowned == 0 => return Ok(()),
        Owner::Device(ifindex) => {
            count_device_drop(ifindex, reason);
            if l.peers != 0 {
                count_peer_drop(skb, reason, &l);
            }
        }
        Owner::Namespace | Owner::Unknown => {}
    }
    let slot = if reason < MAX_DROP_REASONS {
        reason
    } else {
        OVERFLOW_REASON_SLOT
    };
    increment(&DROP_REASONS, slot);
    Ok(())
}

#[inline(always)]
fn owner(skb: *const u8, rx_sk: *const u8, l: &KernelLayout) -> Result<Owner, i32> {
    let dev: *const u8 = kernel_read(skb, l.skb_dev)?;
    if !dev.is_null() {
        let net: *const u8 = kernel_read(dev, l.dev_net)?;
        if netns_of(net, l)? != l.netns_inum {
            return Ok(Owner::Elsewhere);
        }
        let ifindex: i32 = kernel_read(dev, l.dev_ifindex)?;
        return Ok(Owner::Device(ifindex as u32));
    }
    // The receiving socket, else the socket owning the skb (queued data).
    let sk = if rx_sk.is_null() {
        kernel_read(skb, l.skb_sk)?
    } else {
        rx_sk
    };
    if !sk.is_null() {
        let net: *const u8 = kernel_read(sk, l.sk_net)?;
        if netns_of(net, l)? != l.netns_inum {
            return Ok(Owner::Elsewhere);
        }
        return Ok(Owner::Namespace);
    }
    Ok(Owner::Unknown)
}

#[inline(always)]
fn count_device_drop(ifindex: u32, reason: u32) {
    let key = DeviceDropKey { ifindex, reason };
    if let Some(n) = DEVICE_DROPS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: only this CPU writes it, and nothing
        // preempts a BPF program on its CPU.
        unsafe { *n += 1 };
        return;
    }
    if DEVICE_DROPS.insert(key, 1, BPF_NOEXIST as u64).is_err() {
        // Full, or another CPU inserted the key first (then this one drop
        // of this CPU is lost, and counted as an error, which is rare).
        count_error(DropsError::DeviceMapFull);
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `skb->network_header` when no network header was set (`(u16)~0U`).
const NO_HEADER: u16 = 0xffff;

/// Counts a drop of a received packet by the device it came in on and its
/// IP source address; a packet this host sent (no `skb_iif`) or without an
/// IP header is not a peer's. A read that fails is counted, never fatal.
#[inline(always)]
fn count_peer_drop(skb: *const u8, reason: u32, l: &KernelLayout) {
    match peer_of(skb, l) {
        Ok(Some((ifindex, peer))) => add(
            &PEER_DROPS,
            &PeerDropKey {
                ifindex,
                reason,
                peer,
            },
        ),
        Ok(None) => {}
        Err(_) => count_error(DropsError::PeerReadFailed),
    }
}

#[inline(always)]
fn peer_of(skb: *const u8, l: &KernelLayout) -> Result<Option<(u32, PeerKey)>, i32> {
    let iif: i32 = kernel_read(skb, l.skb_iif)?;
    if iif <= 0 {
        return Ok(None);
    }
    let protocol: u16 = kernel_read(skb, l.skb_protocol)?;
    let head: *const u8 = kernel_read(skb, l.skb_head)?;
    let network: u16 = kernel_read(skb, l.skb_network_header)?;
    if head.is_null() || network == NO_HEADER {
        return Ok(None);
    }
    let ip = head.wrapping_add(usize::from(network));
    let mut peer = PeerKey::default();
    match u16::from_be(protocol) {
        ETH_P_IP => {
            // struct iphdr: saddr at byte 12.
            let a: [u8; 4] = kernel_read(ip, 12)?;
            peer.family = u32::from(AF_INET);
            peer.addr[0] = a[0];
            peer.addr[1] = a[1];
            peer.addr[2] = a[2];
            peer.addr[3] = a[3];
        }
        ETH_P_IPV6 => {
            // struct ipv6hdr: saddr at byte 8.
            peer.family = u32::from(AF_INET6);
            peer.addr = kernel_read(ip, 8)?;
        }
        _ => return Ok(None),
    }
    Ok(Some((iif as u32, peer)))
}

/// The remote address of a socket of `family`.
#[inline(always)]
fn remote_of(sk: *const u8, family: u16, l: &KernelLayout) -> Result<Option<PeerKey>, i32> {
    let mut peer = PeerKey::default();
    match family {
        AF_INET => {
            let a: [u8; 4] = kernel_read(sk, l.sk_daddr)?;
            peer.family = u32::from(AF_INET);
            peer.addr[0] = a[0];
            peer.addr[1] = a[1];
            peer.addr[2] = a[2];
            peer.addr[3] = a[3];
        }
        AF_INET6 => {
            peer.family = u32::from(AF_INET6);
            peer.addr = kernel_read(sk, l.sk_v6_daddr)?;
        }
        _ => return Ok(None),
    }
    Ok(Some(peer))
}

/// Adds one to `key` in a per-CPU hash map; a full map is counted.
#[inline(always)]
fn add<K>(map: &PerCpuHashMap<K, u64>, key: &K) {
    if let Some(n) = map.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: only this CPU writes it, and nothing
        // preempts a BPF program on its CPU.
        unsafe { *n += 1 };
        return;
    }
    if map.insert(key, &1, BPF_NOEXIST as u64).is_err() {
        count_error(DropsError::PeerMapFull);
    }
}

fn count_retransmit(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(TCP_RETRANSMIT_SKB_SK);
    let l = layout();
    // The family is the socket's (what `tcp:tcp_retransmit_skb` records);
    // without the offsets from BTF it is unknown.
    let mut family = 0u16;
    if l.enabled != 0 && !sk.is_null() {
        let net: *const u8 = kernel_read(sk, l.sk_net)?;
        if netns_of(net, &l)? != l.netns_inum {
            return Ok(());
        }
        family = kernel_read(sk, l.sk_family)?;
        if l.peers != 0 {
            match remote_of(sk, family, &l) {
                Ok(Some(peer)) => add(&PEER_RETRANSMITS, &peer),
                Ok(None) => {}
                Err(_) => count_error(DropsError::PeerReadFailed),
            }
        }
    }
    match family {
        AF_INET => increment(&TCP_RETRANSMITS, FAMILY_SLOT_IPV4),
        AF_INET6 => increment(&TCP_RETRANSMITS, FAMILY_SLOT_IPV6),
        _ => count_error(DropsError::RetransmitUnknownFamily),
    }
    Ok(())
}

#[inline(always)]
fn increment(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(n) = map.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot inside the array (get_ptr_mut checked the
        // index); only this CPU writes it.
        unsafe { *n += 1 };
    }
}

#[inline(always)]
fn count_error(error: DropsError) {
    increment(&DROPS_ERRORS, error as u32);
}
