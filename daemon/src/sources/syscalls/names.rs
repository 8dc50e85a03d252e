//! Kernel entry functions of syscalls, where kprobes and fentry attach.
//! Names and numbers come from the `syscalls` crate (`config::syscall_number`).

/// Prefix of the kernel's syscall entry functions (`SYSCALL_DEFINE` wrappers) on this
/// architecture: `__x64_sys_read`, `__arm64_sys_read`.
const ENTRY_PREFIX: &str = if cfg!(target_arch = "x86_64") {
    "__x64_sys_"
} else {
    "__arm64_sys_"
};

/// Syscalls whose kernel entry function is not named after the syscall itself
/// (`SYSCALL_DEFINE2(newstat, ...)` serves `stat`). Only the common cases; a kprobe
/// attach still has to check the symbol exists in `/proc/kallsyms`.
const ENTRY_ALIASES: &[(&str, &str)] = &[
    ("stat", "newstat"),
    ("fstat", "newfstat"),
    ("lstat", "newlstat"),
    ("uname", "newuname"),
    ("umount2", "umount"),
];

/// The kernel function a kprobe or fentry attaches to for syscall `name`
/// (`__x64_sys_read` on x86_64, `__arm64_sys_read` on aarch64).
pub fn entry_symbol(name: &str) -> String {
    let func = ENTRY_ALIASES
        .iter()
        .find(|(sys, _)| *sys == name)
        .map_or(name, |(_, f)| f);
    format!("{ENTRY_PREFIX}{func}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::syscall_number;

    #[test]
    fn numbers_agree_with_libc() {
        let cases: &[(&str, libc::c_long)] = &[
            ("read", libc::SYS_read),
            ("write", libc::SYS_write),
            ("sendto", libc::SYS_sendto),
            ("recvfrom", libc::SYS_recvfrom),
            ("connect", libc::SYS_connect),
            ("accept", libc::SYS_accept),
            ("accept4", libc::SYS_accept4),
            ("openat", libc::SYS_openat),
            ("clock_nanosleep", libc::SYS_clock_nanosleep),
            ("getppid", libc::SYS_getppid),
            ("bpf", libc::SYS_bpf),
            ("clone3", libc::SYS_clone3),
            ("futex_waitv", libc::SYS_futex_waitv),
        ];
        for (n, nr) in cases {
            assert_eq!(syscall_number(n), Some(*nr as u32), "{n}");
        }
        assert_eq!(syscall_number("raed"), None);
        assert_eq!(syscall_number(""), None);
    }

    #[test]
    fn entry_symbols() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(entry_symbol("read"), "__x64_sys_read");
            assert_eq!(entry_symbol("stat"), "__x64_sys_newstat");
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(entry_symbol("read"), "__arm64_sys_read");
    }
}
