//! `cargo xtask bench soak [--duration 30m]`: the release daemon for a long
//! run under everything that could make it grow: UDP traffic over a veth
//! pair between two namespaces of its own (`tdsoak<pid>d`, the daemon's,
//! and `tdsoak<pid>p`, the peer's), a `/metrics` scrape every second, a
//! SIGHUP every 5 s after the configuration was replaced by rename (a
//! value that changes, so every reload applies something), and interface
//! churn: a veth pair created every 4 s and removed 4 s later, which the
//! daemon attaches to and detaches from (it watches every interface).
//!
//! It samples the daemon's resident memory, open file descriptors and CPU
//! time (of every thread, exited ones included: /proc/PID/stat) once a
//! second, and prints their values at the start and the end of the run
//! (means over a window, after a warm-up) and their least-squares slope per
//! hour, with a verdict: flat when every slope is within [`Bounds`].
//!
//! Everything it creates is removed on exit, on error and on Ctrl-C (the
//! namespaces, the veths inside them with them, the daemon).

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::command;
use crate::lab::http;
use crate::lab::interrupt;
use crate::lab::process::{LabProcess, Launch};
use crate::step;

/// What "flat" means: the slope of each series, per hour, within these.
pub struct Bounds {
    pub rss_kib_per_hour: f64,
    pub fds_per_hour: f64,
    /// A fraction of the CPU time per poll at the start.
    pub cpu_fraction_per_hour: f64,
}

pub const BOUNDS: Bounds = Bounds {
    rss_kib_per_hour: 2048.0,
    fds_per_hour: 2.0,
    cpu_fraction_per_hour: 0.10,
};

const POLL_INTERVAL: Duration = Duration::from_secs(1);
const SIGHUP_EVERY: Duration = Duration::from_secs(5);
const CHURN_EVERY: Duration = Duration::from_secs(4);
const TRAFFIC_PER_SECOND: u32 = 1000;
const SINK_PORT: u16 = 7777;
const LISTEN: &str = "127.0.0.1:9469";

/// Parses `30m`, `2m`, `90s`, `1h`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => bail!("--duration {text:?}: units are h, m and s (for example 30m, 90s)"),
        };
        let n: u64 = number
            .parse()
            .with_context(|| format!("--duration {text:?}: a number before {c:?}"))?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        bail!("--duration {text:?}: give a unit (for example 30m, 90s), more than 0");
    }
    Ok(Duration::from_secs(total))
}

/// One network namespace, deleted on drop.
struct Namespace(String);

impl Namespace {
    fn create(name: String) -> Result<Self> {
        command::run("ip", &["netns", "add", &name])?;
        let ns = Self(name);
        command::run("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = command::run("ip", &["netns", "del", &self.0]) {
            eprintln!("xtask: removing namespace {}: {error:#}", self.0);
        }
    }
}

/// Namespaces of soak runs whose process is gone (killed with -9).
fn remove_stale_namespaces() {
    let Ok(list) = command::output("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("tdsoak")
            .and_then(|rest| rest.strip_suffix(['d', 'p']))
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            step(&format!("removing namespace {name} of an earlier soak run"));
            let _ = command::run("ip", &["netns", "del", name]);
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd moves only the calling thread,
    // one this module spawned for that namespace alone.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One sample of the daemon's resources.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    rss_kib: f64,
    fds: f64,
    /// Cumulative user + system CPU seconds.
    cpu_secs: f64,
}

fn sample(pid: u32, secs: f64) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').context("no ) in /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(Sample {
        secs,
        rss_kib,
        fds,
        cpu_secs: ticks / hz,
    })
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// What the run did besides sampling.
#[derive(Default)]
struct Activity {
    scrapes_ok: u64,
    scrapes_failed: u64,
    sighups: u64,
    interfaces_created: u64,
    interfaces_removed: u64,
    frames_sent: u64,
    frames_received: u64,
}

/// Start and end values and slope per hour of one series.
struct Trend {
    start: f64,
    end: f64,
    per_hour: f64,
    /// The slope over the second half of the steady part alone: whether a
    /// climb has levelled off.
    late_per_hour: f64,
}

/// Less than this after the warm-up and the verdict says it cannot judge.
const MIN_STEADY: Duration = Duration::from_secs(600);

