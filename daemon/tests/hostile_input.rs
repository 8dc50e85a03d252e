//! Hostile input, on the real binary as root (issue 16): clients that open
//! connections and never finish a request, configuration "files" that are
//! devices, FIFOs or too large, and a configuration file rewritten in place
//! while SIGHUPs arrive.
//!
//! The daemon listens inside a namespace of its own; every client runs
//! there too. Namespaces, files and processes are removed by Drop guards.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::hostile::{percentiles, pipelined, timed_scrape, Behaviour, Crowd};
use support::netns::{in_namespace, unique_name};
use support::process::BIN;
use support::{require_root, Daemon, NetNs, TestConfig};

/// A cap of 64 (the default is 512), so the crowd is well over it.
fn capped_at_64() -> String {
    TestConfig::new()
        .set("daemon.poll_interval", "1s")
        // HTTP only: a namespace without interfaces leaves XDP attached
        // nowhere, which is not ready.
        .set("xdp.enabled", false)
        .set("http.max_connections", 64)
        .toml()
}

fn counter(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = daemon.scrape();
    scrape
        .get(name, labels)
        .unwrap_or_else(|| panic!("{name}{labels:?} missing:\n{}", scrape.text))
}

// ------------------------------------------------------------------ HTTP

/// The finding: 300 sockets that send half a request line and
/// reopen as soon as they are closed starved every scrape (9 of 11 timed
/// out at 10 s, at the then default cap of 64). Now, at that cap, a scrape a
/// second for 30 s is answered every time.
#[test]
fn reopening_partial_requests_do_not_starve_scrapes() {
    require_root();
    let ns = NetNs::new();
    let daemon = Daemon::start(&ns, &capped_at_64());
    let served = |d: &Daemon| {
        counter(
            d,
            "telemetryd_http_requests_total",
            &[("handler", "/metrics"), ("code", "200")],
        )
    };
    // The families exist from the first scrape, before any abuse.
    let first = daemon.scrape();
    for reason in [
        "completed",
        "displaced",
        "header_timeout",
        "idle_timeout",
        "error",
    ] {
        assert!(
            first
                .get(
                    "telemetryd_http_connections_closed_total",
                    &[("reason", reason)]
                )
                .is_some(),
            "{reason}:\n{}",
            first.text
        );
    }
    assert!(first.get("telemetryd_http_connections_open", &[]).is_some());
    let before = served(&daemon);

    let crowd = Crowd::start(&ns.name, daemon.addr, 300, Behaviour::PartialRequestLine);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::new();
    for _ in 0..30 {
        let tick = Instant::now();
        let addr = daemon.addr;
        let (status, took) = in_namespace(&ns.name, move || timed_scrape(addr));
        assert_eq!(
            status,
            200,
            "scrape {} under 300 reopening partial requests: no answer after {took:?}",
            latencies.len()
        );
        assert!(
            took < Duration::from_secs(5),
            "scrape {} took {took:?}",
            latencies.len()
        );
        latencies.push(took);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let reopened = crowd.get(|c| &c.closed_by_server);
    drop(crowd);
    let (p50, p99, max) = percentiles(&latencies);
    eprintln!(
        "{} scrapes under 300 reopening partial requests: p50 {p50:?} p99 {p99:?} max {max:?}; \
         the server closed {reopened} hostile connections",
        latencies.len()
    );

    // Counted: every probe scrape, and the hostile connections displaced.
    let after = daemon.scrape();
    let answered = after
        .get(
            "telemetryd_http_requests_total",
            &[("handler", "/metrics"), ("code", "200")],
        )
        .unwrap();
    // The probes, plus the scrape that read `before` (a scrape is counted
    // once answered, so not in its own body).
    assert_eq!(
        answered - before,
        latencies.len() as f64 + 1.0,
        "{}",
        after.text
    );
    let displaced = after
        .get(
            "telemetryd_http_connections_closed_total",
            &[("reason", "displaced")],
        )
        .unwrap();
    assert!(displaced >= 300.0, "displaced {displaced}:\n{}", after.text);
    assert!(
        reopened as f64 >= displaced - 300.0,
        "{reopened} vs {displaced}"
    );
    // Rate-limited: at most one line per started 10 s of abuse.
    let log = daemon.log_text();
    let warnings = log.matches("HTTP connection cap reached").count();
    let abused = started.elapsed().as_secs() as usize;
    assert!(
        (1..=abused / 10 + 1).contains(&warnings),
        "{warnings} cap warnings in {abused} s:\n{log}"
    );
    // Once the crowd is gone, only the daemon's idle side remains.
    let open = daemon.scrape_until(Duration::from_secs(10), |s| {
        s.get("telemetryd_http_connections_open", &[]) == Some(1.0)
    });
    assert_eq!(
        open.get("telemetryd_http_connections_open", &[]),
        Some(1.0),
        "only the scrape itself is open:\n{}",
        open.text
    );
}

/// What held before the rewrite and must keep holding: 1,000 pipelined
/// requests on one connection all answered, and 200 concurrent scrapers
/// for 10 s without an error, with the default `[http]` settings.
#[test]
fn pipelined_requests_and_concurrent_scrapers_are_all_answered() {
    require_root();
    let ns = NetNs::new();
    let daemon = Daemon::start(
        &ns,
        &TestConfig::new()
            .set("daemon.poll_interval", "1s")
            .set("xdp.enabled", false)
            .toml(),
    );
    let addr = daemon.addr;
    let answered = in_namespace(&ns.name, move || pipelined(addr, 1000));
    assert_eq!(answered, 1000);
    assert_eq!(
        counter(
            &daemon,
            "telemetryd_http_requests_total",
            &[("handler", "/healthz"), ("code", "200")]
        ),
        1000.0
    );

    let crowd = Crowd::start(&ns.name, daemon.addr, 200, Behaviour::Scraper);
    std::thread::sleep(Duration::from_secs(10));
    let (answers, errors) = (crowd.get(|c| &c.answers), crowd.get(|c| &c.errors));
    drop(crowd);
    eprintln!("200 concurrent scrapers for 10 s: {answers} answers, {errors} errors");
    let closed: Vec<String> = daemon
        .scrape()
        .text
        .lines()
        .filter(|l| l.starts_with("telemetryd_http_connections_closed_total{"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors, 0, "{answers} answers; {closed:#?}");
    assert!(answers >= 200, "{answers} answers");
}

// ------------------------------------------------------- configuration

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("h"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `telemetryd SUBCOMMAND --config PATH`, killed after 10 s:
/// (exit code, output, how long it took).
fn telemetryd(subcommand: &str, path: &Path) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args([subcommand, "--config"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning telemetryd");
    // Drained while it runs, so a long message cannot fill a pipe and stall
    // it; the deadline is generous for a debug build on a loaded machine
    // (what the test measures is the exit code, not the time).
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = started + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().unwrap();
    (
        status.code(),
        out.join().unwrap() + &err.join().unwrap(),
        started.elapsed(),
    )
}

/// `/dev/zero` grew `check` to 4.4 GB, `/dev/urandom` ran until killed, a
/// FIFO blocked, a 50 MB file was accepted: each is now refused at once with
/// exit 64, by `check` and by `run`.
#[test]
fn files_that_are_not_regular_or_too_large_exit_64_at_once() {
    require_root();
    let dir = TempDir::new();
    let fifo = dir.0.join("fifo.toml");
    support::netns::run("mkfifo", &[fifo.to_str().unwrap()]);
    let large = dir.0.join("large.toml");
    std::fs::write(&large, "#".repeat(50 << 20)).unwrap();
    let cases: [(&Path, &str); 5] = [
        (Path::new("/dev/zero"), "is a character device"),
        (Path::new("/dev/urandom"), "is a character device"),
        (&fifo, "is a FIFO"),
        (&dir.0, "is a directory"),
        (&large, "a configuration file may be at most 1048576 bytes"),
    ];
    for (path, says) in cases {
        for subcommand in ["check", "run"] {
            let (code, text, took) = telemetryd(subcommand, path);
            assert_eq!(code, Some(64), "{subcommand} {}: {text}", path.display());
            assert!(
                text.contains(says),
                "{subcommand} {}: {text}",
                path.display()
            );
            assert!(
                text.contains(&path.display().to_string()),
                "names the file: {text}"
            );
            assert!(
                took < Duration::from_secs(2),
                "{subcommand} {}: {took:?}",
                path.display()
            );
        }
    }
}

/// `check` said valid and `run` refused with exit 1: now `check` runs the
/// same checks, and both exit 64 naming the key with file:line.
#[test]
fn check_refuses_what_run_would_with_the_key_and_line() {
    require_root();
    let dir = TempDir::new();
    let pids: Vec<String> = (1..=100_000).map(|p| p.to_string()).collect();
    let cases = [
        (
            format!("[syscalls]\nenabled = true\npids = [{}]\n", pids.join(", ")),
            "syscalls.pids",
            ":3:",
            "the kernel side keeps at most 4096",
        ),
        (
            "[syscalls]\nenabled = true\ncgroup = \"/sys/fs/cgroup/tdt-no-such-cgroup\"\n".into(),
            "syscalls.cgroup",
            ":3:10:",
            "No such file or directory",
        ),
        (
            "[syscalls]\nenabled = true\ncgroup = \"/tmp\"\n".into(),
            "syscalls.cgroup",
            ":3:10:",
            "not on the cgroup v2 file system",
        ),
        (
            "[xdp]\ninterfaces = [\"eth0\", \"a/b\"]\n".into(),
            "xdp.interfaces",
            ":2:23:",
            "\"a/b\"",
        ),
        (
            "[http]\nlisten = \"0.0.0.0:99999\"\n".into(),
            "http.listen",
            ":2:10:",
            "0.0.0.0:99999",
        ),
    ];
    for (i, (body, key, at, says)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("bad{i}.toml"));
        std::fs::write(&path, body).unwrap();
        let location = format!("{}{at}", path.display());
        for subcommand in ["check", "run"] {
            let (code, text, _) = telemetryd(subcommand, &path);
            assert_eq!(code, Some(64), "{subcommand} {key}: {text}");
            assert!(
                text.contains(&location) && text.contains(key) && text.contains(says),
                "{subcommand}: {text:?} must name {location} {key} and say {says:?}"
            );
        }
    }
}

/// The one configuration error only `run` can find: an address this host
/// cannot listen on. It exits 64 too, naming the key at its file:line.
#[test]
fn an_address_the_host_cannot_listen_on_exits_64_naming_the_key() {
    require_root();
    let ns = NetNs::new();
    let config = TestConfig::new().set("http.listen", "192.0.2.1:9469");
    let mut daemon = Daemon::spawn(&ns, &config.toml(), &[]);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("telemetryd kept running without its listener");
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(64), "{log}");
    let line = config
        .toml()
        .lines()
        .position(|l| l.starts_with("listen = "))
        .unwrap()
        + 1;
    let location = format!(
        "{}:{line}:10: http.listen: ",
        daemon.config_path().display()
    );
    assert!(
        log.contains(&location) && log.contains("cannot listen on 192.0.2.1:9469"),
        "{location:?} in:\n{log}"
    );
}

// ---------------------------------------------------------------- reload

/// FNV-1a 64 of `text`, as the daemon logs it for an applied file.
fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The digests of the configurations the daemon says it applied, in order.
fn applied_digests(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("\"outcome\":\"applied\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON log line");
            v["digest"].as_str().expect("digest").to_owned()
        })
        .collect()
}

