//! SIGHUP: re-read the configuration file, apply what can change while
//! running, keep the running configuration when the new file is invalid.
//!
//! Applied live: `log.level`, `[analyzer]` (published on a watch channel the
//! MAPE-K loop reads), `xdp.interfaces`/`xdp.mode`/`xdp.replace` (the daemon
//! reconciles its attachments), `daemon.poll_interval`,
//! `daemon.optional_sources` (readiness is judged again), `daemon.ebpf_stats`,
//! `[metrics]` (new device caps), and the web configuration
//! (`http.web_config`: the file is re-read on every SIGHUP, its certificates
//! and users with it; see [`crate::webconfig`]). Everything else
//! (listen address, log format, enabling or disabling programs, syscall
//! tracing settings) needs a restart: a changed value is logged and the
//! running one kept.
//!
//! A reload applies only a file that held still: it is read, read again
//! [`SETTLE`] later, and applied only when both reads saw the same bytes and
//! the same `fstat` (inode, size, times) and neither changed while it was
//! read. A file that keeps changing is retried [`ATTEMPTS`] times, then the
//! running configuration is kept and the reason logged. An empty file (the
//! moment between truncating and rewriting in place) is never applied by a
//! reload either. Replacing the file by rename is what never tears.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{self, file, AnalyzerSettings, Config, ConfigError, Overrides};
use crate::logging::LogControl;
use crate::webconfig::WebAccess;

/// Where the configuration comes from: the file (or the default path, or
/// the embedded default) and the command-line flags that override it.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

/// How long the file must hold still between the two reads of a reload.
pub const SETTLE: Duration = Duration::from_millis(50);
/// Reads of a reload before it gives up on a file that keeps changing.
pub const ATTEMPTS: u32 = 3;

/// Why a reload kept the running configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(
        "{path}: the file {why} in each of {attempts} attempts; replace it by rename \
         (write a new file, then mv it over the old one)"
    )]
    Unsettled {
        path: String,
        why: &'static str,
        attempts: u32,
    },
    #[error("{path}: the file is empty (truncated while being rewritten in place?)")]
    Empty { path: String },
}

impl ReloadError {
    /// The `outcome` field of the log line: `invalid`, `unsettled`, `empty`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) => "invalid",
            ReloadError::Unsettled { .. } => "unsettled",
            ReloadError::Empty { .. } => "empty",
        }
    }
}

/// A configuration and the digest of the file text it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// [`file::digest`] of the text applied (of the embedded default
    /// without a file).
    pub digest: String,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.path.as_deref())?;
        config.apply_overrides(&self.overrides)?;
        Ok(config)
    }

    /// Loads the file for a reload: only a version that held still for
    /// [`SETTLE`] (see the module documentation).
    pub async fn load_settled(&self) -> Result<Loaded, ReloadError> {
        let Some(path) = config::resolve(self.path.as_deref()) else {
            let mut config = Config::load(None)?;
            config.apply_overrides(&self.overrides)?;
            return Ok(Loaded {
                config,
                digest: file::digest(config::EMBEDDED),
            });
        };
        let mut why = "";
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(SETTLE).await;
            }
            let first = file::read(path)?;
            if first.changed_while_reading {
                why = "changed while it was read";
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            let second = file::read(path)?;
            if second != first {
                why = "changed between two reads 50 ms apart";
                continue;
            }
            if first.text.is_empty() {
                return Err(ReloadError::Empty {
                    path: path.display().to_string(),
                });
            }
            let mut config = Config::from_file_text(&first.text, path)?;
            config.source = self.path.clone();
            config.apply_overrides(&self.overrides)?;
            return Ok(Loaded {
                config,
                digest: file::digest(&first.text),
            });
        }
        Err(ReloadError::Unsettled {
            path: path.display().to_string(),
            why,
            attempts: ATTEMPTS,
        })
    }
}

