//! Kernel drop reasons and TCP retransmits: `kfree_skb_drops` and
//! `tcp_retransmits` on the raw tracepoints `kfree_skb` and
//! `tcp_retransmit_skb`, with the struct offsets they follow read from the
//! kernel's BTF, plus the TCP MIB. Raw tracepoints attach by name through
//! `bpf(BPF_RAW_TRACEPOINT_OPEN)`: no tracefs, which the hardened unit (no
//! CAP_SYS_ADMIN, tracefs mode 0700) can neither read nor mount. Its section
//! of the snapshot is [`DropStats`].

pub mod layout;
pub mod metrics;
pub mod snmp;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::raw_trace_point::RawTracePointLink;
use aya::programs::RawTracePoint;
use aya::EbpfLoader;
use telemetryd_common::drops::{
    DeviceDropKey, KernelLayout, DEVICE_DROPS_MAP, DROPS_ERRORS_MAP, DROPS_PROGRAM,
    DROPS_TRACEPOINT, DROP_REASONS_MAP, DROP_REASON_SLOTS, FAMILY_SLOT_IPV4, FAMILY_SLOT_IPV6,
    KFREE_SKB_ARGS_WITH_REASON, KFREE_SKB_ARGS_WITH_RX_SK, LAYOUT_GLOBAL, RETRANSMITS_MAP,
    RETRANSMITS_PROGRAM, RETRANSMITS_TRACEPOINT,
};
use tracing::{debug, info, warn};

pub use layout::{kernel_layout, DropReasonNames};
pub use stats::{DropStats, TcpStats};

use crate::kernel::btf::{BtfError, KernelBtf};
use crate::loader::{LoadError, LoadSettings, LoadedObject};
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
            match kernel_layout(btf) {
                Ok(l) => out.push_str(&format!(
                    "  device attribution   yes  sk_buff.dev +{}, sk_buff.sk +{}, net_device.ifindex +{}, \
                     net_device.nd_net +{}, sock.skc_net +{}, sock.skc_family +{}, net.ns.inum +{}\n",
                    l.skb_dev, l.skb_sk, l.dev_ifindex, l.dev_net, l.sk_net, l.sk_family, l.net_inum
                )),
                Err(e) => out.push_str(&format!("  device attribution   no   {e}\n")),
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
    retransmits: PerCpuArray<MapData, u64>,
    errors: PerCpuArray<MapData, u64>,
    names: DropReasonNames,
    /// Programs attached, for `telemetryd_ebpf_program_attached`.
    attached: Vec<&'static str>,
    _links: Vec<RawTracePointLink>,
    snmp: PathBuf,
    /// Devices of `devices` missing from the interface list at the last poll.
    missing: BTreeSet<u32>,
}

impl DropsSource {
    /// Loads and attaches both programs as raw tracepoints (a program that
    /// fails is logged and left out) and takes their maps.
    pub fn start(object: &mut LoadedObject, names: DropReasonNames) -> Result<Self, LoadError> {
        let mut attached = Vec::new();
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
                Err(error) => warn!(program, tracepoint, %error, "raw tracepoint not attached"),
            }
        }
        Ok(Self {
            reasons: object.take_map(DROP_REASONS_MAP)?,
            devices: object.take_map(DEVICE_DROPS_MAP)?,
            retransmits: object.take_map(RETRANSMITS_MAP)?,
            errors: object.take_map(DROPS_ERRORS_MAP)?,
            names,
            attached,
            _links: links,
            snmp: PathBuf::from("/proc/net/snmp"),
            missing: BTreeSet::new(),
        })
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
        let entries: Vec<(DeviceDropKey, u64)> = self
            .devices
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect();
        let names = if entries.is_empty() {
            Some(BTreeMap::new())
        } else {
            interface_names()
        };
        let seen: Vec<u32> = entries.iter().map(|(key, _)| key.ifindex).collect();
        let (missing, expired) = expire(names.as_ref(), &seen, &self.missing);
        if names.is_some() {
            self.missing = missing;
        }
        for (key, n) in entries {
            if expired.contains(&key.ifindex) {
                if let Err(error) = self.devices.remove(&key) {
                    debug!(%error, ifindex = key.ifindex, "removing a vanished device's drops");
                }
                continue;
            }
            let device = names
                .as_ref()
                .and_then(|names| names.get(&key.ifindex))
                .cloned()
                .unwrap_or_else(|| format!("ifindex{}", key.ifindex));
            *snapshot
                .device_drops
                .entry(device)
                .or_default()
                .entry(self.names.name(key.reason).to_owned())
                .or_default() += n;
        }
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

/// ifindex -> name of this namespace's interfaces; `None` when they could
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

/// The devices of [`DEVICE_DROPS_MAP`] (`seen`) that are gone: missing
/// from the interface list (`listed`) at this poll and at the one before
/// (`missing_before`; twice, so that a device created between the map read
/// and the listing is not taken for gone). Their entries are removed, so
/// that interface churn neither grows the map and the `/metrics` series
/// without end nor fills the map (4,096 entries) so that live devices go
/// uncounted. Returns (missing now, to remove); a listing that failed
/// (`None`) removes nothing and changes nothing.
fn expire(
    listed: Option<&BTreeMap<u32, String>>,
    seen: &[u32],
    missing_before: &BTreeSet<u32>,
) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let Some(listed) = listed else {
        return (missing_before.clone(), BTreeSet::new());
    };
    let missing: BTreeSet<u32> = seen
        .iter()
        .copied()
        .filter(|ifindex| !listed.contains_key(ifindex))
        .collect();
    let expired = missing.intersection(missing_before).copied().collect();
    (missing, expired)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask bench soak`: under interface churn the drops
    /// of every veth ever removed stayed in the map and in `/metrics` (as
    /// `device="ifindex<n>"`), growing memory and the scrape without end.
    #[test]
    fn devices_gone_twice_in_a_row_expire() {
        let listed: BTreeMap<u32, String> = [(1, "lo".to_owned()), (7, "eth0".to_owned())].into();
        let none = BTreeSet::new();
        // 9 is missing for the first time: kept, remembered.
        let (missing, expired) = expire(Some(&listed), &[1, 7, 9, 9], &none);
        assert_eq!(missing, BTreeSet::from([9]));
        assert!(expired.is_empty());
        // Still missing at the next poll: removed. 12 is new and missing once.
        let (missing, expired) = expire(Some(&listed), &[1, 9, 12], &missing);
        assert_eq!(expired, BTreeSet::from([9]));
        assert_eq!(missing, BTreeSet::from([9, 12]));
        // 12 showed up in the listing by then (created between the map read
        // and the listing): kept.
        let listed_12: BTreeMap<u32, String> = [(12, "veth1".to_owned())].into();
        let (missing, expired) = expire(Some(&listed_12), &[12], &BTreeSet::from([12]));
        assert!(missing.is_empty() && expired.is_empty());
        // A listing that failed removes nothing and forgets nothing.
        let before = BTreeSet::from([3, 4]);
        let (missing, expired) = expire(None, &[3, 4], &before);
        assert_eq!(missing, before);
        assert!(expired.is_empty());
    }
}
