//! Kernel drop reasons and TCP retransmits: `kfree_skb_drops` and
//! `tcp_retransmits` on the raw tracepoints `kfree_skb` and
//! `tcp_retransmit_skb`, with the struct offsets they follow read from the
//! kernel's BTF, plus the TCP MIB. Raw tracepoints attach by name through
//! `bpf(BPF_RAW_TRACEPOINT_OPEN)`: no tracefs, which the hardened unit (no
//! CAP_SYS_ADMIN, tracefs mode 0700) can neither read nor mount. Its section
//! of the snapshot is [`DropStats`].

pub mod classes;
pub mod layout;
pub mod metrics;
pub mod snmp;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::raw_trace_point::RawTracePointLink;
use aya::programs::RawTracePoint;
use aya::EbpfLoader;
use telemetryd_common::drops::{
    DeviceDropKey, KernelLayout, PeerDropKey, PeerKey, AF_INET, AF_INET6, DEVICE_DROPS_MAP,
    DROPS_ERRORS_MAP, DROPS_PROGRAM, DROPS_TRACEPOINT, DROP_REASONS_MAP, DROP_REASON_SLOTS,
    FAMILY_SLOT_IPV4, FAMILY_SLOT_IPV6, KFREE_SKB_ARGS_WITH_REASON, KFREE_SKB_ARGS_WITH_RX_SK,
    LAYOUT_GLOBAL, PEER_DROPS_MAP, PEER_RETRANSMITS_MAP, RETRANSMITS_MAP, RETRANSMITS_PROGRAM,
    RETRANSMITS_TRACEPOINT,
};
use tracing::{debug, info, warn};

pub use layout::{kernel_layout, DropReasonNames};
pub use stats::{DropStats, TcpStats};

use crate::config::MetricsConfig;
use crate::kernel::btf::{BtfError, KernelBtf};
use crate::loader::{LoadError, LoadSettings, LoadedObject};
use crate::sources::cardinality::{DeviceCap, DevicePolicy};
use snmp::fill_snmp;

/// What [`DropsLoad::prepare`] found out before the object is loaded.
pub struct DropsLoad {
    pub names: DropReasonNames,
    pub layout: KernelLayout,
}

impl LoadSettings for DropsLoad {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global(LAYOUT_GLOBAL, &self.layout, true);
    }
}

/// Reads reason names and field offsets from the kernel's BTF. Without BTF
/// no reason is read (every drop counts as OTHER) and drops are not
/// attributed to devices, said in one log line; without a field, reasons
/// are numbered or drops not attributed, each logged once.
pub fn prepare(btf: Result<&KernelBtf, &BtfError>) -> DropsLoad {
    let btf = match btf {
        Ok(btf) => Some(btf),
        Err(error) => {
            warn!(
                %error,
                "no kernel BTF: drop reasons are not read (every drop counts as {}) \
                 and drops are not attributed to devices",
                telemetryd_common::drops::OVERFLOW_REASON_LABEL
            );
            None
        }
    };
    let names = btf
        .map(|b| {
            DropReasonNames::from_btf(b).unwrap_or_else(|error| {
                warn!(%error, "drop reason names unavailable; reasons are numbered");
                DropReasonNames::numbered()
            })
        })
        .unwrap_or_else(DropReasonNames::numbered);
    let mut layout = btf
        .map(|b| match kernel_layout(b) {
            Ok(layout) => layout,
            Err(error) => {
                warn!(%error, "kernel drops are not attributed to devices");
                KernelLayout::default()
            }
        })
        .unwrap_or_default();
    // Which arguments kfree_skb passes is read, never guessed: without the
    // typedef the programs read only the skb (reasons go to the overflow slot).
    layout.kfree_skb_args = match btf.map(|b| b.tracepoint_args(DROPS_TRACEPOINT)) {
        Some(Ok(n)) => n,
        Some(Err(error)) => {
            warn!(%error, "kfree_skb arguments unknown: drop reasons are not read");
            0
        }
        None => 0,
    };
    // Without BTF that was said above, once.
    if btf.is_some() && layout.kfree_skb_args < KFREE_SKB_ARGS_WITH_REASON {
        warn!(
            arguments = layout.kfree_skb_args,
            "kfree_skb passes no drop reason on this kernel: drops are counted as OTHER"
        );
    }
    if btf.is_some() {
        info!(classes = %names.class_summary(), "drop reason classes");
    }
    debug!(
        ?layout,
        "kernel struct offsets and kfree_skb arguments from BTF"
    );
    DropsLoad { names, layout }
}

