//! Structured logs through `tracing`: human text or JSON lines.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is a level name or an EnvFilter
/// directive (`info,telemetryd=debug`); config validation already checked it.
/// `log` records (aya-log's kernel-side diagnostics) go to the same place.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| format!("installing the log subscriber: {e}"))
}
