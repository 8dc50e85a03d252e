//! `cargo xtask bench noisy_world`: a soak of the analyzer in a noisy but
//! healthy world, then the same world with faults at known times.
//!
//! One node (a release `telemetryd`, XDP with every packet sampled, the
//! syscall tracer on a service reading a pipe) and four peers joined by a
//! bridge, each peer in its network namespace streaming UDP to the node.
//! The world changes the way real ones do: the rate ramps slowly to twice
//! its start, bursts to twice the rate for 2 s come every eighth of the
//! run, the fourth peer comes and goes, the daemon restarts half way (and
//! warms up again), and 100 scrapers hit `/metrics` for 20 s. None of this
//! is a fault: the first run must raise no anomaly at all.
//!
//! The second run adds three faults for a while each: 10% loss on one
//! peer's packets (nftables on the node), reads of the service slowed from
//! ~1 ms to ~10 ms, and a silent interface (every peer stops). Each must
//! fire within `fire_after + 2` polls of its start, naming the right kind
//! and subject; any other anomaly is a false positive.
//!
//! Fire times are when the bench's poll of `/api/v1/anomalies` (every
//! 200 ms) first lists the anomaly: upper bounds by one such poll.
//! Nothing touches the host's network: every namespace, interface and
//! nftables table is the bench's (prefix `nw`), removed on exit and on
//! failure.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Settings of one soak.
pub struct Options {
    /// Length of each of the two runs.
    pub minutes: u64,
    /// The release `telemetryd`.
    pub binary: PathBuf,
}

const NODE_IP: &str = "10.78.0.1";
const PEERS: [&str; 4] = ["10.78.0.11", "10.78.0.12", "10.78.0.13", "10.78.0.14"];
/// The peer whose packets the loss fault drops.
const LOSSY_PEER: usize = 2;
/// The peer that comes and goes.
const VISITOR: usize = 3;
const UDP_PORT: u16 = 5020;
const LISTEN: &str = "127.0.0.1:9469";
/// Datagrams per second of each peer at the start (twice that at the end).
const BASE_RATE: f64 = 200.0;
const POLL: Duration = Duration::from_secs(1);
const FIRE_AFTER: u32 = 3;
const SCRAPERS: usize = 100;
/// Reads of the service: one byte every this many microseconds.
const READ_PERIOD_US: u64 = 1_000;
const SLOW_READ_PERIOD_US: u64 = 10_000;

pub fn run(options: &Options) -> Result<()> {
    if options.minutes < 4 {
        bail!(
            "noisy_world needs at least 4 minutes per run (got {})",
            options.minutes
        );
    }
    if !options.binary.exists() {
        bail!(
            "{} is missing: build it with cargo build --release",
            options.binary.display()
        );
    }
    let span = Duration::from_secs(options.minutes * 60);
    crate::step(&format!(
        "noisy world: two runs of {} min (no fault, then three faults)",
        options.minutes
    ));
    let calm = soak(options, span, false)?;
    let faulty = soak(options, span, true)?;
    print_report(options, &calm, &faulty);
    let failures = calm.firings.len()
        + faulty.false_positives().len()
        + faulty.faults.iter().filter(|f| !f.within_limit()).count();
    if failures > 0 {
        bail!("noisy world: {failures} false positive(s), miss(es) or late fire(s)");
    }
    Ok(())
}

/// An anomaly as first listed by `/api/v1/anomalies`.
#[derive(Clone, Debug)]
struct Firing {
    kind: String,
    subject: String,
    /// Since the run started.
    at: Duration,
    explanation: String,
}

/// A fault injected at a known time, and what fired for it.
#[derive(Clone, Debug)]
struct Fault {
    name: &'static str,
    kind: &'static str,
    subject: String,
    start: Duration,
    end: Duration,
    fired: Option<Duration>,
}

impl Fault {
    fn limit() -> Duration {
        POLL * (FIRE_AFTER + 2)
    }

    fn delay(&self) -> Option<Duration> {
        self.fired.map(|f| f.saturating_sub(self.start))
    }

    fn within_limit(&self) -> bool {
        self.delay().is_some_and(|d| d <= Self::limit())
    }

    /// Whether `firing` is this fault's: its kind and subject, between its
    /// start and a resolve window after its end.
    fn explains(&self, firing: &Firing) -> bool {
        firing.kind == self.kind
            && firing.subject == self.subject
            && firing.at >= self.start
            && firing.at <= self.end + POLL * 10
    }
}

