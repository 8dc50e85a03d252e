//! The signals telemetryd collects, one folder each: its load-time
//! settings, attach and fallback, maps, poll into its own section of the
//! [`Snapshot`], metric families, `check --probe` lines and tests. Each
//! signal's eBPF program is one file in `ebpf-programs/`, its shared types
//! one module in `common/`.
//!
//! - [`xdp`]: the packet counter on the node's interfaces;
//! - [`events`]: sampled packet events and top talkers;
//! - [`syscalls`]: syscall latency;
//! - [`drops`]: kernel drop reasons and TCP retransmits.
//!
//! [`Sources`] loads the one eBPF object with every enabled source's
//! settings, starts the sources and polls them. Together with `loader`, the
//! only part of the daemon that touches aya.

pub mod cardinality;
pub mod drops;
pub mod events;
pub mod program_stats;
pub mod snapshot;
pub mod syscalls;
pub mod xdp;

use anyhow::Context as _;
use tracing::{info, warn};

pub use snapshot::{ProgramAttachment, Section, Snapshot, SnapshotClock};

use crate::config::{Config, XdpConfig};
use crate::kernel::btf::KernelBtf;
use crate::loader::probe::{self, KernelSupport};
use crate::loader::{self as object_loader, LoadError, LoadSettings, LoadedObject};
use crate::reload::Applied;
use drops::{DropsLoad, DropsSource};
use events::{EventsLoad, PacketEvents};
use program_stats::StatsSwitch;
use syscalls::{SyscallSource, SyscallsLoad};
use telemetryd_common::drops::{DROPS_PROGRAM, RETRANSMITS_PROGRAM};
use xdp::{PinDir, XdpLoad, XdpSource};

/// Every running source and the object they were loaded from.
pub struct Sources {
    clock: SnapshotClock,
    /// The programs stay here (the sources own their maps and links).
    object: LoadedObject,
    /// BPF run-time statistics, held on with `daemon.ebpf_stats`.
    stats: StatsSwitch,
    xdp: Option<XdpSource>,
    drops: Option<DropsSource>,
    events: Option<PacketEvents>,
    syscalls: Option<SyscallSource>,
    /// Why a source the configuration enables could not start, by its
    /// `telemetryd_source_up` label.
    unavailable: Vec<(&'static str, String)>,
}

impl Sources {
    /// Loads the object with the settings of every source `config`
    /// enables, and starts them. A source the kernel cannot run is logged
    /// and left out where the rest can do without it (XDP without
    /// CAP_NET_ADMIN, the drop tracer); a bad setting stops the start.
    /// Call it inside the tokio runtime: some sources spawn tasks on it.
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        let syscalls = config
            .syscalls
            .enabled
            .then(|| SyscallsLoad::new(&config.syscalls))
            .transpose()?;
        let events = EventsLoad::from_config(&config.xdp).context("loading the eBPF object")?;
        let pins = match config.daemon.pin_path.as_str() {
            "" => None,
            _ if !config.xdp.enabled => None,
            path => Some(PinDir::create(std::path::Path::new(path))?),
        };
        let xdp = XdpLoad::new(pins.as_ref());
        // The kernel's BTF, read once for the drop tracer and dropped before
        // the object loads (aya's loader parses it again on its own).
        let drops = drops::prepare(KernelBtf::from_sys_fs().as_ref());
        let mut settings: Vec<&dyn LoadSettings> = vec![&xdp, &events, &drops];
        if let Some(syscalls) = &syscalls {
            settings.push(syscalls);
        }
        let mut object = LoadedObject::load(&settings).context("loading the eBPF object")?;
        // Before any program attaches, so their counts start with their first run.
        let mut stats = StatsSwitch::default();
        stats.set(config.daemon.ebpf_stats);
        if let Some(logger) = object.take_logger() {
            tokio::spawn(object_loader::forward_logs(logger));
        }
        let mut unavailable = Vec::new();
        let DropsLoad { names, .. } = drops;
        let mut drops = match DropsSource::start(&mut object, names) {
            Ok(drops) => {
                for (program, reason) in drops.not_attached() {
                    unavailable.push((source_of(program), reason.clone()));
                }
                Some(drops)
            }
            Err(error) => {
                warn!(%error, "kernel drops and TCP retransmits are not collected");
                for source in [DROPS_PROGRAM, RETRANSMITS_PROGRAM].map(source_of) {
                    unavailable.push((source, format!("{error:#}")));
                }
                None
            }
        };
        if let Some(drops) = drops.as_mut() {
            drops.set_device_cap(&config.metrics);
        }
        let syscalls = if config.syscalls.enabled {
            let support = probe::probe();
            Some(
                SyscallSource::start(&mut object, &config.syscalls, &support)
                    .context("starting the syscall latency tracer")?,
            )
        } else {
            info!("syscall tracing disabled by configuration");
            None
        };
        let (events, xdp) = if config.xdp.enabled {
            let xdp = XdpSource::start(&mut object, &config.xdp, pins)
                .context("loading the XDP packet counter")?;
            let mut xdp = match xdp {
                Ok(xdp) => Some(xdp),
                Err(reason) => {
                    unavailable.push(("xdp", reason));
                    None
                }
            };
            if let Some(xdp) = xdp.as_mut() {
                xdp.set_device_cap(&config.metrics);
            }
            // Without the events build (the kernel refused it, logged), no
            // ring buffer to drain: the section is absent and
            // `telemetryd_source_up{source="packet_events"}` 0.
            let refused = xdp.as_ref().and_then(|x| x.events_refused()).map(|r| {
                format!(
                    "the kernel refused the build with packet events ({}): {}",
                    r.errno, r.reason
                )
            });
            let events = if let Some(reason) = refused {
                unavailable.push((telemetryd_common::events::EVENTS_SOURCE, reason));
                None
            } else {
                Some(PacketEvents::start(&mut object, &config.xdp)?)
            };
            (events, xdp)
        } else {
            info!("xdp disabled by configuration");
            (None, None)
        };
        Ok(Self {
            clock: SnapshotClock::new(),
            object,
            stats,
            xdp,
            drops,
            events,
            syscalls,
            unavailable,
        })
    }

