//! The XDP packet counter: `xdp_packet_counter` on every configured
//! interface (or every interface that is up), counting each frame by
//! device, address family and protocol; followed through hotplug and
//! SIGHUP. Its section of the snapshot is [`XdpStats`].

pub mod attach;
pub mod counters;
pub mod metrics;
pub mod pins;
pub mod stats;

use std::collections::HashSet;

use aya::EbpfLoader;
use telemetryd_common::xdp::LOW_IFINDEX_COUNTERS_MAP;
use tracing::{error, info};

pub use attach::{
    verifier_reason, wanted, AttachError, AttachedInterfaces, Attachment, EventsRefused,
    PacketCounter,
};
pub use counters::CounterPlace;
pub use pins::PinDir;
pub use stats::{InterfaceStats, XdpStats};

use crate::config::{MetricsConfig, XdpConfig};
use crate::kernel::interfaces::statistic;
use crate::loader::{LoadError, LoadSettings, LoadedObject};
use crate::sources::cardinality::{DeviceCap, DevicePolicy};

/// The packet counter's load-time settings: one row of the low-ifindex
/// table per possible CPU, and where its counter maps are pinned (with
/// `daemon.pin_path`).
pub struct XdpLoad {
    cpus: u32,
    pins: Vec<(&'static str, std::path::PathBuf)>,
}

impl Default for XdpLoad {
    fn default() -> Self {
        Self {
            cpus: counters::cpu_id_bound(),
            pins: Vec::new(),
        }
    }
}

impl XdpLoad {
    /// With `pins`: the counter maps pinned there are adopted when their
    /// layout matches, else replaced (see [`PinDir::prepare_maps`]).
    pub fn new(pins: Option<&PinDir>) -> Self {
        let mut load = Self::default();
        if let Some(pins) = pins {
            load.pins = pins.prepare_maps(&pins::counter_layouts(load.cpus));
        }
        load
    }
}

impl LoadSettings for XdpLoad {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.map_max_entries(LOW_IFINDEX_COUNTERS_MAP, self.cpus);
        for (map, path) in &self.pins {
            loader.map_pin_path(map, path.as_path());
        }
    }
}

/// The running packet counter: the program and where it is attached.
pub struct XdpSource {
    counter: PacketCounter,
    interfaces: AttachedInterfaces,
    /// `[metrics]`: which devices have series of their own.
    cap: DeviceCap<usize>,
}

impl XdpSource {
    /// Loads the program (the build with packet events when
    /// `xdp.sample_rate` is not 0) and attaches it as `config` says. A
    /// kernel that refuses it for lack of a privilege costs packet counting
    /// only: that is logged and the reason returned (`Ok(Err(reason))`),
    /// the daemon runs on. A kernel whose verifier refuses the build with
    /// packet events gets the counter alone ([`XdpSource::publishes_events`]
    /// is then false).
    /// With `pins`, links pinned by an earlier run are adopted first (the
    /// program moved over to this one's without leaving the interface).
    pub fn start(
        object: &mut LoadedObject,
        config: &XdpConfig,
        pins: Option<PinDir>,
    ) -> Result<Result<Self, String>, LoadError> {
        let counter = match PacketCounter::load(object, config.sample_rate, pins) {
            Ok(counter) => counter,
            Err(error @ LoadError::NotPermitted { .. }) => {
                error!(%error, "xdp unavailable; running without packet counting");
                return Ok(Err(format!("{error:#}")));
            }
            Err(error) => return Err(error),
        };
        let mut source = Self {
            counter,
            interfaces: AttachedInterfaces::default(),
            cap: DeviceCap::new(DevicePolicy::default(), usize::MAX),
        };
        let adopted = source.counter.adopt_pinned(config.mode);
        source.interfaces.adopt(adopted);
        source.reconcile(config);
        Ok(Ok(source))
    }

    /// Whether the program publishes packet events: `xdp.sample_rate` > 0
    /// and the kernel accepted the build with them.
    pub fn publishes_events(&self) -> bool {
        self.counter.publishes_events()
    }

