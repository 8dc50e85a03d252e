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

pub mod drops;
pub mod events;
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
use syscalls::{SyscallSource, SyscallsLoad};
use xdp::{XdpLoad, XdpSource};

/// Every running source and the object they were loaded from.
pub struct Sources {
    clock: SnapshotClock,
    /// The programs stay here (the sources own their maps and links).
    _object: LoadedObject,
    xdp: Option<XdpSource>,
    drops: Option<DropsSource>,
    events: Option<PacketEvents>,
    syscalls: Option<SyscallSource>,
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
        let xdp = XdpLoad::default();
        // The kernel's BTF, read once for the drop tracer and dropped before
        // the object loads (aya's loader parses it again on its own).
        let drops = drops::prepare(KernelBtf::from_sys_fs().as_ref());
        let mut settings: Vec<&dyn LoadSettings> = vec![&xdp, &events, &drops];
        if let Some(syscalls) = &syscalls {
            settings.push(syscalls);
        }
        let mut object = LoadedObject::load(&settings).context("loading the eBPF object")?;
        if let Some(logger) = object.take_logger() {
            tokio::spawn(object_loader::forward_logs(logger));
        }
        let DropsLoad { names, .. } = drops;
        let drops = DropsSource::start(&mut object, names)
            .inspect_err(
                |error| warn!(%error, "kernel drops and TCP retransmits are not collected"),
            )
            .ok();
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
            let xdp = XdpSource::start(&mut object, &config.xdp)
                .context("loading the XDP packet counter")?;
            // Without the events build (the kernel refused it, logged), no
            // ring buffer to drain: the section is absent and
            // `telemetryd_source_up{source="packet_events"}` 0.
            let refused = xdp.as_ref().is_some_and(|x| x.events_refused().is_some());
            let events = if refused {
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
            _object: object,
            xdp,
            drops,
            events,
            syscalls,
        })
    }

    /// One poll of every source, into one snapshot.
    pub fn poll(&mut self) -> Snapshot {
        let mut snapshot = self.clock.start_poll();
        snapshot.xdp = self.xdp.as_mut().map(XdpSource::poll);
        snapshot.drops = self.drops.as_mut().map(DropsSource::poll);
        snapshot.events = self.events.as_ref().map(PacketEvents::poll);
        snapshot.syscalls = self.syscalls.as_ref().map(SyscallSource::poll);
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
        if let Some(source) = self.xdp.as_mut() {
            if applied.xdp_reattach {
                source.detach_all();
            }
            if applied.xdp {
                source.reconcile(&config.xdp);
            }
        }
    }

    /// Detaches every program (shutdown).
    pub fn stop(&mut self) {
        if let Some(source) = self.xdp.as_mut() {
            source.detach_all();
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
