//! The in-process MAPE-K loop: Monitor, Analyze, Plan and Execute over
//! Knowledge. Pure logic over [`Snapshot`]s: no aya, no root, no kernel.
//!
//! Each new snapshot becomes one [`Observation`] (rates over the interval),
//! each signal of it a [`Verdict`] against its learned baseline, verdicts
//! become [`StateChange`]s through hysteresis ([`MapeK::observe`]: a function
//! of the snapshots seen so far and the settings, nothing else), and state
//! changes are logged, published on the [`AnomalyBoard`] and optionally sent
//! to Alertmanager ([`MapeK::execute`]).

pub mod analyze;
pub mod anomaly;
pub mod execute;
pub mod knowledge;
pub mod monitor;
pub mod plan;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::AnalyzerSettings;
use crate::sources::Snapshot;

pub use analyze::Verdict;
pub use anomaly::{AnomalyKind, AnomalyState, Severity, StateChange};
pub use execute::{AnomalyBoard, AnomalyRecord, AnomalyReport};
pub use knowledge::Knowledge;
pub use monitor::Observation;
pub use webhook::{Webhook, WebhookCounts};

/// The anomaly loop. Feed it every snapshot, in order.
#[derive(Debug)]
pub struct MapeK {
    settings: AnalyzerSettings,
    monitor: monitor::Monitor,
    knowledge: Knowledge,
    executor: execute::Executor,
}

impl MapeK {
    /// A loop with no history; `board` is where it publishes.
    pub fn new(settings: AnalyzerSettings, board: AnomalyBoard) -> Self {
        Self {
            knowledge: Knowledge::new(settings.window, settings.max_signals),
            settings,
            monitor: monitor::Monitor::new(),
            executor: execute::Executor::new(board),
        }
    }

    /// Monitor, Analyze and Plan on one snapshot: the state changes it
    /// causes, explained. What it returns depends only on the snapshots
    /// observed so far (in order) and the settings; it publishes nothing
    /// (see [`MapeK::execute`]).
    pub fn observe(&mut self, snapshot: &Snapshot) -> Vec<StateChange> {
        let Some(obs) = self.monitor.observe(snapshot) else {
            return Vec::new();
        };
        let verdicts = analyze::evaluate(&obs, &mut self.knowledge, &self.settings);
        let changes = plan::plan(&verdicts, &mut self.knowledge, &self.settings, &obs);
        self.knowledge.forget_idle(obs.seq);
        self.knowledge.evict_excess();
        self.knowledge.count_observation();
        tracing::debug!(
            seq = obs.seq,
            signals = self.knowledge.signal_count(),
            anomalous = verdicts.iter().filter(|v| v.anomalous).count(),
            active = self.knowledge.active().count(),
            changes = changes.len(),
            "anomaly loop observed a poll"
        );
        changes
    }

    /// Execute: logs each change, publishes it on the board and queues it
    /// for the webhook.
    pub fn execute(&self, changes: &[StateChange]) {
        self.executor.execute(changes);
    }

    /// Applies reloaded settings (SIGHUP), keeping learned baselines, active
    /// anomalies and their hysteresis. Invalid settings are refused and the
    /// running ones kept. A changed webhook takes effect in [`MapeK::run`],
    /// or through [`MapeK::set_webhook`].
    pub fn update_settings(&mut self, settings: AnalyzerSettings) -> Result<(), String> {
        settings.validate()?;
        self.knowledge.resize(settings.window, settings.max_signals);
        self.settings = settings;
        Ok(())
    }

    pub fn settings(&self) -> &AnalyzerSettings {
        &self.settings
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    pub fn board(&self) -> &AnomalyBoard {
        self.executor.board()
    }

    /// Sends future state changes to `webhook` (`None`: off).
    pub fn set_webhook(&mut self, webhook: Option<Webhook>) {
        self.executor.set_webhook(webhook);
    }

    /// Starts (or stops) the webhook sender for the current settings.
    fn start_webhook(&mut self, instance: &str) {
        let settings = self.settings.webhook();
        if settings.url.is_empty() {
            self.set_webhook(None);
            return;
        }
        let stats = self.board().webhook_stats();
        match Webhook::spawn(&settings, instance, stats) {
            Ok(w) => self.set_webhook(Some(w)),
            Err(error) => {
                tracing::warn!(%error, "anomaly webhook disabled");
                self.set_webhook(None);
            }
        }
    }

    /// Observes and executes every new snapshot published on `snapshots`
    /// until its sender is dropped. New values of `settings` are applied as
    /// they come (an invalid one is logged and ignored). Must run inside a
    /// tokio runtime (the webhook worker is spawned on it).
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut settings: watch::Receiver<AnalyzerSettings>,
    ) {
        let instance = node_name();
        self.start_webhook(&instance);
        // Whatever snapshot is already there counts as the first one.
        snapshots.mark_changed();
        let mut settings_open = true;
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = Arc::clone(&snapshots.borrow_and_update());
                    let changes = self.observe(&snapshot);
                    self.execute(&changes);
                }
                changed = settings.changed(), if settings_open => {
                    if changed.is_err() {
                        settings_open = false;
                        continue;
                    }
                    let new = settings.borrow_and_update().clone();
                    let webhook_changed = new.webhook() != self.settings.webhook();
                    match self.update_settings(new) {
                        Ok(()) => {
                            tracing::info!("analyzer settings reloaded");
                            if webhook_changed {
                                self.start_webhook(&instance);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "analyzer settings not reloaded, keeping the running ones");
                        }
                    }
                }
            }
        }
    }
}

/// The node's name for the webhook `instance` label.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "telemetryd".to_string())
}

#[cfg(test)]
mod tests;