struct Analysis {
    warmup: Duration,
    /// Time sampled after the warm-up.
    steady: Duration,
    window: Duration,
    rss: Trend,
    fds: Trend,
    /// Milliseconds of CPU time per poll.
    cpu_ms_per_poll: Trend,
}

/// Drops the warm-up, then: start and end are means over the first and
/// last `window`; slopes are least squares over everything after the
/// warm-up. CPU time per poll is measured per 10 s bin (CPU time is
/// counted in 10 ms ticks; one second holds too few).
fn analyze(samples: &[Sample], duration: Duration) -> Result<Analysis> {
    // The analyzer's warm-up and the top-talkers window are 60 s: what
    // fills in them is not growth.
    let warmup = Duration::from_secs(180).min(duration / 4);
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.secs >= warmup.as_secs_f64())
        .collect();
    if steady.len() < 20 {
        bail!(
            "only {} samples after the {warmup:?} warm-up: run longer",
            steady.len()
        );
    }
    let first = steady[0].secs;
    let last = steady[steady.len() - 1].secs;
    let window = Duration::from_secs_f64(((last - first) / 4.0).min(300.0));
    let w = window.as_secs_f64();
    let in_start = |s: &&Sample| s.secs <= first + w;
    let in_end = |s: &&Sample| s.secs >= last - w;
    let xs: Vec<f64> = steady.iter().map(|s| s.secs / 3600.0).collect();
    let middle = (first + last) / 2.0;
    let late: Vec<Sample> = steady
        .iter()
        .copied()
        .filter(|s| s.secs >= middle)
        .collect();
    let late_xs: Vec<f64> = late.iter().map(|s| s.secs / 3600.0).collect();
    let trend = |value: fn(&Sample) -> f64| Trend {
        start: mean(steady.iter().filter(in_start).map(value)),
        end: mean(steady.iter().filter(in_end).map(value)),
        per_hour: slope(&xs, &steady.iter().map(value).collect::<Vec<_>>()),
        late_per_hour: slope(&late_xs, &late.iter().map(value).collect::<Vec<_>>()),
    };
    let rss = trend(|s| s.rss_kib);
    let fds = trend(|s| s.fds);
    // CPU per poll in 10 s bins.
    let poll = POLL_INTERVAL.as_secs_f64();
    let mut bins: Vec<(f64, f64)> = Vec::new();
    let mut at = 0;
    while at < steady.len() {
        let begin = steady[at];
        let Some(end_at) = (at + 1..steady.len()).find(|&j| steady[j].secs >= begin.secs + 10.0)
        else {
            break;
        };
        let end = steady[end_at];
        let polls = (end.secs - begin.secs) / poll;
        let ms = (end.cpu_secs - begin.cpu_secs) * 1000.0 / polls;
        bins.push(((begin.secs + end.secs) / 2.0, ms));
        at = end_at;
    }
    let cpu_per_bin =
        |keep: &dyn Fn(f64) -> bool| mean(bins.iter().filter(|(t, _)| keep(*t)).map(|(_, ms)| *ms));
    let cpu_ms_per_poll = Trend {
        start: cpu_per_bin(&|t| t <= first + w.max(10.0)),
        end: cpu_per_bin(&|t| t >= last - w.max(10.0)),
        per_hour: slope(
            &bins.iter().map(|(t, _)| t / 3600.0).collect::<Vec<_>>(),
            &bins.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(),
        ),
        late_per_hour: {
            let late: Vec<&(f64, f64)> = bins.iter().filter(|(t, _)| *t >= middle).collect();
            slope(
                &late.iter().map(|(t, _)| t / 3600.0).collect::<Vec<_>>(),
                &late.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(),
            )
        },
    };
    Ok(Analysis {
        warmup,
        steady: Duration::from_secs_f64(last - first),
        window,
        rss,
        fds,
        cpu_ms_per_poll,
    })
}

