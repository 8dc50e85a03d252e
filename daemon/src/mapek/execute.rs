//! Execute: publishes state changes as one structured log event each, on the
//! [`AnomalyBoard`] (read by `/api/v1/anomalies` and `/metrics`), and to the
//! optional webhook.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use serde::Serialize;

use super::anomaly::{rfc3339, AnomalyKind, AnomalyState, Severity, StateChange};
use super::knowledge::RESOLVED_KEPT;
use super::webhook::{Webhook, WebhookStats};

/// Subjects kept at 0 in `telemetryd_anomaly_active` after they resolved,
/// at most; the oldest are forgotten beyond it.
pub const INACTIVE_SERIES_KEPT: usize = 1000;

/// Log target of anomaly events.
pub const LOG_TARGET: &str = "telemetryd::anomaly";

/// Emits the anomaly log event of the public contract for one change:
/// WARN when firing, INFO when resolved.
pub fn log_change(c: &StateChange) {
    match c.state {
        AnomalyState::Firing => tracing::warn!(
            target: "telemetryd::anomaly",
            event = "anomaly",
            kind = c.kind.as_str(),
            subject = c.subject.as_str(),
            state = c.state.as_str(),
            severity = c.severity.as_str(),
            value = c.value,
            baseline = c.baseline,
            threshold = c.threshold,
            explanation = c.explanation.as_str(),
        ),
        AnomalyState::Resolved => tracing::info!(
            target: "telemetryd::anomaly",
            event = "anomaly",
            kind = c.kind.as_str(),
            subject = c.subject.as_str(),
            state = c.state.as_str(),
            severity = c.severity.as_str(),
            value = c.value,
            baseline = c.baseline,
            threshold = c.threshold,
            explanation = c.explanation.as_str(),
        ),
    }
}

/// One anomaly as `/api/v1/anomalies` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnomalyRecord {
    pub kind: AnomalyKind,
    pub subject: String,
    pub severity: Severity,
    pub state: AnomalyState,
    pub value: f64,
    pub baseline: f64,
    pub threshold: f64,
    pub explanation: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC; `null` while active.
    pub resolved_at: Option<String>,
    /// packet_loss on a device: its peers' loss when it fired, most drops
    /// first (at most 8, the rest as `other`); empty otherwise.
    pub peers: Vec<super::analyze::PeerLoss>,
}

impl From<&StateChange> for AnomalyRecord {
    fn from(c: &StateChange) -> Self {
        // JSON has no NaN; non-finite numbers are reported as 0.
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        Self {
            kind: c.kind,
            subject: c.subject.clone(),
            severity: c.severity,
            state: c.state,
            value: finite(c.value),
            baseline: finite(c.baseline),
            threshold: finite(c.threshold),
            explanation: c.explanation.clone(),
            started_at: rfc3339(c.started_at),
            resolved_at: c.resolved_at.map(rfc3339),
            peers: c.peers.clone(),
        }
    }
}

/// The body of `/api/v1/anomalies`: active anomalies (by kind, subject) and
/// the last 100 resolved ones, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AnomalyReport {
    pub active: Vec<AnomalyRecord>,
    pub resolved: Vec<AnomalyRecord>,
}

#[derive(Debug, Default)]
struct BoardState {
    active: BTreeMap<(AnomalyKind, String), AnomalyRecord>,
    resolved: VecDeque<AnomalyRecord>,
    /// Resolved subjects kept at 0 in the active gauge, oldest first.
    inactive: VecDeque<(AnomalyKind, String)>,
    totals: BTreeMap<(AnomalyKind, Severity), u64>,
}

/// What Execute publishes for the HTTP and metrics layers. Cheap to clone;
/// every clone shares the same state.
#[derive(Clone, Debug, Default)]
pub struct AnomalyBoard {
    state: Arc<Mutex<BoardState>>,
    webhook: Arc<WebhookStats>,
}

impl AnomalyBoard {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A panic elsewhere while holding the lock leaves consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters of the webhook sender (shared with it).
    pub fn webhook_stats(&self) -> Arc<WebhookStats> {
        Arc::clone(&self.webhook)
    }

    /// Records one state change.
    pub fn apply(&self, change: &StateChange) {
        let record = AnomalyRecord::from(change);
        let key = (change.kind, change.subject.clone());
        let mut s = self.lock();
        match change.state {
            AnomalyState::Firing => {
                *s.totals.entry((change.kind, change.severity)).or_default() += 1;
                s.inactive.retain(|k| *k != key);
                s.active.insert(key, record);
            }
            AnomalyState::Resolved => {
                s.active.remove(&key);
                if !s.inactive.contains(&key) {
                    s.inactive.push_back(key);
                }
                while s.inactive.len() > INACTIVE_SERIES_KEPT {
                    s.inactive.pop_front();
                }
                s.resolved.push_front(record);
                s.resolved.truncate(RESOLVED_KEPT);
            }
        }
    }

    /// Active and recently resolved anomalies.
    pub fn report(&self) -> AnomalyReport {
        let s = self.lock();
        AnomalyReport {
            active: s.active.values().cloned().collect(),
            resolved: s.resolved.iter().cloned().collect(),
        }
    }

