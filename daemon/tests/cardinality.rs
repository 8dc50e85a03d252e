//! Bounded cardinality on a node with hundreds of container veths: 500 veth
//! pairs in a test namespace, the daemon attached to every one of them
//! (`xdp.interfaces = []`), `[metrics]` capping the per-device families.
//! The scrape holds exactly the capped devices and `device="other"`, the
//! folded counts are right, frames to a folded device land in `other`;
//! once the veths are gone no series of theirs is left. Runs as root
//! (`cargo xtask test`).

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::frames::{ethernet, ipv4, udp, PacketSocket, ETH_P_IP, IPPROTO_UDP};
use support::metrics::{promtool_accepts, Scrape};
use support::netns::unique_name;
use support::{require_root, Daemon, NetNs, TestConfig};

const PAIRS: usize = 500;
const MAX_DEVICES: usize = 50;
/// Devices `…v400` to `…v499` match `metrics.device_exclude`.
const EXCLUDED: usize = 100;
/// Series per device: packets and bytes (3 families x 4 protocols each),
/// malformed, dropped and errors (rx, tx), attached.
const PER_DEVICE: usize = 12 + 12 + 1 + 2 + 2 + 1;

/// `ip -batch` in one namespace; `force` goes on past errors (clean-up).
fn ip_batch(ns: &str, commands: &str, force: bool) -> std::process::Output {
    let mut args = vec!["-n", ns];
    if force {
        args.push("-force");
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ip -batch");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `PAIRS` veth pairs, `<prefix>NNN` in the daemon's namespace and
/// `<prefix>pNNN` in the peers' namespace, all up, IPv6 off (the kernel
/// sends nothing on its own). Removed on drop (deleting one end removes
/// both), also when the test fails; the namespaces go after it anyway.
struct VethFleet {
    prefix: String,
    ns: String,
    removed: bool,
}

impl VethFleet {
    fn new(ns_a: &NetNs, ns_b: &NetNs) -> Self {
        let prefix = unique_name("v");
        assert!(prefix.len() + 4 <= 15, "{prefix}pNNN is too long");
        let fleet = Self {
            prefix,
            ns: ns_a.name.clone(),
            removed: false,
        };
        ns_a.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        ns_b.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        let mut add = String::new();
        let mut up_b = String::new();
        for i in 0..PAIRS {
            let (a, b) = (fleet.name(i), fleet.peer(i));
            add.push_str(&format!(
                "link add {a} type veth peer name {b} netns {}\nlink set {a} up\n",
                ns_b.name
            ));
            up_b.push_str(&format!("link set {b} up\n"));
        }
        for (ns, commands) in [(&ns_a.name, add), (&ns_b.name, up_b)] {
            let out = ip_batch(ns, &commands, false);
            assert!(
                out.status.success(),
                "creating the veth fleet in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fleet
    }

    fn name(&self, i: usize) -> String {
        format!("{}{i:03}", self.prefix)
    }

    fn peer(&self, i: usize) -> String {
        format!("{}p{i:03}", self.prefix)
    }

    fn remove(&mut self) {
        let commands: String = (0..PAIRS)
            .map(|i| format!("link del {}\n", self.name(i)))
            .collect();
        let out = ip_batch(&self.ns, &commands, !self.removed);
        self.removed = true;
        assert!(
            out.status.success() || std::thread::panicking(),
            "removing the veth fleet: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for VethFleet {
    fn drop(&mut self) {
        if !self.removed {
            // Whatever is left; errors for links already gone are expected.
            let commands: String = (0..PAIRS)
                .map(|i| format!("link del {}\n", self.name(i)))
                .collect();
            let _ = ip_batch(&self.ns, &commands, true);
        }
    }
}

/// The `device` labels of a family's series (tracing programs' attachments
/// have none: "").
fn devices(scrape: &Scrape, family: &str) -> BTreeSet<String> {
    scrape
        .samples
        .keys()
        .filter(|s| s.split('{').next() == Some(family))
        .filter_map(|s| {
            let at = s.find("device=\"")? + "device=\"".len();
            Some(s[at..].split('"').next()?.to_owned())
        })
        .filter(|d| !d.is_empty())
        .collect()
}

fn series(scrape: &Scrape, family: &str) -> usize {
    scrape
        .samples
        .keys()
        .filter(|s| s.split('{').next() == Some(family))
        .count()
}

#[test]
fn five_hundred_veths_are_capped_folded_and_forgotten() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let mut fleet = VethFleet::new(&ns_a, &ns_b);
    let exclude = format!("{}4[0-9][0-9]", fleet.prefix);
    let config = TestConfig::new()
        .set("xdp.mode", "generic")
        .set("metrics.max_devices", MAX_DEVICES as i64)
        .set("metrics.device_exclude", exclude.as_str())
        .toml();
    let daemon = Daemon::start(&ns_a, &config);

    let attached = |s: &Scrape| {
        s.get(
            "telemetryd_ebpf_program_attached",
            &[
                ("program", "xdp_packet_counter"),
                ("attach", "xdp-generic"),
                ("device", "other"),
            ],
        )
    };
    let folded = (PAIRS - MAX_DEVICES) as f64;
    let scrape = daemon.scrape_until(Duration::from_secs(60), |s| attached(s) == Some(folded));
    assert_eq!(attached(&scrape), Some(folded), "{}", daemon.log_text());

    // The first MAX_DEVICES names not excluded have series of their own,
    // every other device is in "other".
    let mut want: BTreeSet<String> = (0..MAX_DEVICES).map(|i| fleet.name(i)).collect();
    want.insert("other".to_owned());
    for family in [
        "telemetryd_xdp_packets_total",
        "telemetryd_xdp_bytes_total",
        "telemetryd_xdp_malformed_packets_total",
        "telemetryd_interface_dropped_total",
        "telemetryd_interface_errors_total",
        "telemetryd_ebpf_program_attached",
    ] {
        assert_eq!(devices(&scrape, family), want, "{family}");
    }
    assert_eq!(
        series(&scrape, "telemetryd_xdp_packets_total"),
        (MAX_DEVICES + 1) * 12
    );
    let device_series = scrape
        .samples
        .keys()
        .filter(|s| s.contains("device=\"") && !s.contains("device=\"\""))
        .count();
    let drops = series(&scrape, "telemetryd_kernel_device_drops_total");
    assert_eq!(device_series - drops, (MAX_DEVICES + 1) * PER_DEVICE);
    let folded_of =
        |s: &Scrape, family: &str| s.get("telemetryd_series_folded", &[("family", family)]);
    let n = PAIRS - MAX_DEVICES;
    for (family, per) in [
        ("telemetryd_xdp_packets_total", 12),
        ("telemetryd_xdp_bytes_total", 12),
        ("telemetryd_xdp_malformed_packets_total", 1),
        ("telemetryd_interface_dropped_total", 2),
        ("telemetryd_interface_errors_total", 2),
        ("telemetryd_ebpf_program_attached", 1),
    ] {
        assert_eq!(
            folded_of(&scrape, family),
            Some((n * per) as f64),
            "{family}"
        );
    }
    assert!(
        EXCLUDED < n,
        "the excluded devices are among the folded ones"
    );
    promtool_accepts(&scrape);

    // Frames to a folded device (an excluded one) and to a capped one.
    const FRAMES: u64 = 30;
    let other_udp = |s: &Scrape, device: &str| {
        s.get(
            "telemetryd_xdp_packets_total",
            &[("device", device), ("family", "ipv4"), ("protocol", "udp")],
        )
        .unwrap_or(-1.0)
    };
    let before = other_udp(&scrape, "other");
    let (to_folded, to_capped) = (fleet.peer(450), fleet.peer(3));
    ns_b.enter(move || {
        let frame = ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_UDP, &[], 0, &udp(16)));
        for (peer, frames) in [(to_folded, FRAMES), (to_capped, 2 * FRAMES)] {
            let socket = PacketSocket::open(&peer).expect("AF_PACKET socket");
            for _ in 0..frames {
                socket.send(&frame).expect("sending a raw frame");
            }
        }
    });
    let capped = fleet.name(3);
    let sent = daemon.scrape_until(Duration::from_secs(5), |s| {
        other_udp(s, "other") == before + FRAMES as f64
            && other_udp(s, &capped) == 2.0 * FRAMES as f64
    });
    assert_eq!(
        other_udp(&sent, "other"),
        before + FRAMES as f64,
        "{}",
        sent.text
    );
    assert_eq!(other_udp(&sent, &capped), 2.0 * FRAMES as f64);
    let reached = other_udp(&sent, "other");

    // The stack drops those frames (not for this host): by device for the
    // capped one, in "other" for the folded one (the first 16 names not
    // excluded have places in telemetryd_kernel_device_drops_total).
    let drops = |s: &Scrape, device: &str| {
        s.get(
            "telemetryd_kernel_device_drops_total",
            &[("device", device), ("reason", "OTHERHOST")],
        )
    };
    let dropped = daemon.scrape_until(Duration::from_secs(5), |s| {
        drops(s, &capped) == Some(2.0 * FRAMES as f64) && drops(s, "other") == Some(FRAMES as f64)
    });
    assert_eq!(
        drops(&dropped, &capped),
        Some(2.0 * FRAMES as f64),
        "{}",
        dropped.text
    );
    assert_eq!(
        drops(&dropped, "other"),
        Some(FRAMES as f64),
        "{}",
        dropped.text
    );
    assert_eq!(
        folded_of(&dropped, "telemetryd_kernel_device_drops_total"),
        Some(1.0),
        "one folded device with one reason"
    );

    // Every veth goes: no series of any of them is left, and "other" keeps
    // what it counted (a counter never goes down).
    fleet.remove();
    let gone = daemon.scrape_until(Duration::from_secs(30), |s| {
        !s.text.contains(&fleet.prefix) && attached(s).is_none()
    });
    let stale: Vec<&String> = gone
        .samples
        .keys()
        .filter(|s| s.contains(&fleet.prefix))
        .collect();
    assert!(stale.is_empty(), "stale series: {stale:?}");
    assert_eq!(attached(&gone), None, "{}", gone.text);
    assert_eq!(
        devices(&gone, "telemetryd_xdp_packets_total"),
        BTreeSet::from(["other".to_owned()])
    );
    assert_eq!(other_udp(&gone, "other"), reached);
    assert_eq!(
        drops(&gone, &capped),
        None,
        "the capped device's drops are gone"
    );
    assert_eq!(
        drops(&gone, "other"),
        Some(FRAMES as f64),
        "other keeps its count"
    );
    for family in [
        "telemetryd_xdp_packets_total",
        "telemetryd_ebpf_program_attached",
        "telemetryd_kernel_device_drops_total",
    ] {
        assert_eq!(folded_of(&gone, family), Some(0.0), "{family}");
    }
    promtool_accepts(&gone);
}