fn report(duration: Duration, samples: usize, activity: &Activity, a: &Analysis) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {:.0} s of release telemetryd, {samples} samples (1 per poll of {:?}); \
         warm-up {:?} left out, start and end are means over {:.0} s",
        duration.as_secs_f64(),
        POLL_INTERVAL,
        a.warmup,
        a.window.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  load: {} scrapes answered 200, {} failed; {} SIGHUPs (configuration replaced by \
         rename before each); {} interfaces created, {} removed; {} UDP frames sent, {} received",
        activity.scrapes_ok,
        activity.scrapes_failed,
        activity.sighups,
        activity.interfaces_created,
        activity.interfaces_removed,
        activity.frames_sent,
        activity.frames_received
    );
    let cpu_bound = BOUNDS.cpu_fraction_per_hour * a.cpu_ms_per_poll.start;
    let rows = [
        ("RSS (KiB)", &a.rss, BOUNDS.rss_kib_per_hour),
        ("open fds", &a.fds, BOUNDS.fds_per_hour),
        ("CPU per poll (ms)", &a.cpu_ms_per_poll, cpu_bound),
    ];
    let _ = writeln!(
        out,
        "  {:<18} {:>12} {:>12} {:>14} {:>12}  verdict {:>22}",
        "series", "start", "end", "slope/hour", "bound", "(2nd half slope/hour)"
    );
    let mut flat = true;
    for (name, trend, bound) in rows {
        let ok = trend.per_hour.abs() <= bound;
        flat &= ok;
        let _ = writeln!(
            out,
            "  {name:<18} {:>12.2} {:>12.2} {:>+14.2} {:>11}{:.2}  {:<7} {:>+22.2}",
            trend.start,
            trend.end,
            trend.per_hour,
            "±",
            bound,
            match (ok, trend.per_hour > 0.0) {
                (true, _) => "flat",
                (false, true) => "GROWS",
                (false, false) => "FALLS",
            },
            trend.late_per_hour
        );
    }
    let _ = writeln!(
        out,
        "  verdict: {} (flat: |slope| within RSS {:.0} KiB/h, fds {:.0}/h, CPU per poll {:.0}% of \
         its start value per hour)",
        match (flat, a.steady < MIN_STEADY) {
            (_, true) =>
                "TOO SHORT TO JUDGE (under 10 min after the warm-up: the slopes extrapolate \
                          the warm-up's tail to an hour)",
            (true, false) => "FLAT",
            (false, false) => "NOT FLAT",
        },
        BOUNDS.rss_kib_per_hour,
        BOUNDS.fds_per_hour,
        BOUNDS.cpu_fraction_per_hour * 100.0
    );
    out
}

/// Reloads applied, and the warnings and errors the daemon logged, by message.
fn log_summary(log: &str) -> String {
    let mut reloads = 0;
    let mut problems: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Anomaly events carry `event`, `kind` and `state` instead of a message.
        let message = match entry["message"].as_str() {
            Some(message) => message.to_owned(),
            None => format!(
                "{} {} {}",
                entry["event"].as_str().unwrap_or("(no message)"),
                entry["kind"].as_str().unwrap_or(""),
                entry["state"].as_str().unwrap_or("")
            ),
        };
        if message == "configuration reloaded" {
            reloads += 1;
        }
        let level = entry["level"].as_str().unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            let key = format!("{level} {message}");
            match problems.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => problems.push((key, 1)),
            }
        }
    }
    let mut out = format!("  daemon log: {reloads} reloads applied\n");
    for (key, n) in problems {
        let _ = writeln!(out, "  daemon log: {n} x {key}");
    }
    out
}

fn config_text(z_threshold: f64, pid: u32) -> String {
    // The syscall tracer follows this process only (its traffic threads):
    // the machine is shared, and tracing every process would tax the rest.
    format!(
        "[daemon]\npoll_interval = \"1s\"\n\n[http]\nlisten = \"{LISTEN}\"\n\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
         [xdp]\ninterfaces = []\nsample_rate = 10\n\n\
         [syscalls]\npids = [{pid}]\n\n\
         [analyzer]\nz_threshold = {z_threshold:.1}\n"
    )
}