/// What a reload changed that the daemon's loop must act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The interface list, mode or replace policy changed: reconcile.
    pub xdp: bool,
    /// `xdp.mode` or `xdp.replace` changed: existing attachments must be
    /// redone, not only new ones added.
    pub xdp_reattach: bool,
    pub poll_interval: bool,
    /// `daemon.ebpf_stats` changed: take or release BPF statistics.
    pub ebpf_stats: bool,
    /// `[metrics]` changed: new device caps.
    pub metrics: bool,
    pub log_level: bool,
    pub analyzer: bool,
    /// `http.web_config` names another file.
    pub web_config: bool,
    /// Keys whose new value was ignored until the next restart.
    pub needs_restart: Vec<&'static str>,
}

/// Compares `running` with `new`, moves the live-changeable parts of `new`
/// into `running` and says what moved.
pub fn merge(running: &mut Config, new: &Config) -> Applied {
    let mut applied = Applied::default();
    if running.log.level != new.log.level {
        running.log.level = new.log.level.clone();
        applied.log_level = true;
    }
    if running.analyzer != new.analyzer {
        running.analyzer = new.analyzer.clone();
        applied.analyzer = true;
    }
    if running.daemon.poll_interval != new.daemon.poll_interval {
        running.daemon.poll_interval = new.daemon.poll_interval;
        applied.poll_interval = true;
    }
    // Readiness is judged anew at the next poll.
    running.daemon.optional_sources = new.daemon.optional_sources.clone();
    if running.metrics != new.metrics {
        running.metrics = new.metrics.clone();
        applied.metrics = true;
    }
    if running.daemon.ebpf_stats != new.daemon.ebpf_stats {
        running.daemon.ebpf_stats = new.daemon.ebpf_stats;
        applied.ebpf_stats = true;
    }
    if running.xdp.mode != new.xdp.mode || running.xdp.replace != new.xdp.replace {
        applied.xdp_reattach = true;
    }
    if applied.xdp_reattach || running.xdp.interfaces != new.xdp.interfaces {
        running.xdp.interfaces = new.xdp.interfaces.clone();
        running.xdp.mode = new.xdp.mode;
        running.xdp.replace = new.xdp.replace;
        applied.xdp = true;
    }
    if running.http.web_config != new.http.web_config {
        running.http.web_config = new.http.web_config.clone();
        applied.web_config = true;
    }
    let restart_keys: [(&'static str, bool); 6] = [
        (
            "daemon.pin_path",
            running.daemon.pin_path != new.daemon.pin_path,
        ),
        ("http", running.http != new.http),
        ("log.format", running.log.format != new.log.format),
        ("xdp.enabled", running.xdp.enabled != new.xdp.enabled),
        (
            "xdp (sampling and top talkers)",
            running.xdp.sample_rate != new.xdp.sample_rate
                || running.xdp.ring_buffer_size != new.xdp.ring_buffer_size
                || running.xdp.top_talkers != new.xdp.top_talkers
                || running.xdp.top_talkers_window != new.xdp.top_talkers_window,
        ),
        ("syscalls", running.syscalls != new.syscalls),
    ];
    applied.needs_restart = restart_keys
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect();
    applied
}

/// Everything SIGHUP touches outside the daemon's loop.
pub struct Reloader {
    source: ConfigSource,
    log: Option<LogControl>,
    analyzer: watch::Sender<AnalyzerSettings>,
    web: Option<WebAccess>,
}

impl Reloader {
    pub fn new(source: ConfigSource, log: Option<LogControl>, running: &Config) -> Self {
        let (analyzer, _) = watch::channel(running.analyzer.clone());
        Self {
            source,
            log,
            analyzer,
            web: None,
        }
    }

    /// Re-reads the web configuration into `web` on every reload.
    pub fn reloading_web(mut self, web: WebAccess) -> Self {
        self.web = Some(web);
        self
    }

    /// The analyzer settings as they change on SIGHUP (for the MAPE-K loop).
    pub fn analyzer_settings(&self) -> watch::Receiver<AnalyzerSettings> {
        self.analyzer.subscribe()
    }

    /// The hook itself, for whoever needs to send as well.
    pub fn analyzer_sender(&self) -> &watch::Sender<AnalyzerSettings> {
        &self.analyzer
    }

    /// Re-reads the file and applies it to `running`. An invalid file, or
    /// one that does not hold still, changes nothing: the reason is logged
    /// and `None` returned.
    pub async fn reload(&self, running: &mut Config) -> Option<Applied> {
        let (new, digest) = match self.source.load_settled().await {
            Ok(loaded) => (loaded.config, loaded.digest),
            Err(reason @ ReloadError::Invalid(_)) => {
                error!(
                    event = "config_reload",
                    outcome = reason.outcome(),
                    error = %reason,
                    "SIGHUP: the new configuration is invalid; keeping the running one"
                );
                return None;
            }
            Err(reason) => {
                error!(
                    event = "config_reload",
                    outcome = reason.outcome(),
                    error = %reason,
                    "SIGHUP: the configuration file is being rewritten (replace it by rename); keeping the running one"
                );
                return None;
            }
        };
        // The web configuration is loaded before anything is applied: one
        // that is refused refuses the whole reload, as an invalid file does,
        // so `telemetryd_config_last_reload_successful` says so.
        let web = match &self.web {
            Some(access) => match access.prepare(new.http.web_config_path()) {
                Some(settings) => Some((access, settings)),
                None => {
                    error!(
                        event = "config_reload",
                        outcome = "invalid",
                        "SIGHUP: the web configuration was refused; keeping the running configuration"
                    );
                    return None;
                }
            },
            None => None,
        };
        let previous_level = running.log.level.clone();
        let mut applied = merge(running, &new);
        if applied.log_level {
            if let Some(log) = &self.log {
                if let Err(reason) = log.set_level(&running.log.level) {
                    warn!(%reason, "SIGHUP: keeping the previous log level");
                    running.log.level = previous_level;
                    applied.log_level = false;
                }
            }
        }
        if applied.analyzer {
            self.analyzer.send_replace(running.analyzer.clone());
        }
        if let Some((access, settings)) = web {
            access.apply(settings);
        }
        for key in &applied.needs_restart {
            warn!(
                key,
                "SIGHUP: this setting changed but only takes effect after a restart"
            );
        }
        info!(
            event = "config_reload",
            outcome = "applied",
            digest,
            log_level = applied.log_level,
            analyzer = applied.analyzer,
            xdp = applied.xdp,
            poll_interval = applied.poll_interval,
            web_config = applied.web_config,
            "configuration reloaded"
        );
        Some(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Choice, XdpMode};
    use std::time::Duration;

    #[test]
    fn nothing_changed_applies_nothing() {
        let mut running = Config::default();
        assert_eq!(merge(&mut running, &Config::default()), Applied::default());
    }

    #[test]
    fn live_settings_move_into_the_running_config() {
        let mut running = Config::default();
        let mut new = Config::default();
        new.log.level = "debug".into();
        new.analyzer.fire_after = 9;
        new.xdp.interfaces = vec!["eth1".into()];
        new.daemon.poll_interval = Duration::from_millis(250);
        new.daemon.ebpf_stats = true;
        new.metrics.max_devices = 3;
        new.http.web_config = "/etc/telemetryd/web.yml".into();
        let applied = merge(&mut running, &new);
        assert!(applied.metrics);
        assert!(applied.log_level && applied.analyzer && applied.xdp && applied.poll_interval);
        assert!(applied.ebpf_stats);
        assert!(applied.web_config, "another web config file applies live");
        assert!(!applied.xdp_reattach);
        assert!(applied.needs_restart.is_empty());
        assert_eq!(running, new);
    }

    #[test]
    fn mode_change_reattaches_and_restart_keys_are_kept() {
        let mut running = Config::default();
        let mut new = Config::default();
        new.xdp.mode = Choice::Only(XdpMode::Generic);
        new.http.listen = "127.0.0.1:1".parse().unwrap();
        new.syscalls.enabled = !running.syscalls.enabled;
        let applied = merge(&mut running, &new);
        assert!(applied.xdp && applied.xdp_reattach);
        assert_eq!(applied.needs_restart, ["http", "syscalls"]);
        assert_eq!(running.xdp.mode, Choice::Only(XdpMode::Generic));
        assert_eq!(running.http, Config::default().http, "listen kept");
        assert_eq!(running.syscalls, Config::default().syscalls);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_file_keeps_the_running_config() {
        let path = std::env::temp_dir().join(format!("reload-test-{}.toml", std::process::id()));
        std::fs::write(&path, "[log]\nlevel = \"debug\"\n").unwrap();
        let source = ConfigSource {
            path: Some(path.clone()),
            overrides: Overrides::default(),
        };
        let mut running = source.load().unwrap();
        let reloader = Reloader::new(source, None, &running);
        let mut analyzer = reloader.analyzer_settings();

        std::fs::write(&path, "[log]\nlevel = \"loud\"\n").unwrap();
        let before = running.clone();
        assert_eq!(reloader.reload(&mut running).await, None);
        assert_eq!(running, before);

        std::fs::write(&path, "[analyzer]\nfire_after = 7\n").unwrap();
        let applied = reloader.reload(&mut running).await.expect("valid");
        assert!(applied.analyzer && applied.log_level);
        assert!(analyzer.has_changed().unwrap());
        assert_eq!(analyzer.borrow_and_update().fire_after, 7);
        assert_eq!(running.log.level, "info");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test(start_paused = true)]
    async fn command_line_flags_still_win_after_a_reload() {
        let path = std::env::temp_dir().join(format!("reload-flags-{}.toml", std::process::id()));
        std::fs::write(&path, "[log]\nlevel = \"warn\"\n").unwrap();
        let source = ConfigSource {
            path: Some(path.clone()),
            overrides: Overrides {
                log_level: Some("trace".into()),
                ..Overrides::default()
            },
        };
        let mut running = source.load().unwrap();
        let reloader = Reloader::new(source, None, &running);
        std::fs::write(&path, "[log]\nlevel = \"error\"\n").unwrap();
        let applied = reloader.reload(&mut running).await.unwrap();
        assert!(!applied.log_level);
        assert_eq!(running.log.level, "trace");
        let _ = std::fs::remove_file(&path);
    }

    fn source_at(name: &str, text: &str) -> (ConfigSource, PathBuf) {
        let path = std::env::temp_dir().join(format!("reload-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let source = ConfigSource {
            path: Some(path.clone()),
            overrides: Overrides::default(),
        };
        (source, path)
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_file_is_never_applied_by_a_reload() {
        let (source, path) = source_at("empty", "");
        let error = source.load_settled().await.unwrap_err();
        assert_eq!(error.outcome(), "empty", "{error}");
        // At start-up an empty file is the defaults, as documented.
        assert_eq!(
            Config {
                source: None,
                ..source.load().unwrap()
            },
            Config::default()
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_file_is_applied_with_its_digest() {
        let text = "[analyzer]\nfire_after = 4\n";
        let (source, path) = source_at("settled", text);
        let loaded = source.load_settled().await.unwrap();
        assert_eq!(loaded.config.analyzer.fire_after, 4);
        assert_eq!(loaded.digest, file::digest(text));
        assert_eq!(loaded.config.source.as_deref(), Some(path.as_path()));
        let _ = std::fs::remove_file(&path);
    }

    /// A writer rewriting the file in place every 5 ms: no read pair 50 ms
    /// apart ever agrees, so the reload gives up and says why.
    #[tokio::test]
    async fn a_file_that_keeps_changing_is_not_applied() {
        let (source, path) = source_at("churn", "[analyzer]\nfire_after = 4\n");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    std::fs::write(&path, format!("[analyzer]\nfire_after = {}\n", 1 + n % 9))
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let started = std::time::Instant::now();
        let result = source.load_settled().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        let error = result.unwrap_err();
        assert_eq!(error.outcome(), "unsettled", "{error}");
        assert!(
            error.to_string().contains("in each of 3 attempts"),
            "{error}"
        );
        assert!(error.to_string().contains("by rename"), "{error}");
        // Three attempts of two reads 50 ms apart, 50 ms between attempts.
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(started.elapsed() < Duration::from_secs(2));
        let _ = std::fs::remove_file(&path);
    }
}
