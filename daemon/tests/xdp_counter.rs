//! The XDP packet counter against real traffic: a `telemetryd` process in
//! one throwaway namespace, exact frames sent from another over veth, exact
//! counts read back from `/metrics`. Runs as root (`cargo xtask test`).

mod support;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use support::frames::{cases, PacketSocket};
use support::matrix::record;
use support::metrics::promtool_accepts;
use support::{require_root, Daemon, NetNs, TestConfig, VethPair};

fn config(interfaces: &[&str], mode: &str) -> String {
    TestConfig::new()
        .set("log.level", "debug")
        .interfaces(interfaces)
        .set("xdp.mode", mode)
        .toml()
}

const FAMILIES: [&str; 3] = ["ipv4", "ipv6", "other"];
const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "other"];

/// Real sockets from the sender's stack: UDP datagrams and TCP SYNs.
const REAL_UDP: u64 = 25;
const REAL_UDP_PAYLOAD: usize = 100;
const REAL_TCP_CONNECTS: u64 = 3;
/// SYN with Linux's default options (MSS, SACK, timestamps, window scale).
const SYN_FRAME_LEN: u64 = 14 + 20 + 40;

/// `a_index`: the receiving end's ifindex, which decides where the program
/// counts it (`expected_counters`, as the attach log names it).
fn counts_every_frame_exactly(
    mode: &str,
    expected_attach: &str,
    a_index: Option<u32>,
    expected_counters: &str,
) {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::with_a_index(&ns_a, &ns_b, a_index);
    counts_every_frame_on(
        "veth",
        (&ns_a, &ns_b, &veth),
        mode,
        expected_attach,
        expected_counters,
    );
}

