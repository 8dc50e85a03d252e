//! Optional Alertmanager webhook: posts v2 alerts (`POST
//! {base}/api/v2/alerts`) from a bounded queue, with a per-request timeout
//! and retries with exponential backoff. The loop only ever `try_send`s, so
//! a slow or dead Alertmanager never blocks it; alerts that do not fit in
//! the queue, and alerts that still fail after the retries, are counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::anomaly::{rfc3339, AnomalyState, StateChange};
use crate::config::{webhook_uri, WebhookSettings};

/// `alertname` label of every alert; `kind` tells them apart.
pub const ALERT_NAME: &str = "TelemetrydAnomaly";

/// Alerts sent in one request at most.
const MAX_BATCH: usize = 64;
/// First retry delay; doubles per retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Outcome counters of the webhook, per alert. Shared with the
/// [`AnomalyBoard`](super::execute::AnomalyBoard) for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
}

/// A reading of [`WebhookStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    /// Alerts Alertmanager accepted (2xx).
    pub sent: u64,
    /// Alerts given up after every retry failed.
    pub failed: u64,
    /// Alerts dropped because the queue was full.
    pub dropped: u64,
    /// Retried requests.
    pub retried: u64,
}

impl WebhookStats {
    pub fn counts(&self) -> WebhookCounts {
        WebhookCounts {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }
}

/// Handle to the webhook worker. Cheap to clone; the worker drains its
/// queue and stops once every handle is dropped.
#[derive(Clone, Debug)]
pub struct Webhook {
    queue: mpsc::Sender<Value>,
    stats: Arc<WebhookStats>,
    instance: Arc<str>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

impl Webhook {
    /// Starts the worker on the current tokio runtime (panics outside one).
    /// `instance` becomes the `instance` label (the node's name).
    pub fn spawn(
        settings: &WebhookSettings,
        instance: &str,
        stats: Arc<WebhookStats>,
    ) -> Result<Self, String> {
        let uri = webhook_uri(&settings.url).map_err(|e| format!("analyzer.webhook {e}"))?;
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let worker = Worker {
            uri,
            timeout: settings.timeout,
            retries: settings.retries,
            stats: Arc::clone(&stats),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        tokio::spawn(worker.run(rx));
        Ok(Self {
            queue: tx,
            stats,
            instance: instance.into(),
        })
    }

    /// Queues one alert for the change; never waits. When the queue is full
    /// the new alert is dropped and counted.
    pub fn notify(&self, change: &StateChange) {
        let alert = alert_json(change, &self.instance);
        if self.queue.try_send(alert).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(kind = %change.kind, subject = %change.subject, "webhook queue full, alert dropped");
        }
    }

