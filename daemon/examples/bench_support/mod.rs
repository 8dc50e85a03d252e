//! What the benchmarks share: the benchmark object, two throwaway
//! namespaces joined by veth (traffic never leaves them), entering a
//! namespace, a raw UDP frame, a median.
#![allow(dead_code, reason = "each benchmark uses a different part")]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use telemetryd::loader::{LoadSettings, LoadedObject};
use telemetryd::sources::events::EventsLoad;
use telemetryd::sources::syscalls::SyscallsLoad;
use telemetryd::sources::xdp::XdpLoad;

/// The daemon's programs and the benchmarks' references
/// (`ebpf-programs/src/bench.rs`), built by `daemon/build.rs`; the daemon
/// itself never embeds it.
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/telemetryd-ebpf-bench"));

/// The count-floor program's table, sized like the packet counter's.
struct FloorTable(u32);

impl LoadSettings for FloorTable {
    fn apply<'a>(&'a self, loader: &mut aya::EbpfLoader<'a>) {
        loader.map_max_entries(telemetryd_common::xdp::FLOOR_COUNTERS_MAP, self.0);
    }
}

/// Another build of the benchmark object (`telemetryd-ebpf-bench` from
/// another checkout's `target/*/build/telemetryd-*/out/`), loaded with the
/// same settings as [`load_bench_object`]: for comparing builds side by
/// side in one run.
pub fn load_bench_object_file(
    path: &std::path::Path,
    events: EventsLoad,
    syscalls: SyscallsLoad,
) -> LoadedObject {
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let floor = FloorTable(telemetryd::sources::xdp::counters::cpu_id_bound());
    LoadedObject::load_elf(&elf, &[&XdpLoad::default(), &events, &syscalls, &floor])
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// The benchmark object with every source's default settings, packet
/// events as `events` says.
pub fn load_bench_object(events: EventsLoad, syscalls: SyscallsLoad) -> LoadedObject {
    let floor = FloorTable(telemetryd::sources::xdp::counters::cpu_id_bound());
    LoadedObject::load_elf(
        BENCH_OBJECT,
        &[&XdpLoad::default(), &events, &syscalls, &floor],
    )
    .expect("loading the benchmark eBPF object")
}

/// A receiving and a sending namespace joined by a veth pair with IPv6 off
/// (so the kernel sends nothing of its own); removed on drop.
pub struct VethNamespaces {
    pub rx_ns: &'static str,
    pub tx_ns: &'static str,
    pub rx_dev: &'static str,
    pub tx_dev: &'static str,
}

impl VethNamespaces {
    pub fn create(
        rx_ns: &'static str,
        tx_ns: &'static str,
        rx_dev: &'static str,
        tx_dev: &'static str,
    ) -> Self {
        let guard = Self {
            rx_ns,
            tx_ns,
            rx_dev,
            tx_dev,
        };
        guard.remove();
        for ns in [rx_ns, tx_ns] {
            sh(&["ip", "netns", "add", ns]);
        }
        guard.add_pair(rx_dev, tx_dev, None);
        guard
    }

    /// Another veth pair between the two namespaces, the receiving end with
    /// interface index `rx_index` when given.
    pub fn add_pair(&self, rx_dev: &str, tx_dev: &str, rx_index: Option<u32>) {
        let (rx_ns, tx_ns) = (self.rx_ns, self.tx_ns);
        let index = rx_index.map(|i| i.to_string());
        let mut args = vec!["ip", "link", "add", rx_dev];
        if let Some(index) = &index {
            args.extend(["index", index.as_str()]);
        }
        args.extend([
            "netns", rx_ns, "type", "veth", "peer", "name", tx_dev, "netns", tx_ns,
        ]);
        sh(&args);
        for (ns, dev) in [(rx_ns, rx_dev), (tx_ns, tx_dev)] {
            let sysctl = format!("net.ipv6.conf.{dev}.disable_ipv6=1");
            sh(&["ip", "netns", "exec", ns, "sysctl", "-q", "-w", &sysctl]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
    }

    fn remove(&self) {
        for ns in [self.rx_ns, self.tx_ns] {
            if std::path::Path::new(&format!("/var/run/netns/{ns}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

impl Drop for VethNamespaces {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Moves the calling thread into a named namespace.
pub fn enter(ns: &str) {
    let file = File::open(format!("/var/run/netns/{ns}")).expect("namespace exists");
    // SAFETY: changes only the calling thread's network namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns {ns}");
}

pub fn ifindex(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// An IPv4 UDP frame (10.204.0.2 -> 10.204.0.1) to a MAC nobody has: the
/// receiver counts it and never answers.
pub fn udp_frame(payload: usize) -> Vec<u8> {
    let mut f = vec![
        0x02, 0, 0, 0, 0xde, 0xad, 0x02, 0, 0, 0, 0, 0x0b, 0x08, 0x00,
    ];
    let total = (20 + 8 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0, 10, 204, 0, 2, 10, 204, 0, 1]);
    f.extend_from_slice(&[0x30, 0x39, 0x1f, 0x90]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0xab, payload));
    f
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// "median [first quartile, third quartile]" of `values`, to `decimals`.
pub fn spread(values: &[f64], decimals: usize) -> String {
    format!(
        "{:.decimals$} [{:.decimals$}, {:.decimals$}]",
        quantile(values, 0.5),
        quantile(values, 0.25),
        quantile(values, 0.75),
    )
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

pub fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{}", args.join(" "));
}

/// Sends `count` copies of `frame` out of `dev` in namespace `ns` through an
/// AF_PACKET socket, flat out or paced at `rate` frames/s, waiting out a full
/// device queue. Enters `ns` on the calling thread: call it on a thread of its own.
pub fn send_frames(ns: &str, dev: &str, frame: &[u8], count: u64, rate: Option<u64>) {
    enter(ns);
    let name = std::ffi::CString::new(dev).unwrap();
    let start = Instant::now();
    // SAFETY: plain socket calls on a socket this thread owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        for i in 0..count {
            if let Some(rate) = rate {
                // Paced in 1 ms slices: sleep until this frame is due.
                let due = Duration::from_nanos(i * 1_000_000_000 / rate);
                let now = start.elapsed();
                if due > now + Duration::from_micros(500) {
                    std::thread::sleep(due - now);
                }
            }
            loop {
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if sent as usize == frame.len() {
                    break;
                }
                let error = std::io::Error::last_os_error();
                // The device queue is full: let the receiver catch up.
                assert_eq!(error.raw_os_error(), Some(libc::ENOBUFS), "{error}");
                std::thread::yield_now();
            }
        }
        libc::close(fd);
    }
}

/// Turns GRO on for `dev` in the calling thread's namespace (the ethtool
/// ioctl, ETHTOOL_SGRO). A veth runs NAPI, and so receives frames sent to
/// it with XDP_TX, when it has GRO on or a native XDP program.
pub fn enable_gro(dev: &str) {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    // SAFETY: an ifreq with the name and a pointer to `value`, which lives
    // across the ioctl; the socket is closed before returning.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(dev.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let ret = libc::ioctl(fd, SIOCETHTOOL, &mut request);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(ret, 0, "ETHTOOL_SGRO on {dev}: {error}");
    }
}
