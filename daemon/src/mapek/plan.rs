//! Plan: hysteresis over verdicts. An anomaly fires after `fire_after`
//! consecutive anomalous observations of its (kind, subject) and resolves
//! after `resolve_after` consecutive normal ones; one active anomaly per
//! (kind, subject); nothing fires on the first observation after a start.
//! Warm-up is enforced by Analyze (a signal without `warmup` of history is
//! never anomalous), so its streak cannot begin before then.

use std::collections::HashSet;

use super::analyze::{explain, peer_view, Context, Verdict};
use super::anomaly::{AnomalyKind, AnomalyState, StateChange};
use super::knowledge::{ActiveAnomaly, AnomalyKey, Knowledge, Streak};
use crate::config::AnalyzerSettings;

/// Decides state changes from this observation's verdicts, updates the
/// active and resolved anomalies in `knowledge`, and returns
/// the changes, explained.
pub fn plan(
    verdicts: &[Verdict],
    knowledge: &mut Knowledge,
    settings: &AnalyzerSettings,
    obs: &super::monitor::Observation,
) -> Vec<StateChange> {
    if obs.first {
        // Right after a start the previous snapshot may predate a fault by
        // an unknown time: never fire (or count) on it.
        return Vec::new();
    }
    let mut fire = Vec::new();
    let mut resolve = Vec::new();
    let max_streaks = settings.max_signals;
    for (i, v) in verdicts.iter().enumerate() {
        let key: AnomalyKey = (v.kind, v.subject.clone());
        let active = knowledge.active.contains_key(&key);
        if !v.anomalous && !active {
            knowledge.streaks.remove(&key);
            continue;
        }
        if !knowledge.streaks.contains_key(&key)
            && knowledge.streaks.len() >= max_streaks
            && !active
        {
            continue; // bounded: more anomalous subjects than signals tracked
        }
        let streak = knowledge.streaks.entry(key).or_default();
        streak.missing = 0;
        if v.anomalous {
            streak.anomalous = streak.anomalous.saturating_add(1);
            streak.normal = 0;
            if !active && streak.anomalous >= settings.fire_after {
                fire.push(i);
            }
        } else {
            streak.normal = streak.normal.saturating_add(1);
            streak.anomalous = 0;
            if streak.normal >= settings.resolve_after {
                resolve.push(i);
            }
        }
    }

    // Active anomalies whose subject vanished (device gone, signal evicted):
    // resolve after `resolve_after` observations without a verdict.
    let mut vanished = Vec::new();
    if !knowledge.active.is_empty() {
        let seen: HashSet<(AnomalyKind, &str)> = verdicts
            .iter()
            .map(|v| (v.kind, v.subject.as_str()))
            .collect();
        for key in knowledge.active.keys() {
            if !seen.contains(&(key.0, key.1.as_str())) {
                vanished.push(key.clone());
            }
        }
    }

    let mut changes = Vec::with_capacity(fire.len() + resolve.len());
    let ctx = Context {
        obs,
        knowledge,
        unknown_as_loss: settings.unknown_drops_are_loss(),
    };
    let mut firing = Vec::with_capacity(fire.len());
    for &i in &fire {
        let v = &verdicts[i];
        let (value, explanation) =
            explain(v, AnomalyState::Firing, settings.fire_after as usize, &ctx);
        firing.push(StateChange {
            kind: v.kind,
            subject: v.subject.clone(),
            state: AnomalyState::Firing,
            severity: v.severity,
            value,
            baseline: v.baseline,
            threshold: v.threshold,
            explanation,
            started_at: obs.taken_at,
            resolved_at: None,
            peers: peer_view(v, &ctx),
        });
    }
    let mut resolving = Vec::with_capacity(resolve.len());
    for &i in &resolve {
        let v = &verdicts[i];
        let (value, explanation) = explain(
            v,
            AnomalyState::Resolved,
            settings.resolve_after as usize,
            &ctx,
        );
        resolving.push((
            v.kind,
            v.subject.clone(),
            value,
            v.baseline,
            v.threshold,
            explanation,
        ));
    }

    for change in firing {
        knowledge.streaks.insert(
            (change.kind, change.subject.clone()),
            Streak {
                anomalous: settings.fire_after,
                ..Default::default()
            },
        );
        knowledge.active.insert(
            (change.kind, change.subject.clone()),
            ActiveAnomaly {
                severity: change.severity,
                started_at: change.started_at,
                value: change.value,
                baseline: change.baseline,
                threshold: change.threshold,
                explanation: change.explanation.clone(),
            },
        );
        changes.push(change);
    }
    for (kind, subject, value, baseline, threshold, explanation) in resolving {
        let key = (kind, subject);
        knowledge.streaks.remove(&key);
        let Some(active) = knowledge.active.remove(&key) else {
            continue;
        };
        changes.push(resolved(
            key,
            active,
            value,
            baseline,
            threshold,
            explanation,
            obs,
        ));
    }
    for key in vanished {
        let streak = knowledge.streaks.entry(key.clone()).or_default();
        streak.missing = streak.missing.saturating_add(1);
        if streak.missing < settings.resolve_after {
            continue;
        }
        knowledge.streaks.remove(&key);
        let Some(active) = knowledge.active.remove(&key) else {
            continue;
        };
        let explanation = format!("{} on {} resolved: signal no longer observed", key.0, key.1);
        let (value, baseline, threshold) = (active.value, active.baseline, active.threshold);
        changes.push(resolved(
            key,
            active,
            value,
            baseline,
            threshold,
            explanation,
            obs,
        ));
    }
    for change in &changes {
        if change.state == AnomalyState::Resolved {
            knowledge.push_resolved(change.clone());
        }
    }
    changes
}

fn resolved(
    key: AnomalyKey,
    active: ActiveAnomaly,
    value: f64,
    baseline: f64,
    threshold: f64,
    explanation: String,
    obs: &super::monitor::Observation,
) -> StateChange {
    StateChange {
        kind: key.0,
        subject: key.1,
        state: AnomalyState::Resolved,
        severity: active.severity,
        value,
        baseline,
        threshold,
        explanation,
        started_at: active.started_at,
        resolved_at: Some(obs.taken_at),
        peers: Vec::new(),
    }
}
