//! `daemon.pin_path`: the XDP links and counter maps pinned on a bpffs
//! outlive the daemon. A restart under steady traffic counts every frame
//! sent, exactly; a pinned map of another layout is replaced and said so;
//! `telemetryd unpin` leaves nothing pinned and nothing attached. Runs as
//! root (`cargo xtask test`), on a bpffs instance of the test's own.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::frames::{ethernet, ipv4, udp, PacketSocket, ETH_P_IP, IPPROTO_UDP};
use support::netns::{in_namespace, run, unique_name};
use support::process::BIN;
use support::{require_root, Daemon, NetNs, TestConfig, VethPair};

/// A bpffs instance mounted on a fresh directory; unmounted (which drops
/// every pin, and with them the links nobody else holds) on drop.
struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    fn mount() -> Self {
        let dir = std::env::temp_dir().join(unique_name("bpf"));
        std::fs::create_dir(&dir).expect("creating the bpffs mount point");
        run("mount", &["-t", "bpf", "bpf", dir.to_str().unwrap()]);
        Self { dir }
    }

    /// What the bpffs holds at its top.
    fn listing(&self) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        entries
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let umount = Command::new("umount").arg(&self.dir).status();
        let removed = std::fs::remove_dir(&self.dir);
        if !std::thread::panicking() {
            assert!(
                umount.is_ok_and(|s| s.success()),
                "umount {}",
                self.dir.display()
            );
            removed.unwrap_or_else(|e| panic!("removing {}: {e}", self.dir.display()));
        }
    }
}

fn config(device: &str, pin_path: &Path) -> String {
    TestConfig::new()
        .set("log.level", "info")
        .interfaces(&[device])
        .set("xdp.mode", "generic")
        .set("daemon.pin_path", pin_path.to_str().unwrap())
        .toml()
}

fn xdp_attached(ns: &NetNs, device: &str) -> bool {
    ns.ip(&["link", "show", "dev", device]).contains("prog/xdp")
}

fn udp_packets(daemon: &Daemon, device: &str) -> Option<f64> {
    daemon.scrape().get(
        "telemetryd_xdp_packets_total",
        &[("device", device), ("family", "ipv4"), ("protocol", "udp")],
    )
}

/// Waits until the daemon's UDP count on `device` is `want`, then asserts it.
fn assert_counted(daemon: &Daemon, device: &str, want: u64, what: &str) {
    let labels = [("device", device), ("family", "ipv4"), ("protocol", "udp")];
    let scrape = daemon.scrape_until(Duration::from_secs(10), |s| {
        s.get("telemetryd_xdp_packets_total", &labels) == Some(want as f64)
    });
    assert_eq!(
        scrape.get("telemetryd_xdp_packets_total", &labels),
        Some(want as f64),
        "{what}:\n{}\n{}",
        scrape.text,
        daemon.log_text()
    );
}

fn stop(daemon: &mut Daemon) {
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}\n{}", daemon.log_text());
}

