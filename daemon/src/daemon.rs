//! `telemetryd run`: loads and attaches the programs, polls them, serves
//! HTTP, and stops cleanly on SIGTERM / SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{PerCpuArray, PerCpuHashMap};
use telemetryd_common::xdp::{COUNTERS_MAP, ERRORS_MAP};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::bpf::xdp::{AttachedInterfaces, PacketCounter};
use crate::bpf::LoadedObject;
use crate::collect::drops::DropsCollector;
use crate::collect::{Snapshot, SnapshotClock, XdpCollector};
use crate::config::Config;
use crate::http::{self, HttpLimits, HttpState};
use crate::mapek::{AnomalyBoard, MapeK};
use crate::shutdown;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = http::bind(config.http.listen).await?;
    info!(listen = %listener.local_addr()?, "http listening");

    let drops_setup = crate::bpf::drops::prepare();
    let (layout_name, layout) = drops_setup.global();
    let mut object = LoadedObject::load_with_globals(&[(layout_name, &layout)])
        .context("loading the eBPF object")?;
    if let Some(logger) = object.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }
    let counters: PerCpuHashMap<_, _, _> = object.take_map(COUNTERS_MAP)?;
    let errors: PerCpuArray<_, _> = object.take_map(ERRORS_MAP)?;
    let mut collector = XdpCollector::new(counters, errors);
    let attached = crate::bpf::drops::attach(&mut object);
    let mut drops = DropsCollector::new(&mut object, drops_setup.names, attached)
        .inspect_err(|error| warn!(%error, "kernel drops and TCP retransmits are not collected"))
        .ok();

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut xdp = if config.xdp.enabled {
        Some(PacketCounter::load(&mut object).context("loading the XDP packet counter")?)
    } else {
        info!("xdp disabled by configuration");
        None
    };
    let mut interfaces = AttachedInterfaces::default();
    if let Some(xdp) = xdp.as_mut() {
        interfaces.reconcile(xdp, &config.xdp.interfaces, config.xdp.mode);
    }
    let mut clock = SnapshotClock::new();
    let mut first = clock.next();
    collector.poll(interfaces.attachments(), &mut first);
    if let Some(drops) = drops.as_mut() {
        drops.poll(&mut first);
    }
    let _ = snapshot_tx.send(Arc::new(first));

    // The anomaly loop runs on its own task, fed through the snapshot
    // channel: a slow analysis never delays a poll.
    let board = AnomalyBoard::new();
    let (analyzer_tx, analyzer_rx) = watch::channel(config.analyzer.clone());
    crate::reload::spawn_analyzer_reload(config.source.clone(), analyzer_tx);
    let mapek = MapeK::new(config.analyzer.clone(), board.clone());
    tokio::spawn(mapek.run(snapshot_rx.clone(), analyzer_rx, Vec::new));
    let _ = ready_tx.send(true);

    let families_board = board.clone();
    let state = HttpState {
        snapshot: snapshot_rx,
        ready: ready_rx,
        extra_families: Arc::new(move || families_board.metric_families()),
        anomalies: Arc::new(move || board.to_json()),
    };
    let limits = HttpLimits {
        max_connections: config.http.max_connections as usize,
        header_read_timeout: config.http.header_read_timeout,
    };
    let server = tokio::spawn(http::serve(listener, state, limits, stop_rx));

    let mut ticker = tokio::time::interval(config.daemon.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stop = shutdown::stop_signal();
    tokio::pin!(stop);
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Some(xdp) = xdp.as_mut() {
                    interfaces.reconcile(xdp, &config.xdp.interfaces, config.xdp.mode);
                }
                let mut snapshot = clock.next();
                collector.poll(interfaces.attachments(), &mut snapshot);
                if let Some(drops) = drops.as_mut() {
                    drops.poll(&mut snapshot);
                }
                let _ = snapshot_tx.send(Arc::new(snapshot));
            }
            signal = &mut stop => break signal.context("installing signal handlers")?,
        }
    };
    info!(signal = reason, "stopping");
    let _ = stop_tx.send(true);
    if let Some(xdp) = xdp.as_mut() {
        interfaces.detach_all(xdp);
    }
    if tokio::time::timeout(std::time::Duration::from_secs(2), server)
        .await
        .is_err()
    {
        warn!("http server did not stop within 2 s");
    }
    info!("stopped");
    Ok(())
}

/// Forwards `aya-log` records from the kernel as they arrive.
async fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer's file descriptor and moves
    // into the AsyncFd, so the descriptor stays open as long as it is
    // registered.
    #[allow(unsafe_code)]
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(error) => {
            let (_, error) = error.into_parts();
            warn!(%error, "kernel-side logs are not forwarded");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                warn!(%error, "kernel-side log channel failed");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
