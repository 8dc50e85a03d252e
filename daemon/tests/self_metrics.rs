//! telemetryd's own metrics on a real daemon: every self-metric in the
//! first scrape, before any event; per-program kernel run counts with
//! `daemon.ebpf_stats`, held through a BPF_ENABLE_STATS descriptor that a
//! reload releases; the reload state after a refused and a good SIGHUP.
//! Runs as root (`cargo xtask test`).

mod support;

use std::time::Duration;

use support::frames::{ethernet, ipv4, udp, PacketSocket, ETH_P_IP, IPPROTO_UDP};
use support::metrics::promtool_accepts;
use support::{require_root, Daemon, NetNs, TestConfig, VethPair};

const XDP_PROGRAM: &str = "xdp_packet_counter";

fn config(veth: &VethPair, ebpf_stats: bool) -> String {
    TestConfig::new()
        .interfaces(&[&veth.a])
        .set("xdp.mode", "generic")
        .set("daemon.ebpf_stats", ebpf_stats)
        .toml()
}

/// Descriptors of `pid` that are BPF statistics switches.
fn stats_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:bpf-stats")
        .count()
}

#[test]
fn every_self_metric_is_in_the_first_scrape() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let daemon = Daemon::start(&ns_a, &config(&veth, false));
    let scrape = daemon.scrape();
    let one = |name: &str| {
        scrape
            .get(name, &[])
            .unwrap_or_else(|| panic!("{name} missing:\n{}", scrape.text))
    };
    // Nothing was sent, nothing reloaded: still there, with their values.
    assert_eq!(one("telemetryd_poll_overruns_total"), 0.0);
    assert_eq!(one("telemetryd_config_last_reload_successful"), 1.0);
    assert!(
        one("telemetryd_poll_duration_seconds_count") >= 1.0,
        "the first poll"
    );
    assert_eq!(
        scrape.get("telemetryd_scrape_duration_seconds_count", &[]),
        Some(0.0),
        "no scrape before this one"
    );
    assert_eq!(
        scrape.get(
            "telemetryd_scrape_duration_seconds_bucket",
            &[("le", "0.0001")]
        ),
        Some(0.0)
    );
    assert_eq!(one("telemetryd_ebpf_stats_enabled"), 0.0);
    assert_eq!(
        scrape.get(
            "telemetryd_ebpf_program_runs_total",
            &[("program", XDP_PROGRAM)]
        ),
        Some(0.0),
        "{}",
        scrape.text
    );
    assert!(scrape
        .get(
            "telemetryd_ebpf_program_run_seconds_total",
            &[("program", XDP_PROGRAM)]
        )
        .is_some());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        scrape.get("telemetryd_kernel_info", &[("release", release.trim())]),
        Some(1.0),
        "{}",
        scrape.text
    );
    assert_eq!(scrape.sum("telemetryd_config_info", &[]), 1.0);
    assert!(scrape.text.contains("telemetryd_config_info{hash=\""));
    let build = scrape
        .text
        .lines()
        .find(|l| l.starts_with("telemetryd_build_info{"))
        .expect("build_info");
    assert!(
        build.contains("revision=\"") && build.contains("rustc=\"rustc 1."),
        "{build}"
    );
    let started = one("telemetryd_config_last_reload_success_timestamp_seconds");
    let process_start = one("process_start_time_seconds");
    assert!(
        (started - process_start).abs() < 30.0,
        "{started} {process_start}"
    );
    assert!(one("process_resident_memory_bytes") > 1_000_000.0);
    assert!(one("process_virtual_memory_bytes") > one("process_resident_memory_bytes"));
    // The daemon's descriptors as /proc shows them around the scrape, plus
    // the scrape's connection and the directory being counted. A poll
    // (every 100 ms) holds a few sysfs files open while it lists the
    // interfaces, so one reading may catch up to 3 more or fewer.
    let counts: Vec<f64> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(30));
            daemon.fd_count() as f64
        })
        .collect();
    let lo = counts.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = counts.iter().copied().fold(0.0, f64::max);
    let open = one("process_open_fds");
    assert!(
        open >= lo - 3.0 && open <= hi + 5.0,
        "process_open_fds {open}, /proc/PID/fd counted {counts:?}"
    );
    assert!(one("process_max_fds") >= one("process_open_fds"));
    assert!(one("process_cpu_seconds_total") > 0.0);
    promtool_accepts(&scrape);

    // The scrape before is measured now.
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.get("telemetryd_scrape_duration_seconds_count", &[]),
        Some(1.0)
    );
}

