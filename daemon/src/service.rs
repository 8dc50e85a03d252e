//! `telemetryd run`, the service: starts the sources and polls them into
//! snapshots, serves HTTP, runs the anomaly loop on the snapshots, re-reads
//! its configuration on SIGHUP, follows interface hotplug, tells systemd
//! when it is ready and alive, and stops cleanly on SIGTERM / SIGINT. It
//! touches no eBPF itself: that is the sources' business.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::hotplug::LinkWatch;
use crate::http::{self, HttpLimits, HttpState};
use crate::http_connections::HttpMetrics;
use crate::logging::LogControl;
use crate::mapek::{AnomalyBoard, MapeK};
use crate::metrics::self_metrics::SelfMetrics;
use crate::notify::{self, Notifier};
use crate::readiness::Readiness;
use crate::reload::{ConfigSource, Reloader};
use crate::shutdown::StopSignals;
use crate::sources::{Snapshot, Sources};
use crate::sys;
use crate::webconfig::{WebAccess, WebSettings};

/// The service, before it runs: where its configuration came from (for
/// SIGHUP), the log level control, the systemd notifier, and the web
/// configuration loaded at start (TLS, basic auth).
pub struct Service {
    pub source: ConfigSource,
    pub log: Option<LogControl>,
    pub notifier: Notifier,
    pub web: WebSettings,
}

/// Test hook, never set in production: `TELEMETRYD_TEST_STALL_POLL_AFTER=N`
/// makes the poll loop hang after N polls, so a test can see the systemd
/// watchdog pings stop.
const TEST_STALL_POLL_AFTER: &str = "TELEMETRYD_TEST_STALL_POLL_AFTER";

impl Service {
    /// Runs until SIGTERM or SIGINT.
    pub async fn run(self, config: Config) -> anyhow::Result<()> {
        run(self, config).await
    }
}