/// Writes the configuration next to its place and renames it over.
fn replace_config(path: &Path, text: &str) -> Result<()> {
    let temporary = path.with_extension("toml.new");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// UDP frames from the peer namespace to the daemon's at a steady rate,
/// and a sink on the daemon's side, until `stop`.
fn traffic(
    daemon_ns: String,
    peer_ns: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
) -> Result<Vec<std::thread::JoinHandle<Result<()>>>> {
    let sink_stop = stop.clone();
    let sink = std::thread::spawn(move || -> Result<()> {
        enter(&daemon_ns)?;
        let socket = UdpSocket::bind(("0.0.0.0", SINK_PORT))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 2048];
        while !sink_stop.load(Ordering::Relaxed) {
            if socket.recv(&mut buf).is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    let sender = std::thread::spawn(move || -> Result<()> {
        enter(&peer_ns)?;
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let to: SocketAddr = ([10, 250, 0, 1], SINK_PORT).into();
        let payload = [0x5au8; 200];
        let gap = Duration::from_secs(1) / TRAFFIC_PER_SECOND;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if socket.send_to(&payload, to).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            next += gap;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    });
    Ok(vec![sink, sender])
}

/// Runs the soak with `binary` (a release build) and prints its report.
pub fn run(root: &Path, binary: &Path, duration: Duration) -> Result<()> {
    remove_stale_namespaces();
    let pid = std::process::id();
    let run_dir: PathBuf = root.join(format!("target/soak/{pid}"));
    std::fs::create_dir_all(&run_dir)?;
    interrupt::install();
    let result = soak(&run_dir, binary, duration, pid);
    interrupt::restore();
    let text = result?;
    print!("{text}");
    let report_file = root.join("target/soak/last-report.txt");
    std::fs::write(&report_file, &text)?;
    step(&format!(
        "report also in {}; daemon log in {}",
        report_file.display(),
        run_dir.join("telemetryd.log").display()
    ));
    Ok(())
}

fn soak(run_dir: &Path, binary: &Path, duration: Duration, pid: u32) -> Result<String> {
    let daemon_ns = Namespace::create(format!("tdsoak{pid}d"))?;
    let peer_ns = Namespace::create(format!("tdsoak{pid}p"))?;
    let (d, p) = (daemon_ns.0.as_str(), peer_ns.0.as_str());
    command::run(
        "ip",
        &[
            "link", "add", "soak0", "netns", d, "type", "veth", "peer", "name", "soak1", "netns", p,
        ],
    )?;
    command::run(
        "ip",
        &["-n", d, "addr", "add", "10.250.0.1/24", "dev", "soak0"],
    )?;
    command::run(
        "ip",
        &["-n", p, "addr", "add", "10.250.0.2/24", "dev", "soak1"],
    )?;
    command::run("ip", &["-n", d, "link", "set", "soak0", "up"])?;
    command::run("ip", &["-n", p, "link", "set", "soak1", "up"])?;

    let config = run_dir.join("telemetryd.toml");
    let mut z_threshold = 4.0;
    replace_config(&config, &config_text(z_threshold, pid))?;
    let config_arg = config.display().to_string();
    let mut daemon = LabProcess::start(
        Launch {
            name: "telemetryd",
            namespace: d,
            program: binary,
            args: vec!["--config".into(), config_arg, "run".into()],
            hostname: None,
        },
        run_dir,
    )?;
    let addr: SocketAddr = LISTEN.parse()?;
    interrupt::wait_for(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "telemetryd answering /readyz with 200",
        || {
            daemon.check_running()?;
            Ok(matches!(http::get(d, addr, "/readyz"), Ok((200, _))).then_some(()))
        },
    )?;
    step(&format!(
        "soak: telemetryd (pid {}) is ready in {d}; running for {duration:?}",
        daemon.pid()
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let threads = traffic(
        d.to_owned(),
        p.to_owned(),
        stop.clone(),
        sent.clone(),
        received.clone(),
    )?;
    let outcome = drive(
        &mut daemon,
        d,
        addr,
        &config,
        duration,
        pid,
        &mut z_threshold,
    );
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        match thread.join() {
            Ok(result) => result.context("the traffic threads")?,
            Err(_) => bail!("a traffic thread panicked"),
        }
    }
    let (samples, mut activity) = outcome?;
    daemon.check_running()?;
    daemon.stop(Duration::from_secs(10));
    activity.frames_sent = sent.load(Ordering::Relaxed);
    activity.frames_received = received.load(Ordering::Relaxed);
    let mut csv = String::from("secs,rss_kib,fds,cpu_secs\n");
    for s in &samples {
        let _ = writeln!(
            csv,
            "{:.3},{},{},{:.2}",
            s.secs, s.rss_kib, s.fds, s.cpu_secs
        );
    }
    std::fs::write(run_dir.join("samples.csv"), csv)?;
    let analysis = analyze(&samples, duration)?;
    let mut text = report(duration, samples.len(), &activity, &analysis);
    text.push_str(&log_summary(&daemon.log_text()));
    Ok(text)
}

/// The run's loop: once a second a scrape and a sample; SIGHUPs and
/// interface churn on their own cadence.
fn drive(
    daemon: &mut LabProcess,
    ns: &str,
    addr: SocketAddr,
    config: &Path,
    duration: Duration,
    pid: u32,
    z_threshold: &mut f64,
) -> Result<(Vec<Sample>, Activity)> {
    let mut activity = Activity::default();
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut next_sighup = SIGHUP_EVERY;
    let mut next_churn = CHURN_EVERY;
    let mut churned: Option<String> = None;
    let mut serial = 0u64;
    let mut tick = Duration::ZERO;
    let mut last_progress = Instant::now();
    while tick < duration {
        tick += POLL_INTERVAL;
        interrupt::sleep((start + tick).saturating_duration_since(Instant::now()))?;
        daemon.check_running()?;
        match http::get(ns, addr, "/metrics") {
            Ok((200, _)) => activity.scrapes_ok += 1,
            Ok((status, _)) => {
                activity.scrapes_failed += 1;
                step(&format!("soak: /metrics answered {status}"));
            }
            Err(error) => {
                activity.scrapes_failed += 1;
                step(&format!("soak: /metrics: {error:#}"));
            }
        }
        samples.push(sample(daemon.pid(), start.elapsed().as_secs_f64())?);
        if tick >= next_sighup {
            next_sighup += SIGHUP_EVERY;
            *z_threshold = if *z_threshold == 4.0 { 4.5 } else { 4.0 };
            replace_config(config, &config_text(*z_threshold, pid))?;
            daemon.signal(libc::SIGHUP)?;
            activity.sighups += 1;
        }
        if tick >= next_churn {
            next_churn += CHURN_EVERY;
            if let Some(name) = churned.take() {
                command::run("ip", &["-n", ns, "link", "del", &name])?;
                activity.interfaces_removed += 1;
            } else {
                serial += 1;
                let name = format!("tdsc{serial}a");
                let peer = format!("tdsc{serial}b");
                command::run(
                    "ip",
                    &[
                        "-n", ns, "link", "add", &name, "type", "veth", "peer", "name", &peer,
                    ],
                )?;
                command::run("ip", &["-n", ns, "link", "set", &name, "up"])?;
                command::run("ip", &["-n", ns, "link", "set", &peer, "up"])?;
                activity.interfaces_created += 1;
                churned = Some(name);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(60) {
            last_progress = Instant::now();
            let s = samples[samples.len() - 1];
            step(&format!(
                "soak: {:.0} s: RSS {:.0} KiB, {} fds, {:.2} s CPU; {} scrapes, {} failed",
                s.secs, s.rss_kib, s.fds, s.cpu_secs, activity.scrapes_ok, activity.scrapes_failed
            ));
        }
    }
    Ok((samples, activity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn least_squares_slope() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(slope(&xs, &[1.0, 3.0, 5.0, 7.0]), 2.0);
        assert_eq!(slope(&xs, &[4.0, 4.0, 4.0, 4.0]), 0.0);
        assert_eq!(slope(&[1.0], &[1.0]), 0.0);
    }

    /// A series growing 1 MiB per hour at a CPU cost that does not move:
    /// the analysis reads back the growth and calls the CPU flat.
    #[test]
    fn analysis_reads_back_a_known_growth() {
        let samples: Vec<Sample> = (0..600)
            .map(|i| {
                let secs = f64::from(i);
                Sample {
                    secs,
                    rss_kib: 50_000.0 + 1024.0 * secs / 3600.0,
                    fds: 20.0,
                    cpu_secs: 0.002 * secs,
                }
            })
            .collect();
        let a = analyze(&samples, Duration::from_secs(600)).unwrap();
        assert!((a.rss.per_hour - 1024.0).abs() < 1e-6, "{}", a.rss.per_hour);
        assert!((a.rss.late_per_hour - 1024.0).abs() < 1e-6);
        assert_eq!(a.fds.per_hour, 0.0);
        assert!((a.cpu_ms_per_poll.start - 2.0).abs() < 1e-9);
        assert!(a.cpu_ms_per_poll.per_hour.abs() < 1e-6);
        assert!(a.rss.end > a.rss.start);
    }
}
