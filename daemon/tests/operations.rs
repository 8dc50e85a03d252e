//! Operations, proven on the real binary as root: `check` without
//! privileges, sd_notify readiness and watchdog, the systemd unit's exact
//! capability set (drop and retransmit tracers without tracefs included),
//! signals (SIGTERM, SIGINT, SIGHUP reload), interface
//! hotplug through rtnetlink, `xdp.replace`, and the unit's hardening score.
//!
//! Every namespace, interface and file is removed by Drop guards, also when a
//! test fails. Traffic never leaves the namespaces created here.

mod support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::metrics::Scrape;
use support::netns::unique_name;
use support::process::BIN;
use support::{require_root, Daemon, NetNs, Spawn, TestConfig};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/telemetryd.service");
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/telemetryd.toml");
const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

fn config(xdp: &str, poll: &str, level: &str) -> String {
    TestConfig::new()
        .set("daemon.poll_interval", poll)
        .set("log.level", level)
        .lines("xdp", xdp)
        .toml()
}

/// A veth pair with both ends inside `ns`, both up.
fn add_veth(ns: &NetNs, a: &str, b: &str) {
    ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ns.ip(&["link", "set", a, "up"]);
    ns.ip(&["link", "set", b, "up"]);
}

/// XDP programs on the interfaces of `ns`, as the kernel reports them
/// (`bpftool net`): one `(device, mode, program id)` per attachment.
fn xdp_programs(ns: &NetNs) -> Vec<(String, String, u64)> {
    let json = ns.exec("bpftool", &["-j", "net", "show"]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("bpftool JSON");
    let mut out = Vec::new();
    for section in value.as_array().into_iter().flatten() {
        for entry in section["xdp"].as_array().into_iter().flatten() {
            out.push((
                entry["devname"].as_str().unwrap_or_default().to_owned(),
                entry["mode"].as_str().unwrap_or_default().to_owned(),
                entry["id"].as_u64().unwrap_or_default(),
            ));
        }
    }
    out.sort();
    out
}

fn devices_with_xdp(ns: &NetNs) -> Vec<String> {
    xdp_programs(ns).into_iter().map(|(d, _, _)| d).collect()
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_log(daemon: &Daemon, text: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || daemon.log_text().contains(text)),
        "the log never said {text:?}:\n{}",
        daemon.log_text()
    );
}

