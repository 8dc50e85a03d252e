//! Polls the drop-reason and TCP-retransmit maps and `/proc/net/snmp` into
//! a [`Snapshot`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use telemetryd_common::drops::{
    DeviceDropKey, DEVICE_DROPS_MAP, DROPS_ERRORS_MAP, DROPS_ERROR_LABELS, DROP_REASONS_MAP,
    DROP_REASON_SLOTS, FAMILY_SLOT_IPV4, FAMILY_SLOT_IPV6, RETRANSMITS_MAP,
};
use tracing::debug;

use super::snapshot::{ProgramAttachment, Snapshot, TcpStats};
use crate::bpf::drops::DropReasonNames;
use crate::bpf::{LoadError, LoadedObject};

/// Owns the maps of `kfree_skb_drops` and `tcp_retransmits`.
pub struct DropsCollector {
    reasons: PerCpuArray<MapData, u64>,
    devices: PerCpuHashMap<MapData, DeviceDropKey, u64>,
    retransmits: PerCpuArray<MapData, u64>,
    errors: PerCpuArray<MapData, u64>,
    names: DropReasonNames,
    /// Programs attached, for `telemetryd_ebpf_program_attached`.
    attached: Vec<&'static str>,
    snmp: PathBuf,
}

impl DropsCollector {
    pub fn new(
        object: &mut LoadedObject,
        names: DropReasonNames,
        attached: Vec<&'static str>,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            reasons: object.take_map(DROP_REASONS_MAP)?,
            devices: object.take_map(DEVICE_DROPS_MAP)?,
            retransmits: object.take_map(RETRANSMITS_MAP)?,
            errors: object.take_map(DROPS_ERRORS_MAP)?,
            names,
            attached,
            snmp: PathBuf::from("/proc/net/snmp"),
        })
    }

    /// Fills `kernel_drops` (reasons seen so far), `device_drops`, `tcp`,
    /// the programs' errors and attachments of `snapshot`.
    pub fn poll(&mut self, snapshot: &mut Snapshot) {
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
        for entry in self.devices.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            let n: u64 = per_cpu.iter().sum();
            let names = names.get_or_insert_with(interface_names);
            let device = names
                .get(&key.ifindex)
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
        for (slot, (program, reason)) in DROPS_ERROR_LABELS.iter().enumerate() {
            let n = self
                .errors
                .get(&(slot as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            snapshot
                .program_errors
                .insert(((*program).to_owned(), (*reason).to_owned()), n);
        }
        for program in &self.attached {
            snapshot.attachments.push(ProgramAttachment {
                program: (*program).to_owned(),
                attach: "tracepoint".to_owned(),
                device: String::new(),
            });
        }
    }
}

/// ifindex -> name of this namespace's interfaces.
fn interface_names() -> BTreeMap<u32, String> {
    crate::bpf::interfaces::list()
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.ifindex, i.name))
        .collect()
}

/// `Tcp: OutSegs` and `RetransSegs` of `/proc/net/snmp` (a header line of
/// names, then a line of values). The TCP MIB counts both IPv4 and IPv6.
pub fn fill_snmp(text: &str, tcp: &mut TcpStats) {
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return;
    };
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match name {
            "OutSegs" => tcp.segments_out = value,
            "RetransSegs" => tcp.retrans_segs = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcp_mib() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin ActiveOpens InSegs OutSegs RetransSegs InErrs\n\
                    Tcp: 1 200 7 1000 2345 67 0\n\
                    Udp: InDatagrams\nUdp: 5\n";
        let mut tcp = TcpStats::default();
        fill_snmp(text, &mut tcp);
        assert_eq!(tcp.segments_out, 2345);
        assert_eq!(tcp.retrans_segs, 67);
        let mut untouched = TcpStats::default();
        fill_snmp("Tcp: OutSegs\n", &mut untouched);
        assert_eq!(untouched, TcpStats::default());
    }

    #[test]
    fn reads_this_namespace() {
        let mut tcp = TcpStats::default();
        fill_snmp(
            &std::fs::read_to_string("/proc/net/snmp").unwrap(),
            &mut tcp,
        );
        // Any Linux host has sent some TCP segment by the time tests run
        // (this process's own namespace; 0 in a fresh one is possible but
        // not where cargo test runs).
        assert!(tcp.segments_out >= tcp.retrans_segs);
    }
}
