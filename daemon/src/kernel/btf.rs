//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`), read once at
//! start-up and shared by whatever needs kernel types: the drop tracer's
//! struct offsets, drop reason names and tracepoint argument counts, and
//! `check --probe`.
//!
//! aya parses BTF too, but 0.14 keeps its type accessors crate-private
//! (`Btf::type_by_id`, its members), so the daemon reads the little it needs
//! itself. It keeps the raw bytes and one offset per type, and decodes a
//! type only when asked: about 6 MB for a 5.5 MB vmlinux BTF, where a full
//! decode into owned types takes several times that.

use std::path::Path;

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

/// Nesting of anonymous structs and unions a field lookup follows (the
/// kernel's deepest is a handful; a cycle in malformed BTF is infinite).
const MAX_ANONYMOUS_DEPTH: u32 = 16;
/// Anonymous members one field lookup may look into, in all.
const MEMBER_SEARCH_BUDGET: u32 = 4096;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// `struct btf_type`: the 12 bytes every type starts with.
#[derive(Clone, Copy, Debug)]
struct Header {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// `size` for structs, unions and enums; the referenced type otherwise.
    size_or_type: u32,
    /// Byte offset of what follows the header (members, variants, ...).
    body: usize,
}

/// One member of a struct or union.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// The kernel's BTF, indexed but not decoded.
pub struct KernelBtf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset in `data` of type `id`, at index `id - 1` (type 0 is `void`).
    types: Vec<u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
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
        Self::parse(data)
    }

    /// Indexes raw BTF (little-endian, as on every target telemetryd runs on).
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = hdr_len + u32_at(&data, 8)? as usize;
        let type_end = type_off + u32_at(&data, 12)? as usize;
        let str_off = hdr_len + u32_at(&data, 16)? as usize;
        let str_end = str_off + u32_at(&data, 20)? as usize;
        if type_end > data.len() || str_end > data.len() {
            return Err(BtfError::Malformed("sections beyond the end"));
        }
        let mut types = Vec::new();
        let mut at = type_off;
        while at < type_end {
            let offset = u32::try_from(at).map_err(|_| BtfError::Malformed("too large"))?;
            let header = header_at(&data, at)?;
            let vlen = usize::from(header.vlen);
            let body = match header.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at = header.body + body;
            if at > type_end {
                return Err(BtfError::Malformed("type beyond the type section"));
            }
            types.push(offset);
        }
        Ok(Self {
            data,
            strings: str_off..str_end,
            types,
        })
    }

    fn name(&self, off: u32) -> &str {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<Header> {
        let at = *self.types.get(id.checked_sub(1)? as usize)?;
        header_at(&self.data, at as usize).ok()
    }

    fn find(&self, kinds: &[u8], name: &str) -> Option<Header> {
        self.types
            .iter()
            .filter_map(|&at| header_at(&self.data, at as usize).ok())
            .find(|t| kinds.contains(&t.kind) && self.name(t.name_off) == name)
    }

    fn members(&self, ty: Header) -> impl Iterator<Item = Member> + '_ {
        (0..usize::from(ty.vlen)).filter_map(move |i| {
            let at = ty.body + 12 * i;
            let offset = u32_at(&self.data, at + 8).ok()?;
            Some(Member {
                name_off: u32_at(&self.data, at).ok()?,
                type_id: u32_at(&self.data, at + 4).ok()?,
                // With kind_flag, the top 8 bits are a bitfield size.
                bit_offset: if ty.kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                },
            })
        })
    }

    /// The values of `enum <name>`, by variant name.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, BtfError> {
        let ty = self
            .find(&[KIND_ENUM, KIND_ENUM64], name)
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        let (stride, wide) = if ty.kind == KIND_ENUM64 {
            (12, true)
        } else {
            (8, false)
        };
        (0..usize::from(ty.vlen))
            .map(|i| {
                let at = ty.body + stride * i;
                let low = u64::from(u32_at(&self.data, at + 4)?);
                let value = if wide {
                    u64::from(u32_at(&self.data, at + 8)?) << 32 | low
                } else {
                    low
                };
                let name = self.name(u32_at(&self.data, at)?).to_owned();
                Ok((name, value))
            })
            .collect()
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
            let mut budget = MEMBER_SEARCH_BUDGET;
            let (offset, type_id) = self.member(ty, field, 0, &mut budget).ok_or_else(missing)?;
            bits = bits.checked_add(offset).ok_or_else(missing)?;
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

    /// (bit offset, type) of member `field` of `ty`, looking into anonymous
    /// members at most [`MAX_ANONYMOUS_DEPTH`] deep and into at most
    /// `budget` of them in all: malformed BTF can make a struct its own
    /// anonymous member, or a chain of them fan out exponentially.
    fn member(&self, ty: Header, field: &str, depth: u32, budget: &mut u32) -> Option<(u32, u32)> {
        if let Some(m) = self
            .members(ty)
            .find(|m| m.name_off != 0 && self.name(m.name_off) == field)
        {
            return Some((m.bit_offset, m.type_id));
        }
        if depth >= MAX_ANONYMOUS_DEPTH {
            return None;
        }
        for m in self.members(ty).filter(|m| m.name_off == 0) {
            *budget = budget.checked_sub(1)?;
            // Not a struct or union: anonymous bitfield padding (`int :3`).
            let Some(inner) = self.strip(m.type_id) else {
                continue;
            };
            if let Some((offset, id)) = self.member(inner, field, depth + 1, budget) {
                return Some((m.bit_offset.checked_add(offset)?, id));
            }
        }
        None
    }

    /// The struct or union behind typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Option<Header> {
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