fn stop(daemon: &mut Daemon, signal: i32) {
    let started = Instant::now();
    daemon.signal(signal);
    let status = daemon.wait_exit(Duration::from_secs(5));
    let status = status.unwrap_or_else(|| {
        panic!(
            "no exit within 5 s of signal {signal}:\n{}",
            daemon.log_text()
        )
    });
    assert!(
        status.success(),
        "exit {status:?} after signal {signal}:\n{}",
        daemon.log_text()
    );
    eprintln!("signal {signal}: exited 0 after {:?}", started.elapsed());
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("t"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- config

#[test]
fn check_needs_no_privileges_and_bad_files_exit_64() {
    require_root();
    let dir = TempDir::new();
    let shipped = dir.write(
        "shipped.toml",
        &std::fs::read_to_string(SHIPPED_CONFIG).unwrap(),
    );
    // nobody, no capabilities at all, not even in the bounding set.
    let nobody = |args: &[&str]| {
        let output = Command::new("setpriv")
            .args(NOBODY)
            .args(["--inh-caps=-all", "--bounding-set=-all", BIN])
            .args(args)
            .output()
            .expect("running setpriv");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, text) = nobody(&["check", "--config", shipped.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("configuration: valid"), "{text}");
    assert!(
        !text.contains("kernel:"),
        "plain check probes nothing:\n{text}"
    );

    for (body, key) in [
        ("[xdp]\nbogus = 1\n", "xdp.bogus"),
        ("[daemon]\npoll_interval = \"0s\"\n", "daemon.poll_interval"),
        (
            "[daemon]\npoll_interval = \"-1s\"\n",
            "daemon.poll_interval",
        ),
        ("[xdp]\nmode = \"turbo\"\n", "xdp.mode"),
        ("[http]\nlisten = \"localhost\"\n", "http.listen"),
        (
            "[xdp]\ninterfaces = [\"eth0\", \"eth0\"]\n",
            "xdp.interfaces",
        ),
        ("[syscalls]\ntrack = [\"raed\"]\n", "syscalls.track"),
        ("[analyzer]\nfire_after = \"3\"\n", "analyzer.fire_after"),
    ] {
        let path = dir.write("bad.toml", body);
        let (code, text) = nobody(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(64), "{body:?}: {text}");
        assert!(text.contains(key), "{body:?} must name {key}: {text}");
        // `run` refuses it the same way, before touching anything.
        let (code, _) = nobody(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(64), "run with {body:?}");
    }

    // Touching no kernel state, seen from outside: not one bpf() or
    // perf_event_open() call, not one socket. With --probe (as root) it
    // does probe.
    let traced = |args: &[&str]| {
        let trace = dir.0.join("strace.out");
        let output = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=bpf,perf_event_open,socket", "-o"])
            .arg(&trace)
            .arg(BIN)
            .args(args)
            .args(["--config", shipped.to_str().unwrap()])
            .output()
            .expect("running strace (Debian package strace)");
        assert!(output.status.success(), "{args:?}: {output:?}");
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            std::fs::read_to_string(&trace).unwrap_or_default(),
        )
    };
    let (_, calls) = traced(&["check"]);
    assert!(
        !calls.contains("bpf(")
            && !calls.contains("perf_event_open(")
            && !calls.contains("socket("),
        "check without --probe made kernel calls:\n{calls}"
    );
    let (text, calls) = traced(&["check", "--probe"]);
    assert!(
        text.contains("kernel:") && text.contains("release:"),
        "{text}"
    );
    assert!(calls.contains("bpf("), "--probe probes:\n{calls}");
}

// ------------------------------------------------------------- sd_notify

/// A NOTIFY_SOCKET of our own, as systemd would bind it.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: TempDir,
    path: PathBuf,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("notify");
        let socket = UnixDatagram::bind(&path).expect("binding NOTIFY_SOCKET");
        Self {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The next message, or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Every message arriving within `window`, with its arrival time.
    fn collect(&self, window: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if let Some(m) = self.next(left) {
                out.push((Instant::now(), m));
            }
        }
        out
    }
}

fn spawn_notified(ns: &NetNs, notify: &NotifySocket, extra_env: &[(&str, &str)]) -> Daemon {
    let mut env = vec![
        ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    env.extend_from_slice(extra_env);
    Daemon::spawn_with(
        ns,
        &config(
            "interfaces = [\"nva\"]\nmode = \"generic\"",
            "100ms",
            "info",
        ),
        &Spawn {
            env: &env,
            ..Spawn::default()
        },
    )
}

#[test]
fn ready_after_attach_then_watchdog_pings_which_stop_when_the_loop_stalls() {
    require_root();
    let ns = NetNs::new();
    add_veth(&ns, "nva", "nvb");
    let notify = NotifySocket::bind();
    let mut daemon = spawn_notified(&ns, &notify, &[]);

    let ready = notify
        .next(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no notification:\n{}", daemon.log_text()));
    // The very first message is READY=1, and by then the work is done.
    assert!(ready.starts_with("READY=1"), "first message: {ready:?}");
    assert_eq!(
        devices_with_xdp(&ns),
        ["nva"],
        "XDP attached before READY=1"
    );
    assert_eq!(daemon.get("/readyz").unwrap().0, 200, "/readyz at READY=1");

    let pings = notify.collect(Duration::from_millis(1500));
    let watchdog = pings.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(
        watchdog >= 4,
        "WATCHDOG_USEC=400000 wants a ping every 200 ms; got {pings:?}"
    );
    stop(&mut daemon, libc::SIGTERM);
    let rest = notify.collect(Duration::from_millis(200));
    assert!(
        rest.iter().any(|(_, m)| m == "STOPPING=1"),
        "STOPPING=1 on SIGTERM: {rest:?}"
    );

    // The test hook stalls the poll loop after 10 polls (about 1 s).
    let notify = NotifySocket::bind();
    let daemon = spawn_notified(&ns, &notify, &[("TELEMETRYD_TEST_STALL_POLL_AFTER", "10")]);
    let ready = notify.next(Duration::from_secs(30)).expect("READY=1");
    assert!(ready.starts_with("READY=1"));
    let messages = notify.collect(Duration::from_secs(3));
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(!pings.is_empty(), "pings before the stall: {messages:?}");
    let last = *pings.last().unwrap();
    let quiet = Instant::now().duration_since(last);
    assert!(
        quiet >= Duration::from_millis(1500),
        "pings must stop once the loop stalls; last one {quiet:?} ago"
    );
    assert!(daemon.log_text().contains("stalling the poll loop"));
    eprintln!(
        "{} pings, then silence for {quiet:?} (systemd would restart after 400 ms)",
        pings.len()
    );
}

// ---------------------------------------------------------- capabilities

/// The capability set of the shipped unit, e.g. `["bpf", "net_admin", "perfmon"]`.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    let ambient = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit sets AmbientCapabilities");
    assert_eq!(bounding, ambient, "the unit grants what it bounds");
    let mut caps: Vec<String> = bounding
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    caps.sort();
    caps
}

/// `setpriv` arguments: nobody, with exactly `caps` (inheritable, ambient,
/// bounding), so the daemon's effective set is exactly `caps`.
fn setpriv_with(caps: &[String]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut args = vec!["setpriv".to_owned()];
    args.extend(NOBODY.iter().map(|s| s.to_string()));
    args.push(format!("--inh-caps=-all{list}"));
    args.push(format!("--ambient-caps=-all{list}"));
    args.push(format!("--bounding-set=-all{list}"));
    args
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn spawn_with_caps(ns: &NetNs, caps: &[String]) -> Daemon {
    spawn_with_caps_and(ns, caps, &config("mode = \"auto\"", "100ms", "info"), &[])
}

fn spawn_with_caps_and(ns: &NetNs, caps: &[String], config: &str, env: &[(&str, &str)]) -> Daemon {
    let wrapper = setpriv_with(caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Daemon::spawn_with(
        ns,
        config,
        &Spawn {
            wrapper: &wrapper,
            env,
            ..Spawn::default()
        },
    )
}

#[test]
fn the_units_capability_set_is_enough_and_cap_net_admin_is_needed_for_xdp() {
    require_root();
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon"]);
    let ns = NetNs::new();
    add_veth(&ns, "cva", "cvb");

    // Exactly the unit's set, as uid 65534: everything attaches.
    let mut daemon = spawn_with_caps(&ns, &caps);
    daemon.wait_ready(Duration::from_secs(30));
    let (_, body) = daemon.get("/readyz").unwrap();
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("/readyz JSON");
    assert_eq!(readiness["ready"], true, "{body}");
    for source in ["xdp", "kernel_drops", "tcp_retransmits"] {
        assert_eq!(readiness["sources"][source]["up"], true, "{body}");
        assert_eq!(readiness["sources"][source]["required"], true, "{body}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || devices_with_xdp(&ns)
            == ["cva", "cvb"]),
        "{:?}\n{}",
        xdp_programs(&ns),
        daemon.log_text()
    );
    let pid = daemon.pid();
    assert!(status_field(pid, "Uid").starts_with("65534"));
    // CAP_NET_ADMIN = 12, CAP_PERFMON = 38, CAP_BPF = 39.
    let expected = format!("{:016x}", (1u64 << 12) | (1 << 38) | (1 << 39));
    assert_eq!(status_field(pid, "CapEff"), expected);
    assert_eq!(status_field(pid, "CapBnd"), expected);
    let scrape = daemon.scrape();
    for device in ["cva", "cvb"] {
        assert_eq!(
            scrape.sum(
                "telemetryd_ebpf_program_attached",
                &[("program", "xdp_packet_counter"), ("device", device)]
            ),
            1.0,
            "{}",
            scrape.text
        );
    }
    assert!(
        !daemon.log_text().contains("WARN") && !daemon.log_text().contains("ERROR"),
        "no warnings with the unit's capabilities:\n{}",
        daemon.log_text()
    );
    stop(&mut daemon, libc::SIGTERM);
    assert!(devices_with_xdp(&ns).is_empty(), "detached on SIGTERM");

    // Without CAP_NET_ADMIN: XDP says which capability is missing, the rest
    // runs and /metrics is served, but the daemon is not ready: /readyz
    // answers 503 naming xdp and why.
    let without: Vec<String> = caps.iter().filter(|c| *c != "net_admin").cloned().collect();
    let notify = NotifySocket::bind();
    // The daemon runs as nobody: let it reach the socket.
    for (path, mode) in [(&notify._dir.0, 0o755), (&notify.path, 0o777)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let mut daemon = spawn_with_caps_and(
        &ns,
        &without,
        &config("mode = \"auto\"", "100ms", "info"),
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    // Not ready, so no READY=1: systemd would fail the start. STATUS= says why.
    let first = notify
        .next(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no notification:\n{}", daemon.log_text()));
    assert!(
        first.starts_with("STATUS=not ready: xdp (") && first.contains("CAP_NET_ADMIN"),
        "first message: {first:?}"
    );
    let rest = notify.collect(Duration::from_secs(1));
    assert!(
        !rest.iter().any(|(_, m)| m.contains("READY=1")),
        "READY=1 while a required source is down: {rest:?}"
    );
    // The kernel refuses to load networking programs without CAP_NET_ADMIN
    // (bpf_net_capable), so the refusal comes at load, before any attach.
    wait_log(&daemon, "CAP_NET_ADMIN", Duration::from_secs(30));
    let log = daemon.log_text();
    assert!(log.contains("xdp unavailable"), "{log}");
    assert!(devices_with_xdp(&ns).is_empty());
    assert!(
        wait_until(Duration::from_secs(10), || daemon.get("/healthz").is_ok()),
        "no HTTP:\n{}",
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.get("/healthz").unwrap().0, 200);
    let (status, body) = daemon.get("/readyz").unwrap();
    assert_eq!(status, 503, "/readyz without CAP_NET_ADMIN: {body}\n{log}");
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("/readyz JSON");
    assert_eq!(readiness["ready"], false, "{body}");
    assert_eq!(readiness["sources"]["xdp"]["up"], false, "{body}");
    assert_eq!(readiness["sources"]["xdp"]["required"], true, "{body}");
    let reason = readiness["sources"]["xdp"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("CAP_NET_ADMIN"),
        "the reason names the capability: {body}"
    );
    assert_eq!(readiness["sources"]["kernel_drops"]["up"], true, "{body}");
    assert_eq!(
        readiness["sources"]["syscalls"]["required"], false,
        "{body}"
    );
    assert!(
        daemon.log_text().contains("not ready"),
        "the log says why it is not ready:\n{}",
        daemon.log_text()
    );
    let scrape = daemon.scrape();
    assert_eq!(
        Some(scrape.sum(
            "telemetryd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )),
        Some(1.0),
        "/metrics still served:\n{}",
        scrape.text
    );
    // XDP is down for want of CAP_NET_ADMIN, syscalls by configuration:
    // the same truth as /readyz.
    for (source, up) in [("xdp", 0.0), ("syscalls", 0.0), ("kernel_drops", 1.0)] {
        assert_eq!(
            scrape.get("telemetryd_source_up", &[("source", source)]),
            Some(up),
            "{source}:\n{}",
            scrape.text
        );
    }
    stop(&mut daemon, libc::SIGTERM);

    // The same, with xdp optional: ready, and /readyz still says xdp is down.
    let optional = TestConfig::new()
        .set("log.level", "info")
        .set("daemon.optional_sources", vec!["xdp"])
        .set("xdp.mode", "auto")
        .toml();
    let mut daemon = spawn_with_caps_and(&ns, &without, &optional, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let (status, body) = daemon.get("/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("/readyz JSON");
    assert_eq!(readiness["ready"], true, "{body}");
    assert_eq!(readiness["sources"]["xdp"]["up"], false, "{body}");
    assert_eq!(readiness["sources"]["xdp"]["required"], false, "{body}");
    stop(&mut daemon, libc::SIGTERM);

    // Without CAP_BPF nothing loads: the daemon says so and exits non-zero.
    let without: Vec<String> = caps.iter().filter(|c| *c != "bpf").cloned().collect();
    let mut daemon = spawn_with_caps(&ns, &without);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("exits without CAP_BPF");
    assert!(!status.success());
    assert!(
        daemon.log_text().contains("loading the eBPF object"),
        "{}",
        daemon.log_text()
    );
}

/// The kernel-drop and TCP-retransmit tracers are raw tracepoints: they
/// attach and count with the unit's capabilities and no tracefs. Under
/// `ip netns exec` the daemon sees a fresh sysfs with nothing mounted on
/// /sys/kernel/tracing (and on the host it is mode 0700, root's); without
/// CAP_SYS_ADMIN it cannot mount tracefs either, so a perf tracepoint
/// (which needs tracefs for the event id) would not attach here.
#[test]
fn drop_and_retransmit_tracers_attach_and_count_without_tracefs() {
    require_root();
    let caps = unit_capabilities();
    let ns = NetNs::new();
    let sender = NetNs::new();
    let veth = support::VethPair::new(&ns, &sender);

    // The precondition: as the daemon will run, tracefs is unavailable.
    let wrapper = setpriv_with(&caps);
    let tracefs = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(&wrapper)
        .args(["cat", "/sys/kernel/tracing/events/skb/kfree_skb/id"])
        .output()
        .expect("running setpriv");
    assert!(
        !tracefs.status.success(),
        "tracefs is readable with the unit's capabilities, this test proves nothing: {}",
        String::from_utf8_lossy(&tracefs.stdout)
    );

    let daemon = spawn_with_caps(&ns, &caps);
    daemon.wait_ready(Duration::from_secs(30));
    let scrape = daemon.scrape();
    for program in ["kfree_skb_drops", "tcp_retransmits"] {
        assert_eq!(
            scrape.get(
                "telemetryd_ebpf_program_attached",
                &[
                    ("attach", "tracepoint"),
                    ("device", ""),
                    ("program", program)
                ]
            ),
            Some(1.0),
            "{program} not attached:\n{}\n{}",
            scrape.text,
            daemon.log_text()
        );
    }

    // nftables drops 99% (its highest share) of what arrives on the
    // daemon's end of the veth: NETFILTER_DROP. (Not lo: /metrics is there.)
    let _rule = support::traffic::RandomDrop::add(&ns, &veth.a, 99);
    let drops = |s: &support::metrics::Scrape| {
        s.get(
            "telemetryd_kernel_drops_total",
            &[("class", "loss"), ("reason", "NETFILTER_DROP")],
        )
        .unwrap_or(0.0)
    };
    let before = drops(&daemon.scrape());
    let target = format!("{}:9", veth.a_ip);
    sender.enter(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..200 {
            socket.send_to(b"dropped", &target).unwrap();
        }
    });
    // ~198 of 200 datagrams; at least 100 leaves no room for chance.
    let device_drops = |s: &support::metrics::Scrape| {
        s.get(
            "telemetryd_kernel_device_drops_total",
            &[("device", &veth.a), ("reason", "NETFILTER_DROP")],
        )
        .unwrap_or(0.0)
    };
    let scrape = daemon.scrape_until(Duration::from_secs(10), |s| {
        drops(s) >= before + 100.0 && device_drops(s) >= 100.0
    });
    assert!(
        drops(&scrape) >= before + 100.0,
        "NETFILTER_DROP went from {before} to {}, 100 more expected:\n{}\n{}",
        drops(&scrape),
        scrape.text,
        daemon.log_text()
    );
    // Attributed to the device the skbs arrived on (offsets from this
    // kernel's BTF).
    assert!(
        device_drops(&scrape) >= 100.0,
        "drops on {} not attributed to it:\n{}",
        veth.a,
        scrape.text
    );

    // The reason names are this kernel's: NETFILTER_DROP has another number
    // on every kernel line, and the name was right above. Their count is
    // the one bpftool reads from the same BTF.
    let dump = support::netns::run(
        "bpftool",
        &[
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ],
    );
    let vlen: usize = dump
        .lines()
        .find(|l| l.contains("ENUM 'skb_drop_reason'"))
        .and_then(|l| l.split("vlen=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("bpftool shows enum skb_drop_reason");
    let probe = support::netns::run(BIN, &["check", "--probe", "--config", SHIPPED_CONFIG]);
    let names = format!("{vlen} names from enum skb_drop_reason");
    assert!(
        probe.contains(&names),
        "check --probe must say {names:?}:\n{probe}"
    );
    support::matrix::record(
        "kernel drop reasons",
        &format!("raw tracepoint kfree_skb, {vlen} reason names from this kernel's BTF"),
    );
    support::matrix::record(
        "drops by device",
        "sk_buff/net_device offsets from this kernel's BTF",
    );
}

// ------------------------------------------------------------ without BTF

/// Wrapper (after `ip netns exec NS`, which mounts a fresh sysfs) that
/// hides the kernel's BTF from the command after it: a private mount
/// namespace with an empty tmpfs on /sys/kernel/btf.
const WITHOUT_BTF: [&str; 7] = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "mount -t tmpfs -o ro,mode=0555 nobtf /sys/kernel/btf && exec \"$0\" \"$@\"",
];

/// A kernel whose BTF the daemon cannot see: it starts, XDP counts exactly,
/// and every feature that needs BTF is off with one log line and
/// `check --probe` saying why; `telemetryd_source_up` shows what runs.
#[test]
fn without_btf_xdp_counts_and_each_btf_feature_is_off_with_one_line() {
    use support::frames::{ethernet, ipv4, udp, PacketSocket, ETH_P_IP, IPPROTO_UDP};
    require_root();
    let ns = NetNs::new();
    let sender = NetNs::new();
    let veth = support::VethPair::new(&ns, &sender);
    let config = TestConfig::new()
        .set("log.level", "info")
        .set("log.format", "json")
        .interfaces(&[&veth.a])
        .set("xdp.mode", "auto")
        .set("syscalls.enabled", true)
        .set("syscalls.attach", "auto")
        .set("syscalls.track", vec!["read"])
        .toml();
    let daemon = Daemon::spawn_with(
        &ns,
        &config,
        &Spawn {
            wrapper: &WITHOUT_BTF,
            ..Spawn::default()
        },
    );
    daemon.wait_ready(Duration::from_secs(60));
    // The precondition, seen from the daemon's own root.
    let btf = format!("/proc/{}/root/sys/kernel/btf/vmlinux", daemon.pid());
    assert!(
        !Path::new(&btf).exists(),
        "{btf} is visible: this test proves nothing"
    );

    const N: u64 = 50;
    let frame = ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_UDP, &[], 0, &udp(64)));
    let frame_len = frame.len() as f64;
    let b = veth.b.clone();
    sender.enter(move || {
        let socket = PacketSocket::open(&b).expect("packet socket");
        for _ in 0..N {
            socket.send(&frame).expect("send");
        }
    });
    let labels = [
        ("device", veth.a.as_str()),
        ("family", "ipv4"),
        ("protocol", "udp"),
    ];
    let scrape = daemon.scrape_until(Duration::from_secs(10), |s| {
        s.get("telemetryd_xdp_packets_total", &labels) == Some(N as f64)
    });
    assert_eq!(
        scrape.get("telemetryd_xdp_packets_total", &labels),
        Some(N as f64),
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.get("telemetryd_xdp_bytes_total", &labels),
        Some(N as f64 * frame_len)
    );

    // Each BTF feature: off, said once.
    let log = daemon.log_text();
    let once = |what: &str, needle: &str| {
        let n = log.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(
            n, 1,
            "{what}: {n} lines contain {needle:?}, want one:\n{log}"
        );
    };
    once("fentry", "\"mode\":\"fentry\",\"reason\":\"needs BTF\"");
    once(
        "drop reasons and device attribution",
        "no kernel BTF: drop reasons are not read",
    );
    let syscall_mode = if support::kernel::kprobes().is_ok() {
        "kprobe"
    } else {
        once(
            "BTF tracepoint sys_exit",
            "BTF tracepoint sys_exit unavailable",
        );
        "tracepoint"
    };
    assert!(
        log.contains(&format!(
            "\"mode\":\"{syscall_mode}\",\"syscalls\":\"read\""
        )),
        "syscalls attached with {syscall_mode} without BTF:\n{log}"
    );
    for (source, up) in [
        ("xdp", 1.0),
        ("syscalls", 1.0),
        ("kernel_drops", 1.0),
        ("tcp_retransmits", 1.0),
    ] {
        assert_eq!(
            scrape.get("telemetryd_source_up", &[("source", source)]),
            Some(up),
            "{source}:\n{}",
            scrape.text
        );
    }

    // check --probe says why, seeing what the daemon sees.
    let dir = TempDir::new();
    let path = dir.write("config.toml", &config);
    let probe = ns.exec(
        WITHOUT_BTF[0],
        &[
            &WITHOUT_BTF[1..],
            &[BIN, "check", "--probe", "--config", path.to_str().unwrap()],
        ]
        .concat(),
    );
    for line in [
        "btf                  no   /sys/kernel/btf/vmlinux",
        "fentry               no   needs BTF",
        "fentry      no   needs BTF",
        "drop reasons         no   reading /sys/kernel/btf/vmlinux",
        "device attribution   no   needs the kernel's BTF",
    ] {
        assert!(
            probe.contains(line),
            "check --probe must say {line:?}:\n{probe}"
        );
    }
    support::matrix::record(
        "without kernel BTF",
        &format!("XDP exact; syscalls via {syscall_mode}; drops counted as OTHER, not by device"),
    );
}

// --------------------------------------------------------------- signals

#[test]
fn sigterm_and_sigint_detach_and_exit_0_within_5_s() {
    require_root();
    let ns = NetNs::new();
    add_veth(&ns, "sva", "svb");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut daemon = Daemon::start(&ns, &config("mode = \"generic\"", "100ms", "info"));
        assert!(wait_until(Duration::from_secs(5), || devices_with_xdp(&ns)
            == ["sva", "svb"]));
        stop(&mut daemon, signal);
        assert!(
            devices_with_xdp(&ns).is_empty(),
            "signal {signal} left {:?}",
            xdp_programs(&ns)
        );
    }
}

/// A stop that arrives while the daemon is still loading is queued and
/// honoured once loading is done: an orderly stop, exit 0, nothing left
/// attached. Until the handlers were installed first, a SIGTERM before the
/// main loop's first turn killed the process with the default action.
#[test]
fn a_stop_signal_during_start_up_is_an_orderly_stop() {
    require_root();
    let ns = NetNs::new();
    add_veth(&ns, "sua", "sub");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut daemon = Daemon::spawn(&ns, &config("mode = \"generic\"", "100ms", "info"), &[]);
        // Logged before the eBPF object loads and attaches, which takes far
        // longer than the 10 ms this wait polls at.
        wait_log(&daemon, "http listening", Duration::from_secs(10));
        stop(&mut daemon, signal);
        let log = daemon.log_text();
        assert!(
            log.contains("stopping") && log.contains("stopped"),
            "signal {signal}: no orderly stop:\n{log}"
        );
        assert!(
            devices_with_xdp(&ns).is_empty(),
            "signal {signal} left {:?}",
            xdp_programs(&ns)
        );
    }
}

#[test]
fn sighup_applies_interfaces_and_log_level_and_keeps_the_config_when_invalid() {
    require_root();
    let ns = NetNs::new();
    add_veth(&ns, "hva", "hvb");
    add_veth(&ns, "hwa", "hwb");
    let daemon = Daemon::start(
        &ns,
        &config(
            "interfaces = [\"hva\"]\nmode = \"generic\"",
            "100ms",
            "info",
        ),
    );
    assert!(wait_until(Duration::from_secs(5), || devices_with_xdp(&ns) == ["hva"]));
    // At info, link notifications (debug) are not logged.
    ns.ip(&["link", "set", "hwb", "down"]);
    ns.ip(&["link", "set", "hwb", "up"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!daemon.log_text().contains("link notification"));

    // New interface list and level.
    daemon.rewrite_config(&config(
        "interfaces = [\"hwa\", \"hwb\"]\nmode = \"generic\"",
        "100ms",
        "debug",
    ));
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(2), || devices_with_xdp(&ns)
            == ["hwa", "hwb"]),
        "{:?}\n{}",
        xdp_programs(&ns),
        daemon.log_text()
    );
    wait_log(&daemon, "configuration reloaded", Duration::from_secs(2));
    ns.ip(&["link", "set", "hva", "down"]);
    ns.ip(&["link", "set", "hva", "up"]);
    wait_log(&daemon, "link notification", Duration::from_secs(2));
    // hva is no longer watched: no XDP series and no attachment for it. (The
    // kernel's own drop counters may still name it: it exists and can drop.)
    let watched = |s: &Scrape, device: &str| {
        let label = format!("device=\"{device}\"");
        s.text.lines().any(|l| {
            (l.starts_with("telemetryd_xdp_") || l.starts_with("telemetryd_ebpf_program_attached"))
                && l.contains(&label)
        })
    };
    let scrape = daemon.scrape_until(Duration::from_secs(2), |s| {
        !watched(s, "hva") && watched(s, "hwb")
    });
    assert!(!watched(&scrape, "hva"), "{}", scrape.text);
    assert!(watched(&scrape, "hwb"), "{}", scrape.text);

    // An invalid file: the running configuration stays, the reason is logged.
    daemon.rewrite_config("[xdp]\ninterfaces = []\nmode = \"turbo\"\n");
    daemon.signal(libc::SIGHUP);
    wait_log(&daemon, "keeping the running one", Duration::from_secs(2));
    assert!(
        daemon.log_text().contains("xdp.mode"),
        "the reason names the key"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(devices_with_xdp(&ns), ["hwa", "hwb"]);
    assert_eq!(daemon.get("/readyz").unwrap().0, 200);
}

// --------------------------------------------------------------- hotplug

#[test]
fn hotplug_50_times_leaves_one_program_per_interface_and_no_fd_leak() {
    require_root();
    let ns = NetNs::new();
    add_veth(&ns, "bva", "bvb");
    // A long poll interval: attaching within it shows the netlink path works
    // (the poll alone would take up to a whole interval).
    let poll = Duration::from_secs(1);
    let daemon = Daemon::start(&ns, &config("mode = \"auto\"", "1s", "info"));
    assert!(wait_until(poll, || devices_with_xdp(&ns) == ["bva", "bvb"]));
    let fds_before = daemon.fd_count();

    let mut slowest = Duration::ZERO;
    let mut attached_within = |want: &[&str], what: &str, i: usize| {
        let started = Instant::now();
        let ok = wait_until(poll, || devices_with_xdp(&ns) == want);
        let took = started.elapsed();
        assert!(
            ok,
            "round {i}, {what}: {:?} instead of {want:?} after {took:?}\n{}",
            xdp_programs(&ns),
            daemon.log_text()
        );
        slowest = slowest.max(took);
    };
    for i in 0..50 {
        add_veth(&ns, "hp0", "hp1");
        attached_within(&["bva", "bvb", "hp0", "hp1"], "created", i);
        // Flap.
        ns.ip(&["link", "set", "hp0", "down"]);
        attached_within(&["bva", "bvb", "hp1"], "down", i);
        ns.ip(&["link", "set", "hp0", "up"]);
        attached_within(&["bva", "bvb", "hp0", "hp1"], "up again", i);
        // Rename (a device must be down to be renamed).
        ns.ip(&["link", "set", "hp0", "down"]);
        ns.ip(&["link", "set", "hp0", "name", "hpr"]);
        ns.ip(&["link", "set", "hpr", "up"]);
        attached_within(&["bva", "bvb", "hp1", "hpr"], "renamed", i);
        // Every few rounds, flap faster than anyone could poll.
        if i % 5 == 0 {
            for _ in 0..5 {
                ns.ip(&["link", "set", "hpr", "down"]);
                ns.ip(&["link", "set", "hpr", "up"]);
            }
            attached_within(&["bva", "bvb", "hp1", "hpr"], "fast flaps", i);
        }
        // Delete (takes the peer with it).
        ns.ip(&["link", "del", "hpr"]);
        attached_within(&["bva", "bvb"], "deleted", i);
    }
    eprintln!("slowest attach/detach after a link change: {slowest:?} (poll interval {poll:?})");

    // Exactly one XDP program per interface, all of them ours (same id).
    let programs = xdp_programs(&ns);
    assert_eq!(programs.len(), 2, "{programs:?}");
    assert_eq!(programs[0].2, programs[1].2, "{programs:?}");

    // Removed interfaces are gone from /metrics.
    let scrape = daemon.scrape_until(Duration::from_secs(3), |s| {
        !s.text.contains("\"hp0\"") && !s.text.contains("\"hp1\"") && !s.text.contains("\"hpr\"")
    });
    for gone in ["hp0", "hp1", "hpr"] {
        assert!(
            !scrape.text.contains(&format!("\"{gone}\"")),
            "{gone} still in /metrics:\n{}",
            scrape.text
        );
    }
    assert!(scrape.text.contains("device=\"bva\""));

    // No descriptor leaked: every attachment's bpf_link fd was closed. The
    // count is compared once the scrape's connection is gone, so it must be
    // exactly the same.
    let mut fds_after = 0;
    let settled = wait_until(Duration::from_secs(3), || {
        fds_after = daemon.fd_count();
        fds_after == fds_before
    });
    assert!(
        settled,
        "fd count {fds_before} before, {fds_after} after 50 hotplug rounds"
    );
    eprintln!("fds: {fds_before} before, {fds_after} after");
}

// ------------------------------------------------------------- xdp.replace

/// Attaches a separate instance of the XDP program to `device` through
/// netlink, generic mode, the way `ip link set dev X xdpgeneric` would: a
/// program telemetryd did not attach. Returns its id.
fn attach_foreign_program(ns: &NetNs, device: &str) -> u64 {
    let device_name = device.to_owned();
    ns.enter(move || {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut object = telemetryd::sources::load_default_object().expect("loading the object");
        let program: &mut aya::programs::Xdp = object
            .ebpf
            .program_mut(telemetryd_common::xdp::PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap();
        program.load().expect("loading the program");
        let fd = program.fd().unwrap().as_fd().as_raw_fd();
        // Not /sys/class/net: sysfs shows the namespace it was mounted in.
        let name = std::ffi::CString::new(device_name).unwrap();
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no such interface in the namespace");
        telemetryd::kernel::netlink::RouteSocket::open(0)
            .unwrap()
            .set_xdp(ifindex, fd, telemetryd::kernel::netlink::XDP_FLAGS_SKB_MODE)
            .expect("attaching the foreign program");
    });
    let programs = xdp_programs(ns);
    let (_, mode, id) = programs
        .iter()
        .find(|(d, _, _)| d == device)
        .expect("foreign program attached")
        .clone();
    assert_eq!(mode, "generic");
    id
}

#[test]
fn a_foreign_xdp_program_is_left_alone_unless_replace_is_set() {
    require_root();
    let ns = NetNs::new();
    add_veth(&ns, "rva", "rvb");
    let foreign = attach_foreign_program(&ns, "rva");

    let xdp = |replace: bool| {
        config(
            &format!("interfaces = [\"rva\"]\nmode = \"auto\"\nreplace = {replace}"),
            "100ms",
            "info",
        )
    };
    // Its one interface taken, XDP is attached nowhere: not ready, and
    // /readyz says why.
    let mut daemon = Daemon::spawn(&ns, &xdp(false), &[]);
    wait_log(&daemon, "did not attach", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = daemon.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = readiness["sources"]["xdp"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("attached to no interface") && reason.contains("did not attach"),
        "{body}"
    );
    let programs: BTreeMap<String, u64> = xdp_programs(&ns)
        .into_iter()
        .map(|(d, _, id)| (d, id))
        .collect();
    assert_eq!(programs.get("rva"), Some(&foreign), "left alone");
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.sum("telemetryd_ebpf_program_attached", &[("device", "rva")]),
        0.0,
        "reported unavailable, not attached:\n{}",
        scrape.text
    );

    // replace = true (through SIGHUP): removed loudly, ours attached.
    daemon.rewrite_config(&xdp(true));
    daemon.signal(libc::SIGHUP);
    wait_log(&daemon, "REMOVED an XDP program", Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(2), || {
            let p = xdp_programs(&ns);
            p.len() == 1 && p[0].0 == "rva" && p[0].2 != foreign
        }),
        "{:?}\n{}",
        xdp_programs(&ns),
        daemon.log_text()
    );
    let scrape = daemon.scrape_until(Duration::from_secs(2), |s| {
        s.sum("telemetryd_ebpf_program_attached", &[("device", "rva")]) == 1.0
    });
    daemon.wait_ready(Duration::from_secs(2));
    assert_eq!(
        scrape.sum("telemetryd_ebpf_program_attached", &[("device", "rva")]),
        1.0
    );

    // A program held through someone else's bpf_link (here: the first
    // daemon's) cannot be removed even with replace = true; a second daemon
    // says so and leaves it, so there is never a second program.
    let ours = xdp_programs(&ns);
    let second = Daemon::spawn(&ns, &xdp(true), &["--listen", "127.0.0.1:9470"]);
    wait_log(&second, "bpf_link", Duration::from_secs(10));
    for line in second.log_text().lines().filter(|l| l.contains("bpf_link")) {
        eprintln!("second daemon: {line}");
    }
    assert_eq!(xdp_programs(&ns), ours, "the first daemon's program stays");
    drop(second);

    stop(&mut daemon, libc::SIGTERM);
    assert!(devices_with_xdp(&ns).is_empty(), "nothing left behind");
}

// --------------------------------------------------------------- systemd

/// A test that cannot run says so; under CI (`CI=true`) that is a failure:
/// what it needs is a package, not a kernel feature.
fn cannot_run(why: &str) {
    assert!(!support::kernel::ci(), "cannot run under CI: {why}");
    eprintln!("NOT RUN: {why}");
}

fn systemd_analyze() -> Option<&'static str> {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some("systemd-analyze")
}

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_3() {
    let Some(analyze) = systemd_analyze() else {
        cannot_run("systemd-analyze cannot run on this machine (`cargo xtask setup` installs the systemd package)");
        return;
    };
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = TempDir::new();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/telemetryd run"));
    let path = dir.write(
        "telemetryd.service",
        &unit.replace("/usr/local/bin/telemetryd", BIN),
    );
    let verify = Command::new(analyze)
        .args(["verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && text.trim().is_empty(),
        "verify: {text}"
    );

    let security = Command::new(analyze)
        .args(["security", "--offline=yes", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    eprintln!("{line}");
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score: {line}"));
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");
}

/// A denied syscall group that happens to contain `bpf` (in @privileged) or
/// `perf_event_open` (in @debug) would stop the daemon under systemd, and
/// neither verify nor the score notices: check the groups themselves.
#[test]
fn the_units_syscall_filter_keeps_what_the_daemon_needs() {
    let Some(analyze) = systemd_analyze() else {
        cannot_run("systemd-analyze cannot run on this machine (`cargo xtask setup` installs the systemd package)");
        return;
    };
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let filters: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    let needed = ["bpf", "perf_event_open"];
    let allow = filters
        .iter()
        .find(|f| !f.starts_with('~'))
        .expect("an allow list");
    for syscall in needed {
        assert!(
            allow.split_whitespace().any(|s| s == syscall),
            "{syscall} allowed"
        );
    }
    for deny in filters.iter().filter_map(|f| f.strip_prefix('~')) {
        for group in deny.split_whitespace() {
            let listed = Command::new(analyze)
                .args(["syscall-filter", group])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&listed.stdout);
            assert!(
                listed.status.success() && !text.trim().is_empty(),
                "{group}"
            );
            for syscall in needed {
                assert!(
                    !text.split_whitespace().any(|s| s == syscall),
                    "denying {group} would deny {syscall}"
                );
            }
        }
    }
}

#[test]
fn the_unit_file_is_what_the_tests_assume() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(Path::new(UNIT).exists());
}