    /// One poll of every source, into one snapshot.
    pub fn poll(&mut self) -> Snapshot {
        let mut snapshot = self.clock.start_poll();
        snapshot.xdp = self.xdp.as_mut().map(XdpSource::poll);
        snapshot.drops = self.drops.as_mut().map(DropsSource::poll);
        snapshot.events = self.events.as_ref().map(PacketEvents::poll);
        snapshot.syscalls = self.syscalls.as_ref().map(SyscallSource::poll);
        snapshot.unavailable = self.unavailable.clone();
        if let Some(reason) = self.xdp.as_ref().and_then(XdpSource::attached_nowhere) {
            snapshot.unavailable.push(("xdp", reason));
        }
        snapshot.programs = self.stats.read(&self.object.ebpf);
        snapshot
    }

    /// Interfaces may have appeared, vanished or changed: attach and detach
    /// as `xdp` wants.
    pub fn follow_interfaces(&mut self, xdp: &XdpConfig) {
        if let Some(source) = self.xdp.as_mut() {
            source.reconcile(xdp);
        }
    }

    /// Applies what a reload changed (`config` is the running configuration
    /// after the reload).
    pub fn apply(&mut self, config: &Config, applied: &Applied) {
        if applied.ebpf_stats {
            self.stats.set(config.daemon.ebpf_stats);
        }
        if applied.metrics {
            if let Some(source) = self.xdp.as_mut() {
                source.set_device_cap(&config.metrics);
            }
            if let Some(source) = self.drops.as_mut() {
                source.set_device_cap(&config.metrics);
            }
        }
        if let Some(source) = self.xdp.as_mut() {
            if applied.xdp_reattach {
                source.detach_all();
            }
            if applied.xdp {
                source.reconcile(&config.xdp);
            }
        }
    }

    /// Detaches every program (shutdown); with `daemon.pin_path`, XDP stays
    /// attached for the next run.
    pub fn stop(&mut self) {
        if let Some(source) = self.xdp.as_mut() {
            source.stop();
        }
        if let Some(syscalls) = self.syscalls.take() {
            info!(
                mode = syscalls.tracer().attach.label(),
                "syscall latency tracer detached"
            );
        }
        self.drops = None;
        self.events = None;
    }
}

/// What `telemetryd check` says about the sources: where XDP would attach
/// and, with `probe_kernel`, what this kernel supports and what would
/// attach how.
pub fn describe(config: &Config, probe_kernel: bool) -> String {
    let mut out = xdp::describe(&config.xdp);
    if !probe_kernel {
        return out;
    }
    let support = probe::probe();
    out.push_str(&kernel_table(&support));
    if config.syscalls.enabled {
        out.push_str(&syscalls::describe(config, &support));
    }
    out.push_str(&drops::describe(KernelBtf::from_sys_fs().as_ref()));
    out
}

/// `telemetryd unpin`: detaches and removes everything pinned under
/// `daemon.pin_path`; the exit code.
pub fn unpin(config: &Config) -> u8 {
    let path = config.daemon.pin_path.as_str();
    if path.is_empty() {
        eprintln!(
            "telemetryd unpin: daemon.pin_path is empty in the configuration: nothing is pinned"
        );
        return crate::config::EX_USAGE as u8;
    }
    match xdp::pins::unpin_all(std::path::Path::new(path)) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned under {path}");
            0
        }
        Ok(removed) => {
            for line in removed {
                println!("removed {line}");
            }
            0
        }
        Err(error) => {
            eprintln!("telemetryd unpin: {path}: {error}");
            1
        }
    }
}

/// The `telemetryd_source_up` label of the drop tracer `program`.
fn source_of(program: &str) -> &'static str {
    use telemetryd_common::drops::{DROPS_PROGRAM, RETRANSMITS_PROGRAM};
    match program {
        DROPS_PROGRAM => "kernel_drops",
        RETRANSMITS_PROGRAM => "tcp_retransmits",
        _ => "unknown",
    }
}

fn kernel_table(support: &KernelSupport) -> String {
    let mut out = String::from("kernel:\n");
    out.push_str(&format!("  release: {}\n", support.release));
    for feature in &support.features {
        let state = if feature.available { "yes" } else { "no" };
        out.push_str(&format!(
            "  {:<20} {state:<4} {}\n",
            feature.name, feature.detail
        ));
    }
    out
}

/// The object as the daemon loads it with default settings of every source
/// (no packet events, the daemon's own tgid not traced, no filters): for
/// tests and benchmarks that drive programs themselves.
pub fn load_default_object() -> Result<LoadedObject, LoadError> {
    LoadedObject::load(&[
        &XdpLoad::default(),
        &EventsLoad::default(),
        &SyscallsLoad::default(),
    ])
}
