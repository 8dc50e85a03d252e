//! The shipped unit under a real systemd as PID 1: the systemd guest of
//! `cargo xtask vm-test`, where telemetryd was installed as an operator
//! installs it before these tests run. Unit, binary and configuration are
//! found through systemd (`systemctl show`), wherever the installer put them.
//!
//! `systemctl start` returns once READY=1 came, with everything attached;
//! the service runs as its DynamicUser with exactly the unit's capabilities;
//! `systemctl reload` applies a changed interface list; a main loop stalled
//! with SIGSTOP is killed by the watchdog and restarted, and the old
//! instance leaves nothing attached; `systemctl stop` exits 0 and leaves
//! nothing attached; the journal holds the daemon's JSON events.
//!
//! Needs systemd as PID 1, so `#[ignore]`d elsewhere (the guest runs them
//! with `--ignored`). Interfaces are veth pairs in the guest's own root
//! namespace (the service's), removed on drop.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::metrics::{http_get, Scrape};
use support::netns::{run, unique_name};

const UNIT: &str = "telemetryd.service";
const NEEDS_SYSTEMD: &str =
    "needs systemd as PID 1: run in the systemd guest of `cargo xtask vm-test`";

fn require_systemd_pid1() {
    support::require_root();
    let comm = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert_eq!(comm.trim(), "systemd", "PID 1 is {comm:?}: {NEEDS_SYSTEMD}");
}

/// `systemctl ARGS`: exit code and output.
fn systemctl(args: &[&str]) -> (i32, String) {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("running systemctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn show(property: &str) -> String {
    let (code, text) = systemctl(&["show", "--value", "-p", property, UNIT]);
    assert_eq!(code, 0, "systemctl show {property}: {text}");
    text.trim().to_owned()
}

/// A time span as `systemctl show` prints it: `30s`, `1min 30s`, `500ms`.
fn systemd_duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits
            .parse()
            .unwrap_or_else(|_| panic!("unreadable duration {text:?}"));
        total += match &part[digits.len()..] {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "min" => Duration::from_secs(60 * n),
            "h" => Duration::from_secs(3600 * n),
            unit => panic!("unknown unit {unit:?} in {text:?}"),
        };
    }
    total
}

fn main_pid() -> u32 {
    show("MainPID").parse().expect("MainPID")
}

/// The installed binary and configuration file, from the unit's ExecStart
/// (`{ path=/usr/local/bin/telemetryd ; argv[]=... --config FILE ; ... }`).
fn exec_start() -> (String, String) {
    let exec = show("ExecStart");
    let argv = exec
        .split("argv[]=")
        .nth(1)
        .and_then(|rest| rest.split(" ;").next())
        .unwrap_or_else(|| panic!("unreadable ExecStart: {exec}"));
    let words: Vec<&str> = argv.split_whitespace().collect();
    let config = words
        .iter()
        .position(|w| *w == "--config")
        .and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| panic!("ExecStart has no --config: {exec}"));
    (words[0].to_owned(), (*config).to_owned())
}

/// The installed unit's capability set, as it names them.
fn unit_capabilities() -> Vec<String> {
    let (code, unit) = systemctl(&["cat", UNIT]);
    assert_eq!(code, 0, "{unit}");
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The unit's capabilities as a /proc/PID/status mask.
fn unit_capability_mask() -> String {
    let mut mask = 0u64;
    for cap in unit_capabilities() {
        let bit = match cap.as_str() {
            "CAP_NET_ADMIN" => 12,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("capability {other} is new to this test"),
        };
        mask |= 1 << bit;
    }
    format!("{mask:016x}")
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

fn scrape() -> Scrape {
    let addr: SocketAddr = support::process::LISTEN.parse().unwrap();
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    Scrape::parse(&body)
}

fn bpftool(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&run("bpftool", &full)).expect("bpftool JSON")
}

/// `(device, program id)` of every XDP attachment in this namespace.
fn xdp_programs() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for section in bpftool(&["net", "show"]).as_array().into_iter().flatten() {
        for entry in section["xdp"].as_array().into_iter().flatten() {
            out.push((
                entry["devname"].as_str().unwrap_or_default().to_owned(),
                entry["id"].as_u64().unwrap_or_default(),
            ));
        }
    }
    out.sort();
    out
}

/// Program ids of every bpf_link (tracing, raw tracepoint, perf event).
fn linked_programs() -> BTreeSet<u64> {
    bpftool(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["prog_id"].as_u64())
        .collect()
}

fn loaded_programs() -> BTreeSet<u64> {
    bpftool(&["prog", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64())
        .collect()
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's own journal lines (not systemd's about the unit).
fn daemon_journal() -> String {
    run(
        "journalctl",
        &["--no-pager", "-o", "cat", &format!("_SYSTEMD_UNIT={UNIT}")],
    )
}

/// A veth pair in this (the root) namespace, deleted on drop.
struct RootVeth {
    a: String,
    b: String,
}

impl RootVeth {
    fn new() -> Self {
        let (a, b) = (unique_name("a"), unique_name("b"));
        run(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        );
        for dev in [&a, &b] {
            run("ip", &["link", "set", dev, "up"]);
        }
        Self { a, b }
    }
}

impl Drop for RootVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.a]).status();
    }
}

