//! SIGHUP: re-reads the configuration file and hands new `[analyzer]`
//! settings to the running anomaly loop. The programs, maps and other
//! sections are left as they are; an invalid file changes nothing.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{AnalyzerConfig, Config};

/// Reloads on every SIGHUP until the loop's settings receiver is gone.
pub async fn analyzer_on_sighup(source: Option<PathBuf>, settings: watch::Sender<AnalyzerConfig>) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "SIGHUP reload unavailable");
            return;
        }
    };
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
