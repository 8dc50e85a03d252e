//! `kfree_skb_drops` on `skb:kfree_skb` and `tcp_retransmits` on
//! `tcp:tcp_retransmit_skb`: count kernel packet drops by reason (and by
//! device where the skb names one) and TCP retransmits by address family.
//!
//! Observe only: tracepoint programs cannot change what they trace, and on
//! their own errors they count the error in `DROPS_ERRORS` and go on.
//! Kernel struct offsets come from user space (`DROPS_LAYOUT`, read from the
//! running kernel's BTF), never from constants compiled in here.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use telemetryd_common::drops::{
    DeviceDropKey, DropsError, KernelLayout, AF_INET, AF_INET6, DROPS_ERROR_SLOTS,
    DROP_REASON_SLOTS, FAMILY_SLOTS, FAMILY_SLOT_IPV4, FAMILY_SLOT_IPV6, MAX_DEVICE_DROP_KEYS,
    MAX_DROP_REASONS, OVERFLOW_REASON_SLOT,
};

#[map(name = "DROP_REASONS")]
static DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASON_SLOTS, 0);

#[map(name = "DEVICE_DROPS")]
static DEVICE_DROPS: PerCpuHashMap<DeviceDropKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_DEVICE_DROP_KEYS, 0);

#[map(name = "TCP_RETRANSMITS")]
static TCP_RETRANSMITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FAMILY_SLOTS, 0);

#[map(name = "DROPS_ERRORS")]
static DROPS_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROPS_ERROR_SLOTS, 0);

/// Set by the loader (`EbpfLoader::set_global`) before the programs load.
#[unsafe(no_mangle)]
static DROPS_LAYOUT: KernelLayout = KernelLayout {
    enabled: 0,
    skb_dev: 0,
    dev_ifindex: 0,
    dev_net: 0,
    sk_net: 0,
    net_inum: 0,
    skb_sk: 0,
    netns_inum: 0,
    count_unowned: 0,
};

// /sys/kernel/tracing/events/skb/kfree_skb/format (Linux 6.18):
//   field:unsigned short common_type;        offset:0;  size:2; signed:0;
//   field:unsigned char common_flags;        offset:2;  size:1; signed:0;
//   field:unsigned char common_preempt_count; offset:3; size:1; signed:0;
//   field:int common_pid;                    offset:4;  size:4; signed:1;
//   field:void * skbaddr;                    offset:8;  size:8; signed:0;
//   field:void * location;                   offset:16; size:8; signed:0;
//   field:void * rx_sk;                      offset:24; size:8; signed:0;
//   field:unsigned short protocol;           offset:32; size:2; signed:0;
//   field:enum skb_drop_reason reason;       offset:36; size:4; signed:0;
/// The part of the `skb:kfree_skb` record this program reads.
#[repr(C)]
struct KfreeSkb {
    common: u64,
    skbaddr: *const u8,
    location: *const u8,
    rx_sk: *const u8,
    protocol: u16,
    _pad: u16,
    reason: u32,
}

const _: () = assert!(core::mem::offset_of!(KfreeSkb, skbaddr) == 8);
const _: () = assert!(core::mem::offset_of!(KfreeSkb, rx_sk) == 24);
const _: () = assert!(core::mem::offset_of!(KfreeSkb, reason) == 36);

// /sys/kernel/tracing/events/tcp/tcp_retransmit_skb/format (Linux 6.18):
//   field:unsigned short common_type;        offset:0;  size:2; signed:0;
//   field:unsigned char common_flags;        offset:2;  size:1; signed:0;
//   field:unsigned char common_preempt_count; offset:3; size:1; signed:0;
//   field:int common_pid;                    offset:4;  size:4; signed:1;
//   field:const void * skbaddr;              offset:8;  size:8; signed:0;
//   field:const void * skaddr;               offset:16; size:8; signed:0;
//   field:int state;                         offset:24; size:4; signed:1;
//   field:__u16 sport;                       offset:28; size:2; signed:0;
//   field:__u16 dport;                       offset:30; size:2; signed:0;
//   field:__u16 family;                      offset:32; size:2; signed:0;
//   field:__u8 saddr[4];                     offset:34; size:4; signed:0;
//   field:__u8 daddr[4];                     offset:38; size:4; signed:0;
//   field:__u8 saddr_v6[16];                 offset:42; size:16; signed:0;
//   field:__u8 daddr_v6[16];                 offset:58; size:16; signed:0;
//   field:int err;                           offset:76; size:4; signed:1;
/// The part of the `tcp:tcp_retransmit_skb` record this program reads.
#[repr(C)]
struct TcpRetransmitSkb {
    common: u64,
    skbaddr: *const u8,
    skaddr: *const u8,
    state: i32,
    sport: u16,
    dport: u16,
    family: u16,
}

const _: () = assert!(core::mem::offset_of!(TcpRetransmitSkb, skaddr) == 16);
const _: () = assert!(core::mem::offset_of!(TcpRetransmitSkb, family) == 32);

#[tracepoint]
pub fn kfree_skb_drops(ctx: TracePointContext) -> u32 {
    if count_drop(&ctx).is_err() {
        count_error(DropsError::DropReadFailed);
    }
    0
}

#[tracepoint]
pub fn tcp_retransmits(ctx: TracePointContext) -> u32 {
    if count_retransmit(&ctx).is_err() {
        count_error(DropsError::RetransmitReadFailed);
    }
    0
}

#[inline(always)]
fn layout() -> KernelLayout {
    // SAFETY: a plain read of a static the loader initialised; volatile so
    // the compiler does not fold in the zeros it was declared with.
    unsafe { core::ptr::read_volatile(&DROPS_LAYOUT) }
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

fn count_drop(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: the offsets are those of the format file pasted above.
    let (skb, rx_sk, reason) = unsafe {
        (
            ctx.read_at::<*const u8>(8)?,
            ctx.read_at::<*const u8>(24)?,
            ctx.read_at::<u32>(36)?,
        )
    };
    let l = layout();
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
        Owner::Device(ifindex) => count_device_drop(ifindex, reason),
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

fn count_retransmit(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: the offsets are those of the format file pasted above.
    let (sk, family) = unsafe { (ctx.read_at::<*const u8>(16)?, ctx.read_at::<u16>(32)?) };
    let l = layout();
    if l.enabled != 0 && !sk.is_null() {
        let net: *const u8 = kernel_read(sk, l.sk_net)?;
        if netns_of(net, &l)? != l.netns_inum {
            return Ok(());
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