struct Outcome {
    firings: Vec<Firing>,
    faults: Vec<Fault>,
    restarts: u32,
    scrapes: u64,
}

impl Outcome {
    fn false_positives(&self) -> Vec<&Firing> {
        self.firings
            .iter()
            .filter(|f| !self.faults.iter().any(|fault| fault.explains(f)))
            .collect()
    }
}

/// When things happen, as fractions of the run.
struct Timeline {
    span: Duration,
}

impl Timeline {
    fn at(&self, fraction: f64) -> Duration {
        self.span.mul_f64(fraction)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs((self.span.as_secs() / 10).clamp(15, 30))
    }

    fn fault_length(&self) -> Duration {
        Duration::from_secs((self.span.as_secs() / 12).clamp(20, 60))
    }

    /// Rate multiplier of the ramp: 1 at the start, 2 at the end.
    fn ramp(&self, t: Duration) -> f64 {
        1.0 + (t.as_secs_f64() / self.span.as_secs_f64()).min(1.0)
    }

    /// Bursts to twice the rate for 2 s, at 1/16, 3/16, ... of the run.
    fn burst(&self, t: Duration) -> f64 {
        let eighth = self.span.as_secs_f64() / 8.0;
        let into = (t.as_secs_f64() + eighth / 2.0) % eighth;
        if into < 2.0 {
            2.0
        } else {
            1.0
        }
    }

    fn visitor_present(&self, t: Duration) -> bool {
        let f = t.as_secs_f64() / self.span.as_secs_f64();
        (0.125..0.375).contains(&f) || (0.625..0.875).contains(&f)
    }

    fn restart(&self) -> Duration {
        self.at(0.5)
    }

    fn scrape_load(&self) -> Duration {
        self.at(0.85)
    }
}