/// The XDP mode the kernel reports for `device` (`bpftool net`): `driver`
/// or `generic`.
fn kernel_xdp_mode(ns: &NetNs, device: &str) -> String {
    let json = ns.exec("bpftool", &["-j", "net", "show", "dev", device]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("bpftool JSON");
    value
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|section| section["xdp"].as_array().cloned().unwrap_or_default())
        .find(|entry| entry["devname"] == device)
        .and_then(|entry| entry["mode"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("bpftool shows no XDP program on {device}: {json}"))
}

/// Sends every kind of frame from end `b` of `link` to end `a`, which the
/// daemon (in `ns_a`) counts in `mode`; every packet and byte must be
/// counted exactly where it belongs.
fn counts_every_frame_on(
    link_kind: &str,
    (ns_a, ns_b, veth): (&NetNs, &NetNs, &VethPair),
    mode: &str,
    expected_attach: &str,
    expected_counters: &str,
) {
    let daemon = Daemon::start(ns_a, &config(&[&veth.a], mode));
    let device = veth.a.clone();

    let before = daemon.scrape_until(Duration::from_secs(5), |s| {
        s.get(
            "telemetryd_ebpf_program_attached",
            &[
                ("program", "xdp_packet_counter"),
                ("attach", expected_attach),
                ("device", &device),
            ],
        ) == Some(1.0)
    });
    assert_eq!(
        before.get(
            "telemetryd_ebpf_program_attached",
            &[
                ("program", "xdp_packet_counter"),
                ("attach", expected_attach),
                ("device", &device)
            ]
        ),
        Some(1.0),
        "attached in {expected_attach} mode:\n{}",
        before.text
    );
    // Quiet link: nothing has arrived yet, so no noise to account for.
    assert_eq!(
        before.sum("telemetryd_xdp_packets_total", &[("device", &device)]),
        0.0,
        "{}",
        before.text
    );

    let cases = cases();
    let frames: Vec<(Vec<u8>, u64)> = cases.iter().map(|c| (c.frame.clone(), c.count)).collect();
    let sender = veth.b.clone();
    ns_b.enter(move || {
        let socket = PacketSocket::open(&sender).expect("AF_PACKET socket");
        for (frame, count) in frames {
            for _ in 0..count {
                socket.send(&frame).expect("sending a raw frame");
            }
        }
    });
    let target_ip = veth.a_ip.clone();
    ns_b.enter(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..REAL_UDP {
            socket
                .send_to(&[7u8; REAL_UDP_PAYLOAD], (target_ip.as_str(), 9))
                .unwrap();
        }
        for _ in 0..REAL_TCP_CONNECTS {
            let addr: SocketAddr = format!("{target_ip}:1").parse().unwrap();
            let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            assert!(refused.is_err(), "nothing listens on port 1");
        }
    });

    let mut want_packets = std::collections::BTreeMap::new();
    let mut want_bytes = std::collections::BTreeMap::new();
    let mut want_malformed = 0;
    for c in &cases {
        *want_packets.entry((c.family, c.protocol)).or_insert(0) += c.count;
        *want_bytes.entry((c.family, c.protocol)).or_insert(0) += c.count * c.frame.len() as u64;
        want_malformed += if c.malformed { c.count } else { 0 };
    }
    *want_packets.entry(("ipv4", "udp")).or_insert(0) += REAL_UDP;
    *want_bytes.entry(("ipv4", "udp")).or_insert(0) +=
        REAL_UDP * (14 + 20 + 8 + REAL_UDP_PAYLOAD as u64);
    *want_packets.entry(("ipv4", "tcp")).or_insert(0) += REAL_TCP_CONNECTS;
    *want_bytes.entry(("ipv4", "tcp")).or_insert(0) += REAL_TCP_CONNECTS * SYN_FRAME_LEN;
    let total: u64 = want_packets.values().sum();

    let after = daemon.scrape_until(Duration::from_secs(5), |s| {
        s.sum("telemetryd_xdp_packets_total", &[("device", &device)]) >= total as f64
    });
    let mut mismatches = Vec::new();
    for family in FAMILIES {
        for protocol in PROTOCOLS {
            let labels = [
                ("device", device.as_str()),
                ("family", family),
                ("protocol", protocol),
            ];
            let packets = after.get("telemetryd_xdp_packets_total", &labels);
            let bytes = after.get("telemetryd_xdp_bytes_total", &labels);
            let want_p = *want_packets.get(&(family, protocol)).unwrap_or(&0) as f64;
            let want_b = *want_bytes.get(&(family, protocol)).unwrap_or(&0) as f64;
            if packets != Some(want_p) || bytes != Some(want_b) {
                mismatches.push(format!(
                    "{family}/{protocol}: packets {packets:?} want {want_p}, bytes {bytes:?} want {want_b}"
                ));
            }
        }
    }
    let malformed = after.get(
        "telemetryd_xdp_malformed_packets_total",
        &[("device", &device)],
    );
    if malformed != Some(want_malformed as f64) {
        mismatches.push(format!("malformed {malformed:?} want {want_malformed}"));
    }
    assert!(
        mismatches.is_empty(),
        "{}\n{}",
        mismatches.join("\n"),
        after.text
    );
    assert_eq!(
        after.get(
            "telemetryd_ebpf_program_errors_total",
            &[
                ("program", "xdp_packet_counter"),
                ("reason", "counters_map_full")
            ]
        ),
        Some(0.0)
    );
    promtool_accepts(&after);
    // Counted through the fast path it was meant for, not the fallback hash.
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("counters=\"{expected_counters}\"")),
        "{log}"
    );
    if expected_counters != "hash" {
        assert!(!log.contains("counted through the hash"), "{log}");
    }
    let kernel_mode = kernel_xdp_mode(ns_a, &device);
    let want_kernel_mode = if expected_attach == "xdp-native" {
        "driver"
    } else {
        "generic"
    };
    assert_eq!(
        kernel_mode, want_kernel_mode,
        "the kernel's word for the mode"
    );
    record(
        &format!("XDP packet counter on {link_kind}"),
        &format!("{expected_attach} ({kernel_mode} mode), {expected_counters}"),
    );
}

/// A fresh namespace's first veth has a small ifindex: the low-ifindex table.
#[test]
fn counts_every_frame_exactly_in_native_mode() {
    counts_every_frame_exactly("native", "xdp-native", None, "low-ifindex table");
}

