//! `[analyzer]` settings: every threshold, window and hysteresis count of the
//! MAPE-K loop. Plain data; the config loader deserializes it from TOML and
//! calls [`AnalyzerSettings::validate`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the anomaly analyzer (`[analyzer]` in the config file).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerSettings {
    /// No anomaly fires for a signal before it has this much history
    /// (baselines still learn during warm-up).
    #[serde(with = "crate::config::duration_str")]
    pub warmup: Duration,
    /// Consecutive anomalous polls before an anomaly fires.
    pub fire_after: u32,
    /// Consecutive normal polls before an active anomaly resolves.
    pub resolve_after: u32,
    /// Alertmanager base URL (plain `http://`); alerts are posted to
    /// `{webhook}/api/v2/alerts`. Empty: off.
    pub webhook: String,
    /// Timeout of one webhook request.
    #[serde(with = "crate::config::duration_str")]
    pub webhook_timeout: Duration,
    /// Retries of a failed webhook request (with exponential backoff) before
    /// it is counted as failed.
    pub webhook_retries: u32,
    /// Alerts waiting for the webhook at most; further alerts are dropped
    /// (and counted) while the queue is full.
    pub webhook_queue: usize,
    /// EWMA smoothing factor of the baselines (0 < alpha <= 1); smaller
    /// learns slower and remembers longer.
    pub baseline_alpha: f64,
    /// A value is anomalous only beyond baseline mean + z_threshold standard
    /// deviations (and past the floors and factors below).
    pub z_threshold: f64,
    /// A firing anomaly is `critical` when its value is this many times past
    /// its threshold (below it, for traffic_drop), `warning` otherwise.
    pub critical_factor: f64,
    /// Polls of history kept per signal (rolling window).
    pub window: usize,
    /// Signals (per device, syscall, node) tracked at most; beyond it the
    /// longest idle ones are evicted (and counted).
    pub max_signals: usize,
    /// packet_loss: TCP segments sent per second below which the retransmit
    /// ratio is not judged.
    pub min_segments_per_second: f64,
    /// packet_loss: retransmit ratio (0..1) that must be reached before it
    /// can be anomalous, whatever the baseline.
    pub min_retransmit_ratio: f64,
    /// packet_loss: kernel drops (node) or interface drops+errors (device)
    /// per second that must be reached before they can be anomalous.
    pub min_drop_rate: f64,
    /// packet_loss and syscall_errors: the value must also be at least this
    /// many times its baseline.
    pub rise_factor: f64,
    /// traffic_drop and traffic_spike: packets per second a device must
    /// carry (as baseline for traffic_drop, as value for traffic_spike)
    /// before they apply.
    pub min_packets_per_second: f64,
    /// traffic_drop: a device is silent when its packet rate falls to this
    /// fraction (0..1) of its baseline.
    pub silence_ratio: f64,
    /// traffic_spike: a device's packet rate must reach this many times its
    /// baseline.
    pub spike_factor: f64,
    /// latency: a syscall's p99 must reach this many times its baseline p99.
    pub latency_factor: f64,
    /// latency and syscall_errors: calls per poll below which a syscall is
    /// not judged.
    pub min_calls: u64,
    /// syscall_errors: error ratio (0..1) that must be reached before it can
    /// be anomalous, whatever the baseline.
    pub min_error_ratio: f64,
}

impl Default for AnalyzerSettings {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(60),
            fire_after: 3,
            resolve_after: 5,
            webhook: String::new(),
            webhook_timeout: Duration::from_secs(5),
            webhook_retries: 3,
            webhook_queue: 256,
            baseline_alpha: 0.05,
            z_threshold: 4.0,
            critical_factor: 2.0,
            window: 60,
            max_signals: 4096,
            min_segments_per_second: 10.0,
            min_retransmit_ratio: 0.02,
            min_drop_rate: 10.0,
            rise_factor: 3.0,
            min_packets_per_second: 50.0,
            silence_ratio: 0.05,
            spike_factor: 3.0,
            latency_factor: 4.0,
            min_calls: 50,
            min_error_ratio: 0.05,
        }
    }
}