/// The installed configuration file, put back as it was on drop; the
/// service is stopped on drop too.
struct ConfigFile {
    path: String,
    original: Option<String>,
}

impl ConfigFile {
    fn take(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            original: std::fs::read_to_string(path).ok(),
        }
    }

    fn write(&self, interfaces: &[&str]) {
        let text = support::TestConfig::new()
            .set("daemon.poll_interval", "200ms")
            .set("log.level", "info")
            .set("log.format", "json")
            .interfaces(interfaces)
            .set("xdp.mode", "auto")
            .set("syscalls.enabled", true)
            .set("syscalls.attach", "auto")
            .set("syscalls.track", vec!["read", "write"])
            .toml();
        std::fs::write(&self.path, text).expect("writing the installed configuration");
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = systemctl(&["stop", UNIT]);
        if let Some(text) = &self.original {
            let _ = std::fs::write(&self.path, text);
        }
    }
}

#[test]
#[ignore = "needs systemd as PID 1: run in the systemd guest of `cargo xtask vm-test`"]
fn the_unit_under_systemd_from_start_to_stop() {
    require_systemd_pid1();
    let (binary, config_path) = exec_start();
    assert!(std::path::Path::new(&binary).exists(), "{binary} installed");
    let first = RootVeth::new();
    let second = RootVeth::new();
    let config = ConfigFile::take(&config_path);
    config.write(&[&first.a]);
    let _ = systemctl(&["reset-failed", UNIT]);

    // start: returns once READY=1 came, and by then the work is done.
    let started = Instant::now();
    let (code, text) = systemctl(&["start", UNIT]);
    let took = started.elapsed();
    assert_eq!(code, 0, "systemctl start: {text}\n{}", daemon_journal());
    let readyz = http_get(support::process::LISTEN.parse().unwrap(), "/readyz");
    let xdp_at_ready = xdp_programs();
    assert_eq!(show("Type"), "notify");
    assert_eq!(
        (show("ActiveState"), show("SubState")),
        ("active".to_owned(), "running".to_owned())
    );
    assert_eq!(
        readyz.map(|r| r.0).ok(),
        Some(200),
        "/readyz when start returned"
    );
    assert_eq!(
        xdp_at_ready
            .iter()
            .map(|(d, _)| d.as_str())
            .collect::<Vec<_>>(),
        [first.a.as_str()],
        "XDP attached when start returned"
    );
    // systemd saw the service active only after the daemon logged its attach.
    let active_at: u64 = show("ActiveEnterTimestampMonotonic").parse().unwrap();
    let journal = run(
        "journalctl",
        &["--no-pager", "-o", "json", &format!("_SYSTEMD_UNIT={UNIT}")],
    );
    let attached_at = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("syscall latency tracer attached"))
        })
        .filter_map(|e| e["__MONOTONIC_TIMESTAMP"].as_str()?.parse::<u64>().ok())
        .next()
        .expect("the journal has the tracer's attach event");
    assert!(
        attached_at <= active_at,
        "active at {active_at} us, before the attach was logged at {attached_at} us"
    );
    println!("systemctl start returned after {took:?}, active (running)");

    // The DynamicUser, with exactly the unit's capabilities, nothing more.
    let pid = main_pid();
    assert_eq!(show("DynamicUser"), "yes");
    let uids: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(
        uids.iter().all(|u| *u == uids[0]) && (61184..=65519).contains(&uids[0]),
        "a dynamic user (61184-65519) for real, effective, saved and fs uid: {uids:?}"
    );
    let mask = unit_capability_mask();
    for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, field), mask, "{field}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    // Everything attached: XDP, the syscall tracer (fentry where the
    // kernel has it), the drop tracers.
    let want_mode = if support::kernel::fentry().is_ok() {
        "fentry"
    } else if support::kernel::kprobes().is_ok() {
        "kprobe"
    } else {
        "tracepoint"
    };
    let metrics = scrape();
    for (program, attach, device) in [
        ("xdp_packet_counter", "xdp-native", first.a.as_str()),
        ("syscall_latency", want_mode, ""),
        ("kfree_skb_drops", "tracepoint", ""),
        ("tcp_retransmits", "tracepoint", ""),
    ] {
        assert_eq!(
            metrics.get(
                "telemetryd_ebpf_program_attached",
                &[("attach", attach), ("device", device), ("program", program)]
            ),
            Some(1.0),
            "{program} attached with {attach}:\n{}",
            metrics.text
        );
    }
    for source in ["xdp", "syscalls", "kernel_drops", "tcp_retransmits"] {
        assert_eq!(
            metrics.get("telemetryd_source_up", &[("source", source)]),
            Some(1.0),
            "{source}"
        );
    }
    let systemd_version = run("systemctl", &["--version"]);
    support::matrix::record(
        &format!(
            "systemd unit, {} as PID 1",
            systemd_version.lines().next().unwrap_or("systemd").trim()
        ),
        &format!(
            "installed as an operator does; DynamicUser with exactly {}; XDP native, \
             syscalls {want_mode}, drop tracers raw tracepoints; reload, watchdog restart, stop",
            unit_capabilities().join(" ")
        ),
    );

    // reload: a changed interface list, applied by the same process.
    config.write(&[&second.a, &second.b]);
    let (code, text) = systemctl(&["reload", UNIT]);
    assert_eq!(code, 0, "systemctl reload: {text}");
    let mut want = vec![second.a.clone(), second.b.clone()];
    want.sort();
    assert!(
        wait_until(Duration::from_secs(30), || xdp_programs()
            .iter()
            .map(|(d, _)| d.clone())
            .collect::<Vec<_>>()
            == want),
        "after reload: {:?}, want {want:?}\n{}",
        xdp_programs(),
        daemon_journal()
    );
    assert_eq!(main_pid(), pid, "reloaded in place");
    assert!(daemon_journal().contains("configuration reloaded"));

    // A stalled main loop: the watchdog kills it, Restart=on-failure
    // starts a new one, and nothing of the old one stays attached.
    let old_programs: BTreeSet<u64> = xdp_programs()
        .into_iter()
        .map(|(_, id)| id)
        .chain(linked_programs())
        .collect();
    assert!(!old_programs.is_empty());
    let watchdog = systemd_duration(&show("WatchdogUSec"));
    assert!(watchdog > Duration::ZERO, "the unit has a watchdog");
    // SAFETY: kill on the service's main pid, read from systemd just now.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let stalled = Instant::now();
    let limit = watchdog + Duration::from_secs(90);
    let restarted = wait_until(limit, || {
        let now = main_pid();
        now != 0 && now != pid && show("SubState") == "running"
    });
    assert!(
        restarted,
        "not restarted within {limit:?} of SIGSTOP: {} {}\n{}",
        show("ActiveState"),
        show("SubState"),
        run("journalctl", &["--no-pager", "-u", UNIT, "-n", "30"])
    );
    let new_pid = main_pid();
    println!(
        "SIGSTOP: watchdog kill and restart after {:?} (WatchdogSec {watchdog:?})",
        stalled.elapsed()
    );
    assert_eq!(show("NRestarts"), "1");
    let unit_log = run("journalctl", &["--no-pager", "-u", UNIT, "-o", "cat"]);
    assert!(unit_log.contains("Watchdog timeout"), "{unit_log}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        wait_until(Duration::from_secs(10), || xdp_programs().len() == 2),
        "{:?}",
        xdp_programs()
    );
    let loaded = loaded_programs();
    let left: Vec<&u64> = old_programs.intersection(&loaded).collect();
    assert!(
        left.is_empty(),
        "programs of the killed instance still loaded: {left:?}"
    );
    let new_programs: BTreeSet<u64> = xdp_programs()
        .into_iter()
        .map(|(_, id)| id)
        .chain(linked_programs())
        .collect();
    assert!(new_programs.is_disjoint(&old_programs));

    // stop: exit 0, nothing left attached.
    let (code, text) = systemctl(&["stop", UNIT]);
    assert_eq!(code, 0, "systemctl stop: {text}");
    assert_eq!(show("ActiveState"), "inactive");
    assert_eq!(show("Result"), "success");
    assert_eq!(show("ExecMainStatus"), "0", "exit status of {new_pid}");
    assert!(xdp_programs().is_empty(), "{:?}", xdp_programs());
    assert!(
        wait_until(Duration::from_secs(10), || loaded_programs()
            .is_disjoint(&new_programs)),
        "programs left loaded after stop: {:?}",
        loaded_programs()
            .intersection(&new_programs)
            .collect::<Vec<_>>()
    );

    // The journal: the daemon's structured events, one JSON object a line.
    let journal = daemon_journal();
    let events: Vec<Value> = journal
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for field in ["timestamp", "level", "target", "message"] {
        assert!(
            events.iter().all(|e| e.get(field).is_some()),
            "every event has {field}"
        );
    }
    for (message, field, value) in [
        ("syscall latency tracer attached", "mode", want_mode),
        ("configuration reloaded", "", ""),
        ("stopped", "", ""),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["message"] == message && (field.is_empty() || e[field] == value)),
            "no {message:?} event with {field} = {value:?} in the journal:\n{journal}"
        );
    }
    println!("{} JSON events in the journal", events.len());
}

/// `systemd-analyze` for real: the installed unit verifies, and the running
/// manager rates its exposure at most 3.0.
#[test]
#[ignore = "needs systemd as PID 1: run in the systemd guest of `cargo xtask vm-test`"]
fn the_installed_unit_verifies_and_the_manager_rates_it_at_most_3() {
    require_systemd_pid1();
    let path = show("FragmentPath");
    let out = Command::new("systemd-analyze")
        .args(["verify", &path])
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "verify {path}: {text}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--no-pager", UNIT])
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score: {line}"));
    println!("{path}: {line}");
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");
}