/// What `telemetryd check --probe` says about the loss signals.
pub fn describe(btf: Result<&KernelBtf, &BtfError>) -> String {
    let mut out = String::from("loss signals:\n");
    match btf {
        Ok(btf) => {
            let args = btf.tracepoint_args(DROPS_TRACEPOINT);
            match (btf.enum_values("skb_drop_reason"), args) {
                (Ok(v), Ok(n)) if n >= KFREE_SKB_ARGS_WITH_REASON => out.push_str(&format!(
                    "  drop reasons         yes  raw tracepoint kfree_skb ({n} arguments{}), \
                     {} names from enum skb_drop_reason\n",
                    if n >= KFREE_SKB_ARGS_WITH_RX_SK { ", rx_sk" } else { "" },
                    v.len()
                )),
                (Ok(_), Ok(n)) => out.push_str(&format!(
                    "  drop reasons         no   raw tracepoint kfree_skb has {n} arguments, no reason\n"
                )),
                (Err(e), _) | (_, Err(e)) => {
                    out.push_str(&format!("  drop reasons         no   {e}\n"))
                }
            }
            if let Ok(names) = DropReasonNames::from_btf(btf) {
                out.push_str(&format!(
                    "  reason classes       {}\n",
                    names.class_summary()
                ));
            }
            match kernel_layout(btf) {
                Ok(l) => out.push_str(&format!(
                    "  device attribution   yes  sk_buff.dev +{}, sk_buff.sk +{}, net_device.ifindex +{}, \
                     net_device.nd_net +{}, sock.skc_net +{}, sock.skc_family +{}, net.ns.inum +{}\n",
                    l.skb_dev, l.skb_sk, l.dev_ifindex, l.dev_net, l.sk_net, l.sk_family, l.net_inum
                )),
                Err(e) => out.push_str(&format!("  device attribution   no   {e}\n")),
            }
            match kernel_layout(btf) {
                Ok(l) if l.peers == 1 => out.push_str(&format!(
                    "  peer attribution     yes  sk_buff.skb_iif +{}, sk_buff.head +{}, sk_buff.network_header +{}, \
                     sk_buff.protocol +{}, sock.skc_daddr +{}, sock.skc_v6_daddr +{}\n",
                    l.skb_iif, l.skb_head, l.skb_network_header, l.skb_protocol, l.sk_daddr, l.sk_v6_daddr
                )),
                _ => out.push_str("  peer attribution     no   a struct field is missing from BTF\n"),
            }
        }
        Err(e) => {
            out.push_str(&format!("  drop reasons         no   {e}\n"));
            out.push_str("  device attribution   no   needs the kernel's BTF for struct offsets\n");
        }
    }
    out.push_str(&format!(
        "  tcp retransmits      raw tracepoint {RETRANSMITS_TRACEPOINT}, /proc/net/snmp\n"
    ));
    out
}

