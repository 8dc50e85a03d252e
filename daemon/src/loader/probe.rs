//! What the running kernel can do, asked without loading our programs: the
//! compatibility table behind `telemetryd check --probe` and the attach
//! decisions.

use std::path::Path;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{is_map_supported, is_program_supported};

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// Why, in a few words (the file or call that answered).
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct KernelSupport {
    pub release: String,
    pub features: Vec<Feature>,
}

impl KernelSupport {
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.available)
    }
}

pub const BTF: &str = "btf";
pub const XDP: &str = "xdp";
pub const RING_BUFFER: &str = "ring_buffer";
pub const TRACEPOINTS: &str = "raw_tracepoints";
pub const KPROBES: &str = "kprobes";
pub const FENTRY: &str = "fentry";

pub fn probe() -> KernelSupport {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let features = vec![
        Feature {
            name: BTF,
            available: btf,
            detail: "/sys/kernel/btf/vmlinux".into(),
        },
        program(XDP, ProgramType::Xdp),
        map(RING_BUFFER, MapType::RingBuf),
        program(TRACEPOINTS, ProgramType::RawTracePoint),
        Feature {
            name: KPROBES,
            available: kprobes,
            detail: if kprobes {
                "kprobe PMU present".into()
            } else {
                "no /sys/bus/event_source/devices/kprobe: CONFIG_KPROBES is off".into()
            },
        },
        // fentry needs BTF and trampolines; whether a load is allowed is
        // only known by trying, which the syscall tracer does at attach.
        Feature {
            name: FENTRY,
            available: btf,
            detail: if btf {
                "BTF present; the kernel decides at load time".into()
            } else {
                "needs BTF".into()
            },
        },
    ];
    KernelSupport { release, features }
}

fn program(name: &'static str, kind: ProgramType) -> Feature {
    match is_program_supported(kind) {
        Ok(available) => Feature {
            name,
            available,
            detail: "probe load".into(),
        },
        Err(error) => Feature {
            name,
            available: false,
            detail: format!("probe failed: {error}"),
        },
    }
}

fn map(name: &'static str, kind: MapType) -> Feature {
    match is_map_supported(kind) {
        Ok(available) => Feature {
            name,
            available,
            detail: "probe map create".into(),
        },
        Err(error) => Feature {
            name,
            available: false,
            detail: format!("probe failed: {error}"),
        },
    }
}
