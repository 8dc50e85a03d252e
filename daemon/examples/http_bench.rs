//! Benchmark of the HTTP endpoint under abuse (issue 16, part 1). As root:
//!
//! ```text
//! cargo xtask bench http
//! ```
//!
//! Two release daemons, each in a namespace of its own: one with the
//! default `[http]` settings (512 connections, 5 s header deadline, 100 ms
//! at the cap), one capped at 64 connections (the old default, which every
//! crowd below exceeds). A probe scrapes `/metrics` every 100 ms (a fresh
//! connection each time, 30 s patience) while, in turn:
//! 1. nothing else (baseline);
//! 2. 300 connections send half a request line, each reopened as soon as
//!    the server closes it;
//! 3. 1,000 connections send nothing (reopened when closed);
//! 4. 300 slowloris connections send a request a byte a second;
//! 5. 200 concurrent scrapers scrape in a loop;
//!
//! then, at the cap of 64: baseline, 300 reopening partial requests, 1,000
//! idle connections, 200 concurrent scrapers.
//!
//! Printed side by side from the one run: probe scrapes, failures, p50,
//! p99 and max latency, p99 over the baseline's, and what the server
//! counted (`telemetryd_http_connections_closed_total`). `BENCH_SECS`
//! (default 20) sets each phase's length.

#[path = "../tests/support/hostile.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test helpers")]
mod hostile;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test helpers")]
mod netns;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostile::{percentiles, timed_scrape, Behaviour, Crowd};
use netns::{in_namespace, NetNs};

const LISTEN: &str = "127.0.0.1:9469";

fn main() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "run as root: the benchmark creates a network namespace"
    );
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let phase = Duration::from_secs(secs);
    // The default daemon, and one capped at 64 (the old default) whose cap
    // every crowd exceeds.
    let defaults = NetNs::new();
    let capped = NetNs::new();
    let _daemon = Daemon::start(&defaults, "");
    let _capped = Daemon::start(&capped, "max_connections = 64\n");
    let addr: SocketAddr = LISTEN.parse().unwrap();

    type Phase<'a> = (&'static str, &'a NetNs, Option<(usize, Behaviour)>);
    let phases: [Phase<'_>; 9] = [
        ("baseline", &defaults, None),
        (
            "300 reopening partial requests",
            &defaults,
            Some((300, Behaviour::PartialRequestLine)),
        ),
        (
            "1,000 idle connections",
            &defaults,
            Some((1000, Behaviour::Idle)),
        ),
        (
            "300 slowloris",
            &defaults,
            Some((300, Behaviour::Slowloris)),
        ),
        (
            "200 concurrent scrapers",
            &defaults,
            Some((200, Behaviour::Scraper)),
        ),
        ("cap 64: baseline", &capped, None),
        (
            "cap 64: 300 reopening partial",
            &capped,
            Some((300, Behaviour::PartialRequestLine)),
        ),
        ("cap 64: 1,000 idle", &capped, Some((1000, Behaviour::Idle))),
        (
            "cap 64: 200 concurrent scrapers",
            &capped,
            Some((200, Behaviour::Scraper)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, ns, crowd) in phases {
        let before = closed_counts(ns, addr);
        let crowd = crowd.map(|(n, behaviour)| Crowd::start(&ns.name, addr, n, behaviour));
        // Let the crowd reach the cap first.
        std::thread::sleep(Duration::from_secs(1));
        let mut samples = Vec::new();
        let mut failed = 0;
        let started = Instant::now();
        while started.elapsed() < phase {
            let tick = Instant::now();
            let (status, took) = in_namespace(&ns.name, move || timed_scrape(addr));
            if status == 200 {
                samples.push(took);
            } else {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
        }
        let crowd_errors = crowd.as_ref().map_or(0, |c| c.get(|c| &c.errors));
        let crowd_answers = crowd.as_ref().map_or(0, |c| c.get(|c| &c.answers));
        drop(crowd);
        // The crowd's connections close; let the server count them.
        std::thread::sleep(Duration::from_millis(500));
        let after = closed_counts(ns, addr);
        let delta: Vec<(String, f64)> = after
            .iter()
            .map(|(reason, n)| {
                let was = before
                    .iter()
                    .find(|(r, _)| r == reason)
                    .map_or(0.0, |(_, v)| *v);
                (reason.clone(), n - was)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        rows.push(Row {
            name,
            samples,
            failed,
            crowd_answers,
            crowd_errors,
            closed: delta,
        });
    }
    let baseline_p99 = |name: &str| {
        let base = if name.starts_with("cap 64") { 5 } else { 0 };
        percentiles(&rows[base].samples).1
    };
    println!(
        "\nHTTP endpoint under abuse: release build, default [http] settings (cap 512) and a cap \
         of 64, a probe scrape of /metrics every 100 ms for {secs} s per phase, one run\n"
    );
    println!(
        "{:<32} {:>7} {:>7} {:>10} {:>10} {:>10} {:>9}  server closed (reason: count)",
        "phase", "scrapes", "failed", "p50", "p99", "max", "p99/base"
    );
    for row in &rows {
        let (p50, p99, max) = if row.samples.is_empty() {
            (Duration::ZERO, Duration::ZERO, Duration::ZERO)
        } else {
            percentiles(&row.samples)
        };
        let closed: Vec<String> = row
            .closed
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        println!(
            "{:<32} {:>7} {:>7} {:>10} {:>10} {:>10} {:>8.1}x  {}",
            row.name,
            row.samples.len(),
            row.failed,
            ms(p50),
            ms(p99),
            ms(max),
            p99.as_secs_f64() / baseline_p99(row.name).as_secs_f64(),
            closed.join(", ")
        );
        if row.name.contains("scrapers") {
            println!(
                "{:<32} the 200 scrapers: {} answers, {} errors",
                "", row.crowd_answers, row.crowd_errors
            );
        }
    }
}

struct Row {
    name: &'static str,
    samples: Vec<Duration>,
    failed: usize,
    crowd_answers: u64,
    crowd_errors: u64,
    closed: Vec<(String, f64)>,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `telemetryd_http_connections_closed_total` by reason.
fn closed_counts(ns: &NetNs, addr: SocketAddr) -> Vec<(String, f64)> {
    let text = in_namespace(&ns.name, move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    });
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("telemetryd_http_connections_closed_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The release daemon in `ns`, killed on drop.
struct Daemon {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the release daemon in `ns`; `http` is extra `[http]` lines.
    fn start(ns: &NetNs, http: &str) -> Self {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "telemetryd",
                "--bin",
                "telemetryd",
            ])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building telemetryd failed");
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("telemetryd");
        let dir = std::env::temp_dir();
        let config = dir.join(format!("{}-http-bench.toml", ns.name));
        let log = dir.join(format!("{}-http-bench.log", ns.name));
        std::fs::write(
            &config,
            format!(
                "[daemon]\npoll_interval = \"1s\"\n[http]\nlisten = \"{LISTEN}\"\n{http}\
                 [syscalls]\nenabled = false\n"
            ),
        )
        .unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("starting telemetryd");
        let daemon = Self { child, config, log };
        let addr: SocketAddr = LISTEN.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while in_namespace(&ns.name, move || timed_scrape(addr)).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "telemetryd did not answer within 30 s: {}",
                std::fs::read_to_string(&daemon.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}