    /// Why the kernel refused the build with packet events, when it did.
    pub fn events_refused(&self) -> Option<&EventsRefused> {
        self.counter.events_refused()
    }

    /// Attaches to interfaces that appeared or came up, detaches from ones
    /// that vanished or are no longer configured.
    pub fn reconcile(&mut self, config: &XdpConfig) {
        self.interfaces.reconcile(&mut self.counter, config);
    }

    /// Caps the per-device families as `[metrics]` says (at start and on
    /// reload; a reload starts the places and the roll-up afresh).
    pub fn set_device_cap(&mut self, metrics: &MetricsConfig) {
        self.cap = DeviceCap::new(
            DevicePolicy::from_config(metrics),
            metrics.max_devices as usize,
        );
    }

    /// Detaches everything (shutdown, or a mode change before re-attaching).
    pub fn detach_all(&mut self) {
        self.interfaces.detach_all(&mut self.counter);
    }

    /// Why it is attached nowhere, when it is not attached anywhere.
    pub fn attached_nowhere(&self) -> Option<String> {
        if !self.interfaces.attachments().is_empty() {
            return None;
        }
        let failures = self.interfaces.failures();
        Some(if failures.is_empty() {
            "loaded, but attached to no interface".to_owned()
        } else {
            format!("attached to no interface: {}", failures.join("; "))
        })
    }

    /// Shutdown: with pinning the program stays attached (the pins hold its
    /// links) for the next run to adopt; without, everything is detached.
    pub fn stop(&mut self) {
        match self.counter.pins() {
            Some(pins) => {
                info!(
                    path = %pins.root().display(),
                    interfaces = self.interfaces.attachments().len(),
                    "xdp left attached, pinned (telemetryd unpin detaches it)"
                );
                self.interfaces.forget_all();
            }
            None => self.detach_all(),
        }
    }

    /// One poll: the attached interfaces' counters, the kernel's own
    /// interface statistics and the program's errors. Forgets hash entries
    /// of interfaces no longer attached.
    pub fn poll(&mut self) -> XdpStats {
        let attachments = self.interfaces.attachments();
        let counted = self.counter.counters(attachments);
        let mut stats = XdpStats::default();
        for (attachment, counters) in attachments.iter().zip(&counted) {
            let iface = &attachment.interface;
            let mut interface = InterfaceStats {
                ifindex: iface.ifindex,
                packets: counters.packets,
                bytes: counters.bytes,
                malformed: counters.malformed,
                ..Default::default()
            };
            read_kernel_statistics(&iface.name, &mut interface);
            stats.interfaces.insert(iface.name.clone(), interface);
            stats
                .attachments
                .push((iface.name.clone(), attachment.mode));
        }
        stats.errors = self.counter.maps().errors();
        stats.fold_devices(&mut self.cap);
        stats.publishes_events = self.counter.publishes_events();
        let attached: HashSet<u32> = attachments.iter().map(|a| a.interface.ifindex).collect();
        self.counter.maps_mut().forget_detached(&attached);
        stats
    }
}

fn read_kernel_statistics(device: &str, stats: &mut InterfaceStats) {
    // A vanished interface reads as zeros until the next attach pass drops it.
    stats.rx_dropped = statistic(device, "rx_dropped").unwrap_or(0);
    stats.rx_errors = statistic(device, "rx_errors").unwrap_or(0);
    stats.tx_dropped = statistic(device, "tx_dropped").unwrap_or(0);
    stats.tx_errors = statistic(device, "tx_errors").unwrap_or(0);
}

/// The `check` line: where the program would attach, how.
pub fn describe(config: &XdpConfig) -> String {
    if !config.enabled {
        return "  xdp: disabled\n".to_owned();
    }
    let interfaces = if config.interfaces.is_empty() {
        "every interface that is up, except loopback".to_owned()
    } else {
        config.interfaces.join(", ")
    };
    format!("  xdp: {:?} mode on {interfaces}\n", config.mode)
}