fn soak(options: &Options, span: Duration, with_faults: bool) -> Result<Outcome> {
    let world = World::build()?;
    let timeline = Timeline { span };
    let run_dir = std::env::temp_dir().join(format!("{}-run", world.tag));
    std::fs::create_dir_all(&run_dir)?;
    let mut service = Service::start()?;
    let config = world.config(service.pid(), timeline.warmup());
    let config_path = run_dir.join("telemetryd.toml");
    std::fs::write(&config_path, config)?;
    let mut daemon = Some(NodeDaemon::start(
        &world,
        &options.binary,
        &config_path,
        &run_dir,
        0,
    )?);
    let traffic = Traffic::start(&world)?;
    let start = Instant::now();
    let length = timeline.fault_length();
    let mut faults = if with_faults {
        vec![
            Fault {
                name: "loss on one link",
                kind: "packet_loss",
                subject: format!("{} from {}", world.node_dev, PEERS[LOSSY_PEER]),
                start: timeline.at(0.2),
                end: timeline.at(0.2) + length,
                fired: None,
            },
            Fault {
                name: "a slow syscall",
                kind: "latency",
                subject: "read".to_owned(),
                start: timeline.at(0.35),
                end: timeline.at(0.35) + length,
                fired: None,
            },
            Fault {
                name: "a silent interface",
                kind: "traffic_drop",
                subject: world.node_dev.clone(),
                start: timeline.at(0.7),
                end: timeline.at(0.7) + length,
                fired: None,
            },
        ]
    } else {
        Vec::new()
    };
    crate::step(&format!(
        "noisy world run ({}): {} s, warm-up {} s, restart at {} s, scrape load at {} s{}",
        if with_faults { "faults" } else { "no fault" },
        span.as_secs(),
        timeline.warmup().as_secs(),
        timeline.restart().as_secs(),
        timeline.scrape_load().as_secs(),
        faults
            .iter()
            .map(|f| format!(", {} at {} s", f.name, f.start.as_secs()))
            .collect::<String>()
    ));
    let mut firings: Vec<Firing> = Vec::new();
    let mut seen: std::collections::BTreeSet<(String, String, u32)> = Default::default();
    let mut restarts = 0u32;
    let mut scrape_load: Option<ScrapeLoad> = None;
    let mut scrapes = 0;
    let mut drop_rule: Option<DropRule> = None;
    while start.elapsed() < span {
        let t = start.elapsed();
        // The world.
        let base = BASE_RATE * timeline.ramp(t) * timeline.burst(t);
        let silent = faults
            .iter()
            .any(|f| f.kind == "traffic_drop" && t >= f.start && t < f.end);
        for (i, rate) in traffic.rates.iter().enumerate() {
            let present = i != VISITOR || timeline.visitor_present(t);
            let r = if silent || !present { 0.0 } else { base };
            rate.store(r.to_bits(), Ordering::Relaxed);
        }
        let slow = faults
            .iter()
            .any(|f| f.kind == "latency" && t >= f.start && t < f.end);
        service.period_us.store(
            if slow {
                SLOW_READ_PERIOD_US
            } else {
                READ_PERIOD_US
            },
            Ordering::Relaxed,
        );
        let lossy = faults
            .iter()
            .any(|f| f.kind == "packet_loss" && t >= f.start && t < f.end);
        match (lossy, drop_rule.is_some()) {
            (true, false) => {
                drop_rule = Some(DropRule::add(&world, PEERS[LOSSY_PEER], 10)?);
            }
            (false, true) => drop_rule = None,
            _ => {}
        }
        if restarts == 0 && t >= timeline.restart() {
            if let Some(mut d) = daemon.take() {
                d.stop();
            }
            restarts += 1;
            daemon = Some(NodeDaemon::start(
                &world,
                &options.binary,
                &config_path,
                &run_dir,
                restarts,
            )?);
        }
        if scrape_load.is_none() && t >= timeline.scrape_load() {
            scrape_load = Some(ScrapeLoad::start(&world.node.name));
        }
        if let Some(load) = &scrape_load {
            if load.started.elapsed() >= Duration::from_secs(20) && !load.stopped() {
                scrapes = load.stop();
            }
        }
        // What the analyzer says.
        let d = daemon.as_mut().context("no daemon")?;
        d.check_running()?;
        if let Ok(doc) = get_json(&world.node.name, "/api/v1/anomalies") {
            for a in doc["active"].as_array().into_iter().flatten() {
                let (kind, subject) = (
                    a["kind"].as_str().unwrap_or("").to_owned(),
                    a["subject"].as_str().unwrap_or("").to_owned(),
                );
                let started = a["started_at"].as_str().unwrap_or("").to_owned();
                // One firing per (kind, subject, daemon) and start time.
                let key = (kind.clone(), format!("{subject}@{started}"), restarts);
                if seen.insert(key) {
                    let firing = Firing {
                        kind,
                        subject,
                        at: t,
                        explanation: a["explanation"].as_str().unwrap_or("").to_owned(),
                    };
                    crate::step(&format!(
                        "  {:.1} s: {} on {} fired: {}",
                        t.as_secs_f64(),
                        firing.kind,
                        firing.subject,
                        firing.explanation
                    ));
                    for fault in faults.iter_mut() {
                        if fault.fired.is_none() && fault.explains(&firing) {
                            fault.fired = Some(t);
                        }
                    }
                    firings.push(firing);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(load) = scrape_load.as_ref().filter(|l| !l.stopped()) {
        scrapes = load.stop();
    }
    drop(drop_rule);
    drop(traffic);
    if let Some(mut d) = daemon.take() {
        d.stop();
    }
    service.stop();
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(Outcome {
        firings,
        faults,
        restarts,
        scrapes,
    })
}

fn print_report(options: &Options, calm: &Outcome, faulty: &Outcome) {
    println!();
    println!(
        "noisy world: {} min per run; poll {} s, fire_after {FIRE_AFTER}: a fault must fire within {} polls",
        options.minutes,
        POLL.as_secs(),
        FIRE_AFTER + 2
    );
    println!(
        "  world: 4 peers over a bridge, {BASE_RATE} -> {} datagrams/s each (ramp), bursts 2x for 2 s, \
         a peer coming and going, a daemon restart, {SCRAPERS} scrapers for 20 s",
        BASE_RATE * 2.0
    );
    println!();
    println!("| run | anomalies | false positives | restarts | scrapes under load |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, o) in [("no fault", calm), ("faults", faulty)] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            o.firings.len(),
            o.false_positives().len(),
            o.restarts,
            o.scrapes
        );
    }
    println!();
    println!(
        "| fault | kind | subject | fired after | polls | within {} polls |",
        FIRE_AFTER + 2
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for f in &faulty.faults {
        let (after, polls) = match f.delay() {
            Some(d) => (
                format!("{:.1} s", d.as_secs_f64()),
                format!("{:.1}", d.as_secs_f64() / POLL.as_secs_f64()),
            ),
            None => ("missed".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {} | {} | {after} | {polls} | {} |",
            f.name,
            f.kind,
            f.subject,
            if f.within_limit() { "yes" } else { "no" }
        );
    }
    for (name, o) in [("no fault", calm), ("faults", faulty)] {
        for f in o.false_positives() {
            println!(
                "false positive ({name} run) at {:.1} s: {} on {}: {}",
                f.at.as_secs_f64(),
                f.kind,
                f.subject,
                f.explanation
            );
        }
    }
}

// ------------------------------------------------------------ the world

/// Runs a command; fails with its output.
fn sh(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace, deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new(name: String) -> Result<Self> {
        sh("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.exec("sysctl", &["-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(
            "sysctl",
            &["-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"],
        )?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread inside the named namespace.
fn in_namespace<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid namespace fd changes only the network
        // namespace of this fresh, single-purpose thread.
        let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if ret != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// The node, the switch, the peers, and the node's device.
struct World {
    tag: String,
    node_dev: String,
    node: Namespace,
    _switch: Namespace,
    peers: Vec<Namespace>,
}

impl World {
    fn build() -> Result<Self> {
        let tag = format!("nw{}", std::process::id() % 100_000);
        let node = Namespace::new(format!("{tag}-node"))?;
        let switch = Namespace::new(format!("{tag}-sw"))?;
        let bridge = "br0";
        switch.ip(&[
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        switch.ip(&["link", "set", bridge, "up"])?;
        let plug = |ns: &Namespace, i: usize, ip: &str| -> Result<String> {
            let (end, port) = (format!("{tag}e{i}"), format!("{tag}s{i}"));
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    &end,
                    "netns",
                    &ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &switch.name,
                ],
            )?;
            switch.ip(&["link", "set", &port, "master", bridge, "up"])?;
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &end])?;
            ns.ip(&["link", "set", &end, "up"])?;
            Ok(end)
        };
        let node_dev = plug(&node, 9, NODE_IP)?;
        let mut peers = Vec::new();
        for (i, ip) in PEERS.iter().enumerate() {
            let ns = Namespace::new(format!("{tag}-p{i}"))?;
            plug(&ns, i, ip)?;
            peers.push(ns);
        }
        Ok(Self {
            tag,
            node_dev,
            node,
            _switch: switch,
            peers,
        })
    }

    fn config(&self, service_pid: u32, warmup: Duration) -> String {
        format!(
            "[daemon]\npoll_interval = \"{}s\"\n\
             [http]\nlisten = \"{LISTEN}\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\
             [xdp]\ninterfaces = [\"{}\"]\nsample_rate = 1\n\
             [syscalls]\nenabled = true\ntrack = [\"read\"]\npids = [{service_pid}]\n\
             [analyzer]\nwarmup = \"{}s\"\nfire_after = {FIRE_AFTER}\nresolve_after = 5\n",
            POLL.as_secs(),
            self.node_dev,
            warmup.as_secs()
        )
    }
}

/// The release daemon in the node's namespace.
struct NodeDaemon {
    child: Child,
}

impl NodeDaemon {
    fn start(world: &World, binary: &Path, config: &Path, dir: &Path, n: u32) -> Result<Self> {
        let log = File::create(dir.join(format!("telemetryd-{n}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &world.node.name])
            .arg(binary)
            .args(["run", "--config"])
            .arg(config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting telemetryd")?;
        let mut daemon = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            daemon.check_running()?;
            if matches!(http_get(&world.node.name, "/readyz"), Ok((200, _))) {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!(
                    "telemetryd not ready within 30 s (log in {})",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("telemetryd exited: {status}");
        }
        Ok(())
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// UDP from every peer to the node at the rate each one's `rates` holds
/// (an `f64` in bits), and the node's receiver.
struct Traffic {
    rates: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl Traffic {
    fn start(world: &World) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        threads.push(in_namespace(&world.node.name, move || {
            let socket = match UdpSocket::bind((NODE_IP, UDP_PORT)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            // A receiver on two shared cores falls behind now and then: a
            // buffer of seconds of traffic keeps that from being real loss
            // (SOCKET_RCVBUFF) that no fault caused.
            let bytes: libc::c_int = 16 << 20;
            // SAFETY: setsockopt on the socket's own fd with a pointer to a
            // c_int and its size.
            let ret = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let _ = tx.send(Ok(()));
            let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                let _ = socket.recv(&mut buf);
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))?
            .context("binding the node's UDP receiver")?;
        let mut rates = Vec::new();
        for (ns, ip) in world.peers.iter().zip(PEERS) {
            let rate = Arc::new(AtomicU64::new(0f64.to_bits()));
            rates.push(rate.clone());
            let flag = stop.clone();
            threads.push(in_namespace(&ns.name, move || {
                let Ok(socket) = UdpSocket::bind((ip, 0)) else {
                    return;
                };
                let start = Instant::now();
                let (mut owed, mut last) = (0.0f64, start);
                while !flag.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    owed += f64::from_bits(rate.load(Ordering::Relaxed))
                        * now.duration_since(last).as_secs_f64();
                    last = now;
                    // At most a 100 ms backlog after a stall.
                    owed = owed.min(f64::from_bits(rate.load(Ordering::Relaxed)) * 0.1 + 1.0);
                    while owed >= 1.0 {
                        let _ = socket.send_to(&[0xab; 200], (NODE_IP, UDP_PORT));
                        owed -= 1.0;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        Ok(Self {
            rates,
            stop,
            threads,
        })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `cat` reading a pipe, fed one byte every `period_us`: its reads take
/// about that long.
struct Service {
    child: Child,
    period_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

impl Service {
    fn start() -> Result<Self> {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting cat")?;
        let mut stdin = child.stdin.take().context("cat's stdin")?;
        let period_us = Arc::new(AtomicU64::new(READ_PERIOD_US));
        let stop = Arc::new(AtomicBool::new(false));
        let (period, flag) = (period_us.clone(), stop.clone());
        let writer = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if stdin.write_all(b"x").is_err() {
                    return;
                }
                next += Duration::from_micros(period.load(Ordering::Relaxed));
                match next.checked_duration_since(Instant::now()) {
                    Some(wait) => std::thread::sleep(wait),
                    None => next = Instant::now(),
                }
            }
        });
        Ok(Self {
            child,
            period_us,
            stop,
            writer: Some(writer),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An nftables table (named after the node's namespace) dropping `percent`%
/// at random of what `source` sends to the node. Deleted on drop.
struct DropRule {
    ns: String,
}

impl DropRule {
    fn add(world: &World, source: &str, percent: u32) -> Result<Self> {
        let ns = world.node.name.clone();
        let table = ns.replace('-', "_");
        let guard = Self { ns: ns.clone() };
        let nft = |args: &[&str]| world.node.exec("nft", args);
        nft(&["add", "table", "inet", &table])?;
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "input",
            "{ type filter hook input priority 0 ; }",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            &table,
            "input",
            "ip",
            "saddr",
            source,
            "numgen",
            "random",
            "mod",
            "100",
            "lt",
            &percent.to_string(),
            "drop",
        ])?;
        Ok(guard)
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        let table = self.ns.replace('-', "_");
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "inet", &table,
            ])
            .status();
    }
}

/// [`SCRAPERS`] threads scraping `/metrics` in a loop until stopped.
struct ScrapeLoad {
    started: Instant,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    threads: std::sync::Mutex<Vec<JoinHandle<Result<()>>>>,
}

impl ScrapeLoad {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let threads = (0..SCRAPERS)
            .map(|_| {
                let (flag, count) = (stop.clone(), served.clone());
                in_namespace(ns, move || {
                    while !flag.load(Ordering::Relaxed) {
                        if let Ok((200, _)) = get(LISTEN, "/metrics") {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            started: Instant::now(),
            stop,
            served,
            threads: std::sync::Mutex::new(threads),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stops and joins the scrapers; returns the scrapes served.
    fn stop(&self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.drain(..) {
            let _ = t.join();
        }
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for ScrapeLoad {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 GET from the calling thread's namespace.
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP reply"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// GET inside the node's namespace.
fn http_get(ns: &str, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    in_namespace(ns, move || get(LISTEN, &path))
        .join()
        .map_err(|_| anyhow::anyhow!("HTTP thread panicked"))??
        .map_err(Into::into)
}

fn get_json(ns: &str, path: &str) -> Result<Value> {
    let (status, body) = http_get(ns, path)?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(serde_json::from_str(&body)?)
}
