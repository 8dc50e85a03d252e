//! What the drop programs need from the running kernel's BTF: the names
//! of `enum skb_drop_reason` and the struct offsets they follow.

use std::os::unix::fs::MetadataExt as _;

use telemetryd_common::drops::{
    KernelLayout, MAX_DROP_REASONS, OVERFLOW_REASON_LABEL, OVERFLOW_REASON_SLOT,
};

use crate::kernel::btf::{BtfError, KernelBtf};

/// Label of each drop reason slot (`enum skb_drop_reason` without its
/// `SKB_DROP_REASON_` prefix: `NETFILTER_DROP`); slot [`OVERFLOW_REASON_SLOT`]
/// is [`OVERFLOW_REASON_LABEL`]. Slots the kernel does not name are `REASON_<n>`.
#[derive(Clone, Debug)]
pub struct DropReasonNames {
    names: Vec<String>,
}

impl DropReasonNames {
    pub fn from_btf(btf: &KernelBtf) -> Result<Self, BtfError> {
        let mut names: Vec<String> = (0..MAX_DROP_REASONS)
            .map(|n| format!("REASON_{n}"))
            .collect();
        for (name, value) in btf.enum_values("skb_drop_reason")? {
            if value >= u64::from(MAX_DROP_REASONS) || name == "SKB_DROP_REASON_MAX" {
                continue;
            }
            let label = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name);
            names[value as usize] = label.to_owned();
        }
        names.push(OVERFLOW_REASON_LABEL.to_owned());
        Ok(Self { names })
    }

    /// Numbered names only, when the kernel has no BTF.
    pub fn numbered() -> Self {
        let mut names: Vec<String> = (0..MAX_DROP_REASONS)
            .map(|n| format!("REASON_{n}"))
            .collect();
        names.push(OVERFLOW_REASON_LABEL.to_owned());
        Self { names }
    }

    pub fn name(&self, slot: u32) -> &str {
        let slot = slot.min(OVERFLOW_REASON_SLOT) as usize;
        &self.names[slot]
    }

    pub fn slots(&self) -> usize {
        self.names.len()
    }

    /// The names the kernel gave (not numbered, not the overflow slot).
    pub fn kernel_names(&self) -> impl Iterator<Item = &str> {
        self.names[..MAX_DROP_REASONS as usize]
            .iter()
            .map(String::as_str)
            .filter(|n| !n.starts_with("REASON_"))
    }

    /// "129 names: 95 loss, 34 local, unknown: none" (or the unknown
    /// names), for `check --probe` and the start-up log.
    pub fn class_summary(&self) -> String {
        use super::classes::{classify, DropClass};
        let (mut loss, mut local, mut unknown) = (0, 0, Vec::new());
        for name in self.kernel_names() {
            match classify(name) {
                DropClass::Loss => loss += 1,
                DropClass::Local => local += 1,
                DropClass::Unknown => unknown.push(name),
            }
        }
        let total = loss + local + unknown.len();
        let unknown = if unknown.is_empty() {
            "none".to_owned()
        } else {
            unknown.join(", ")
        };
        format!("{total} names: {loss} loss, {local} local, unknown: {unknown}")
    }
}

/// The field offsets `kfree_skb_drops` and `tcp_retransmits` follow, and
/// the daemon's network namespace.
pub fn kernel_layout(btf: &KernelBtf) -> Result<KernelLayout, BtfError> {
    let netns_inum = std::fs::metadata("/proc/self/ns/net")
        .map_err(|source| BtfError::Read {
            path: "/proc/self/ns/net".into(),
            source,
        })?
        .ino() as u32;
    let host_netns = std::fs::metadata("/proc/1/ns/net").ok().map(|m| m.ino());
    Ok(KernelLayout {
        enabled: 1,
        skb_dev: btf.field_offset("sk_buff", &["dev"])?,
        dev_ifindex: btf.field_offset("net_device", &["ifindex"])?,
        dev_net: btf.field_offset("net_device", &["nd_net", "net"])?,
        sk_net: btf.field_offset("sock", &["__sk_common", "skc_net", "net"])?,
        net_inum: btf.field_offset("net", &["ns", "inum"])?,
        skb_sk: btf.field_offset("sk_buff", &["sk"])?,
        sk_family: btf.field_offset("sock", &["__sk_common", "skc_family"])?,
        netns_inum,
        count_unowned: u32::from(host_netns == Some(u64::from(netns_inum))),
        // Set by `prepare`, also when a field above is missing.
        kfree_skb_args: 0,
        ..peer_layout(btf)
    })
}