#[test]
fn ebpf_stats_count_every_run_while_held_and_a_reload_releases_them() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let daemon = Daemon::start(&ns_a, &config(&veth, true));
    let before = daemon.scrape();
    assert_eq!(
        before.get("telemetryd_ebpf_stats_enabled", &[]),
        Some(1.0),
        "{}",
        daemon.log_text()
    );
    assert_eq!(stats_fds(daemon.pid()), 1);
    // (The kernel.bpf_stats_enabled sysctl shows only what was written to
    // it: a descriptor counts apart from it, and 0 written there by someone
    // else does not stop telemetryd's.)
    assert_eq!(
        before.get(
            "telemetryd_ebpf_program_runs_total",
            &[("program", XDP_PROGRAM)]
        ),
        Some(0.0),
        "{}",
        before.text
    );

    const FRAMES: u64 = 40;
    let sender = veth.b.clone();
    ns_b.enter(move || {
        let socket = PacketSocket::open(&sender).expect("AF_PACKET socket");
        let frame = ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_UDP, &[], 0, &udp(16)));
        for _ in 0..FRAMES {
            socket.send(&frame).expect("sending a raw frame");
        }
    });
    let runs = |s: &support::metrics::Scrape| {
        s.get(
            "telemetryd_ebpf_program_runs_total",
            &[("program", XDP_PROGRAM)],
        )
    };
    let after = daemon.scrape_until(Duration::from_secs(5), |s| runs(s) == Some(FRAMES as f64));
    assert_eq!(runs(&after), Some(FRAMES as f64), "{}", after.text);
    let seconds = after
        .get(
            "telemetryd_ebpf_program_run_seconds_total",
            &[("program", XDP_PROGRAM)],
        )
        .unwrap();
    assert!(
        seconds > 0.0 && seconds < 0.01,
        "{seconds} s for {FRAMES} frames"
    );

    // SIGHUP with ebpf_stats = false: the descriptor is closed at once.
    daemon.rewrite_config(&config(&veth, false));
    daemon.signal(libc::SIGHUP);
    let released = daemon.scrape_until(Duration::from_secs(5), |s| {
        s.get("telemetryd_ebpf_stats_enabled", &[]) == Some(0.0)
    });
    assert_eq!(
        released.get("telemetryd_ebpf_stats_enabled", &[]),
        Some(0.0),
        "{}",
        daemon.log_text()
    );
    assert_eq!(stats_fds(daemon.pid()), 0);
}

#[test]
fn reload_state_follows_sighup() {
    require_root();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(&ns_a, &ns_b);
    let daemon = Daemon::start(&ns_a, &config(&veth, false));
    let hash = |s: &support::metrics::Scrape| {
        s.text
            .lines()
            .find_map(|l| l.strip_prefix("telemetryd_config_info{hash=\""))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
            .expect("config_info")
    };
    let first = daemon.scrape();
    let started = first
        .get(
            "telemetryd_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();

    daemon.rewrite_config("[daemon]\npoll_interval = \"soon\"\n");
    daemon.signal(libc::SIGHUP);
    let refused = daemon.scrape_until(Duration::from_secs(5), |s| {
        s.get("telemetryd_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert_eq!(
        refused.get("telemetryd_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        hash(&refused),
        hash(&first),
        "the running configuration stays"
    );

    std::thread::sleep(Duration::from_millis(20));
    let changed = TestConfig::new()
        .interfaces(&[&veth.a])
        .set("xdp.mode", "generic")
        .set("analyzer.fire_after", 7)
        .toml();
    daemon.rewrite_config(&changed);
    daemon.signal(libc::SIGHUP);
    let good = daemon.scrape_until(Duration::from_secs(5), |s| {
        s.get("telemetryd_config_last_reload_successful", &[]) == Some(1.0)
    });
    assert_eq!(
        good.get("telemetryd_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_ne!(hash(&good), hash(&first));
    let reloaded = good
        .get(
            "telemetryd_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();
    assert!(reloaded > started, "{reloaded} > {started}");
}
