//! Structured logs through `tracing`: human text or JSON lines, a level that
//! SIGHUP can change, and rate limiting for errors that repeat.
//!
//! JSON lines have stable field names: `timestamp`, `level`, `target`,
//! `message`, then the event's own fields at the top level (`device`,
//! `error`, `suppressed`, ...). Dashboards and log pipelines key on these.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Changes the level of the installed subscriber (SIGHUP).
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    /// Applies a new level or EnvFilter directive list.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("changing the log level: {e}"))
    }
}

/// Installs the global subscriber, writing to stderr. `level` is a level
/// name or an EnvFilter directive (`info,telemetryd=debug`); config
/// validation already checked it. `log` records (aya-log's kernel-side
/// diagnostics) go to the same place.
pub fn init(format: LogFormat, level: &str) -> Result<LogControl, String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(format_layer(format, std::io::stderr, colour_for_stderr()))
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))?;
    Ok(LogControl { handle })
}

/// Colour only for a person at a terminal: under systemd (the journal), in
/// a file or a pipe, escape codes would land in the log lines. `NO_COLOR`
/// (no-color.org) turns it off at a terminal too.
fn colour_for_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The formatting layer for `format`, writing through `writer`; `ansi`
/// colours the text format.
pub fn format_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => fmt::layer().with_writer(writer).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
}

/// Lets the first occurrence of a repeated message through, then at most
/// one per `window`, carrying how many were suppressed in between. Keys are
/// whatever identifies "the same error" (`"netlink recv"`, a device name).
#[derive(Debug)]
pub struct RepeatLimiter {
    window: Duration,
    seen: HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    last_emitted: Instant,
    suppressed: u64,
}

impl RepeatLimiter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)`: log it now, mentioning `suppressed` earlier
    /// repeats that were not logged. `None`: stay quiet this time.
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.seen.get_mut(key) {
            None => {
                // Bound the memory an attacker-controlled key set could take.
                if self.seen.len() >= 1024 {
                    self.seen
                        .retain(|_, s| now.duration_since(s.last_emitted) < self.window);
                }
                self.seen.insert(
                    key.to_owned(),
                    Seen {
                        last_emitted: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            Some(seen) if now.duration_since(seen.last_emitted) >= self.window => {
                let suppressed = std::mem::take(&mut seen.suppressed);
                seen.last_emitted = now;
                Some(suppressed)
            }
            Some(seen) => {
                seen.suppressed += 1;
                None
            }
        }
    }
}

/// A writer for tests: collects everything written into a shared buffer.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_stable_field_names() {
        let captured = CapturedLog::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(format_layer(LogFormat::Json, captured.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(device = "eth0", suppressed = 3u64, "xdp attach failed");
            tracing::debug!("filtered out");
        });
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let value: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object");
        let object = value.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "device",
                "level",
                "message",
                "suppressed",
                "target",
                "timestamp"
            ]
        );
        assert_eq!(object["level"], "WARN");
        assert_eq!(object["message"], "xdp attach failed");
        assert_eq!(object["device"], "eth0");
        assert_eq!(object["suppressed"], 3);
        assert_eq!(object["target"], "telemetryd::logging::tests");
    }

    #[test]
    fn repeats_are_suppressed_and_counted() {
        let mut limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.check("netlink", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(limiter.check("netlink", t0 + Duration::from_secs(i)), None);
        }
        // Another key is independent.
        assert_eq!(limiter.check("eth0", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(
            limiter.check("netlink", t0 + Duration::from_secs(10)),
            Some(5),
            "the next one after the window says how many were dropped"
        );
        assert_eq!(limiter.check("netlink", t0 + Duration::from_secs(11)), None);
        assert_eq!(
            limiter.check("netlink", t0 + Duration::from_secs(30)),
            Some(1)
        );
    }

    #[test]
    fn many_distinct_keys_stay_bounded() {
        let mut limiter = RepeatLimiter::new(Duration::from_millis(1));
        let t0 = Instant::now();
        for i in 0..5000u64 {
            limiter.check(&i.to_string(), t0 + Duration::from_millis(i));
        }
        assert!(limiter.seen.len() <= 1025, "{}", limiter.seen.len());
    }
}