/// `kfree_skb_drops` and `tcp_retransmits` attached, and their maps.
/// Dropping it detaches both.
pub struct DropsSource {
    reasons: PerCpuArray<MapData, u64>,
    devices: PerCpuHashMap<MapData, DeviceDropKey, u64>,
    peers: PerCpuHashMap<MapData, PeerDropKey, u64>,
    peer_retransmits: PerCpuHashMap<MapData, PeerKey, u64>,
    /// The peers that have series of their own, per device ("" for
    /// retransmits): the first [`stats::MAX_PEER_SERIES`] seen, kept so
    /// that every series only grows.
    peer_series: BTreeMap<String, std::collections::BTreeSet<String>>,
    retransmits: PerCpuArray<MapData, u64>,
    errors: PerCpuArray<MapData, u64>,
    names: DropReasonNames,
    /// Programs attached, for `telemetryd_ebpf_program_attached`.
    attached: Vec<&'static str>,
    /// Programs that did not attach, and why.
    failed: Vec<(&'static str, String)>,
    _links: Vec<RawTracePointLink>,
    snmp: PathBuf,
    /// `[metrics]`: which devices have series of their own.
    cap: DeviceCap<String>,
    /// The last interface listing that worked (ifindex -> name).
    last_names: BTreeMap<u32, String>,
}

impl DropsSource {
    /// Loads and attaches both programs as raw tracepoints (a program that
    /// fails is logged and left out) and takes their maps.
    pub fn start(object: &mut LoadedObject, names: DropReasonNames) -> Result<Self, LoadError> {
        let mut attached = Vec::new();
        let mut failed = Vec::new();
        let mut links = Vec::new();
        for (program, tracepoint) in [
            (DROPS_PROGRAM, DROPS_TRACEPOINT),
            (RETRANSMITS_PROGRAM, RETRANSMITS_TRACEPOINT),
        ] {
            match attach(object, program, tracepoint) {
                Ok(link) => {
                    info!(program, tracepoint, "raw tracepoint attached");
                    attached.push(program);
                    links.push(link);
                }
                Err(error) => {
                    warn!(program, tracepoint, %error, "raw tracepoint not attached");
                    failed.push((program, format!("raw tracepoint {tracepoint}: {error:#}")));
                }
            }
        }
        Ok(Self {
            reasons: object.take_map(DROP_REASONS_MAP)?,
            devices: object.take_map(DEVICE_DROPS_MAP)?,
            peers: object.take_map(PEER_DROPS_MAP)?,
            peer_retransmits: object.take_map(PEER_RETRANSMITS_MAP)?,
            peer_series: BTreeMap::new(),
            retransmits: object.take_map(RETRANSMITS_MAP)?,
            errors: object.take_map(DROPS_ERRORS_MAP)?,
            names,
            attached,
            failed,
            _links: links,
            snmp: PathBuf::from("/proc/net/snmp"),
            cap: DeviceCap::new(DevicePolicy::default(), usize::MAX),
            last_names: BTreeMap::new(),
        })
    }