/// Ifindex 300 is beyond the low-ifindex table: a counter slot.
#[test]
fn counts_every_frame_exactly_in_generic_mode() {
    counts_every_frame_exactly("generic", "xdp-generic", Some(300), "slot");
}

/// Ifindex 20000 is beyond the slot table too: the fallback hash alone.
#[test]
fn counts_every_frame_exactly_through_the_hash() {
    counts_every_frame_exactly("native", "xdp-native", Some(20_000), "hash");
}

/// The network interfaces of the calling namespace whose driver is `driver`.
fn interfaces_with_driver(driver: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path().join("device/driver"))
                .is_ok_and(|d| d.file_name().is_some_and(|n| n == driver))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

/// Native XDP on a real NIC driver: two virtio-net NICs on one qemu hub
/// (the guests of `cargo xtask vm-test` have them), one in each namespace,
/// every frame kind of the veth test, exact counts in driver mode.
#[test]
#[ignore = "needs two virtio-net NICs on one hub: run in the guests of `cargo xtask vm-test`"]
fn counts_every_frame_exactly_in_driver_mode_on_virtio_net() {
    require_root();
    let nics = interfaces_with_driver("virtio_net");
    let [a, b] = nics.as_slice() else {
        panic!("this test needs exactly two virtio-net NICs on one hub, found {nics:?}");
    };
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let link = VethPair::adopt(&ns_a, &ns_b, a, b);
    // The NIC filters unicast frames for other addresses (qemu drops them
    // before the guest sees them); the test frames are addressed to nobody.
    ns_a.ip(&["link", "set", "dev", &link.a, "promisc", "on"]);
    counts_every_frame_on(
        "virtio-net",
        (&ns_a, &ns_b, &link),
        "native",
        "xdp-native",
        "low-ifindex table",
    );
}

#[test]
fn missing_interface_is_reported_and_the_others_attach() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let daemon = Daemon::start(&ns_a, &config(&[&veth.a, "tdtnosuch0"], "auto"));
    let scrape = daemon.scrape_until(Duration::from_secs(5), |s| {
        s.sum("telemetryd_ebpf_program_attached", &[("device", &veth.a)]) == 1.0
    });
    assert_eq!(
        scrape.sum("telemetryd_ebpf_program_attached", &[("device", &veth.a)]),
        1.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.sum(
            "telemetryd_ebpf_program_attached",
            &[("device", "tdtnosuch0")]
        ),
        0.0
    );
    let log = daemon.log_text();
    assert!(
        log.contains("interface tdtnosuch0 does not exist"),
        "log does not name the missing interface:\n{log}"
    );
    // Said once, not once per poll.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        daemon
            .log_text()
            .matches("tdtnosuch0 does not exist")
            .count(),
        1
    );
}

fn xdp_attached(ns: &NetNs, device: &str) -> bool {
    ns.ip(&["link", "show", "dev", device]).contains("prog/xdp")
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let mut daemon = Daemon::start(&ns_a, &config(&[&veth.a], "auto"));
    assert!(xdp_attached(&ns_a, &veth.a));
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exited within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !xdp_attached(&ns_a, &veth.a),
        "an XDP program is left on {}",
        veth.a
    );
}

#[test]
fn kill_9_leaves_nothing_attached() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let mut daemon = Daemon::start(&ns_a, &config(&[&veth.a], "auto"));
    assert!(xdp_attached(&ns_a, &veth.a));
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5)).expect("killed");
    // The bpf_link dies with the process's last reference to it; the
    // kernel releases it asynchronously, so allow it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while xdp_attached(&ns_a, &veth.a) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !xdp_attached(&ns_a, &veth.a),
        "an XDP program outlived kill -9 on {}",
        veth.a
    );
}

