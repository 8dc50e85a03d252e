//! The syscall latency histogram as a real Prometheus (Debian's 2.42) sees
//! it: a pid-filtered process doing ~400 fast reads a second, then one
//! burst of 20 reads of 45 ms each, scraped every second by two
//! Prometheus servers in the test's namespace at once, one with
//! `--enable-feature=native-histograms` (it asks for the protobuf format
//! and gets the native histogram) and one without (the text format, the
//! fixed classic layout). Both must place the burst in its bucket,
//! (2^-5, 2^-4] s = (31.25, 62.5] ms, and count it: exactly 20 from raw
//! samples; `increase()` only stretches that by its extrapolation to the
//! window's edges.
//!
//! Root only (eBPF, namespaces); needs `prometheus` (Debian package).

mod support;

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use support::metrics::promtool_accepts;
use support::netns::{in_namespace, unique_name};
use support::{require_root, Daemon, NetNs, TestConfig};

const CHILD_ENV: &str = "TELEMETRYD_TEST_HIST_CHILD";
const FIFO_ENV: &str = "TELEMETRYD_TEST_HIST_FIFO";
const LATENCY: &str = "telemetryd_syscall_latency_seconds";
/// The burst's bucket: (2^-5, 2^-4] s.
const BURST_LOW: f64 = 0.03125;
const BURST_HIGH: f64 = 0.0625;
const BURST_READS: u64 = 20;
const BURST_WAIT: Duration = Duration::from_millis(45);
/// Fast reads before the burst: long enough that both servers have
/// scraped the series for well over a 30 s window's worth when queried.
const FAST_PHASE: Duration = Duration::from_secs(30);
const FAST_PERIOD: Duration = Duration::from_micros(1800);

// ---------------------------------------------------------------- child --

/// Entry point of the child mode; an instant no-op in a normal test run.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    assert_eq!(mode, "workload");
    let fifo = std::env::var(FIFO_ENV).expect("fifo path");
    let zero = CString::new("/dev/zero").unwrap();
    // SAFETY: valid C string.
    let zero_fd = unsafe { libc::open(zero.as_ptr(), libc::O_RDONLY) };
    assert!(zero_fd >= 0);
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills the two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [read_end, write_end] = fds;
    println!("parked");
    let path = CString::new(fifo).unwrap();
    // SAFETY: valid C string; blocks until the test opens the write end.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);

    // ~400 fast reads a second.
    let fast_until = Instant::now() + FAST_PHASE;
    let mut fast = 0u64;
    while Instant::now() < fast_until {
        assert_eq!(read_one(zero_fd), 1);
        fast += 1;
        std::thread::sleep(FAST_PERIOD);
    }
    // The burst: each read waits for a writer that sleeps 45 ms after the
    // reader asks (over a channel: a futex, not a traced read), so no byte
    // is ever in the pipe before its read began.
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for _ in 0..BURST_READS {
            asked.recv().unwrap();
            std::thread::sleep(BURST_WAIT);
            let byte = 1u8;
            // SAFETY: writes one byte from a local.
            let written = unsafe { libc::write(write_end, (&raw const byte).cast(), 1) };
            assert_eq!(written, 1);
        }
    });
    let start = unix_now();
    for _ in 0..BURST_READS {
        ask.send(()).unwrap();
        assert_eq!(read_one(read_end), 1);
    }
    let end = unix_now();
    writer.join().unwrap();
    println!("burst {start:.3} {end:.3} fast {fast}");
    // SAFETY: ends the process at once, without the harness's own syscalls.
    unsafe { libc::_exit(0) };
}

fn read_one(fd: i32) -> isize {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into `byte`.
    unsafe { libc::read(fd, (&raw mut byte).cast(), 1) }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The workload process, parked until [`Workload::run`].
struct Workload {
    child: Child,
    fifo: PathBuf,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Workload {
    fn spawn() -> Self {
        let fifo = std::env::temp_dir().join(unique_name("hfifo"));
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "workload")
            .env(FIFO_ENV, &fifo)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("parked") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "child exited early"
            );
        }
        Self {
            child,
            fifo,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Releases the child; returns the burst's (start, end) in Unix seconds
    /// and the number of fast reads.
    fn run(&mut self) -> (f64, f64, u64) {
        let _write_end = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.fifo)
            .unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "child exited early"
            );
            if let Some(rest) = line.trim().strip_prefix("burst ") {
                let parts: Vec<&str> = rest.split(' ').collect();
                assert!(self.child.wait().unwrap().success());
                return (
                    parts[0].parse().unwrap(),
                    parts[1].parse().unwrap(),
                    parts[3].parse().unwrap(),
                );
            }
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.fifo);
    }
}

// ----------------------------------------------------------- prometheus --

/// A Prometheus server in the test's namespace, scraping the daemon every
/// second; killed and its data removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
    listen: String,
}