    /// The programs that did not attach, and why.
    pub fn not_attached(&self) -> &[(&'static str, String)] {
        &self.failed
    }

    /// Caps `telemetryd_kernel_device_drops_total` as `[metrics]` says (at
    /// start and on reload).
    pub fn set_device_cap(&mut self, metrics: &MetricsConfig) {
        self.cap = DeviceCap::new(
            DevicePolicy::from_config(metrics),
            metrics.max_drop_devices as usize,
        );
    }

    /// One poll: drops by reason (those seen so far) and by device, TCP
    /// retransmits and the TCP MIB, the programs' errors.
    pub fn poll(&mut self) -> DropStats {
        let mut snapshot = DropStats {
            attached: self.attached.clone(),
            ..Default::default()
        };
        for slot in 0..DROP_REASON_SLOTS {
            let n: u64 = self
                .reasons
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            if n > 0 {
                snapshot
                    .kernel_drops
                    .insert(self.names.name(slot).to_owned(), n);
            }
        }
        let mut names: Option<BTreeMap<u32, String>> = None;
        let mut gone = Vec::new();
        for entry in self.devices.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            let n: u64 = per_cpu.iter().sum();
            // A failed listing keeps the last good one: no device looks gone
            // (its series would flap, its roll-up count twice).
            let names = names.get_or_insert_with(|| {
                interface_names().unwrap_or_else(|| self.last_names.clone())
            });
            let Some(device) = names.get(&key.ifindex).cloned() else {
                // A device that is gone: no series, and no entry left behind.
                gone.push(key);
                continue;
            };
            *snapshot
                .device_drops
                .entry(device)
                .or_default()
                .entry(self.names.name(key.reason).to_owned())
                .or_default() += n;
        }
        if let Some(names) = names {
            self.last_names = names;
        }
        // Read again, so a device that appeared during the walk keeps its entries.
        if let Some(now) = (!gone.is_empty()).then(interface_names).flatten() {
            for key in gone.iter().filter(|k| !now.contains_key(&k.ifindex)) {
                if let Err(error) = self.devices.remove(key) {
                    debug!(%error, ifindex = key.ifindex, "forgetting a vanished device's drops");
                }
            }
        }
        let by_device = &snapshot.device_drops;
        snapshot.device_drops_folded = self
            .cap
            .fold(by_device.keys().map(String::as_str), |device| {
                by_device[device].clone()
            });
        for entry in self.peers.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            let Some(peer) = peer_address(&key.peer) else {
                continue;
            };
            let n: u64 = per_cpu.iter().sum();
            let device = self
                .last_names
                .get(&key.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("ifindex{}", key.ifindex));
            *snapshot
                .peer_drops
                .entry(device)
                .or_default()
                .entry(peer.to_string())
                .or_default()
                .entry(self.names.name(key.reason).to_owned())
                .or_default() += n;
        }
        for (device, peers) in &snapshot.peer_drops {
            let totals: BTreeMap<&str, u64> = peers
                .iter()
                .map(|(peer, reasons)| {
                    let loss = reasons
                        .iter()
                        .filter(|(r, _)| classes::classify(r) == classes::DropClass::Loss)
                        .map(|(_, n)| n)
                        .sum();
                    (peer.as_str(), loss)
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            let kept = self.peer_series.entry(device.clone()).or_default();
            cap_series(kept, &totals, |peer, n| {
                *snapshot
                    .peer_series
                    .entry((device.clone(), peer.to_owned()))
                    .or_default() += n;
            });
        }
        let mut retransmits: BTreeMap<String, u64> = BTreeMap::new();
        for entry in self.peer_retransmits.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            if let Some(peer) = peer_address(&key) {
                *retransmits.entry(peer.to_string()).or_default() += per_cpu.iter().sum::<u64>();
            }
        }
        let totals: BTreeMap<&str, u64> =
            retransmits.iter().map(|(p, n)| (p.as_str(), *n)).collect();
        let kept = self.peer_series.entry(String::new()).or_default();
        cap_series(kept, &totals, |peer, n| {
            *snapshot
                .peer_retransmits
                .entry(peer.to_owned())
                .or_default() += n;
        });
        let family = |slot: u32| -> u64 {
            self.retransmits
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        snapshot.tcp.retransmits_ipv4 = family(FAMILY_SLOT_IPV4);
        snapshot.tcp.retransmits_ipv6 = family(FAMILY_SLOT_IPV6);
        match std::fs::read_to_string(&self.snmp) {
            Ok(text) => fill_snmp(&text, &mut snapshot.tcp),
            Err(error) => debug!(%error, path = %self.snmp.display(), "no TCP MIB"),
        }
        snapshot.errors = std::array::from_fn(|slot| {
            self.errors
                .get(&(slot as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        });
        snapshot
    }
}

/// ifindex -> name of this namespace's interfaces; `None` when sysfs could
/// not be listed.
fn interface_names() -> Option<BTreeMap<u32, String>> {
    match crate::kernel::interfaces::list() {
        Ok(all) => Some(all.into_iter().map(|i| (i.ifindex, i.name)).collect()),
        Err(error) => {
            debug!(%error, "listing interfaces for the drops by device");
            None
        }
    }
}

/// The address of a peer key; `None` for a family neither IPv4 nor IPv6.
fn peer_address(key: &PeerKey) -> Option<std::net::IpAddr> {
    match u16::try_from(key.family).ok()? {
        AF_INET => {
            Some(std::net::Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]).into())
        }
        AF_INET6 => Some(std::net::Ipv6Addr::from(key.addr).into()),
        _ => None,
    }
}

/// Hands each of `totals` to `emit` under its own name when it is in
/// `kept` or there is room for it (largest first), else under
/// [`stats::OTHER_PEERS`]: at most [`stats::MAX_PEER_SERIES`] names plus
/// `other`, and since `kept` only grows, every series only grows.
fn cap_series(
    kept: &mut std::collections::BTreeSet<String>,
    totals: &BTreeMap<&str, u64>,
    mut emit: impl FnMut(&str, u64),
) {
    let mut by_size: Vec<(&str, u64)> = totals.iter().map(|(p, n)| (*p, *n)).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (peer, n) in by_size {
        if !kept.contains(peer) && kept.len() < stats::MAX_PEER_SERIES {
            kept.insert(peer.to_owned());
        }
        if kept.contains(peer) {
            emit(peer, n);
        } else {
            emit(stats::OTHER_PEERS, n);
        }
    }
}

fn attach(
    object: &mut LoadedObject,
    program: &'static str,
    tracepoint: &str,
) -> Result<RawTracePointLink, LoadError> {
    let prog: &mut RawTracePoint = object.program_mut(program)?;
    let failed = |source| LoadError::Program { program, source };
    prog.load().map_err(failed)?;
    let id = prog.attach(tracepoint).map_err(failed)?;
    prog.take_link(id).map_err(failed)
}