/// Sends `n` UDP frames from `device` in `ns`, one every `gap`, counting
/// them in `sent` as they go.
fn steady_sender(
    ns: &NetNs,
    device: &str,
    n: u64,
    gap: Duration,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let (ns, device) = (ns.name.clone(), device.to_owned());
    std::thread::spawn(move || {
        in_namespace(&ns, move || {
            let frame = ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_UDP, &[], 0, &udp(32)));
            let socket = PacketSocket::open(&device).expect("packet socket");
            let start = Instant::now();
            for i in 0..n {
                let due = start + gap * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                socket.send(&frame).expect("sending a frame");
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    })
}

#[test]
fn a_restart_under_steady_traffic_counts_every_frame_and_unpin_leaves_nothing() {
    require_root();
    let bpffs = BpfFs::mount();
    let pin = bpffs.dir.join("telemetryd");
    // A fresh bpffs may hold the kernel's own preloaded iterators
    // (maps.debug, progs.debug).
    let fresh = bpffs.listing();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let config = config(&veth.a, &pin);

    let mut daemon = Daemon::start(&ns_a, &config);
    assert!(
        daemon.log_text().contains("counter maps pinned"),
        "{}",
        daemon.log_text()
    );
    assert!(xdp_attached(&ns_a, &veth.a));

    // 6,000 frames, one every 750 us (4.5 s): the daemon is stopped and
    // started again while they flow.
    const N: u64 = 6000;
    let sent = Arc::new(AtomicU64::new(0));
    let sender = steady_sender(&ns_b, &veth.b, N, Duration::from_micros(750), sent.clone());
    std::thread::sleep(Duration::from_millis(800));
    let before_stop = udp_packets(&daemon, &veth.a).unwrap_or(0.0);
    assert!(before_stop > 0.0, "counted nothing before the stop");
    stop(&mut daemon);
    let stopped_at = sent.load(Ordering::SeqCst);
    assert!(
        daemon.log_text().contains("xdp left attached, pinned"),
        "{}",
        daemon.log_text()
    );
    assert!(
        xdp_attached(&ns_a, &veth.a),
        "with pin_path the program stays attached across a stop"
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut daemon = Daemon::spawn(&ns_a, &config, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let restarted_at = sent.load(Ordering::SeqCst);
    assert!(
        restarted_at > stopped_at && restarted_at < N,
        "frames flowed while no daemon ran ({stopped_at} at the stop, {restarted_at} at the \
         restart) and after it (of {N})"
    );
    let after_restart = udp_packets(&daemon, &veth.a).unwrap_or(0.0);
    assert!(
        after_restart >= before_stop,
        "the counter went down across the restart: {before_stop} -> {after_restart}"
    );
    let log = daemon.log_text();
    for line in [
        "pinned counter maps adopted",
        "xdp adopted from its pin; the program never left the interface",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    sender.join().expect("the sender");
    assert_eq!(sent.load(Ordering::SeqCst), N);
    assert_counted(&daemon, &veth.a, N, "every frame sent across the restart");

    // A pinned map of another shape (max_entries 7): replaced, and said so.
    stop(&mut daemon);
    let map = pin.join("maps-v1/XDP_COUNTERS");
    let shown = run(
        "bpftool",
        &["-j", "map", "show", "pinned", map.to_str().unwrap()],
    );
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("bpftool JSON");
    let value_size = shown["bytes_value"]
        .as_u64()
        .expect("bytes_value")
        .to_string();
    std::fs::remove_file(&map).unwrap();
    run(
        "bpftool",
        &[
            "map",
            "create",
            map.to_str().unwrap(),
            "type",
            "percpu_hash",
            "key",
            "4",
            "value",
            &value_size,
            "entries",
            "7",
            "name",
            "XDP_COUNTERS",
        ],
    );
    // And a folder of another layout version (an older or newer build's).
    let other_version = pin.join("maps-v0");
    std::fs::create_dir(&other_version).unwrap();
    let mut daemon = Daemon::start(&ns_a, &config);
    let log = daemon.log_text();
    assert!(
        log.contains("pinned counter maps of another layout version; replaced"),
        "{log}"
    );
    assert!(
        !other_version.exists(),
        "{} is left",
        other_version.display()
    );
    assert!(
        log.contains("pinned counter map layout does not match; replaced")
            && log.contains("max_entries 7"),
        "{log}"
    );
    assert!(log.contains("xdp adopted from its pin"), "{log}");
    const M: u64 = 100;
    let sent = Arc::new(AtomicU64::new(0));
    steady_sender(&ns_b, &veth.b, M, Duration::ZERO, sent)
        .join()
        .unwrap();
    assert_counted(&daemon, &veth.a, M, "fresh maps count from zero");
    let shown = run(
        "bpftool",
        &["-j", "map", "show", "pinned", map.to_str().unwrap()],
    );
    assert!(
        shown.contains("\"max_entries\":1024"),
        "the map was created anew: {shown}"
    );

    // unpin: nothing under the path, nothing attached.
    stop(&mut daemon);
    assert!(xdp_attached(&ns_a, &veth.a));
    let dir = std::env::temp_dir().join(format!("{}.toml", unique_name("u")));
    std::fs::write(&dir, &config).unwrap();
    let out = ns_a.exec(BIN, &["unpin", "--config", dir.to_str().unwrap()]);
    let _ = std::fs::remove_file(&dir);
    assert!(out.contains("xdp link of ifindex"), "{out}");
    assert!(!pin.exists(), "{} still exists after unpin", pin.display());
    assert_eq!(bpffs.listing(), fresh, "unpin left something on the bpffs");
    assert!(
        !xdp_attached(&ns_a, &veth.a),
        "an XDP program is left on {} after unpin",
        veth.a
    );
}

#[test]
fn a_pin_path_that_is_not_on_a_bpffs_is_refused() {
    require_root();
    let dir = std::env::temp_dir().join(unique_name("nob"));
    let ns = NetNs::new();
    let config = TestConfig::new()
        .set("daemon.pin_path", dir.to_str().unwrap())
        .toml();
    let mut daemon = Daemon::spawn(&ns, &config, &[]);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("exits on a bad pin path");
    assert_eq!(status.code(), Some(64), "a configuration error");
    let log = daemon.log_text();
    assert!(
        log.contains("daemon.pin_path") && log.contains("is not on a bpffs"),
        "{log}"
    );
    assert!(!dir.exists(), "left {} behind", dir.display());
}