impl Prometheus {
    fn start(ns: &NetNs, port: u16, native: bool) -> Self {
        let dir = std::env::temp_dir().join(unique_name("prom"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: telemetryd\n    static_configs:\n      - targets: ['{}']\n",
                support::process::LISTEN
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if native {
            command.arg("--enable-feature=native-histograms");
        }
        let child = command
            .spawn()
            .expect("prometheus is installed by `cargo xtask setup` (Debian package prometheus)");
        let server = Self {
            child,
            dir,
            ns: ns.name.clone(),
            listen,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/-/ready").map(|(s, _)| s) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.listen.parse().unwrap();
        let path = path.to_owned();
        in_namespace(&self.ns, move || http_get_1_0(addr, &path)).ok()
    }

    /// An instant query at `time` (Unix seconds): the result vector.
    fn query(&self, query: &str, time: f64) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}&time={time:.3}", encode(query));
        let (status, body) = self
            .get(&path)
            .unwrap_or_else(|| panic!("querying {query:?}:\n{}", self.log()));
        assert_eq!(status, 200, "{query}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["status"], "success", "{query}: {body}");
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a one-element float vector.
    fn value(&self, query: &str, time: f64) -> f64 {
        let result = self.query(query, time);
        match result.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{query}: not a float sample: {one}")),
            other => panic!(
                "{query} at {time}: {} series: {other:?}\nup: {:?}\nseries: {:?}\n{}",
                other.len(),
                self.query("up", time),
                self.query(
                    &format!("count by (__name__, le) ({{__name__=~\"{LATENCY}.*\"}})"),
                    time
                ),
                self.log()
            ),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET in HTTP/1.0, so that the reply is never chunked: (status, body).
fn http_get_1_0(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes a query string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ----------------------------------------------------------------- test --

#[test]
fn prometheus_places_a_latency_burst_in_its_bucket_native_and_classic() {
    require_root();
    let mut workload = Workload::spawn();
    let ns = NetNs::new();
    let config = TestConfig::new()
        .set("xdp.enabled", false)
        .set("syscalls.enabled", true)
        .set("syscalls.track", vec!["read"])
        .set("syscalls.pids", vec![i64::from(workload.pid())])
        .toml();
    let daemon = Daemon::start(&ns, &config);
    let native = Prometheus::start(&ns, 19590, true);
    let classic = Prometheus::start(&ns, 19591, false);
    // A few scrapes of the idle series first: every bucket is there from
    // the first one.
    std::thread::sleep(Duration::from_secs(3));
    let first = daemon.scrape();
    promtool_accepts(&first);
    let buckets = first
        .samples
        .keys()
        .filter(|k| k.starts_with(&format!("{LATENCY}_bucket{{syscall=\"read\"")))
        .count();
    assert_eq!(buckets, 27 + 1, "the fixed layout, before the first call");

    let (burst_start, burst_end, fast) = workload.run();
    println!(
        "fast reads: {fast} in {} s; burst {burst_start:.3} .. {burst_end:.3}",
        FAST_PHASE.as_secs()
    );
    assert!(
        (burst_end - burst_start) >= BURST_READS as f64 * BURST_WAIT.as_secs_f64(),
        "the burst took {} s",
        burst_end - burst_start
    );
    // Two moments to query, each a 30 s window holding the whole burst:
    // - steady: 5 s after it, the window full of fast reads (~12,000
    //   of them: the burst is 0.17 %, above the 99.9th percentile);
    // - tail: the window begins 2 s before the burst, so it holds ~800
    //   fast reads and the 20 slow ones (2.4 %, above the 99th).
    let steady = burst_end + 5.0;
    let tail = burst_start + 28.0;
    let wait_until = steady.max(tail) + 3.0;
    while unix_now() < wait_until {
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = daemon.scrape();
    promtool_accepts(&after);

    let le_low = "0.03125";
    let in_bucket = |server: &Prometheus, at: f64| {
        // Raw samples: the series now minus 30 s ago. Exact.
        let slow = server.value(
            &format!(
                "({LATENCY}_count{{syscall=\"read\"}} - ignoring(le) {LATENCY}_bucket{{syscall=\"read\",le=\"{le_low}\"}}) \
                 - ({LATENCY}_count{{syscall=\"read\"}} offset 30s - ignoring(le) {LATENCY}_bucket{{syscall=\"read\",le=\"{le_low}\"}} offset 30s)"
            ),
            at,
        );
        // The issue's own query, with increase()'s extrapolation to the
        // window's edges (a factor of 30 s over the span the samples
        // cover, 28 to 30 s at a 1 s interval).
        let slow_increase = server.value(
            &format!(
                "increase({LATENCY}_count{{syscall=\"read\"}}[30s]) \
                 - ignoring(le) increase({LATENCY}_bucket{{syscall=\"read\",le=\"{le_low}\"}}[30s])"
            ),
            at,
        );
        let in_burst_bucket = server.value(
            &format!(
                "increase({LATENCY}_bucket{{syscall=\"read\",le=\"0.0625\"}}[30s]) \
                 - ignoring(le) increase({LATENCY}_bucket{{syscall=\"read\",le=\"{le_low}\"}}[30s])"
            ),
            at,
        );
        (slow, slow_increase, in_burst_bucket)
    };
    let stretch = 30.0 / 28.0;

    // Whether the native server kept the classic buckets as well (2.42
    // has no scrape_classic_histograms yet): if so, they are checked too.
    let classic_on_native = !native
        .query(&format!("count({LATENCY}_bucket)"), tail)
        .is_empty();
    println!("the native-histogram server stored the classic buckets too: {classic_on_native}");
    let mut classic_servers = vec![(&classic, "text/classic")];
    if classic_on_native {
        classic_servers.push((&native, "protobuf/classic"));
    }

    // The text format, the fixed classic layout.
    for ((server, format), (at, what)) in classic_servers
        .iter()
        .flat_map(|s| [(*s, (steady, "steady")), (*s, (tail, "tail"))])
    {
        let (slow, slow_increase, in_burst_bucket) = in_bucket(server, at);
        println!(
            "{format}, {what} window: slower than 31.25 ms: {slow} (raw samples), \
             {slow_increase:.3} (increase); in (31.25, 62.5] ms: {in_burst_bucket:.3}"
        );
        assert_eq!(
            slow, BURST_READS as f64,
            "{what}: raw samples count the burst exactly"
        );
        assert!(
            (BURST_READS as f64..=BURST_READS as f64 * stretch).contains(&slow_increase),
            "{what}: increase() counts {slow_increase} reads slower than 31.25 ms"
        );
        assert!(
            (BURST_READS as f64..=BURST_READS as f64 * stretch).contains(&in_burst_bucket),
            "{what}: increase() puts {in_burst_bucket} reads in (31.25, 62.5] ms"
        );
    }
    for (server, format) in &classic_servers {
        let classic_q = |q: f64, at: f64| {
            server.value(
                &format!(
                    "histogram_quantile({q}, sum by (le) (rate({LATENCY}_bucket{{syscall=\"read\"}}[30s])))"
                ),
                at,
            )
        };
        let p999 = classic_q(0.999, steady);
        let p99 = classic_q(0.99, tail);
        println!("{format}: p99.9 steady {p999:.5} s, p99 tail {p99:.5} s");
        for (name, v) in [("p99.9 steady", p999), ("p99 tail", p99)] {
            assert!(
                v > BURST_LOW && v <= BURST_HIGH,
                "{format} {name} = {v} s, not in the burst's bucket (0.03125, 0.0625]"
            );
        }
    }

    // The protobuf format: the native histogram.
    let native_q = |q: f64, at: f64| {
        native.value(
            &format!("histogram_quantile({q}, rate({LATENCY}{{syscall=\"read\"}}[30s]))"),
            at,
        )
    };
    let p999 = native_q(0.999, steady);
    let p99 = native_q(0.99, tail);
    println!("protobuf/native: p99.9 steady {p999:.5} s, p99 tail {p99:.5} s");
    for (name, v) in [("p99.9 steady", p999), ("p99 tail", p99)] {
        assert!(
            v > BURST_LOW && v <= BURST_HIGH,
            "native {name} = {v} s, not in the burst's bucket (0.03125, 0.0625]"
        );
    }
    for (at, what) in [(steady, "steady"), (tail, "tail")] {
        let increase = format!("increase({LATENCY}{{syscall=\"read\"}}[30s])");
        let in_burst_bucket = native.value(
            &format!(
                "histogram_fraction({BURST_LOW}, {BURST_HIGH}, {increase}) * histogram_count({increase})"
            ),
            at,
        );
        let slow = native.value(
            &format!(
                "histogram_fraction({BURST_LOW}, +Inf, {increase}) * histogram_count({increase})"
            ),
            at,
        );
        println!(
            "protobuf/native, {what} window: in (31.25, 62.5] ms: {in_burst_bucket:.3}; \
             slower than 31.25 ms: {slow:.3} (increase)"
        );
        for v in [in_burst_bucket, slow] {
            assert!(
                (BURST_READS as f64 * 0.999..=BURST_READS as f64 * stretch).contains(&v),
                "{what}: native histogram counts {v} reads of the burst"
            );
        }
        let count_now = native.value(
            &format!("histogram_count({LATENCY}{{syscall=\"read\"}})"),
            at,
        );
        let count_then = native.value(
            &format!("histogram_count({LATENCY}{{syscall=\"read\"}} offset 30s)"),
            at,
        );
        assert!(count_now - count_then >= BURST_READS as f64);
    }
    // Both servers saw the same counts (one from protobuf, one from text).
    let total = |server: &Prometheus, expr: &str| server.value(expr, tail);
    assert_eq!(
        total(
            &native,
            &format!("histogram_count({LATENCY}{{syscall=\"read\"}})")
        ),
        total(&classic, &format!("{LATENCY}_count{{syscall=\"read\"}}")),
    );
    drop(daemon);
}