/// The offsets peer attribution follows; `peers: 0` (and the drops still
/// counted by device) when one is missing.
fn peer_layout(btf: &KernelBtf) -> KernelLayout {
    let fields = || -> Result<KernelLayout, BtfError> {
        Ok(KernelLayout {
            peers: 1,
            skb_iif: btf.field_offset("sk_buff", &["skb_iif"])?,
            skb_head: btf.field_offset("sk_buff", &["head"])?,
            skb_network_header: btf.field_offset("sk_buff", &["network_header"])?,
            skb_protocol: btf.field_offset("sk_buff", &["protocol"])?,
            sk_daddr: btf.field_offset("sock", &["__sk_common", "skc_daddr"])?,
            sk_v6_daddr: btf.field_offset("sock", &["__sk_common", "skc_v6_daddr"])?,
            ..KernelLayout::default()
        })
    };
    fields().unwrap_or_else(|error| {
        tracing::warn!(%error, "kernel drops and retransmits are not attributed to peers");
        KernelLayout::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;
    use telemetryd_common::drops::{DROPS_TRACEPOINT, RETRANSMITS_TRACEPOINT};

    /// The running kernel's BTF, when there is one (every kernel this
    /// project supports has it; the test says so when it is missing).
    #[test]
    fn reads_the_running_kernel() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => panic!("this machine has no usable {VMLINUX_BTF}: {e}"),
        };
        let names = DropReasonNames::from_btf(&btf).unwrap();
        assert_eq!(names.name(2), "NOT_SPECIFIED");
        assert!((0..MAX_DROP_REASONS).any(|s| names.name(s) == "NETFILTER_DROP"));
        assert_eq!(names.name(OVERFLOW_REASON_SLOT), OVERFLOW_REASON_LABEL);
        assert_eq!(names.name(100_000), OVERFLOW_REASON_LABEL);
        let layout = kernel_layout(&btf).unwrap();
        assert_eq!(layout.enabled, 1);
        // Sanity bounds, not exact values: these move between kernels.
        assert!(layout.skb_dev > 0 && layout.skb_dev < 64, "{layout:?}");
        assert!(
            layout.dev_ifindex > 0 && layout.dev_ifindex < 4096,
            "{layout:?}"
        );
        assert!(layout.dev_net > 0 && layout.dev_net < 4096, "{layout:?}");
        assert!(layout.sk_net > 0 && layout.sk_net < 256, "{layout:?}");
        assert!(layout.net_inum < 4096, "{layout:?}");
        assert!(layout.skb_sk > 0 && layout.skb_sk < 64, "{layout:?}");
        assert!(layout.sk_family < 64, "{layout:?}");
        assert_eq!(layout.peers, 1, "{layout:?}");
        for offset in [
            layout.skb_iif,
            layout.skb_head,
            layout.skb_network_header,
            layout.skb_protocol,
        ] {
            assert!(offset > 0 && offset < 256, "{layout:?}");
        }
        assert!(
            layout.sk_daddr < 64 && layout.sk_v6_daddr > 0 && layout.sk_v6_daddr < 256,
            "{layout:?}"
        );
        // Every kernel with BTF passes at least (skb, location) and (sk, skb).
        assert!(btf.tracepoint_args(DROPS_TRACEPOINT).unwrap() >= 2);
        assert!(btf.tracepoint_args(RETRANSMITS_TRACEPOINT).unwrap() >= 2);
    }
}