impl AnalyzerSettings {
    /// Checks every field; the error names the offending key
    /// (`analyzer.<key>`) and why.
    pub fn validate(&self) -> Result<(), String> {
        fn bad(key: &str, why: impl std::fmt::Display) -> Result<(), String> {
            Err(format!("analyzer.{key} {why}"))
        }
        fn positive(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(key, format_args!("must be a positive number (got {v})"))
            }
        }
        fn non_negative(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(key, format_args!("must be zero or more (got {v})"))
            }
        }
        fn fraction(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(key, format_args!("must be between 0 and 1 (got {v})"))
            }
        }
        fn factor(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 1.0 {
                Ok(())
            } else {
                bad(key, format_args!("must be 1 or more (got {v})"))
            }
        }
        if self.fire_after == 0 {
            return bad("fire_after", "must be at least 1 (got 0)");
        }
        if self.resolve_after == 0 {
            return bad("resolve_after", "must be at least 1 (got 0)");
        }
        if !self.webhook.is_empty() {
            webhook_uri(&self.webhook).map_err(|e| format!("analyzer.webhook {e}"))?;
        }
        if self.webhook_timeout.is_zero() {
            return bad("webhook_timeout", "must be longer than 0s");
        }
        if self.webhook_retries > 10 {
            return bad(
                "webhook_retries",
                format_args!("must be at most 10 (got {})", self.webhook_retries),
            );
        }
        if self.webhook_queue == 0 {
            return bad("webhook_queue", "must be at least 1 (got 0)");
        }
        if !(self.baseline_alpha.is_finite()
            && self.baseline_alpha > 0.0
            && self.baseline_alpha <= 1.0)
        {
            return bad(
                "baseline_alpha",
                format_args!("must be in (0, 1] (got {})", self.baseline_alpha),
            );
        }
        positive("z_threshold", self.z_threshold)?;
        factor("critical_factor", self.critical_factor)?;
        let longest = self.fire_after.max(self.resolve_after) as usize;
        if self.window < longest || self.window > 100_000 {
            return bad(
                "window",
                format_args!(
                    "must be between max(fire_after, resolve_after) = {longest} and 100000 (got {})",
                    self.window
                ),
            );
        }
        if self.max_signals == 0 || self.max_signals > 1_000_000 {
            return bad(
                "max_signals",
                format_args!("must be between 1 and 1000000 (got {})", self.max_signals),
            );
        }
        non_negative("min_segments_per_second", self.min_segments_per_second)?;
        fraction("min_retransmit_ratio", self.min_retransmit_ratio)?;
        non_negative("min_drop_rate", self.min_drop_rate)?;
        factor("rise_factor", self.rise_factor)?;
        non_negative("min_packets_per_second", self.min_packets_per_second)?;
        fraction("silence_ratio", self.silence_ratio)?;
        factor("spike_factor", self.spike_factor)?;
        factor("latency_factor", self.latency_factor)?;
        fraction("min_error_ratio", self.min_error_ratio)?;
        Ok(())
    }
}

/// Parses the webhook base URL and returns the full `/api/v2/alerts` URI.
pub(crate) fn webhook_uri(base: &str) -> Result<hyper::Uri, String> {
    let base = base.trim_end_matches('/');
    let uri: hyper::Uri = format!("{base}/api/v2/alerts")
        .parse()
        .map_err(|e| format!("is not a valid URL ({e}): {base:?}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        _ => return Err(format!("must be a plain http:// URL (got {base:?})")),
    }
    if uri.host().is_none() {
        return Err(format!("has no host (got {base:?})"));
    }
    Ok(uri)
}

/// Durations written as strings: `"60s"`, `"500ms"`, `"1.5s"`, `"2m"`,
/// `"1h"`, `"250us"`, `"100ns"`.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `<number><unit>` with unit one of ns, us, µs, ms, s, m, h.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} has no unit (ns, us, ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("duration {text:?} does not start with a number"))?;
        let scale = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration {text:?} has unknown unit {other:?}")),
        };
        Duration::try_from_secs_f64(value * scale)
            .map_err(|_| format!("duration {text:?} is out of range"))
    }

    /// Formats as whole milliseconds or seconds, the inverse of [`parse`].
    pub fn format(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}ns", d.as_nanos())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&format(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AnalyzerSettings::default().validate().unwrap();
    }

    #[test]
    fn parses_toml_with_durations_and_defaults() {
        let s: AnalyzerSettings = toml::from_str(
            "warmup = \"500ms\"\nfire_after = 2\nwebhook = \"http://127.0.0.1:9093\"",
        )
        .unwrap();
        assert_eq!(s.warmup, Duration::from_millis(500));
        assert_eq!(s.fire_after, 2);
        assert_eq!(s.resolve_after, 5);
        s.validate().unwrap();
        assert_eq!(
            duration_serde::parse("2m").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            duration_serde::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(duration_serde::parse("60").is_err());
        assert!(duration_serde::parse("5 parsecs").is_err());
    }

    #[test]
    fn rejects_unknown_keys_and_names_bad_key() {
        assert!(toml::from_str::<AnalyzerSettings>("fire_afterr = 1").is_err());
        let s = AnalyzerSettings {
            resolve_after: 0,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("analyzer.resolve_after"));
        let s = AnalyzerSettings {
            webhook: "https://am:9093".into(),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("analyzer.webhook"));
        let s = AnalyzerSettings {
            silence_ratio: 1.5,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("analyzer.silence_ratio"));
    }
}
