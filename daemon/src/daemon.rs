//! `telemetryd run`: loads and attaches the programs, polls them, serves
//! HTTP, re-reads its configuration on SIGHUP, follows interface hotplug,
//! tells systemd when it is ready and alive, and stops cleanly on SIGTERM /
//! SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{PerCpuArray, PerCpuHashMap};
use telemetryd_common::syscalls::{ERRORS_MAP as SYSCALL_ERRORS_MAP, HISTOGRAMS_MAP};
use telemetryd_common::xdp::{COUNTERS_MAP, ERRORS_MAP};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{error, info, warn};

use crate::bpf::syscalls::{self, SyscallTracer};
use crate::bpf::xdp::{AttachedInterfaces, Attachment, PacketCounter};
use crate::bpf::{probe, LoadError, LoadOptions, LoadedObject};
use crate::collect::drops::DropsCollector;
use crate::collect::events::PacketEvents;
use crate::collect::{Snapshot, SnapshotClock, SyscallCollector, XdpCollector};
use crate::config::Config;
use crate::hotplug::LinkWatch;
use crate::http::{self, HttpLimits, HttpState};
use crate::logging::LogControl;
use crate::mapek::{AnomalyBoard, MapeK};
use crate::notify::{self, Notifier};
use crate::reload::{ConfigSource, Reloader};
use crate::shutdown;

/// What the daemon needs besides its configuration: where that came from
/// (for SIGHUP), the log level control, and the systemd notifier.
pub struct Operations {
    pub source: ConfigSource,
    pub log: Option<LogControl>,
    pub notifier: Notifier,
}

/// Test hook, never set in production: `TELEMETRYD_TEST_STALL_POLL_AFTER=N`
/// makes the poll loop hang after N polls, so a test can see the systemd
/// watchdog pings stop.
const TEST_STALL_POLL_AFTER: &str = "TELEMETRYD_TEST_STALL_POLL_AFTER";

