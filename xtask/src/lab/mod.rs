//! `cargo xtask lab`: a mesh of telemetryd nodes with a real monitoring
//! stack, two real faults, and checks of what an operator would see.
//!
//! N network namespaces (nodes) in a ring of veth links with static routes,
//! one release `telemetryd` per node, and in a monitoring namespace a
//! Prometheus scraping every node with `monitoring/prometheus/telemetryd.rules.yml`,
//! an Alertmanager receiving Prometheus' alerts and every node's webhook, and
//! a VictoriaMetrics receiving Prometheus' remote write. Each node runs a
//! workload ([`agent`]) streaming TCP and UDP to its neighbours and to the
//! node two hops on, and a service reading a pipe.
//!
//! Faults: 10% random loss on one link (an nftables rule on the receiving
//! node), then slowed reads of the service on another node. For each, the
//! lab checks that the node's analyzer fires naming the device (or
//! syscall), that Alertmanager lists the alert from both paths (the node's
//! webhook, and Prometheus' `TelemetrydAnomalyActive`) naming the node and
//! the device within [`DELIVERY_LIMIT`] of the analyzer's firing time, that
//! Alertmanager notifies its receiver, and that everything resolves once
//! the fault ends. Then: the series are in VictoriaMetrics, every panel of
//! the Grafana dashboard returns data from the lab's Prometheus, and every
//! shipped rule evaluated without error.
//!
//! The analyzer's firing time is the `started_at` of the anomaly in the
//! node's `/api/v1/anomalies` (the time stamp of the snapshot on which the
//! analyzer decided to fire, also the webhook alert's `startsAt`). An
//! alert's delivery time is when the lab's poll of Alertmanager's
//! `GET /api/v2/alerts`, every [`AM_POLL`], first lists it: the delivery
//! figures are upper bounds by at most one poll.
//!
//! Nothing touches the host's network: every namespace, interface and
//! nftables table is the lab's (prefix `lab`), nothing listens in the host
//! namespace, and all of it is removed on exit, on failure and on Ctrl-C.

mod agent;
pub(crate) mod http;
pub(crate) mod interrupt;
mod net;
pub(crate) mod process;
mod stack;
mod time;

pub use agent::{run as run_agent, AgentArgs};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::step;
use process::{LabProcess, Launch};
use stack::{AmAlert, Stack};
use time::{parse_rfc3339, seconds_between};

/// What a fault's alert must take at most, from the analyzer's firing
/// time to being listed by Alertmanager.
pub const DELIVERY_LIMIT: Duration = Duration::from_secs(15);
/// How often the lab reads Alertmanager's alerts.
const AM_POLL: Duration = Duration::from_millis(250);
/// `analyzer.warmup` of the lab's nodes.
const WARMUP: Duration = Duration::from_secs(20);
/// Traffic per peer: TCP writes and UDP datagrams (200 bytes) a second.
const TCP_RATE: u32 = 100;
const UDP_RATE: u32 = 50;
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;
/// The service: SERVICE_READERS threads, each reading a byte from its pipe
/// every READ_PERIOD (1,000 reads a second in all), during the latency
/// fault every SLOW_READ_PERIOD: far past 4x (the analyzer's default
/// latency_factor) whatever the scheduling delays of a loaded machine add
/// to the baseline, and still more reads a poll (80) than the analyzer's
/// default min_calls (50).
const SERVICE_READERS: usize = 8;
const READ_PERIOD: Duration = Duration::from_millis(8);
const SLOW_READ_PERIOD: Duration = Duration::from_millis(100);
/// The loss fault: node LOSS_NODE drops this share of what arrives from
/// node LOSS_FROM.
const LOSS_NODE: usize = 3;
const LOSS_FROM: usize = 2;
const LOSS_PERCENT: u32 = 10;
/// The node whose service's reads slow down.
const LATENCY_NODE: usize = 4;
/// How long after the analyzer fired the lab compares its figure with
/// Prometheus' samples (the fault stays on that long).
const CHECK_SPAN: Duration = Duration::from_secs(6);
const TELEMETRYD_PORT: u16 = 9469;

pub struct Options {
    pub nodes: usize,
    /// Also inject the latency fault (the full lab); the test suite's short
    /// lab injects only the loss.
    pub latency_fault: bool,
    /// The telemetryd binary the nodes run.
    pub binary: PathBuf,
}

/// Runs the lab and prints its report; an error names the check that failed.
pub fn run(root: &Path, options: &Options) -> Result<String> {
    ensure!(
        options.nodes >= 5,
        "the lab needs at least 5 nodes, not {}",
        options.nodes
    );
    ensure!(
        options.nodes <= 50,
        "at most 50 nodes, not {}",
        options.nodes
    );
    ensure!(
        options.binary.is_file(),
        "{} is missing",
        options.binary.display()
    );
    interrupt::install();
    net::remove_stale_namespaces()?;
    let tag = std::process::id().to_string();
    let lab_root = root.join("target/lab");
    remove_stale_run_dirs(&lab_root);
    let run_dir = lab_root.join(&tag);
    std::fs::create_dir_all(&run_dir)?;
    let result =
        Lab::start(root, options, &tag, &run_dir).and_then(|mut lab| lab.exercise(options));
    interrupt::restore();
    // The data of the stack is large and of no use afterwards; the logs,
    // configurations and report stay until the next run.
    let _ = std::fs::remove_dir_all(run_dir.join("data"));
    match result {
        Ok(report) => {
            std::fs::write(run_dir.join("report.txt"), &report)?;
            Ok(report)
        }
        Err(e) => Err(e.context(format!(
            "the lab failed; logs of every process are in {}",
            run_dir.display()
        ))),
    }
}

