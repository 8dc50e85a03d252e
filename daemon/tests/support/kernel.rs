//! What the running kernel can do, asked of the kernel itself, not of
//! telemetryd's own probe: a test decides from this which outcome it demands
//! (works, or fails with the kernel's reason), so no test accepts either.

use std::path::Path;

/// Why the kernel lacks a feature: `needle` is the part of the reason the
/// daemon must repeat (the kernel's errno text, or the missing config).
#[derive(Clone, Debug)]
pub struct Lacks {
    pub needle: String,
    pub why: String,
}

impl Lacks {
    fn new(needle: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            needle: needle.into(),
            why: why.into(),
        }
    }
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// kprobes: the kernel registers a `kprobe` PMU exactly when
/// CONFIG_KPROBES is on.
pub fn kprobes() -> Result<(), Lacks> {
    if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        Ok(())
    } else {
        Err(Lacks::new(
            "CONFIG_KPROBES",
            "no /sys/bus/event_source/devices/kprobe: CONFIG_KPROBES is off",
        ))
    }
}

/// fentry: whether the kernel loads and attaches the smallest fentry
/// program there is (`return 0`) on `vfs_read`, through the bpf() system
/// call directly (no loader library in between).
pub fn fentry() -> Result<(), Lacks> {
    use aya_obj::btf::{Btf, BtfKind};
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Lacks::new("BTF", format!("no {VMLINUX_BTF}")));
    }
    let btf = Btf::from_sys_fs().map_err(|e| Lacks::new("BTF", format!("kernel BTF: {e}")))?;
    let target = btf
        .id_by_type_name_kind("vfs_read", BtfKind::Func)
        .map_err(|e| Lacks::new("vfs_read", format!("no vfs_read in the kernel BTF: {e}")))?;
    let prog = load_fentry(target).map_err(|e| {
        Lacks::new(
            errno_text(&e),
            format!("BPF_PROG_LOAD of a two-instruction fentry program: {e}"),
        )
    })?;
    let link = raw_tracepoint_open(&prog).map_err(|e| {
        Lacks::new(
            errno_text(&e),
            format!("attaching a two-instruction fentry program: {e}"),
        )
    });
    drop(prog);
    link.map(drop)
}

/// "Operation not permitted" for EPERM: the words both this probe and the
/// daemon's message carry (the daemon may number it differently).
fn errno_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    text.split(" (os error").next().unwrap_or(&text).to_owned()
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` up to `attach_btf_obj_fd`,
/// zero-padded (the kernel requires unknown trailing bytes to be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Default)]
struct RawTracepointOpenAttr {
    name: u64,
    prog_fd: u32,
    pad: u32,
}

fn load_fentry(attach_btf_id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_FENTRY,
        attach_btf_id,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &attr)
}

fn raw_tracepoint_open(prog: &std::os::fd::OwnedFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let attr = RawTracepointOpenAttr {
        prog_fd: prog.as_raw_fd() as u32,
        ..RawTracepointOpenAttr::default()
    };
    bpf(BPF_RAW_TRACEPOINT_OPEN, &attr)
}

/// bpf(cmd, attr) returning a new file descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: `attr` is a live #[repr(C)] value of the size passed; every
    // pointer inside it (instructions, license) outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether this run is CI's (`CI=true`): a test that cannot run fails there
/// unless the kernel truly lacks what it tests.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