    pub fn stats(&self) -> WebhookCounts {
        self.stats.counts()
    }
}

/// One Alertmanager v2 alert for a state change.
pub fn alert_json(c: &StateChange, instance: &str) -> Value {
    let mut alert = json!({
        "labels": {
            "alertname": ALERT_NAME,
            "kind": c.kind.as_str(),
            "subject": c.subject,
            "severity": c.severity.as_str(),
            "instance": instance,
        },
        "annotations": {
            "summary": format!("{} on {} ({})", c.kind, c.subject, c.state),
            "explanation": c.explanation,
            "value": c.value.to_string(),
            "baseline": c.baseline.to_string(),
            "threshold": c.threshold.to_string(),
        },
        "startsAt": rfc3339(c.started_at),
    });
    if c.state == AnomalyState::Resolved {
        if let Some(end) = c.resolved_at {
            alert["endsAt"] = Value::String(rfc3339(end));
        }
    }
    alert
}

struct Worker {
    uri: Uri,
    timeout: Duration,
    retries: u32,
    stats: Arc<WebhookStats>,
    client: HttpClient,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Value>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(alert) => batch.push(alert),
                    Err(_) => break,
                }
            }
            self.deliver(&batch).await;
        }
    }

    async fn deliver(&self, batch: &[Value]) {
        let body = Bytes::from(serde_json::to_vec(batch).expect("alerts serialize"));
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            match tokio::time::timeout(self.timeout, self.post(body.clone())).await {
                Ok(Ok(status)) if status.is_success() => {
                    self.stats
                        .sent
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return;
                }
                Ok(Ok(status)) => last_error = format!("HTTP {status}"),
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = format!("timed out after {:?}", self.timeout),
            }
        }
        self.stats
            .failed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            url = %self.uri,
            alerts = batch.len(),
            attempts = self.retries + 1,
            error = %last_error,
            "anomaly webhook failed"
        );
    }

    async fn post(&self, body: Bytes) -> Result<StatusCode, String> {
        let req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the body so the connection can be reused.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapek::anomaly::{AnomalyKind, Severity};
    use std::time::UNIX_EPOCH;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// (method, path, JSON body) of every request the listener received.
    type Received = mpsc::UnboundedReceiver<(String, String, Value)>;

    /// A real HTTP/1.1 listener on 127.0.0.1 that records requests and
    /// answers 200 (keep-alive).
    async fn recording_alertmanager() -> (String, Received) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut request_line = String::new();
                        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = request_line.split_whitespace();
                        let method = parts.next().unwrap_or_default().to_string();
                        let path = parts.next().unwrap_or_default().to_string();
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            stream.read_line(&mut header).await.unwrap();
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap();
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.unwrap();
                        let json: Value = serde_json::from_slice(&body).unwrap();
                        tx.send((method, path, json)).unwrap();
                        stream
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn change(state: AnomalyState) -> StateChange {
        StateChange {
            kind: AnomalyKind::PacketLoss,
            subject: "node".into(),
            state,
            severity: Severity::Warning,
            value: 0.098,
            baseline: 0.001,
            threshold: 0.02,
            explanation: "packet loss on node: 9.8% of TCP segments retransmitted".into(),
            started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            resolved_at: (state == AnomalyState::Resolved)
                .then(|| UNIX_EPOCH + Duration::from_secs(1_700_000_030)),
            peers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn posts_firing_and_resolved_alerts() {
        let (base, mut received) = recording_alertmanager().await;
        let settings = WebhookSettings {
            url: base,
            ..crate::config::AnalyzerSettings::default().webhook()
        };
        let stats = Arc::new(WebhookStats::default());
        let webhook = Webhook::spawn(&settings, "node-a", Arc::clone(&stats)).unwrap();

        webhook.notify(&change(AnomalyState::Firing));
        let (method, path, body) = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(method, "POST");
        assert_eq!(path, "/api/v2/alerts");
        let alert = &body.as_array().unwrap()[0];
        assert_eq!(alert["labels"]["alertname"], ALERT_NAME);
        assert_eq!(alert["labels"]["kind"], "packet_loss");
        assert_eq!(alert["labels"]["subject"], "node");
        assert_eq!(alert["labels"]["severity"], "warning");
        assert_eq!(alert["labels"]["instance"], "node-a");
        assert_eq!(alert["startsAt"], "2023-11-14T22:13:20.000Z");
        assert!(alert.get("endsAt").is_none());
        assert!(alert["annotations"]["explanation"]
            .as_str()
            .unwrap()
            .contains("9.8%"));

        webhook.notify(&change(AnomalyState::Resolved));
        let (method, path, body) = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/v2/alerts"));
        assert_eq!(body[0]["endsAt"], "2023-11-14T22:13:50.000Z");

        for _ in 0..50 {
            if stats.counts().sent == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            stats.counts(),
            WebhookCounts {
                sent: 2,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn failures_are_counted_and_never_block() {
        // A port nobody listens on: bind, note it, close.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let settings = WebhookSettings {
            url: format!("http://{addr}"),
            retries: 1,
            timeout: Duration::from_millis(500),
            queue: 1,
        };
        let stats = Arc::new(WebhookStats::default());
        let webhook = Webhook::spawn(&settings, "node-a", Arc::clone(&stats)).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..10 {
            webhook.notify(&change(AnomalyState::Firing));
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "notify blocked"
        );
        for _ in 0..100 {
            let c = stats.counts();
            if c.failed + c.dropped == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = stats.counts();
        assert_eq!(c.sent, 0);
        assert_eq!(c.failed + c.dropped, 10, "{c:?}");
        assert!(c.dropped >= 1 && c.retried >= 1, "{c:?}");
    }
}