async fn run(service: Service, mut config: Config) -> anyhow::Result<()> {
    let Service {
        source,
        log,
        mut notifier,
        web,
    } = service;
    // First thing, so an early SIGHUP, SIGTERM or SIGINT is queued rather
    // than fatal: a stop during start-up (loading can take a second) is then
    // an orderly stop after it.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut stop = StopSignals::install().context("installing the SIGTERM/SIGINT handlers")?;
    info!(web_config = %web.describe(), "web configuration");
    let web = WebAccess::new(web);
    let listen_flag = source.overrides.listen.is_some();
    let reloader = Reloader::new(source, log, &config).reloading_web(web.clone());
    let stall_after: Option<u64> = std::env::var(TEST_STALL_POLL_AFTER)
        .ok()
        .and_then(|n| n.parse().ok());
    if let Some(n) = stall_after {
        warn!(
            polls = n,
            "TEST HOOK {TEST_STALL_POLL_AFTER} is set: the poll loop will stall"
        );
    }

    raise_open_file_limit(config.http.max_connections as u64);
    // An address this host cannot listen on is a configuration error (exit
    // 64), named like the others.
    let listener = http::bind(config.http.listen, config.http.max_connections as usize)
        .await
        .map_err(|error| {
            let message = format!("cannot listen on {}: {error}", config.http.listen);
            if listen_flag {
                ConfigError::Invalid {
                    origin: "command line".to_owned(),
                    key: "--listen".to_owned(),
                    line_col: None,
                    message,
                }
            } else {
                config.key_error("http.listen", message)
            }
        })?;
    info!(listen = %listener.local_addr()?, "http listening");

    // Subscribed before the first attach, so no link change is missed.
    let links = match LinkWatch::start() {
        Ok(links) => Some(links),
        Err(error) => {
            warn!(%error, "no link notifications; new interfaces are found at the next poll");
            None
        }
    };
    let self_metrics = Arc::new(SelfMetrics::new(config.fingerprint()));
    let mut sources = Sources::start(&config)?;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let first = Arc::new(sources.poll());
    self_metrics.poll_done(started.elapsed(), config.daemon.poll_interval);
    let mut readiness = Readiness::of(&first, &config);
    let (readiness_tx, readiness_rx) = watch::channel(Arc::new(readiness.clone()));
    log_readiness(&readiness);
    let _ = snapshot_tx.send(first);

    // The anomaly loop runs on its own task, fed through the snapshot
    // channel: a slow analysis never delays a poll.
    let board = AnomalyBoard::new();
    let mapek = MapeK::new(config.analyzer.clone(), board.clone());
    tokio::spawn(mapek.run(snapshot_rx.clone(), reloader.analyzer_settings()));
    // Start-up parsed the kernel's BTF (several MiB, more than once: aya's
    // loader does it eagerly) and freed it again; glibc keeps such freed
    // heap resident until told otherwise.
    sys::return_freed_heap();

    let families_board = board.clone();
    let families_self = self_metrics.clone();
    let http_metrics = HttpMetrics::new();
    let server_families = http_metrics.clone();
    let state = HttpState {
        snapshot: snapshot_rx,
        readiness: readiness_rx,
        extra_families: Arc::new(move || {
            let mut families = families_board.metric_families();
            families.extend(families_self.families());
            families.extend(server_families.families());
            families
        }),
        anomalies: Arc::new(move || board.to_json()),
        self_metrics: self_metrics.clone(),
        web,
    };
    let limits = HttpLimits {
        max_connections: config.http.max_connections as usize,
        header_read_timeout: config.http.header_read_timeout,
        // Never longer than the deadline it shortens.
        header_read_timeout_at_cap: config
            .http
            .header_read_timeout_at_cap
            .min(config.http.header_read_timeout),
        idle_timeout: config.http.idle_timeout,
    };
    let server = tokio::spawn(http::serve(listener, state, limits, http_metrics, stop_rx));
    notifier.readiness(readiness.ready, &readiness.summary());

    let mut ticker = tokio::time::interval(config.daemon.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut polls: u64 = 0;
    // Pings go out from this loop, at half the watchdog timeout even when
    // the poll interval is longer; a stalled loop sends none.
    let mut watchdog = notifier.watchdog().map(|timeout| {
        let mut ticker = tokio::time::interval(timeout / 2);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let started = Instant::now();
                sources.follow_interfaces(&config.xdp);
                let snapshot = Arc::new(sources.poll());
                self_metrics.poll_done(started.elapsed(), config.daemon.poll_interval);
                let now = Readiness::of(&snapshot, &config);
                if now != readiness {
                    readiness = now;
                    log_readiness(&readiness);
                    notifier.readiness(readiness.ready, &readiness.summary());
                    let _ = readiness_tx.send(Arc::new(readiness.clone()));
                }
                let _ = snapshot_tx.send(snapshot);
                polls += 1;
                if stall_after.is_some_and(|n| polls > n) {
                    warn!("TEST HOOK: stalling the poll loop");
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                notifier.poll_alive(Instant::now());
            }
            () = watchdog_due(watchdog.as_mut()) => notifier.poll_alive(Instant::now()),
            () = link_change(links.as_ref()) => sources.follow_interfaces(&config.xdp),
            _ = hangup.recv() => {
                notifier.reloading(notify::monotonic_usec());
                let applied = reloader.reload(&mut config).await;
                self_metrics.reloaded(applied.as_ref().map(|_| config.fingerprint()));
                if let Some(applied) = applied {
                    if applied.poll_interval {
                        ticker = tokio::time::interval(config.daemon.poll_interval);
                        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    }
                    sources.apply(&config, &applied);
                }
                notifier.reloaded();
            }
            signal = stop.recv() => break signal,
        }
    };
    info!(signal = reason, "stopping");
    notifier.stopping();
    let _ = stop_tx.send(true);
    sources.stop();
    if tokio::time::timeout(std::time::Duration::from_secs(2), server)
        .await
        .is_err()
    {
        warn!("http server did not stop within 2 s");
    }
    info!("stopped");
    Ok(())
}

/// Whether a start-up failure is the configuration's (exit 64): a
/// `daemon.pin_path` that is not on a bpffs.
pub fn is_configuration_error(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.is::<crate::sources::xdp::pins::PinPathError>())
}

/// One line per readiness change: info when ready, warn naming what is
/// down and why when not.
fn log_readiness(readiness: &Readiness) {
    let summary = readiness.summary();
    if readiness.ready {
        info!(status = %summary, "ready");
    } else {
        warn!(status = %summary, "not ready");
    }
}

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit is 1,024), so `http.max_connections` connections fit beside the
/// daemon's own descriptors; says so when even the hard limit is short.
fn raise_open_file_limit(connections: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        warn!(%error, "could not raise the open-file limit");
    }
    let now = getrlimit(Resource::Nofile).current;
    if now.is_some_and(|n| n < connections + 256) {
        warn!(
            limit = now,
            max_connections = connections,
            "the open-file limit is below http.max_connections + 256: connections beyond it \
             are refused by the kernel (raise LimitNOFILE)"
        );
    }
}

/// Resolves when the next watchdog ping is due; never without a watchdog.
async fn watchdog_due(ticker: Option<&mut tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves on the next burst of link notifications; never without them.
async fn link_change(links: Option<&LinkWatch>) {
    match links {
        Some(links) => links.changed().await,
        None => std::future::pending().await,
    }
}