/// Run directories of labs whose process is gone.
fn remove_stale_run_dirs(lab_root: &Path) {
    let Ok(entries) = std::fs::read_dir(lab_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{name}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The running lab. Fields drop in order: the watcher stops polling, then
/// the processes stop (all signalled at once by `Drop`), then the
/// namespaces go.
struct Lab {
    watcher: AlertWatcher,
    stack: Stack,
    daemons: Vec<LabProcess>,
    agents: Vec<LabProcess>,
    topology: net::Topology,
    root: PathBuf,
    started: Instant,
    started_at: SystemTime,
    report: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.watcher.stop();
        let everyone = [
            &self.stack.prometheus,
            &self.stack.alertmanager,
            &self.stack.victoria_metrics,
        ]
        .into_iter()
        .chain(&self.daemons)
        .chain(&self.agents);
        for p in everyone {
            let _ = p.signal(libc::SIGTERM);
        }
    }
}

fn node_config(i: usize, n: usize, agent_pid: u32) -> String {
    let (cw, ccw) = net::neighbours(i, n);
    let links = format!(
        "\"{}\", \"{}\"",
        net::link_device(cw),
        net::link_device(ccw)
    );
    format!(
        r#"# Node {node} of the lab (written by cargo xtask lab).
[daemon]
poll_interval = "1s"
[http]
listen = "0.0.0.0:{TELEMETRYD_PORT}"
[log]
format = "json"
level = "info"
[xdp]
# The ring links. The management link carries only the scrapes and the
# webhook: bursts every scrape interval, which a late scrape turns into a
# traffic_drop of that link.
interfaces = [{links}]
[syscalls]
# The lab's nodes share one kernel: each traces its own workload only. On
# a real node, pids = [] traces every process.
pids = [{agent_pid}]
[analyzer]
warmup = "{warmup}s"
webhook = "http://{am}"
webhook_timeout = "2s"
"#,
        node = net::node_name(i),
        warmup = WARMUP.as_secs(),
        am = stack::ALERTMANAGER,
    )
}

impl Lab {
    fn start(root: &Path, options: &Options, tag: &str, run_dir: &Path) -> Result<Self> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let n = options.nodes;
        crate::monitoring::check_rules(root)?;
        let topology = net::Topology::build(tag, n)?;
        let exe = std::env::current_exe().context("finding the xtask binary")?;

        step(&format!(
            "lab: a workload and a telemetryd on each of {n} nodes"
        ));
        let mut agents = Vec::with_capacity(n);
        for i in 1..=n {
            let (cw, ccw) = net::neighbours(i, n);
            let two_on = cw % n + 1;
            let mut args = vec![
                "lab-agent".to_owned(),
                format!("--tcp-port={TCP_PORT}"),
                format!("--udp-port={UDP_PORT}"),
                format!("--tcp-rate={TCP_RATE}"),
                format!("--udp-rate={UDP_RATE}"),
                format!("--readers={SERVICE_READERS}"),
                format!("--read-period-us={}", READ_PERIOD.as_micros()),
                format!("--slow-read-period-us={}", SLOW_READ_PERIOD.as_micros()),
                "--max-seconds=3600".to_owned(),
            ];
            for peer in [cw, ccw, two_on] {
                args.push(format!("--peer={}", net::node_ip(peer)));
            }
            agents.push(LabProcess::start(
                Launch {
                    name: &format!("agent-n{i}"),
                    namespace: &topology.node(i).name,
                    program: &exe,
                    args,
                    hostname: Some(&net::node_name(i)),
                },
                run_dir,
            )?);
        }
        let mut daemons = Vec::with_capacity(n);
        for (i, agent) in (1..=n).zip(&agents) {
            let config = run_dir.join(format!("telemetryd-n{i}.toml"));
            std::fs::write(&config, node_config(i, n, agent.pid()))?;
            daemons.push(LabProcess::start(
                Launch {
                    name: &format!("telemetryd-n{i}"),
                    namespace: &topology.node(i).name,
                    program: &options.binary,
                    args: vec![
                        "run".into(),
                        "--config".into(),
                        config.display().to_string(),
                    ],
                    hostname: Some(&net::node_name(i)),
                },
                run_dir,
            )?);
        }
        step("lab: Prometheus, Alertmanager and VictoriaMetrics in the monitoring namespace");
        let stack = Stack::start(
            &topology.monitor.name,
            run_dir,
            &crate::monitoring::rules(root),
            n,
        )?;
        let watcher = AlertWatcher::start(&topology.monitor.name);
        Ok(Self {
            watcher,
            stack,
            daemons,
            agents,
            topology,
            root: root.to_path_buf(),
            started,
            started_at,
            report: String::new(),
        })
    }

    fn mon(&self) -> &str {
        &self.topology.monitor.name
    }

    fn n(&self) -> usize {
        self.topology.nodes.len()
    }

    fn line(&mut self, text: impl AsRef<str>) {
        step(text.as_ref());
        self.report.push_str(text.as_ref());
        self.report.push('\n');
    }

    /// Everything keeps running; an error names the one that stopped.
    fn check_running(&mut self) -> Result<()> {
        self.stack.check_running()?;
        for p in self.daemons.iter_mut().chain(self.agents.iter_mut()) {
            p.check_running()?;
        }
        Ok(())
    }

    fn anomalies(&self, i: usize) -> Result<Value> {
        let addr = SocketAddr::from((net::mgmt_ip(i), TELEMETRYD_PORT));
        http::get_json(self.mon(), addr, "/api/v1/anomalies")
    }

    fn exercise(&mut self, options: &Options) -> Result<String> {
        let n = self.n();
        let _ = writeln!(
            self.report,
            "telemetryd mesh lab: {n} nodes in a ring; each streams {TCP_RATE} TCP writes/s and \
             {UDP_RATE} UDP datagrams/s of 200 B to each of 3 peers (its neighbours and the node \
             two hops on)"
        );
        self.wait_ready()?;
        self.wait_quiet_after_warmup()?;

        let loss = self.loss_fault()?;
        let mut faults = vec![loss];
        if options.latency_fault {
            faults.push(self.latency_fault()?);
        }
        self.wait_everything_resolved(&faults)?;
        self.check_no_stray_alerts(&faults)?;
        self.check_victoria_metrics(&faults)?;
        self.check_dashboard()?;
        self.check_rules_health()?;
        self.check_running()?;
        self.line(format!(
            "timings in seconds (delivery: from the analyzer's firing to the first of the lab's \
             {} ms polls of Alertmanager's /api/v2/alerts listing the alert; limit {} s):",
            AM_POLL.as_millis(),
            DELIVERY_LIMIT.as_secs()
        ));
        self.line(format!(
            "  {:<8} {:<8} {:<12} {:<12} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "fault", "node", "kind", "subject", "fire", "hook", "rule", "notify", "clear"
        ));
        for fault in &faults {
            let line = fault.timings();
            self.line(line);
        }
        self.line(
            "  (fire: fault to analyzer; hook, rule: analyzer to Alertmanager by the webhook and \
             by Prometheus' TelemetrydAnomalyActive; notify: analyzer to the receiver; clear: \
             end of the fault to both alerts gone)",
        );
        let seen = self.watcher.episodes();
        self.line(format!(
            "every alert Alertmanager listed during the run ({}):",
            seen.len()
        ));
        for episode in &seen {
            let line = format!(
                "  {}: +{:.1} s to {}",
                episode.alert.describe(),
                seconds_between(self.started_at, episode.first_seen),
                episode.gone_at.map_or("(still listed)".into(), |t| format!(
                    "+{:.1} s",
                    seconds_between(self.started_at, t)
                ))
            );
            self.line(line);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        self.line(format!("lab passed in {elapsed:.0} s"));
        Ok(self.report.clone())
    }

    /// Every node ready, every target up, every rule group loaded.
    fn wait_ready(&mut self) -> Result<()> {
        let n = self.n();
        for i in 1..=n {
            let addr = SocketAddr::from((net::mgmt_ip(i), TELEMETRYD_PORT));
            let mon = self.mon().to_owned();
            interrupt::wait_for(
                Duration::from_secs(60),
                Duration::from_millis(200),
                &format!("{} ready (/readyz)", net::node_name(i)),
                || {
                    self.daemons[i - 1].check_running()?;
                    Ok(matches!(http::get(&mon, addr, "/readyz"), Ok((200, _))).then_some(()))
                },
            )?;
        }
        let mon = self.mon().to_owned();
        interrupt::wait_for(
            Duration::from_secs(60),
            Duration::from_millis(500),
            "Prometheus scraping every node",
            || {
                self.stack.check_running()?;
                let up = stack::instant_query(
                    &mon,
                    stack::PROMETHEUS,
                    &format!("sum(up{{job=\"{}\"}})", stack::JOB),
                    None,
                )
                .ok()
                .and_then(|r| stack::single_value(&r));
                Ok((up == Some(n as f64)).then_some(()))
            },
        )?;
        let t = self.started.elapsed().as_secs_f64();
        self.line(format!(
            "ready at +{t:.1} s: {n} nodes answer /readyz, Prometheus scrapes all {n} (up == 1)"
        ));
        Ok(())
    }

    /// Past the analyzer's warm-up with steady traffic, no node reports an
    /// anomaly.
    fn wait_quiet_after_warmup(&mut self) -> Result<()> {
        let settle = WARMUP + Duration::from_secs(8);
        let elapsed = self.started.elapsed();
        if settle > elapsed {
            interrupt::sleep(settle - elapsed)?;
        }
        let n = self.n();
        let mut active = Vec::new();
        for i in 1..=n {
            let doc = self.anomalies(i)?;
            for a in doc["active"].as_array().into_iter().flatten() {
                active.push(format!("{}: {}", net::node_name(i), a["explanation"]));
            }
        }
        ensure!(
            active.is_empty(),
            "steady traffic raised anomalies after the warm-up:\n{}",
            active.join("\n")
        );
        let t = self.started.elapsed().as_secs_f64();
        self.line(format!(
            "steady at +{t:.1} s: past the {}-second warm-up no node reports an anomaly",
            WARMUP.as_secs()
        ));
        Ok(())
    }

    fn loss_fault(&mut self) -> Result<Fault> {
        let device = net::link_device(LOSS_FROM);
        let node = LOSS_NODE;
        let ns = self.topology.node(node).name.clone();
        self.line(format!(
            "fault 1: {LOSS_PERCENT}% random loss on the link {} -> {} (nftables on {}, packets \
             arriving on {device})",
            net::node_name(LOSS_FROM),
            net::node_name(node),
            net::node_name(node)
        ));
        let rule = LinkLoss::add(&ns, &device, LOSS_PERCENT)?;
        let mut fault = self.observe_fault(Fault::new("loss", node, "packet_loss", &device))?;
        rule.remove()?;
        fault.ended = Some(SystemTime::now());
        self.observe_resolution(&mut fault)?;
        Ok(fault)
    }

    fn latency_fault(&mut self) -> Result<Fault> {
        let node = LATENCY_NODE;
        self.line(format!(
            "fault 2: the service on {} reads its pipe every {} ms instead of every {} ms \
             (its read(2) calls block that long)",
            net::node_name(node),
            SLOW_READ_PERIOD.as_millis(),
            READ_PERIOD.as_millis()
        ));
        self.agents[node - 1].signal(libc::SIGUSR1)?;
        let observed = self.observe_fault(Fault::new("latency", node, "latency", "read"));
        // Back to normal whatever happened.
        let restored = self.agents[node - 1].signal(libc::SIGUSR2);
        let mut fault = observed?;
        restored?;
        fault.ended = Some(SystemTime::now());
        self.observe_resolution(&mut fault)?;
        Ok(fault)
    }

    /// Waits for the analyzer to fire, then for both alerts in
    /// Alertmanager and the receiver's notification; checks the labels and
    /// the delivery limit.
    fn observe_fault(&mut self, mut fault: Fault) -> Result<Fault> {
        let node_name = net::node_name(fault.node);
        let (kind, subject) = (fault.kind, fault.subject.clone());
        let record = interrupt::wait_for(
            Duration::from_secs(40),
            Duration::from_millis(200),
            &format!("{kind} on {subject} firing in {node_name}'s analyzer"),
            || {
                self.check_running()?;
                let doc = self.anomalies(fault.node)?;
                Ok(doc["active"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["kind"] == kind && a["subject"] == subject.as_str())
                    .cloned())
            },
        )
        .with_context(|| self.diagnose(&fault))?;
        let fired = parse_rfc3339(record["started_at"].as_str().unwrap_or_default())?;
        fault.fired = Some(fired);
        fault.explanation = record["explanation"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.line(format!(
            "  {node_name}'s analyzer fired {kind} on {subject} {:.1} s after the fault: {}",
            seconds_between(fault.injected, fired),
            fault.explanation
        ));

        let webhook = [
            ("alertname", "TelemetrydAnomaly"),
            ("instance", node_name.as_str()),
            ("kind", kind),
            ("subject", subject.as_str()),
        ];
        let rule = [
            ("alertname", "TelemetrydAnomalyActive"),
            ("job", stack::JOB),
            ("instance", node_name.as_str()),
            ("kind", kind),
            ("subject", subject.as_str()),
        ];
        let limit = DELIVERY_LIMIT + Duration::from_secs(5);
        let (via_webhook, via_rule) = interrupt::wait_for(
            limit,
            AM_POLL,
            &format!("both alerts for {kind} on {subject} at {node_name} in Alertmanager"),
            || {
                self.check_running()?;
                let w = self.watcher.first_listed(&webhook, fired);
                let r = self.watcher.first_listed(&rule, fired);
                Ok(w.zip(r))
            },
        )?;
        fault.webhook_listed = Some(via_webhook.1);
        fault.rule_listed = Some(via_rule.1);
        for (path, (alert, listed)) in [("webhook", &via_webhook), ("Prometheus rule", &via_rule)] {
            let after = seconds_between(fired, *listed);
            self.line(format!(
                "  Alertmanager lists {} ({path}) {after:.1} s after the analyzer fired",
                alert.describe()
            ));
            ensure!(
                after <= DELIVERY_LIMIT.as_secs_f64(),
                "the {path} alert took {after:.1} s from the analyzer's firing to Alertmanager, \
                 over the {} s limit",
                DELIVERY_LIMIT.as_secs()
            );
            ensure!(
                alert.label("instance") == node_name && alert.label("subject") == subject,
                "the alert names the wrong node or device: {}",
                alert.describe()
            );
        }
        let webhook_alert = &via_webhook.0;
        ensure!(
            ["warning", "critical"].contains(&webhook_alert.label("severity")),
            "{}",
            webhook_alert.describe()
        );
        // The webhook alert starts when the analyzer fired (both are the
        // snapshot's time stamp, to the millisecond).
        let skew = seconds_between(fired, webhook_alert.starts_at).abs();
        ensure!(
            skew < 0.001,
            "the webhook alert's startsAt is {skew} s off the analyzer's started_at"
        );
        // No other node reports this kind of anomaly on a device or syscall
        // (the senders' TCP retransmits, subject "node", are expected).
        for episode in self.watcher.episodes() {
            let a = &episode.alert;
            if a.label("kind") == kind
                && a.label("subject") != "node"
                && !(a.label("instance") == node_name && a.label("subject") == subject)
            {
                bail!(
                    "an alert for the wrong node or device during the {} fault: {}",
                    fault.name,
                    a.describe()
                );
            }
        }

        let notified = interrupt::wait_for(
            limit,
            AM_POLL,
            "Alertmanager notifying its receiver of the webhook alert",
            || {
                Ok(self
                    .stack
                    .receiver
                    .notifications()
                    .into_iter()
                    .find(|n| {
                        n.received_at >= fired
                            && n.alerts.iter().any(|a| {
                                a.get("__status").map(String::as_str) == Some("firing")
                                    && webhook
                                        .iter()
                                        .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
                            })
                    })
                    .map(|n| n.received_at))
            },
        )?;
        fault.notified = Some(notified);
        self.line(format!(
            "  Alertmanager notified its receiver {:.1} s after the analyzer fired",
            seconds_between(fired, notified)
        ));
        self.check_value(&fault, record["value"].as_f64().unwrap_or(f64::NAN))?;
        Ok(fault)
    }

    /// What the node and Prometheus saw, for a fault the analyzer missed.
    fn diagnose(&self, fault: &Fault) -> String {
        let node = net::node_name(fault.node);
        let queries = [
            format!("instance_syscall:telemetryd_syscall_latency_seconds:p99_1m{{instance=\"{node}\"}}"),
            format!("sum by (syscall) (rate(telemetryd_syscall_latency_seconds_count{{instance=\"{node}\"}}[10s]))"),
            format!("sum by (device, reason) (rate(telemetryd_kernel_device_drops_total{{instance=\"{node}\"}}[10s]))"),
        ];
        let mut text = format!(
            "{node}'s /api/v1/anomalies: {}",
            self.anomalies(fault.node)
                .map_or_else(|e| format!("{e:#}"), |d| d.to_string())
        );
        for q in queries {
            let r = stack::instant_query(self.mon(), stack::PROMETHEUS, &q, None);
            let _ = write!(text, "\nPrometheus {q}: ");
            match r {
                Ok(series) => {
                    for s in series {
                        let _ = write!(text, "{} = {}; ", s["metric"], s["value"][1]);
                    }
                }
                Err(e) => {
                    let _ = write!(text, "{e:#}");
                }
            }
        }
        text
    }

    /// The analyzer's figure against Prometheus' samples of the same
    /// counters while the fault was on (and, for the loss, against the
    /// share of packets the rule drops): what the operator reads is what
    /// happened.
    fn check_value(&mut self, fault: &Fault, value: f64) -> Result<()> {
        let fired = fault.fired.context("not fired")?;
        // Two scrapes: the last before the firing (the fault had been on
        // for `fire_after` polls by then, more than a scrape interval) and
        // the last before CHECK_SPAN later; the fault stays on until this
        // check is done.
        let (t1, t2) = (fired, fired + CHECK_SPAN);
        let wait = (t2 + stack::SCRAPE_INTERVAL)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        interrupt::sleep(wait)?;
        let mon = self.mon().to_owned();
        let node = net::node_name(fault.node);
        let at = |q: &str, t: SystemTime| -> Result<Option<f64>> {
            let r = stack::instant_query(&mon, stack::PROMETHEUS, q, Some(t))?;
            Ok(stack::single_value(&r))
        };
        // A counter's increase between the two scrapes, and their distance.
        let delta = |series: &str| -> Result<(f64, f64)> {
            let sum = format!("sum({series})");
            let stamp = format!("max(timestamp({series}))");
            let (v1, v2) = (at(&sum, t1)?.unwrap_or(0.0), at(&sum, t2)?);
            let v2 = v2.with_context(|| format!("{sum} has no sample"))?;
            let (s1, s2) = (at(&stamp, t1)?, at(&stamp, t2)?);
            let secs = match (s1, s2) {
                (Some(a), Some(b)) if b > a => b - a,
                _ => bail!("{series}: no two scrapes around the firing"),
            };
            Ok((v2 - v1, secs))
        };
        match fault.kind {
            "packet_loss" => {
                let sel = format!("instance=\"{node}\", device=\"{}\"", fault.subject);
                let (arrived, secs) = delta(&format!("telemetryd_xdp_packets_total{{{sel}}}"))?;
                let (dropped, _) = delta(&format!(
                    "telemetryd_kernel_device_drops_total{{{sel}, reason=\"NETFILTER_DROP\"}}"
                ))?;
                let p = f64::from(LOSS_PERCENT) / 100.0;
                self.line(format!(
                    "  Prometheus, {secs:.0} s of the fault: {arrived:.0} packets arrived on {}, \
                     {dropped:.0} dropped by netfilter ({:.1}%), {:.1}/s; the analyzer said {value:.1}/s",
                    fault.subject,
                    100.0 * dropped / arrived,
                    dropped / secs
                ));
                // The rule drops each packet with probability p: the count
                // is binomial; 4.5 standard deviations fail by chance
                // about once in 300,000 runs.
                let sigma = (arrived * p * (1.0 - p)).sqrt();
                ensure!(
                    arrived > 100.0 && (dropped - p * arrived).abs() <= 4.5 * sigma,
                    "{dropped:.0} of {arrived:.0} arriving packets counted as dropped, for a \
                     {LOSS_PERCENT}% rule (expected {:.0} +- {:.0})",
                    p * arrived,
                    4.5 * sigma
                );
                let rate = dropped / secs;
                ensure!(
                    (0.6 * rate..=1.6 * rate).contains(&value),
                    "the analyzer's {value:.1} drops/s is far from Prometheus' {rate:.1}/s"
                );
            }
            "latency" => {
                let p99 = at(
                    &format!(
                        "histogram_quantile(0.99, sum by (le) (increase(telemetryd_syscall_latency_seconds_bucket{{instance=\"{node}\", syscall=\"{}\"}}[{}s])))",
                        fault.subject,
                        CHECK_SPAN.as_secs()
                    ),
                    t2,
                )?
                .context("no p99 from Prometheus")?;
                self.line(format!(
                    "  Prometheus: p99 of {} on {node} {:.1} ms (histogram_quantile over {} s of \
                     the fault); the analyzer said {:.1} ms; the service's reads wait {} ms",
                    fault.subject,
                    p99 * 1e3,
                    CHECK_SPAN.as_secs(),
                    value * 1e3,
                    SLOW_READ_PERIOD.as_millis()
                ));
                // Both interpolate inside the kernel's log2 buckets: they
                // must agree on the bucket, and it must hold the period.
                let bucket = |s: f64| telemetryd_common::syscalls::bucket_index((s * 1e9) as u64);
                ensure!(
                    bucket(value) == bucket(p99),
                    "the analyzer's p99 ({:.1} ms) and Prometheus' ({:.1} ms) are in different buckets",
                    value * 1e3,
                    p99 * 1e3
                );
                let period = SLOW_READ_PERIOD.as_secs_f64();
                ensure!(
                    value > period / 2.0 && value <= 4.0 * period,
                    "a p99 of {:.1} ms for reads that wait {} ms",
                    value * 1e3,
                    SLOW_READ_PERIOD.as_millis()
                );
            }
            other => bail!("no check for {other}"),
        }
        Ok(())
    }

    /// After the fault ended: the analyzer resolves, both alerts leave
    /// Alertmanager, the receiver hears that they resolved.
    fn observe_resolution(&mut self, fault: &mut Fault) -> Result<()> {
        let ended = fault.ended.context("the fault has not ended")?;
        let node_name = net::node_name(fault.node);
        let (kind, subject) = (fault.kind, fault.subject.clone());
        let limit = Duration::from_secs(45);
        let resolved = interrupt::wait_for(
            limit,
            Duration::from_millis(200),
            &format!("{kind} on {subject} resolving in {node_name}'s analyzer"),
            || {
                self.check_running()?;
                let doc = self.anomalies(fault.node)?;
                Ok(doc["resolved"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["kind"] == kind && a["subject"] == subject.as_str())
                    .and_then(|a| a["resolved_at"].as_str().map(parse_rfc3339)))
            },
        )??;
        let wanted = [
            ("instance", node_name.as_str()),
            ("kind", kind),
            ("subject", subject.as_str()),
        ];
        let gone = interrupt::wait_for(
            limit,
            AM_POLL,
            "both alerts resolved in Alertmanager",
            || {
                self.check_running()?;
                Ok(self.watcher.all_gone(&wanted))
            },
        )?;
        fault.resolved_in_am = Some(gone);
        self.line(format!(
            "  resolved: the analyzer {:.1} s after the fault ended, Alertmanager {:.1} s after",
            seconds_between(ended, resolved),
            seconds_between(ended, gone)
        ));
        Ok(())
    }

    /// After the last fault: nothing active on any node or in
    /// Alertmanager, and the receiver heard every firing alert resolve.
    fn wait_everything_resolved(&mut self, faults: &[Fault]) -> Result<()> {
        let n = self.n();
        let mon = self.mon().to_owned();
        let quiet = interrupt::wait_for(
            Duration::from_secs(60),
            Duration::from_millis(500),
            "every anomaly and alert resolved after the faults",
            || {
                self.check_running()?;
                for i in 1..=n {
                    if self.anomalies(i)?["active"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                    {
                        return Ok(None);
                    }
                }
                let listed = stack::alertmanager_alerts(&mon)?;
                Ok(listed.is_empty().then(SystemTime::now))
            },
        )?;
        for fault in faults {
            let node_name = net::node_name(fault.node);
            interrupt::wait_for(
                Duration::from_secs(15),
                AM_POLL,
                "the receiver's resolved notification",
                || {
                    Ok(self.stack.receiver.notifications().into_iter().find(|n| {
                        n.alerts.iter().any(|a| {
                            a.get("__status").map(String::as_str) == Some("resolved")
                                && a.get("instance") == Some(&node_name)
                                && a.get("subject") == Some(&fault.subject)
                        })
                    }))
                },
            )?;
        }
        let last_end = faults.iter().filter_map(|f| f.ended).max().unwrap_or(quiet);
        self.line(format!(
            "all clear {:.1} s after the last fault ended: no node reports an anomaly, \
             Alertmanager lists no alert, the receiver was told each fault's alerts resolved",
            seconds_between(last_end, quiet)
        ));
        Ok(())
    }

    /// Every alert Alertmanager listed during the run was a fault's, or the
    /// TCP retransmits the loss caused at the senders (`packet_loss` on
    /// `node`, while the loss was on): nothing fired for a node or device
    /// the faults did not touch, and no health alert fired.
    fn check_no_stray_alerts(&self, faults: &[Fault]) -> Result<()> {
        let grace = Duration::from_secs(15);
        let mut stray = Vec::new();
        for episode in self.watcher.episodes() {
            let a = &episode.alert;
            let alertname = a.label("alertname");
            let anomaly =
                alertname == "TelemetrydAnomaly" || alertname == "TelemetrydAnomalyActive";
            let explained = anomaly
                && faults.iter().any(|f| {
                    let during = episode.first_seen >= f.injected
                        && f.ended.is_some_and(|end| episode.first_seen <= end + grace);
                    let own = a.label("instance") == net::node_name(f.node)
                        && a.label("kind") == f.kind
                        && a.label("subject") == f.subject;
                    let retransmits = f.kind == "packet_loss"
                        && a.label("kind") == "packet_loss"
                        && a.label("subject") == "node";
                    during && (own || retransmits)
                });
            if !explained {
                stray.push(a.describe());
            }
        }
        ensure!(
            stray.is_empty(),
            "alerts no fault explains:\n{}",
            stray.join("\n")
        );
        Ok(())
    }

    /// Prometheus' remote write reached VictoriaMetrics: the same sample
    /// values at one instant, every node's series, and the faults.
    fn check_victoria_metrics(&mut self, faults: &[Fault]) -> Result<()> {
        let mon = self.mon().to_owned();
        let n = self.n();
        // An instant both have settled: Prometheus sends within a second.
        let at = SystemTime::now() - Duration::from_secs(10);
        let query = "sum by (instance) (telemetryd_xdp_packets_total)";
        let values = |server| -> Result<BTreeMap<String, String>> {
            Ok(stack::instant_query(&mon, server, query, Some(at))?
                .iter()
                .map(|s| {
                    (
                        s["metric"]["instance"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        s["value"][1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect())
        };
        let (in_prometheus, in_vm) = interrupt::wait_for(
            Duration::from_secs(20),
            Duration::from_secs(1),
            "VictoriaMetrics answering like Prometheus",
            || {
                let p = values(stack::PROMETHEUS)?;
                let v = values(stack::VICTORIA_METRICS)?;
                Ok((p.len() == n && p == v).then_some((p, v)))
            },
        )
        .with_context(|| {
            format!(
                "{query} at {:.0}: Prometheus {:?}, VictoriaMetrics {:?}",
                stack::unix_seconds(at),
                values(stack::PROMETHEUS).ok(),
                values(stack::VICTORIA_METRICS).ok()
            )
        })?;
        let total: f64 = in_vm.values().filter_map(|v| v.parse::<f64>().ok()).sum();
        let _ = in_prometheus;
        let series = |server| {
            stack::instant_query(
                &mon,
                server,
                "count({__name__=~\"telemetryd_.+\"})",
                Some(at),
            )
            .map(|r| stack::single_value(&r))
        };
        let (p_series, v_series) = (series(stack::PROMETHEUS)?, series(stack::VICTORIA_METRICS)?);
        ensure!(
            p_series.is_some() && p_series == v_series,
            "telemetryd series at one instant: Prometheus {p_series:?}, VictoriaMetrics {v_series:?}"
        );
        let window = self.started.elapsed().as_secs() + 60;
        let mut seen = Vec::new();
        for fault in faults {
            let q = format!(
                "max_over_time(telemetryd_anomaly_active{{instance=\"{}\", kind=\"{}\", subject=\"{}\"}}[{window}s])",
                net::node_name(fault.node),
                fault.kind,
                fault.subject
            );
            let r = stack::instant_query(&mon, stack::VICTORIA_METRICS, &q, None)?;
            ensure!(
                stack::single_value(&r) == Some(1.0),
                "VictoriaMetrics does not have the {} fault's anomaly: {q} = {r:?}",
                fault.name
            );
            seen.push(format!("{} on {}", fault.kind, fault.subject));
        }
        self.line(format!(
            "VictoriaMetrics (remote write) answers like Prometheus: {} telemetryd series, {n} \
             nodes' {query} equal at one instant ({total:.0} packets in all), and holds {}",
            v_series.unwrap_or_default(),
            seen.join(" and ")
        ));
        Ok(())
    }

    /// Every query of every dashboard panel returns data over the run.
    fn check_dashboard(&mut self) -> Result<()> {
        let path = crate::monitoring::dashboard(&self.root);
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let queries = crate::monitoring::panel_queries(&dashboard)?;
        // As Grafana would expand them: every job, node and syscall, and a
        // rate interval of four scrapes (Grafana's $__rate_interval floor).
        let rate_interval = format!("{}s", 4 * stack::SCRAPE_INTERVAL.as_secs());
        let values = [
            ("job", stack::JOB),
            ("instance", ".*"),
            ("syscall", ".*"),
            ("__rate_interval", rate_interval.as_str()),
        ];
        let mon = self.mon().to_owned();
        let end = SystemTime::now();
        let mut empty = Vec::new();
        let mut counts = Vec::new();
        for q in &queries {
            let expr = crate::monitoring::expand(&q.expr, &values)?;
            let result = stack::range_query(
                &mon,
                stack::PROMETHEUS,
                &expr,
                self.started_at,
                end,
                Duration::from_secs(5),
            )?;
            // Data: some series with some number in it (not only NaN).
            let points = result
                .iter()
                .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                .filter(|v| {
                    v[1].as_str()
                        .and_then(|x| x.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                })
                .count();
            if result.is_empty() || points == 0 {
                empty.push(format!("{} [{}]: {expr}", q.panel, q.ref_id));
            }
            counts.push(result.len());
        }
        ensure!(
            empty.is_empty(),
            "dashboard queries that returned no data from the lab's Prometheus:\n{}",
            empty.join("\n")
        );
        self.line(format!(
            "dashboard: all {} queries of {} panels return data over the run ({} to {} series each)",
            queries.len(),
            queries.iter().map(|q| &q.panel).collect::<std::collections::BTreeSet<_>>().len(),
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0)
        ));
        Ok(())
    }

    /// Every shipped rule was evaluated, without error.
    fn check_rules_health(&mut self) -> Result<()> {
        let doc = http::get_json(self.mon(), stack::PROMETHEUS, "/api/v1/rules")?;
        let mut count = 0;
        let mut bad = Vec::new();
        for group in doc["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                count += 1;
                if rule["health"] != "ok" {
                    bad.push(format!(
                        "{}: health {} {}",
                        rule["name"], rule["health"], rule["lastError"]
                    ));
                }
            }
        }
        ensure!(count > 0, "Prometheus loaded no rules: {doc}");
        ensure!(
            bad.is_empty(),
            "rules that failed to evaluate:\n{}",
            bad.join("\n")
        );
        self.line(format!(
            "Prometheus evaluated all {count} shipped rules without error"
        ));
        Ok(())
    }
}

/// What the lab saw of one fault.
struct Fault {
    name: &'static str,
    node: usize,
    kind: &'static str,
    subject: String,
    injected: SystemTime,
    fired: Option<SystemTime>,
    explanation: String,
    webhook_listed: Option<SystemTime>,
    rule_listed: Option<SystemTime>,
    notified: Option<SystemTime>,
    ended: Option<SystemTime>,
    resolved_in_am: Option<SystemTime>,
}

impl Fault {
    fn new(name: &'static str, node: usize, kind: &'static str, subject: &str) -> Self {
        Self {
            name,
            node,
            kind,
            subject: subject.to_owned(),
            injected: SystemTime::now(),
            fired: None,
            explanation: String::new(),
            webhook_listed: None,
            rule_listed: None,
            notified: None,
            ended: None,
            resolved_in_am: None,
        }
    }

    /// One line of the timing table: seconds from the fault to the
    /// analyzer firing, from the firing to each delivery, and from the end
    /// of the fault to Alertmanager dropping the alerts.
    fn timings(&self) -> String {
        let since = |from: Option<SystemTime>, to: Option<SystemTime>| match (from, to) {
            (Some(a), Some(b)) => format!("{:>6.1}", seconds_between(a, b)),
            _ => format!("{:>6}", "-"),
        };
        format!(
            "  {:<8} {:<8} {:<12} {:<12} {} {} {} {} {}",
            self.name,
            net::node_name(self.node),
            self.kind,
            self.subject,
            since(Some(self.injected), self.fired),
            since(self.fired, self.webhook_listed),
            since(self.fired, self.rule_listed),
            since(self.fired, self.notified),
            since(self.ended, self.resolved_in_am),
        )
    }
}

/// An nftables table in a node's namespace dropping `percent`% of the
/// packets arriving on `device` at random, for the node and through it
/// (prerouting). Deleted by [`LinkLoss::remove`] or on drop.
struct LinkLoss {
    ns: String,
    removed: bool,
}

const LOSS_TABLE: &str = "lab-loss";

impl LinkLoss {
    fn add(ns: &str, device: &str, percent: u32) -> Result<Self> {
        let guard = Self {
            ns: ns.to_owned(),
            removed: false,
        };
        let nft = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns, "nft"];
            full.extend_from_slice(args);
            net::run("ip", &full)
        };
        nft(&["add", "table", "inet", LOSS_TABLE])?;
        nft(&[
            "add",
            "chain",
            "inet",
            LOSS_TABLE,
            "prerouting",
            "{ type filter hook prerouting priority 0 ; }",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            LOSS_TABLE,
            "prerouting",
            "iifname",
            device,
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

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        net::run(
            "ip",
            &[
                "netns", "exec", &self.ns, "nft", "delete", "table", "inet", LOSS_TABLE,
            ],
        )
    }
}

impl Drop for LinkLoss {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &self.ns, "nft", "delete", "table", "inet", LOSS_TABLE,
                ])
                .status();
        }
    }
}

/// One stretch of time an alert was listed by Alertmanager.
#[derive(Clone, Debug)]
struct Episode {
    alert: AmAlert,
    first_seen: SystemTime,
    gone_at: Option<SystemTime>,
}

#[derive(Default)]
struct AlertLog {
    episodes: Vec<Episode>,
    /// Label sets listed at the last poll, and their episode.
    open: BTreeMap<String, usize>,
}

/// Polls Alertmanager's alerts every [`AM_POLL`] on a thread of its own,
/// so the times it records do not depend on what the lab waits for.
struct AlertWatcher {
    log: Arc<Mutex<AlertLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AlertWatcher {
    fn start(ns: &str) -> Self {
        let log = Arc::new(Mutex::new(AlertLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (store, flag, ns) = (Arc::clone(&log), Arc::clone(&stop), ns.to_owned());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Ok(alerts) = stack::alertmanager_alerts(&ns) {
                    let now = SystemTime::now();
                    let mut log = store.lock().unwrap_or_else(|e| e.into_inner());
                    let mut open = BTreeMap::new();
                    for alert in alerts {
                        let key = alert.describe();
                        let index = match log.open.get(&key) {
                            Some(&i) => {
                                log.episodes[i].alert = alert;
                                i
                            }
                            None => {
                                log.episodes.push(Episode {
                                    alert,
                                    first_seen: now,
                                    gone_at: None,
                                });
                                log.episodes.len() - 1
                            }
                        };
                        open.insert(key, index);
                    }
                    let closed: Vec<usize> = log
                        .open
                        .iter()
                        .filter(|(key, _)| !open.contains_key(*key))
                        .map(|(_, &i)| i)
                        .collect();
                    for i in closed {
                        log.episodes[i].gone_at = Some(now);
                    }
                    log.open = open;
                }
                std::thread::sleep(AM_POLL);
            }
        });
        Self {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn episodes(&self) -> Vec<Episode> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .episodes
            .clone()
    }

    /// The first episode of an alert matching `wanted` that began after
    /// `since`, and when it was first listed.
    fn first_listed(
        &self,
        wanted: &[(&str, &str)],
        since: SystemTime,
    ) -> Option<(AmAlert, SystemTime)> {
        self.episodes()
            .into_iter()
            .find(|e| e.alert.matches(wanted) && e.first_seen >= since)
            .map(|e| (e.alert, e.first_seen))
    }

    /// Once every alert matching `wanted` is gone, when the last went.
    fn all_gone(&self, wanted: &[(&str, &str)]) -> Option<SystemTime> {
        let episodes = self.episodes();
        let matching: Vec<&Episode> = episodes
            .iter()
            .filter(|e| e.alert.matches(wanted))
            .collect();
        if matching.is_empty() || matching.iter().any(|e| e.gone_at.is_none()) {
            return None;
        }
        matching.iter().filter_map(|e| e.gone_at).max()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AlertWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}
