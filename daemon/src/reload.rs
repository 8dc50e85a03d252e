//! SIGHUP: re-reads the configuration file and hands new `[analyzer]`
//! settings to the running anomaly loop. The programs, maps and other
//! sections are left as they are; an invalid file changes nothing.

use std::path::PathBuf;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{AnalyzerConfig, Config};

/// Installs the SIGHUP handler now (before it, SIGHUP would terminate the
/// process: call this before reporting ready), then reloads on every
/// SIGHUP until the loop's settings receiver is gone.
pub fn spawn_analyzer_reload(source: Option<PathBuf>, settings: watch::Sender<AnalyzerConfig>) {
    match signal(SignalKind::hangup()) {
        Ok(hangup) => {
            tokio::spawn(reload_on(hangup, source, settings));
        }
        Err(error) => warn!(%error, "SIGHUP reload unavailable"),
    }
}

async fn reload_on(
    mut hangup: Signal,
    source: Option<PathBuf>,
    settings: watch::Sender<AnalyzerConfig>,
) {
    let running = Config::load(source.as_deref());
    let mut running = running.ok();
    while hangup.recv().await.is_some() {
        match Config::load(source.as_deref()) {
            Ok(new) => {
                let others_changed = running.as_ref().is_some_and(|old| {
                    let mut a = old.clone();
                    a.analyzer = new.analyzer.clone();
                    a != new
                });
                if others_changed {
                    warn!(
                        "SIGHUP applies [analyzer] only; restart telemetryd for the other sections"
                    );
                }
                info!("SIGHUP: configuration re-read");
                if settings.send(new.analyzer.clone()).is_err() {
                    return;
                }
                running = Some(new);
            }
            Err(error) => {
                warn!(%error, "SIGHUP: configuration not reloaded, keeping the running settings");
            }
        }
    }
}
