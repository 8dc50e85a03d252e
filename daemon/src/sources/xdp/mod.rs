//! The XDP packet counter: `xdp_packet_counter` on every configured
//! interface (or every interface that is up), counting each frame by
//! device, address family and protocol; followed through hotplug and
//! SIGHUP. Its section of the snapshot is [`XdpStats`].

pub mod attach;
pub mod counters;
pub mod metrics;
pub mod stats;

use std::collections::HashSet;

use aya::EbpfLoader;
use telemetryd_common::xdp::LOW_IFINDEX_COUNTERS_MAP;
use tracing::error;

pub use attach::{
    verifier_reason, wanted, AttachError, AttachedInterfaces, Attachment, EventsRefused,
    PacketCounter,
};
pub use counters::CounterPlace;
pub use stats::{InterfaceStats, XdpStats};

use crate::config::XdpConfig;
use crate::kernel::interfaces::statistic;
use crate::loader::{LoadError, LoadSettings, LoadedObject};

/// The packet counter's load-time settings: one row of the low-ifindex
/// table per possible CPU.
pub struct XdpLoad {
    cpus: u32,
}

impl Default for XdpLoad {
    fn default() -> Self {
        Self {
            cpus: counters::cpu_id_bound(),
        }
    }
}

impl LoadSettings for XdpLoad {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.map_max_entries(LOW_IFINDEX_COUNTERS_MAP, self.cpus);
    }
}

/// The running packet counter: the program and where it is attached.
pub struct XdpSource {
    counter: PacketCounter,
    interfaces: AttachedInterfaces,
}

impl XdpSource {
    /// Loads the program (the build with packet events when
    /// `xdp.sample_rate` is not 0) and attaches it as `config` says. A
    /// kernel that refuses it for lack of a privilege costs packet counting
    /// only: that is logged and `None` returned, the daemon runs on. A
    /// kernel whose verifier refuses the build with packet events gets the
    /// counter alone ([`XdpSource::publishes_events`] is then false).
    pub fn start(object: &mut LoadedObject, config: &XdpConfig) -> Result<Option<Self>, LoadError> {
        let counter = match PacketCounter::load(object, config.sample_rate) {
            Ok(counter) => counter,
            Err(error @ LoadError::NotPermitted { .. }) => {
                error!(%error, "xdp unavailable; running without packet counting");
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let mut source = Self {
            counter,
            interfaces: AttachedInterfaces::default(),
        };
        source.reconcile(config);
        Ok(Some(source))
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

    /// Detaches everything (shutdown, or a mode change before re-attaching).
    pub fn detach_all(&mut self) {
        self.interfaces.detach_all(&mut self.counter);
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
