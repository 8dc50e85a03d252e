//! Kernel drop reasons and TCP retransmits: reads what the programs need
//! from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), then loads
//! and attaches `kfree_skb_drops` and `tcp_retransmits` as raw tracepoints
//! (`kfree_skb`, `tcp_retransmit_skb`). Raw tracepoints attach by name
//! through `bpf(BPF_RAW_TRACEPOINT_OPEN)`: no tracefs, which the hardened
//! unit (no CAP_SYS_ADMIN, tracefs mode 0700) can neither read nor mount.
//!
//! aya 0.14 parses BTF but keeps its type accessors crate-private, so
//! [`KernelBtf`] is a small reader of its own: the header, the type
//! section (skipping what it does not need) and the string section.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use aya::programs::RawTracePoint;
use telemetryd_common::drops::{
    KernelLayout, DROPS_PROGRAM, DROPS_TRACEPOINT, KFREE_SKB_ARGS_WITH_REASON,
    KFREE_SKB_ARGS_WITH_RX_SK, LAYOUT_GLOBAL, MAX_DROP_REASONS, OVERFLOW_REASON_LABEL,
    OVERFLOW_REASON_SLOT, RETRANSMITS_PROGRAM, RETRANSMITS_TRACEPOINT,
};
use tracing::{debug, info, warn};

use super::object::{LoadError, LoadedObject};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the kernel's BTF could not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF has no {0}")]
    Missing(String),
}

const KIND_PTR: u8 = 2;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

#[derive(Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug)]
struct BtfType {
    name_off: u32,
    kind: u8,
    /// `size` for structs, unions and enums; the referenced type otherwise.
    size_or_type: u32,
    members: Vec<Member>,
    /// Enum variants: (name offset, value).
    values: Vec<(u32, u64)>,
    /// Members, variants or parameters (`vlen`).
    vlen: u16,
}

/// The parts of a kernel's BTF that telemetryd reads: struct and union
/// members, enum values, and the names of all types.
pub struct KernelBtf {
    /// Index `id - 1` (type 0 is `void`).
    types: Vec<BtfType>,
    strings: Vec<u8>,
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw BTF (little-endian, as on every target telemetryd runs on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Malformed("truncated"))
        };
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let type_end = type_off + u32_at(12)? as usize;
        let str_off = hdr_len + u32_at(16)? as usize;
        let str_end = str_off + u32_at(20)? as usize;
        if type_end > data.len() || str_end > data.len() {
            return Err(BtfError::Malformed("sections beyond the end"));
        }
        let strings = data[str_off..str_end].to_vec();
        let mut types = Vec::new();
        let mut at = type_off;
        while at < type_end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 == 1;
            let mut ty = BtfType {
                name_off,
                kind,
                size_or_type,
                members: Vec::new(),
                values: Vec::new(),
                vlen: vlen as u16,
            };
            match kind {
                1 | 14 | 17 => at += 4, // INT, VAR, DECL_TAG
                3 => at += 12,          // ARRAY
                KIND_FUNC_PROTO => at += 8 * vlen,
                15 => at += 12 * vlen,     // DATASEC
                2 | 7..=12 | 16 | 18 => {} // PTR, FWD, TYPEDEF.., FUNC, FLOAT, TYPE_TAG
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = u32_at(at + 8)?;
                        ty.members.push(Member {
                            name_off: u32_at(at)?,
                            type_id: u32_at(at + 4)?,
                            // With kind_flag, the top 8 bits are a bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        ty.values.push((u32_at(at)?, u64::from(u32_at(at + 4)?)));
                        at += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let lo = u64::from(u32_at(at + 4)?);
                        let hi = u64::from(u32_at(at + 8)?);
                        ty.values.push((u32_at(at)?, hi << 32 | lo));
                        at += 12;
                    }
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            }
            types.push(ty);
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&BtfType> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    fn find(&self, kinds: &[u8], name: &str) -> Option<&BtfType> {
        self.types
            .iter()
            .find(|t| kinds.contains(&t.kind) && self.name(t.name_off) == name)
    }

    /// The values of `enum <name>`, by variant name.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, BtfError> {
        let ty = self
            .find(&[KIND_ENUM, KIND_ENUM64], name)
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        Ok(ty
            .values
            .iter()
            .map(|(n, v)| (self.name(*n).to_owned(), *v))
            .collect())
    }

    /// Number of `TP_PROTO` arguments of the tracepoint `name`: the
    /// parameters of `typedef void (*btf_trace_<name>)(void *, ...)`, less
    /// the leading `void *` (the probe's data, not a tracepoint argument).
    pub fn tracepoint_args(&self, name: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("typedef btf_trace_{name}"));
        let typedef = self
            .find(&[KIND_TYPEDEF], &format!("btf_trace_{name}"))
            .ok_or_else(missing)?;
        let ptr = self
            .get(typedef.size_or_type)
            .filter(|t| t.kind == KIND_PTR)
            .ok_or_else(missing)?;
        let proto = self
            .get(ptr.size_or_type)
            .filter(|t| t.kind == KIND_FUNC_PROTO && t.vlen >= 1)
            .ok_or_else(missing)?;
        Ok(u32::from(proto.vlen) - 1)
    }

    /// Byte offset of `struct <name>`'s field `path[0]`, then within it
    /// `path[1]`, and so on; fields of anonymous structs and unions are
    /// found as the C compiler would find them.
    pub fn field_offset(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("struct {name} field {}", path.join(".")));
        let mut ty = self
            .find(&[KIND_STRUCT, KIND_UNION], name)
            .ok_or_else(missing)?;
        let mut bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (offset, type_id) = self.member(ty, field).ok_or_else(missing)?;
            bits += offset;
            if i + 1 < path.len() {
                ty = self.strip(type_id).ok_or_else(missing)?;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Missing(format!(
                "byte-aligned struct {name} field {}",
                path.join(".")
            )));
        }
        Ok(bits / 8)
    }

    /// (bit offset, type) of member `field` of `ty`, looking into anonymous members.
    fn member(&self, ty: &BtfType, field: &str) -> Option<(u32, u32)> {
        for m in &ty.members {
            if m.name_off != 0 && self.name(m.name_off) == field {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in ty.members.iter().filter(|m| m.name_off == 0) {
            let inner = self.strip(m.type_id)?;
            if let Some((offset, id)) = self.member(inner, field) {
                return Some((m.bit_offset + offset, id));
            }
        }
        None
    }

    /// The struct or union behind typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Option<&BtfType> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                KIND_STRUCT | KIND_UNION => return Some(ty),
                _ => return None,
            }
        }
        None
    }
}

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
    })
}