    /// The `/api/v1/anomalies` JSON body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.report()).expect("anomaly report serializes")
    }

    /// Anomalies fired since start by (kind, severity).
    pub fn totals(&self) -> BTreeMap<(AnomalyKind, Severity), u64> {
        self.lock().totals.clone()
    }

    /// `telemetryd_anomaly_active{kind,subject}` (1 active, 0 resolved
    /// recently), `telemetryd_anomalies_total{kind,severity}` (every kind
    /// and severity, from 0) and
    /// `telemetryd_anomaly_webhook_notifications_total{outcome}`.
    pub fn metric_families(&self) -> Vec<MetricFamily> {
        let s = self.lock();
        let mut active = Vec::with_capacity(s.active.len() + s.inactive.len());
        let live: BTreeSet<&(AnomalyKind, String)> = s.active.keys().collect();
        let mut series: Vec<(&(AnomalyKind, String), f64)> =
            live.iter().map(|k| (*k, 1.0)).collect();
        series.extend(
            s.inactive
                .iter()
                .filter(|k| !live.contains(k))
                .map(|k| (k, 0.0)),
        );
        series.sort_by(|a, b| a.0.cmp(b.0));
        for ((kind, subject), v) in series {
            active.push(gauge(&[("kind", kind.as_str()), ("subject", subject)], v));
        }
        let mut totals = Vec::new();
        for kind in AnomalyKind::ALL {
            for severity in Severity::ALL {
                let n = s.totals.get(&(kind, severity)).copied().unwrap_or(0);
                totals.push(counter(
                    &[("kind", kind.as_str()), ("severity", severity.as_str())],
                    n as f64,
                ));
            }
        }
        drop(s);
        let w = self.webhook.counts();
        let webhook = [
            ("sent", w.sent),
            ("failed", w.failed),
            ("dropped", w.dropped),
            ("retried", w.retried),
        ]
        .iter()
        .map(|(o, n)| counter(&[("outcome", o)], *n as f64))
        .collect();
        // An empty family does not encode: leave out the active gauge until
        // the first anomaly has fired.
        [
            family(
                "telemetryd_anomaly_active",
                "Whether an anomaly of this kind is active on this subject (1) or recently resolved (0).",
                MetricType::GAUGE,
                active,
            ),
            family(
                "telemetryd_anomalies_total",
                "Anomalies fired since start, by kind and severity.",
                MetricType::COUNTER,
                totals,
            ),
            family(
                "telemetryd_anomaly_webhook_notifications_total",
                "Alertmanager webhook notifications by outcome (sent, failed after retries, dropped on a full queue, retried).",
                MetricType::COUNTER,
                webhook,
            ),
        ]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name((*n).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn counter(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

/// Publishes changes: log event, board, webhook (never blocks).
#[derive(Debug)]
pub struct Executor {
    board: AnomalyBoard,
    webhook: Option<Webhook>,
}

impl Executor {
    pub fn new(board: AnomalyBoard) -> Self {
        Self {
            board,
            webhook: None,
        }
    }

    pub fn board(&self) -> &AnomalyBoard {
        &self.board
    }

    /// Replaces the webhook sender (`None`: off). A replaced sender's worker
    /// finishes its queue and stops.
    pub fn set_webhook(&mut self, webhook: Option<Webhook>) {
        self.webhook = webhook;
    }

    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    pub fn execute(&self, changes: &[StateChange]) {
        for change in changes {
            log_change(change);
            self.board.apply(change);
            if let Some(w) = &self.webhook {
                w.notify(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn change(state: AnomalyState, subject: &str) -> StateChange {
        StateChange {
            kind: AnomalyKind::PacketLoss,
            subject: subject.into(),
            state,
            severity: Severity::Critical,
            value: 0.098,
            baseline: 0.001,
            threshold: 0.02,
            explanation: "packet loss on node".into(),
            started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            resolved_at: (state == AnomalyState::Resolved)
                .then(|| UNIX_EPOCH + Duration::from_secs(1_700_000_060)),
            peers: Vec::new(),
        }
    }

    #[test]
    fn board_json_and_metrics() {
        let board = AnomalyBoard::new();
        let clone = board.clone();
        board.apply(&change(AnomalyState::Firing, "node"));
        let json: serde_json::Value = serde_json::from_str(&clone.to_json()).unwrap();
        assert_eq!(json["active"][0]["kind"], "packet_loss");
        assert_eq!(json["active"][0]["state"], "firing");
        assert_eq!(json["active"][0]["severity"], "critical");
        assert_eq!(json["active"][0]["started_at"], "2023-11-14T22:13:20.000Z");
        assert!(json["active"][0]["resolved_at"].is_null());
        assert_eq!(json["resolved"].as_array().unwrap().len(), 0);

        board.apply(&change(AnomalyState::Resolved, "node"));
        let json: serde_json::Value = serde_json::from_str(&board.to_json()).unwrap();
        assert!(json["active"].as_array().unwrap().is_empty());
        assert_eq!(
            json["resolved"][0]["resolved_at"],
            "2023-11-14T22:14:20.000Z"
        );

        let families = board.metric_families();
        let text = {
            use prometheus::Encoder;
            let mut buf = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&families, &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains("telemetryd_anomaly_active{kind=\"packet_loss\",subject=\"node\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "telemetryd_anomalies_total{kind=\"packet_loss\",severity=\"critical\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("telemetryd_anomalies_total{kind=\"latency\",severity=\"warning\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn board_stays_bounded() {
        let board = AnomalyBoard::new();
        for i in 0..5000 {
            let s = format!("dev{i}");
            board.apply(&change(AnomalyState::Firing, &s));
            board.apply(&change(AnomalyState::Resolved, &s));
        }
        let r = board.report();
        assert_eq!(r.resolved.len(), RESOLVED_KEPT);
        assert_eq!(r.resolved[0].subject, "dev4999");
        assert_eq!(
            board.metric_families()[0].get_metric().len(),
            INACTIVE_SERIES_KEPT
        );
    }
}
