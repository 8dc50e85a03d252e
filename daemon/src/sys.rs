//! The daemon's only `unsafe` code: the few calls that no safe API offers.
//! Everything else that talks to the kernel directly goes through `rustix`
//! (sockets, clocks, limits) or aya (maps, programs).
//!
//! - [`readable`]: registering a descriptor with the async runtime (tokio's
//!   registration is `unsafe`: the descriptor must stay open and the same
//!   while registered, which an `OwnedFd` of our own guarantees);
//! - [`xdp_link_create`] and [`link_detach`]: `BPF_LINK_CREATE` and
//!   `BPF_LINK_DETACH`, which aya 0.14 does not expose for a link it hands
//!   out (see [`link_detach`] for why the daemon needs them);
//! - [`link_update`], [`obj_pin`], [`obj_get`]: `BPF_LINK_UPDATE`,
//!   `BPF_OBJ_PIN`, `BPF_OBJ_GET` on those links (`daemon.pin_path`), and
//!   [`is_bpffs`] (`statfs`);
//! - [`return_freed_heap`]: glibc's `malloc_trim`.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Readiness of `fd` for reading, on the current tokio runtime: a duplicate
/// of the descriptor, owned by the returned `AsyncFd`, shares the open file
/// (a socket, a ring buffer map) and so its readiness. The caller reads
/// through its own handle; the duplicate only wakes it.
pub fn readable(fd: BorrowedFd<'_>) -> io::Result<AsyncFd<OwnedFd>> {
    let owned = fd.try_clone_to_owned()?;
    // SAFETY: the AsyncFd takes ownership of `owned`, an OwnedFd that
    // nothing else can close or replace, so the descriptor it registers
    // stays open and refers to the same open file until the AsyncFd drops
    // it, and `as_raw_fd` always returns that descriptor.
    let registered = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) };
    registered.map_err(|error| error.into_parts().1)
}

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `union bpf_attr` as far as these commands read it, zero-padded: the
/// kernel takes a shorter attr and checks that what follows the command's
/// fields is zero.
const ATTR_WORDS: usize = 16;

fn bpf(cmd: libc::c_long, attr: &mut [u32; ATTR_WORDS]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of the size passed, which
    // outlives the call; the kernel reads (and for some commands writes) at
    // most that many bytes and keeps no pointer to it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Attaches the XDP program `program` to interface `ifindex` through a
/// `bpf_link` (Linux 5.9 and later); `flags` are the `XDP_FLAGS_*` mode
/// bits. The link detaches when its last reference is gone, or at once with
/// [`link_detach`].
pub fn xdp_link_create(program: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    // struct { u32 prog_fd; u32 target_ifindex; u32 attach_type; u32 flags; ... } link_create
    let mut attr = [0u32; ATTR_WORDS];
    attr[0] = program.as_raw_fd() as u32;
    attr[1] = ifindex;
    attr[2] = BPF_XDP;
    attr[3] = flags;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_LINK_CREATE: fd out of range"))?;
    // SAFETY: a successful BPF_LINK_CREATE returns a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches `link` from its hook now, however many references to it are
/// left. Closing a link's last descriptor detaches it too, but only when no
/// other reference remains: a child forked in between (it holds a copy of
/// every descriptor until it execs), a `bpftool link` reading it, a reader
/// of `/proc/PID/fd` each keep it attached a little longer, and an attach
/// right after that finds the interface still busy.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // struct { u32 link_fd; } link_detach
    let mut attr = [0u32; ATTR_WORDS];
    attr[0] = link.as_raw_fd() as u32;
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Replaces the program of `link` by `program` atomically: frames before
/// it run the old program, frames after it the new one.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // struct { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; } link_update
    let mut attr = [0u32; ATTR_WORDS];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = program.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Pins the BPF object `fd` (a link here) at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let path = c_path(path)?;
    // struct { u64 pathname; u32 bpf_fd; u32 file_flags; } obj_pin
    let mut attr = [0u32; ATTR_WORDS];
    let pointer = path.as_ptr() as u64;
    attr[0] = pointer as u32;
    attr[1] = (pointer >> 32) as u32;
    attr[2] = fd.as_raw_fd() as u32;
    // `path` outlives the call.
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens the BPF object pinned at `path`.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = [0u32; ATTR_WORDS];
    let pointer = path.as_ptr() as u64;
    attr[0] = pointer as u32;
    attr[1] = (pointer >> 32) as u32;
    // `path` outlives the call.
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_OBJ_GET: fd out of range"))?;
    // SAFETY: a successful BPF_OBJ_GET returns a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

/// Whether `path` is on a BPF filesystem (bpffs), where objects can be pinned.
pub fn is_bpffs(path: &std::path::Path) -> io::Result<bool> {
    /// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
    const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
    let path = c_path(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `stat` a writable
    // statfs, both valid for the call; the kernel keeps neither.
    let ret = unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it filled `stat` in.
    let stat = unsafe { stat.assume_init() };
    // `f_type` is signed on some architectures: compare the bits.
    Ok(stat.f_type as u64 == BPF_FS_MAGIC)
}

/// Hands the heap pages glibc keeps after large frees (start-up parses the
/// kernel's BTF) back to the kernel.
pub fn return_freed_heap() {
    // SAFETY: malloc_trim only releases free heap pages to the kernel; it
    // takes no pointers and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_descriptor_is_an_error_not_a_crash() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&file);
        // /dev/null is no bpf_link.
        let error = link_detach(fd).unwrap_err();
        assert!(
            matches!(
                error.raw_os_error(),
                Some(libc::EINVAL | libc::EBADF | libc::EPERM)
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn readiness_of_a_duplicate_follows_the_original() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let ready = readable(std::os::fd::AsFd::as_fd(&b)).unwrap();
        a.send(b"x").unwrap();
        let guard = tokio::time::timeout(std::time::Duration::from_secs(5), ready.readable())
            .await
            .expect("readable within 5 s")
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        drop(guard);
        return_freed_heap();
    }
}