/// The finding: while the file was rewritten in place, twice in 600
/// SIGHUPs the daemon applied the torn, empty file (every interface). Now a
/// writer truncating and rewriting the file in place, in bursts, under 600
/// SIGHUPs: every configuration applied is one of the full versions, and
/// after the storm the last version written is the one running.
#[test]
fn an_in_place_rewrite_storm_never_applies_a_partial_file() {
    require_root();
    let ns = NetNs::new();
    // Versions that differ in a key applied live, each valid when cut
    // short at most line ends (so a torn read would parse and apply).
    let version = |fire_after: u32| {
        TestConfig::new()
            .set("daemon.poll_interval", "1s")
            .set("xdp.enabled", false)
            .set("log.format", "json")
            .set("analyzer.fire_after", fire_after)
            .set("analyzer.resolve_after", 7)
            .set("analyzer.warmup", "10s")
            .toml()
    };
    let versions: Vec<String> = (3..6).map(version).collect();
    let full: BTreeSet<String> = versions.iter().map(|v| digest(v)).collect();
    let daemon = Daemon::start(&ns, &versions[0]);
    let path = daemon.config_path().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, versions, path) = (stop.clone(), versions.clone(), path.clone());
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut rewrites = 0u64;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut random = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            while !stop.load(Ordering::Relaxed) {
                // A burst of in-place rewrites (truncate, then two writes),
                // then a quiet spell in which a reload can succeed.
                let burst = Instant::now() + Duration::from_millis(random(150));
                while Instant::now() < burst {
                    let text = &versions[random(versions.len() as u64) as usize];
                    // Cut inside a quoted value: a torn read is never valid
                    // TOML, whatever the machine's scheduling (a writer that
                    // stalls longer than the daemon's 50 ms settle time
                    // between two valid halves cannot be told from one that
                    // is done: that is what the rename in README is for).
                    let cut = text.find("\"10s\"").unwrap() + 2;
                    let (head, tail) = text.split_at(cut);
                    let mut file = std::fs::File::create(&path).expect("truncating");
                    file.write_all(head.as_bytes()).unwrap();
                    file.write_all(tail.as_bytes()).unwrap();
                    drop(file);
                    rewrites += 1;
                    std::thread::sleep(Duration::from_micros(random(2000)));
                }
                std::thread::sleep(Duration::from_millis(random(150)));
            }
            rewrites
        })
    };
    for _ in 0..600 {
        daemon.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let rewrites = writer.join().unwrap();

    // The storm is over: the last version written, then one more signal.
    let last = version(9);
    std::fs::write(&path, &last).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied_digests(&daemon.log_text()).last() != Some(&digest(&last)) {
        assert!(
            Instant::now() < deadline,
            "the last version was never applied:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let log = daemon.log_text();
    let applied = applied_digests(&log);
    let refused = |outcome: &str| log.matches(&format!("\"outcome\":\"{outcome}\"")).count();
    eprintln!(
        "{rewrites} in-place rewrites, 600 SIGHUPs: {} reloads applied, {} unsettled, {} empty, \
         {} invalid",
        applied.len(),
        refused("unsettled"),
        refused("empty"),
        refused("invalid")
    );
    for d in &applied[..applied.len() - 1] {
        assert!(
            full.contains(d),
            "applied a file that is no full version ({d}):\n{log}"
        );
    }
    // The storm was felt: reloads went through, others were held back.
    assert!(applied.len() >= 10, "{} applied:\n{log}", applied.len());
    assert!(refused("unsettled") >= 1, "{log}");
    assert_eq!(daemon.get("/readyz").unwrap().0, 200);
}
