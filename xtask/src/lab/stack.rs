//! The lab's monitoring stack, in the monitoring namespace: a real
//! Prometheus scraping every node with the shipped rules, a real
//! Alertmanager receiving Prometheus' alerts and the nodes' webhooks, a real
//! VictoriaMetrics receiving Prometheus' remote write, and a receiver the
//! lab runs itself that records Alertmanager's notifications.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::http;
use super::net::{self, MONITOR_IP};
use super::process::{LabProcess, Launch};
use super::time::parse_rfc3339;

pub const PROMETHEUS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);
pub const VICTORIA_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8428);
/// On the bridge: the nodes post their webhooks here.
pub const ALERTMANAGER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(MONITOR_IP), 9093);
/// Alertmanager's webhook receiver, run by the lab.
pub const RECEIVER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9095);

/// The telemetryd scrape job's name, as the shipped rules expect it.
pub const JOB: &str = "telemetryd";
/// Scrape and rule evaluation interval of the lab's Prometheus.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);

pub fn prometheus_config(rules: &Path, nodes: usize) -> String {
    let mut targets = String::new();
    for i in 1..=nodes {
        targets.push_str(&format!(
            "      - targets: [\"{}:9469\"]\n        labels:\n          instance: {}\n",
            net::mgmt_ip(i),
            net::node_name(i)
        ));
    }
    let interval = SCRAPE_INTERVAL.as_secs();
    format!(
        "# The lab's Prometheus (written by cargo xtask lab).
global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
  evaluation_interval: {interval}s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: [\"{ALERTMANAGER}\"]
scrape_configs:
  - job_name: {JOB}
    static_configs:
{targets}remote_write:
  - url: http://{VICTORIA_METRICS}/api/v1/write
    queue_config:
      batch_send_deadline: 1s
",
        rules = rules.display()
    )
}

pub fn alertmanager_config() -> String {
    format!(
        "# The lab's Alertmanager (written by cargo xtask lab): every alert goes to
# the lab's receiver, resolved ones too, one group per alert.
route:
  receiver: lab
  group_by: [alertname, instance, kind, subject]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: lab
    webhook_configs:
      - url: http://{RECEIVER}/
        send_resolved: true
"
    )
}

/// The three servers and the receiver.
pub struct Stack {
    pub prometheus: LabProcess,
    pub alertmanager: LabProcess,
    pub victoria_metrics: LabProcess,
    pub receiver: Receiver,
}

impl Stack {
    pub fn start(monitor_ns: &str, run_dir: &Path, rules: &Path, nodes: usize) -> Result<Self> {
        let data = run_dir.join("data");
        for dir in ["prometheus", "alertmanager", "victoria-metrics"] {
            std::fs::create_dir_all(data.join(dir))?;
        }
        let prometheus_yml = run_dir.join("prometheus.yml");
        std::fs::write(&prometheus_yml, prometheus_config(rules, nodes))?;
        let alertmanager_yml = run_dir.join("alertmanager.yml");
        std::fs::write(&alertmanager_yml, alertmanager_config())?;
        let path = |p: &PathBuf| p.display().to_string();

        let receiver = Receiver::start(monitor_ns)?;
        let victoria_metrics = LabProcess::start(
            Launch {
                name: "victoria-metrics",
                namespace: monitor_ns,
                program: Path::new("victoria-metrics"),
                args: vec![
                    format!("-storageDataPath={}", path(&data.join("victoria-metrics"))),
                    format!("-httpListenAddr={VICTORIA_METRICS}"),
                    // Queries see samples a second after they arrive (the
                    // default hides the newest 30 s).
                    "-search.latencyOffset=1s".into(),
                    "-retentionPeriod=1d".into(),
                ],
                hostname: None,
            },
            run_dir,
        )?;
        let alertmanager = LabProcess::start(
            Launch {
                name: "alertmanager",
                namespace: monitor_ns,
                program: Path::new("prometheus-alertmanager"),
                args: vec![
                    format!("--config.file={}", path(&alertmanager_yml)),
                    format!("--storage.path={}", path(&data.join("alertmanager"))),
                    format!("--web.listen-address={ALERTMANAGER}"),
                    // A single instance: no cluster port.
                    "--cluster.listen-address=".into(),
                ],
                hostname: None,
            },
            run_dir,
        )?;
        let prometheus = LabProcess::start(
            Launch {
                name: "prometheus",
                namespace: monitor_ns,
                program: Path::new("prometheus"),
                args: vec![
                    format!("--config.file={}", path(&prometheus_yml)),
                    format!("--storage.tsdb.path={}", path(&data.join("prometheus"))),
                    format!("--web.listen-address={PROMETHEUS}"),
                    "--storage.tsdb.retention.time=1d".into(),
                ],
                hostname: None,
            },
            run_dir,
        )?;
        Ok(Self {
            prometheus,
            alertmanager,
            victoria_metrics,
            receiver,
        })
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.prometheus.check_running()?;
        self.alertmanager.check_running()?;
        self.victoria_metrics.check_running()
    }
}

/// A PromQL instant (`time: Some`) or current query's result vector.
pub fn instant_query(
    ns: &str,
    server: SocketAddr,
    query: &str,
    time: Option<SystemTime>,
) -> Result<Vec<Value>> {
    let mut path = format!("/api/v1/query?query={}", http::encode(query));
    if let Some(t) = time {
        path.push_str(&format!("&time={:.3}", unix_seconds(t)));
    }
    result_of(http::get_json(ns, server, &path)?, query)
}

/// A PromQL range query's result matrix.
pub fn range_query(
    ns: &str,
    server: SocketAddr,
    query: &str,
    start: SystemTime,
    end: SystemTime,
    step: Duration,
) -> Result<Vec<Value>> {
    let path = format!(
        "/api/v1/query_range?query={}&start={:.3}&end={:.3}&step={}",
        http::encode(query),
        unix_seconds(start),
        unix_seconds(end),
        step.as_secs().max(1)
    );
    result_of(http::get_json(ns, server, &path)?, query)
}

fn result_of(doc: Value, query: &str) -> Result<Vec<Value>> {
    if doc["status"] != "success" {
        bail!("query {query:?} failed: {doc}");
    }
    Ok(doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The value of a one-element instant vector.
pub fn single_value(result: &[Value]) -> Option<f64> {
    match result {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// One alert as Alertmanager's v2 API lists it.
#[derive(Clone, Debug)]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    /// The analyzer's sentence (telemetryd's webhook) or the rule's
    /// description, for messages.
    pub explanation: String,
    pub starts_at: SystemTime,
}

impl AmAlert {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    pub fn matches(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == *v)
    }

    /// `{alertname=..., instance=..., ...}` for messages.
    pub fn describe(&self) -> String {
        let pairs: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let labels = format!("{{{}}}", pairs.join(", "));
        if self.explanation.is_empty() {
            labels
        } else {
            format!("{labels}: {}", self.explanation)
        }
    }
}

/// The alerts Alertmanager holds that have not ended (GET /api/v2/alerts).
pub fn alertmanager_alerts(ns: &str) -> Result<Vec<AmAlert>> {
    let doc = http::get_json(ns, ALERTMANAGER, "/api/v2/alerts")?;
    let list = doc.as_array().context("/api/v2/alerts is not a list")?;
    let now = SystemTime::now();
    let mut alerts = Vec::with_capacity(list.len());
    for a in list {
        let labels = a["labels"]
            .as_object()
            .context("an alert without labels")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let starts_at = parse_rfc3339(a["startsAt"].as_str().unwrap_or_default())?;
        let ends_at = match a["endsAt"].as_str() {
            Some(s) if !s.is_empty() && !s.starts_with("0001-") => Some(parse_rfc3339(s)?),
            _ => None,
        };
        if ends_at.is_some_and(|end| end <= now) {
            continue;
        }
        let annotations = &a["annotations"];
        let explanation = ["explanation", "summary", "description"]
            .iter()
            .find_map(|key| annotations[*key].as_str())
            .unwrap_or_default()
            .to_owned();
        alerts.push(AmAlert {
            labels,
            explanation,
            starts_at,
        });
    }
    Ok(alerts)
}

/// One notification Alertmanager posted to the lab's receiver.
#[derive(Clone, Debug)]
pub struct Notification {
    pub received_at: SystemTime,
    /// Each alert's labels, and its status as `__status`.
    pub alerts: Vec<BTreeMap<String, String>>,
}

/// An HTTP listener in the monitoring namespace recording every
/// notification, answering 200. Stops on drop.
pub struct Receiver {
    notifications: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &str) -> Result<Self> {
        let notifications = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (store, flag, ns_path) = (
            Arc::clone(&notifications),
            Arc::clone(&stop),
            format!("/run/netns/{ns}"),
        );
        let thread = std::thread::spawn(move || {
            let listener = (|| -> Result<TcpListener> {
                let file = std::fs::File::open(&ns_path)?;
                // SAFETY: setns on a valid namespace fd moves only this
                // thread, which serves the receiver and nothing else.
                if unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                } != 0
                {
                    bail!("setns({ns_path}): {}", std::io::Error::last_os_error());
                }
                let listener = TcpListener::bind(RECEIVER)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                if let Some(body) = read_body(&mut conn) {
                    if let Some(n) = parse_notification(&body) {
                        store.lock().unwrap_or_else(|e| e.into_inner()).push(n);
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the receiver did not start")??;
        Ok(Self {
            notifications,
            stop,
            thread: Some(thread),
        })
    }

    pub fn notifications(&self) -> Vec<Notification> {
        self.notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The body of one HTTP/1.1 request with a content-length.
fn read_body(conn: &mut std::net::TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Some(body[..length].to_owned());
            }
        }
    }
}

fn parse_notification(body: &str) -> Option<Notification> {
    let doc: Value = serde_json::from_str(body).ok()?;
    let alerts = doc["alerts"]
        .as_array()?
        .iter()
        .map(|a| {
            let mut labels: BTreeMap<String, String> = a["labels"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            labels.insert(
                "__status".into(),
                a["status"].as_str().unwrap_or_default().to_owned(),
            );
            labels
        })
        .collect();
    Some(Notification {
        received_at: SystemTime::now(),
        alerts,
    })
}