/// Counters are reused: an interface that gets the low-ifindex entry an
/// earlier one used (the same small ifindex again) or its slot (handed out
/// again after every other slot has been given out once) counts from zero,
/// not from what the earlier one left.
#[test]
fn a_reused_counter_entry_counts_from_zero() {
    use telemetryd::config::{Choice, XdpMode};
    use telemetryd::sources::load_default_object;
    use telemetryd::sources::xdp::{CounterPlace, PacketCounter};
    use telemetryd_common::xdp::COUNTER_SLOTS;

    require_root();
    for (a_index, label) in [(None, "low-ifindex table"), (Some(300), "slot")] {
        let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
        let veth = VethPair::with_a_index(&ns_a, &ns_b, a_index);
        let (a, b, ns_b_name) = (veth.a.clone(), veth.b.clone(), ns_b.name.clone());
        let seen = ns_a.enter_with_sysfs(move || {
            let mut object = load_default_object().expect("loading the eBPF object");
            let mut xdp =
                PacketCounter::load(&mut object, 0, None).expect("loading xdp_packet_counter");
            let frame = support::frames::ethernet(
                support::frames::ETH_P_IP,
                &[],
                &support::frames::ipv4(
                    support::frames::IPPROTO_UDP,
                    &[],
                    0,
                    &support::frames::udp(8),
                ),
            );
            let mut seen = Vec::new();
            // One more round than there are slots: the last gets the first
            // one's slot back.
            for round in 0..=COUNTER_SLOTS {
                let attachment = xdp
                    .attach(&a, Choice::Only(XdpMode::Generic), false)
                    .expect("attach");
                let place = attachment.counters.clone();
                let sent = match round {
                    0 => 7,
                    r if r == COUNTER_SLOTS => 3,
                    _ => 0,
                };
                if sent > 0 {
                    let (b, frame, ns) = (b.clone(), frame.clone(), ns_b_name.clone());
                    support::netns::in_namespace(&ns, move || {
                        let socket = PacketSocket::open(&b).expect("packet socket");
                        for _ in 0..sent {
                            socket.send(&frame).expect("send");
                        }
                    });
                    let deadline = std::time::Instant::now() + Duration::from_secs(2);
                    while xdp.fast_path_counters(std::slice::from_ref(&attachment))[0].packets[0][1]
                        < sent
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    let counted =
                        xdp.fast_path_counters(std::slice::from_ref(&attachment))[0].packets[0][1];
                    seen.push((round, place, counted));
                }
                xdp.detach(attachment);
            }
            seen
        });
        let (first, last) = (&seen[0], &seen[1]);
        assert_eq!(first.1.label(), label, "{seen:?}");
        assert_eq!(last.1.label(), label, "{seen:?}");
        if let (CounterPlace::Slot(s0), CounterPlace::Slot(s1)) = (&first.1, &last.1) {
            assert_eq!(s0, s1, "the last round reuses the first round's slot");
        }
        assert_eq!(first.2, 7, "first interface's frames: {seen:?}");
        assert_eq!(last.2, 3, "the reused entry counts from zero: {seen:?}");
    }
}

/// A re-attach right after a detach succeeds even while another process
/// still holds the link's descriptor: a child forked before the detach and
/// not yet exec'd, which is what `Command::spawn` on another thread of the
/// same process leaves for a moment. Detaching takes effect at once
/// (`BPF_LINK_DETACH`), not when the link's last reference is gone; the
/// hotplug and SIGHUP paths of the daemon detach and attach the same
/// interface back to back.
#[test]
fn a_detach_takes_effect_while_a_child_still_holds_the_link() {
    use telemetryd::config::{Choice, XdpMode};
    use telemetryd::sources::load_default_object;
    use telemetryd::sources::xdp::PacketCounter;

    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let a = veth.a.clone();
    ns_a.enter_with_sysfs(move || {
        let mut object = load_default_object().expect("loading the eBPF object");
        let mut xdp =
            PacketCounter::load(&mut object, 0, None).expect("loading xdp_packet_counter");
        let generic = Choice::Only(XdpMode::Generic);
        let attachment = xdp.attach(&a, generic, false).expect("attach");
        // SAFETY: the child only sleeps and exits (both async-signal-safe),
        // holding its copy of every descriptor, the link's included.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above.
            unsafe {
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork: {}", std::io::Error::last_os_error());
        xdp.detach(attachment);
        let again = xdp.attach(&a, generic, false);
        // SAFETY: our own child, not yet reaped.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let again = again.expect("re-attach while a child holds the detached link");
        xdp.detach(again);
    });
}