fn header_at(data: &[u8], at: usize) -> Result<Header, BtfError> {
    let info = u32_at(data, at + 4)?;
    Ok(Header {
        name_off: u32_at(data, at)?,
        kind: ((info >> 24) & 0x1f) as u8,
        kind_flag: info >> 31 == 1,
        vlen: (info & 0xffff) as u16,
        size_or_type: u32_at(data, at + 8)?,
        body: at + 12,
    })
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
        let btf = KernelBtf::parse(sample()).unwrap();
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

    /// BTF of `types` (u32 words) over the string section `strings`.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut data = vec![0x9f, 0xeb, 1, 0];
        let len = type_bytes.len() as u32;
        for v in [24u32, 0, len, len, strings.len() as u32] {
            data.extend(v.to_le_bytes());
        }
        data.extend(type_bytes);
        data.extend_from_slice(strings);
        data
    }

    /// Found by fuzzing (`fuzz/corpus/btf/crash-anonymous-member-cycle`,
    /// replayed by `fuzzing::tests`):
    /// a struct that is its own anonymous member sent the field lookup
    /// into unbounded recursion, a stack overflow. Two such members made
    /// it exponential as well.
    #[test]
    fn anonymous_member_cycles_end() {
        // 1: struct s { <anon>: s @0; <anon>: s @0 }
        let strings = b"\0s\0x\0";
        let data = blob(&[1, 4 << 24 | 2, 8, 0, 1, 0, 0, 1, 0], strings);
        let btf = KernelBtf::parse(data).unwrap();
        assert!(matches!(
            btf.field_offset("s", &["x"]),
            Err(BtfError::Missing(_))
        ));
        // A typedef cycle behind the anonymous member: 1: struct s {
        // <anon>: 2 }, 2: typedef -> 3, 3: const -> 2.
        let data = blob(
            &[1, 4 << 24 | 1, 8, 0, 2, 0, 0, 8 << 24, 3, 0, 10 << 24, 2],
            strings,
        );
        let btf = KernelBtf::parse(data).unwrap();
        assert!(btf.field_offset("s", &["x"]).is_err());
    }

    /// Found by fuzzing (`fuzz/corpus/btf/crash-member-offset-overflow`,
    /// replayed by `fuzzing::tests`):
    /// offsets that add up past `u32::MAX` bits panicked (overflow) where
    /// they are a missing field. Also: anonymous bitfield padding (an
    /// anonymous `int`) no longer ends the search of the members after it.
    #[test]
    fn offsets_overflow_and_padding() {
        let strings = b"\0int\0outer\0inner\0x\0y\0";
        let (int, outer, inner, x, y) = (1, 5, 11, 17, 19);
        let types = [
            // 1: int
            int,
            1 << 24,
            4,
            32,
            // 2: struct inner { x @0x1000 }
            inner,
            4 << 24 | 1,
            4,
            x,
            1,
            0x1000,
            // 3: struct outer { <anon int padding> @0, <anon inner> @0xffff_ff00, y @8 }
            outer,
            4 << 24 | 3,
            8,
            0,
            1,
            0,
            0,
            2,
            0xffff_ff00,
            y,
            1,
            8,
        ];
        let btf = KernelBtf::parse(blob(&types, strings)).unwrap();
        assert!(matches!(
            btf.field_offset("outer", &["x"]),
            Err(BtfError::Missing(_))
        ));
        assert_eq!(btf.field_offset("outer", &["y"]).unwrap(), 1);
        // The padding member comes first and is skipped.
        let types = [
            int,
            1 << 24,
            4,
            32,
            inner,
            4 << 24 | 1,
            4,
            x,
            1,
            32,
            outer,
            4 << 24 | 2,
            8,
            0,
            1,
            0,
            0,
            2,
            64,
        ];
        let btf = KernelBtf::parse(blob(&types, strings)).unwrap();
        assert_eq!(btf.field_offset("outer", &["x"]).unwrap(), 12);
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"not btf at all, not at all".to_vec()).is_err());
        let mut data = sample();
        data.truncate(40);
        assert!(KernelBtf::parse(data).is_err());
        // Every truncation of a good file is an error or a smaller index, never a panic.
        let good = sample();
        for len in 0..good.len() {
            if let Ok(btf) = KernelBtf::parse(good[..len].to_vec()) {
                let _ = btf.field_offset("outer", &["in", "b"]);
                let _ = btf.enum_values("e");
            }
        }
    }

    /// The running kernel's BTF (every kernel this project supports has
    /// it; the test says so when it is missing).
    #[test]
    fn reads_the_running_kernel() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => panic!("this machine has no usable {VMLINUX_BTF}: {e}"),
        };
        assert!(btf.types.len() > 10_000, "{} types", btf.types.len());
        assert!(btf.field_offset("sk_buff", &["dev"]).is_ok());
        assert!(btf.enum_values("skb_drop_reason").unwrap().len() > 10);
    }
}