pub async fn run(mut config: Config, ops: Operations) -> anyhow::Result<()> {
    let Operations {
        source,
        log,
        mut notifier,
    } = ops;
    // First thing, so an early SIGHUP is queued rather than fatal.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let reloader = Reloader::new(source, log, &config);
    let stall_after: Option<u64> = std::env::var(TEST_STALL_POLL_AFTER)
        .ok()
        .and_then(|n| n.parse().ok());
    if let Some(n) = stall_after {
        warn!(
            polls = n,
            "TEST HOOK {TEST_STALL_POLL_AFTER} is set: the poll loop will stall"
        );
    }

    let listener = http::bind(config.http.listen).await?;
    info!(listen = %listener.local_addr()?, "http listening");

    let options = if config.syscalls.enabled {
        syscalls::object_options(&config.syscalls)?
    } else {
        LoadOptions::default()
    };
    let options = options.with_xdp(&config.xdp);
    // Kernel struct offsets the drop tracer needs, read from BTF.
    let drops_setup = crate::bpf::drops::prepare();
    let (layout_name, layout) = drops_setup.global();
    let mut object = LoadedObject::load_with_globals(&options, &[(layout_name, &layout)])
        .context("loading the eBPF object")?;
    if let Some(logger) = object.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }
    let counters: PerCpuHashMap<_, _, _> = object.take_map(COUNTERS_MAP)?;
    let errors: PerCpuArray<_, _> = object.take_map(ERRORS_MAP)?;
    let xdp_collector = XdpCollector::new(counters, errors);
    let attached = crate::bpf::drops::attach(&mut object);
    let drops = DropsCollector::new(&mut object, drops_setup.names, attached)
        .inspect_err(|error| warn!(%error, "kernel drops and TCP retransmits are not collected"))
        .ok();

    // The syscall tracer first: it only needs the object while attaching
    // (it owns its links), the packet counter keeps borrowing it.
    let syscall_tracer = if config.syscalls.enabled {
        let support = probe::probe();
        let tracer = SyscallTracer::start(&mut object, &config.syscalls, &support)
            .context("starting the syscall latency tracer")?;
        let histograms: PerCpuArray<_, _> = object.take_map(HISTOGRAMS_MAP)?;
        let errors: PerCpuArray<_, _> = object.take_map(SYSCALL_ERRORS_MAP)?;
        Some(SyscallPoll {
            tracer,
            collector: SyscallCollector::new(histograms, errors),
        })
    } else {
        info!("syscall tracing disabled by configuration");
        None
    };

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);

    let events = if config.xdp.enabled {
        Some(PacketEvents::start(&mut object, &config.xdp)?)
    } else {
        None
    };
    let mut xdp = if config.xdp.enabled {
        match PacketCounter::load(&mut object) {
            Ok(xdp) => Some(xdp),
            // Packet counting is lost, the rest (HTTP, syscalls) keeps running.
            Err(error @ LoadError::NotPermitted { .. }) => {
                error!(%error, "xdp unavailable; running without packet counting");
                None
            }
            Err(error) => return Err(error).context("loading the XDP packet counter"),
        }
    } else {
        info!("xdp disabled by configuration");
        None
    };
    // Subscribed before the first reconcile, so no link change is missed.
    let links = match LinkWatch::start() {
        Ok(links) => Some(links),
        Err(error) => {
            warn!(%error, "no link notifications; new interfaces are found at the next poll");
            None
        }
    };
    let mut interfaces = AttachedInterfaces::default();
    if let Some(xdp) = xdp.as_mut() {
        interfaces.reconcile(xdp, &config.xdp);
    }
    let top_talkers = events.as_ref().map(|events| events.shares_source());
    let mut collectors = Collectors {
        clock: SnapshotClock::new(),
        xdp: xdp_collector,
        drops,
        events,
        syscalls: syscall_tracer,
    };
    let _ = snapshot_tx.send(Arc::new(
        collectors.poll(xdp.as_ref(), interfaces.attachments()),
    ));

    // The anomaly loop runs on its own task, fed through the snapshot
    // channel: a slow analysis never delays a poll.
    let board = AnomalyBoard::new();
    let mapek = MapeK::new(config.analyzer.clone(), board.clone());
    tokio::spawn(mapek.run(
        snapshot_rx.clone(),
        reloader.analyzer_settings(),
        move || {
            top_talkers
                .as_ref()
                .map(|shares| shares())
                .unwrap_or_default()
        },
    ));
    let _ = ready_tx.send(true);
    return_startup_memory();

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
    notifier.ready();

    let mut ticker = tokio::time::interval(config.daemon.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stop = shutdown::stop_signal();
    tokio::pin!(stop);
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
                if let Some(xdp) = xdp.as_mut() {
                    interfaces.reconcile(xdp, &config.xdp);
                }
                let snapshot = collectors.poll(xdp.as_ref(), interfaces.attachments());
                let _ = snapshot_tx.send(Arc::new(snapshot));
                polls += 1;
                if stall_after.is_some_and(|n| polls > n) {
                    warn!("TEST HOOK: stalling the poll loop");
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                notifier.poll_alive(std::time::Instant::now());
            }
            () = watchdog_due(watchdog.as_mut()) => notifier.poll_alive(std::time::Instant::now()),
            () = link_change(links.as_ref()) => {
                if let Some(xdp) = xdp.as_mut() {
                    interfaces.reconcile(xdp, &config.xdp);
                }
            }
            _ = hangup.recv() => {
                notifier.reloading(notify::monotonic_usec());
                if let Some(applied) = reloader.reload(&mut config) {
                    if applied.poll_interval {
                        ticker = tokio::time::interval(config.daemon.poll_interval);
                        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    }
                    if let Some(xdp) = xdp.as_mut() {
                        if applied.xdp_reattach {
                            interfaces.detach_all(xdp);
                        }
                        if applied.xdp {
                            interfaces.reconcile(xdp, &config.xdp);
                        }
                    }
                }
                notifier.ready();
            }
            signal = &mut stop => break signal.context("installing signal handlers")?,
        }
    };
    info!(signal = reason, "stopping");
    notifier.stopping();
    let _ = stop_tx.send(true);
    if let Some(xdp) = xdp.as_mut() {
        interfaces.detach_all(xdp);
    }
    if let Some(syscalls) = collectors.syscalls.take() {
        info!(
            mode = syscalls.tracer.strategy.label(),
            "syscall latency tracer detached"
        );
        drop(syscalls);
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

/// Start-up parses the kernel's BTF (several MiB, more than once: aya's
/// loader does it eagerly) and frees it again; glibc keeps such freed heap
/// resident until told otherwise. Hand it back once, when start-up is done.
fn return_startup_memory() {
    // SAFETY: malloc_trim only releases free heap pages to the kernel; it
    // takes no pointers and is safe to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The syscall tracer (it owns its links) and the collector of its maps.
struct SyscallPoll {
    tracer: SyscallTracer,
    collector: SyscallCollector,
}

/// Everything read once per poll, into one snapshot.
struct Collectors {
    clock: SnapshotClock,
    xdp: XdpCollector,
    drops: Option<DropsCollector>,
    events: Option<PacketEvents>,
    syscalls: Option<SyscallPoll>,
}

impl Collectors {
    fn poll(
        &mut self,
        counter: Option<&PacketCounter<'_>>,
        attachments: &[Attachment],
    ) -> Snapshot {
        let mut snapshot = self.clock.start_poll();
        self.xdp.poll(counter, attachments, &mut snapshot);
        if let Some(drops) = self.drops.as_mut() {
            drops.poll(&mut snapshot);
        }
        if let Some(events) = &self.events {
            events.fill(&mut snapshot);
        }
        if let Some(syscalls) = &self.syscalls {
            syscalls.collector.poll(&syscalls.tracer, &mut snapshot);
        }
        snapshot
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