/// The bytes of `layout` as the program's `DROPS_LAYOUT` global holds them.
pub fn layout_bytes(l: &KernelLayout) -> Vec<u8> {
    [
        l.enabled,
        l.skb_dev,
        l.dev_ifindex,
        l.dev_net,
        l.sk_net,
        l.net_inum,
        l.skb_sk,
        l.sk_family,
        l.netns_inum,
        l.count_unowned,
        l.kfree_skb_args,
    ]
    .iter()
    .flat_map(|v| v.to_ne_bytes())
    .collect()
}

/// What [`prepare`] found out before the object is loaded.
pub struct DropsSetup {
    pub names: DropReasonNames,
    pub layout: KernelLayout,
}

impl DropsSetup {
    /// The global to set at load time (see [`LoadedObject::load_with_globals`]).
    pub fn global(&self) -> (&'static str, Vec<u8>) {
        (LAYOUT_GLOBAL, layout_bytes(&self.layout))
    }
}

/// Reads reason names and field offsets from the kernel's BTF. Without BTF
/// (or a field), reasons are numbered and drops are not attributed to
/// devices; both are logged once.
pub fn prepare() -> DropsSetup {
    let btf = match KernelBtf::from_sys_fs() {
        Ok(btf) => Some(btf),
        Err(error) => {
            warn!(
                %error,
                "no kernel BTF: drop reasons are not read (every drop counts as {OVERFLOW_REASON_LABEL}) \
                 and drops are not attributed to devices"
            );
            None
        }
    };
    let names = btf
        .as_ref()
        .map(|b| {
            DropReasonNames::from_btf(b).unwrap_or_else(|error| {
                warn!(%error, "drop reason names unavailable; reasons are numbered");
                DropReasonNames::numbered()
            })
        })
        .unwrap_or_else(DropReasonNames::numbered);
    let mut layout = btf
        .as_ref()
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
    layout.kfree_skb_args = match btf.as_ref().map(|b| b.tracepoint_args(DROPS_TRACEPOINT)) {
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
    DropsSetup { names, layout }
}

/// What `telemetryd check --probe` says about the loss signals.
pub fn describe() -> String {
    let mut out = String::from("loss signals:\n");
    match KernelBtf::from_sys_fs() {
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
            match kernel_layout(&btf) {
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

/// Loads and attaches both programs as raw tracepoints. Returns the
/// programs that attached; a program that fails is logged and left out.
pub fn attach(object: &mut LoadedObject) -> Vec<&'static str> {
    let mut attached = Vec::new();
    for (program, tracepoint) in [
        (DROPS_PROGRAM, DROPS_TRACEPOINT),
        (RETRANSMITS_PROGRAM, RETRANSMITS_TRACEPOINT),
    ] {
        match attach_one(object, program, tracepoint) {
            Ok(()) => {
                info!(program, tracepoint, "raw tracepoint attached");
                attached.push(program);
            }
            Err(error) => warn!(program, tracepoint, %error, "raw tracepoint not attached"),
        }
    }
    attached
}

fn attach_one(
    object: &mut LoadedObject,
    program: &'static str,
    tracepoint: &str,
) -> Result<(), LoadError> {
    let prog: &mut RawTracePoint = object
        .ebpf
        .program_mut(program)
        .ok_or(LoadError::MissingProgram { program })?
        .try_into()
        .map_err(|source| LoadError::Program { program, source })?;
    prog.load()
        .map_err(|source| LoadError::Program { program, source })?;
    prog.attach(tracepoint)
        .map_err(|source| LoadError::Program { program, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-built BTF: `struct inner { int a; int b; }`, `struct outer {
    /// long x; union { struct inner *p; long q; }; struct inner in; }`,
    /// `enum e { E_A = 2, E_B = 12 }`,
    /// `typedef void (*btf_trace_tp)(void *, struct inner *, int)`.
    fn sample() -> Vec<u8> {
        let mut strings =
            b"\0int\0inner\0a\0b\0outer\0x\0p\0q\0in\0e\0E_A\0E_B\0btf_trace_tp\0".to_vec();
        let s = |name: &str, strings: &Vec<u8>| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int (4 bytes)
        types.extend([s("int", &strings), 1 << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        types.extend([s("inner", &strings), 4 << 24 | 2, 8]);
        types.extend([s("a", &strings), 1, 0, s("b", &strings), 1, 32]);
        // 3: ptr -> 2
        types.extend([0, 2 << 24, 2]);
        // 4: anonymous union { p: 3 @0, q: 1 @0 }
        types.extend([0, 5 << 24 | 2, 8]);
        types.extend([s("p", &strings), 3, 0, s("q", &strings), 1, 0]);
        // 5: typedef inner_t -> 2 (name "in" reused)
        types.extend([s("in", &strings), 8 << 24, 2]);
        // 6: struct outer { x @0, <anon union> @64, in: typedef @128 } (kind_flag)
        types.extend([s("outer", &strings), 1 << 31 | 4 << 24 | 3, 24]);
        types.extend([s("x", &strings), 1, 0, 0, 4, 64, s("in", &strings), 5, 128]);
        // 7: enum e
        types.extend([s("e", &strings), 6 << 24 | 2, 4]);
        types.extend([s("E_A", &strings), 2, s("E_B", &strings), 12]);
        // 8: func_proto (void *, struct inner *, int) -> void
        types.extend([0, 13 << 24 | 3, 0]);
        types.extend([0, 0, 0, 3, 0, 1]);
        // 9: ptr -> 8; 10: typedef btf_trace_tp -> 9
        types.extend([0, 2 << 24, 8]);
        types.extend([s("btf_trace_tp", &strings), 8 << 24, 9]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            data.extend(v.to_le_bytes());
        }
        data.extend(type_bytes);
        data.append(&mut strings);
        data
    }

    #[test]
    fn finds_fields_through_anonymous_unions_and_typedefs() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.field_offset("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.field_offset("outer", &["p"]).unwrap(), 8);
        assert_eq!(btf.field_offset("outer", &["q"]).unwrap(), 8);
        assert_eq!(btf.field_offset("outer", &["in", "b"]).unwrap(), 16 + 4);
        assert!(btf.field_offset("outer", &["nope"]).is_err());
        assert!(btf.field_offset("absent", &["x"]).is_err());
        assert_eq!(
            btf.enum_values("e").unwrap(),
            [("E_A".to_string(), 2), ("E_B".to_string(), 12)]
        );
        assert_eq!(btf.tracepoint_args("tp").unwrap(), 2);
        assert!(btf.tracepoint_args("absent").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"not btf at all, not at all").is_err());
        let mut data = sample();
        data.truncate(40);
        assert!(KernelBtf::parse(&data).is_err());
    }

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
        // Every kernel with BTF passes at least (skb, location) and (sk, skb).
        assert!(btf.tracepoint_args(DROPS_TRACEPOINT).unwrap() >= 2);
        assert!(btf.tracepoint_args(RETRANSMITS_TRACEPOINT).unwrap() >= 2);
    }
}
