//! Packet events: drains the XDP program's ring buffer through the async
//! runtime's readiness (epoll on the ring buffer's fd; no busy loop),
//! decodes each event, records its delivery latency and feeds top talkers.
//!
//! Accounting: the kernel counts frames it sampled and reservations that
//! failed (`lost_kernel`); user space counts events delivered and events it
//! received but could not decode (`lost_user`, never a crash). Its section
//! of the snapshot is [`EventStats`], top talkers included.

pub mod decode;
pub mod metrics;
pub mod peer_packets;
pub mod stats;
pub mod top_talkers;

use std::io;
use std::os::fd::AsFd as _;
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::EbpfLoader;
use telemetryd_common::events::{
    sample_threshold, EventCounter, EVENTS_MAP, EVENTS_SOURCE, EVENT_COUNTERS_MAP,
    SAMPLE_RATE_GLOBAL, SAMPLE_THRESHOLD_GLOBAL,
};
use tracing::{debug, warn};

pub use decode::{decode, DecodeError, PacketRecord};
pub use stats::{DeliveryLatency, EventStats, DELIVERY_BUCKETS};
pub use top_talkers::{TopTalker, TopTalkers, TopTalkersReport};

use crate::config::XdpConfig;
use crate::loader::{LoadError, LoadSettings, LoadedObject};
use crate::sys;

/// The load-time settings of packet events: the sample rate (a read-only
/// global, so with 0 the verifier removes the sampling) and the ring
/// buffer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsLoad {
    /// Publish 1 frame in N to the ring buffer; 0 = off.
    pub sample_rate: u32,
    threshold: u32,
    /// Bytes of the ring buffer.
    pub ring_buffer_size: u32,
}

impl Default for EventsLoad {
    fn default() -> Self {
        Self {
            sample_rate: 0,
            threshold: 0,
            ring_buffer_size: telemetryd_common::events::DEFAULT_RING_BUFFER_SIZE,
        }
    }
}

impl EventsLoad {
    /// The settings for a sample rate and ring buffer size. The kernel takes
    /// a ring buffer of a power-of-two number of pages; the configuration
    /// checks the power of two against 4 KiB pages, this against the real
    /// page size (larger on some arm64 and ppc64 kernels).
    pub fn new(sample_rate: u32, ring_buffer_size: u32) -> Result<Self, LoadError> {
        check_ring_buffer_size(ring_buffer_size, rustix::param::page_size() as u64)?;
        Ok(Self {
            sample_rate,
            threshold: sample_threshold(sample_rate),
            ring_buffer_size,
        })
    }

    pub fn from_config(xdp: &XdpConfig) -> Result<Self, LoadError> {
        Self::new(xdp.sample_rate, xdp.ring_buffer_size)
    }
}

impl LoadSettings for EventsLoad {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global(SAMPLE_RATE_GLOBAL, &self.sample_rate, true)
            .override_global(SAMPLE_THRESHOLD_GLOBAL, &self.threshold, true)
            .map_max_entries(EVENTS_MAP, self.ring_buffer_size);
    }
}

fn check_ring_buffer_size(size: u32, page_size: u64) -> Result<(), LoadError> {
    if size.is_power_of_two() && u64::from(size) >= page_size && u64::from(size) % page_size == 0 {
        Ok(())
    } else {
        Err(LoadError::RingBufferSize { size, page_size })
    }
}

/// Most events handed to the consumer at once; the drain goes on until the
/// ring buffer is empty.
pub const BATCH: usize = 1024;

/// Now on CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// One record as user space received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub event: Result<PacketRecord, DecodeError>,
    /// CLOCK_MONOTONIC nanoseconds when it was read from the ring buffer.
    pub received_ns: u64,
}

impl Received {
    /// Kernel timestamp to receipt, in seconds (0 if the clocks disagree).
    pub fn delivery_seconds(&self) -> Option<f64> {
        let event = self.event.as_ref().ok()?;
        Some(self.received_ns.saturating_sub(event.timestamp_ns) as f64 / 1e9)
    }
}

/// The consumer side of the `PACKET_EVENTS` ring buffer.
pub struct EventRing {
    ring: RingBuf<MapData>,
}

/// The kernel's own counts: frames sampled, reservations that failed.
pub struct KernelEventCounts {
    map: PerCpuArray<MapData, u64>,
}

impl KernelEventCounts {
    /// (sampled, lost), summed over CPUs; zeros if the map cannot be read.
    pub fn read(&self) -> (u64, u64) {
        let slot = |counter: EventCounter| {
            self.map
                .get(&(counter as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        (slot(EventCounter::Sampled), slot(EventCounter::Lost))
    }
}

/// Takes the ring buffer and the kernel counters out of the object.
pub fn take(object: &mut LoadedObject) -> Result<(EventRing, KernelEventCounts), LoadError> {
    let ring = object.take_map(EVENTS_MAP)?;
    let map = object.take_map(EVENT_COUNTERS_MAP)?;
    Ok((EventRing { ring }, KernelEventCounts { map }))
}

impl EventRing {
    /// Reads up to `max` records without waiting; returns how many.
    pub fn drain(&mut self, max: usize, out: &mut Vec<Received>) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            out.push(Received {
                event: decode(&item),
                received_ns: monotonic_ns(),
            });
            n += 1;
        }
        n
    }

    /// Hands every record to `on_batch` as it arrives, sleeping on the ring
    /// buffer's readiness in between. Returns only if polling fails.
    pub async fn run(mut self, mut on_batch: impl FnMut(&[Received])) -> io::Error {
        let ready = match sys::readable(self.ring.as_fd()) {
            Ok(ready) => ready,
            Err(error) => return error,
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let mut guard = match ready.readable().await {
                Ok(guard) => guard,
                Err(error) => return error,
            };
            loop {
                batch.clear();
                let n = self.drain(BATCH, &mut batch);
                if n > 0 {
                    on_batch(&batch);
                }
                if n < BATCH {
                    break;
                }
            }
            // Everything was read; a record committed since then has
            // re-armed readiness, which clear_ready leaves set.
            guard.clear_ready();
        }
    }
}

/// What the drain task accumulates; read once per poll.
#[derive(Debug)]
pub struct EventState {
    pub delivered: u64,
    pub lost_user: u64,
    pub delivery: DeliveryLatency,
    pub top_talkers: TopTalkers,
    pub peer_packets: peer_packets::PeerPackets,
}

impl EventState {
    pub fn new(top_talkers: TopTalkers) -> Self {
        Self {
            delivered: 0,
            lost_user: 0,
            delivery: DeliveryLatency::default(),
            top_talkers,
            peer_packets: Default::default(),
        }
    }

    pub fn record(&mut self, batch: &[Received]) {
        for received in batch {
            match &received.event {
                Ok(event) => {
                    self.delivered += 1;
                    if let Some(seconds) = received.delivery_seconds() {
                        self.delivery.record(seconds);
                    }
                    if let Some(peer) = event.src {
                        self.peer_packets.record(event.ifindex, peer);
                        self.top_talkers.record(
                            received.received_ns,
                            peer,
                            u64::from(event.frame_len),
                        );
                    }
                }
                Err(error) => {
                    if self.lost_user == 0 {
                        warn!(%error, "undecodable packet event; counting it as lost");
                    }
                    self.lost_user += 1;
                }
            }
        }
    }
}

/// The daemon's packet events: the drain task and what it gathered.
/// Dropping it stops the task.
pub struct PacketEvents {
    state: Arc<Mutex<EventState>>,
    counts: KernelEventCounts,
    task: tokio::task::JoinHandle<()>,
}

impl PacketEvents {
    /// Takes the maps and spawns the drain task (on the current runtime).
    pub fn start(object: &mut LoadedObject, xdp: &XdpConfig) -> Result<Self, LoadError> {
        let (ring, counts) = take(object)?;
        let top = TopTalkers::new(
            xdp.top_talkers as usize,
            xdp.top_talkers_window,
            xdp.sample_rate,
        );
        let state = Arc::new(Mutex::new(EventState::new(top)));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let error = ring.run(|batch| lock(&shared).record(batch)).await;
            warn!(%error, "packet events: polling the ring buffer failed; events stop");
        });
        Ok(Self {
            state,
            counts,
            task,
        })
    }

    /// One poll: the event counters and the top talkers as of now.
    pub fn poll(&self) -> EventStats {
        let (sampled, lost_kernel) = self.counts.read();
        let mut state = lock(&self.state);
        let top_talkers = state.top_talkers.report(monotonic_ns());
        let peer_packets = if state.peer_packets.is_empty() {
            Default::default()
        } else {
            state.peer_packets.by_device(&interface_names())
        };
        debug!(
            sampled,
            delivered = state.delivered,
            lost_kernel,
            lost_user = state.lost_user,
            "packet events"
        );
        EventStats {
            source: EVENTS_SOURCE.to_owned(),
            sampled,
            delivered: state.delivered,
            lost_kernel,
            lost_user: state.lost_user,
            delivery: state.delivery.clone(),
            top_talkers_tracked: state.top_talkers.entries() as u64,
            top_talkers_bound: state.top_talkers.bound() as u64,
            top_talkers,
            peer_packets,
        }
    }
}

/// ifindex -> name of this namespace's interfaces.
fn interface_names() -> std::collections::BTreeMap<u32, String> {
    crate::kernel::interfaces::list()
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.ifindex, i.name))
        .collect()
}

impl Drop for PacketEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A panic while holding the lock leaves plain counters behind; keep them.
fn lock(state: &Mutex<EventState>) -> MutexGuard<'_, EventState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::decode::tests::{bytes_of, tcp4};
    use super::*;

    #[test]
    fn ring_buffer_size_must_be_whole_pages() {
        assert!(check_ring_buffer_size(4096, 4096).is_ok());
        assert!(check_ring_buffer_size(1 << 20, 4096).is_ok());
        assert!(check_ring_buffer_size(4096, 16384).is_err());
        assert!(check_ring_buffer_size(16384, 16384).is_ok());
        assert!(check_ring_buffer_size(3 * 4096, 4096).is_err());
        assert!(rustix::param::page_size() >= 4096);
    }

    #[test]
    fn state_counts_delivered_and_lost_and_latency() {
        let mut state = EventState::new(TopTalkers::new(5, std::time::Duration::from_secs(60), 1));
        let good = Received {
            event: decode(&bytes_of(&tcp4())),
            received_ns: 123 + 2_000_000,
        };
        let bad = Received {
            event: decode(&[1, 2, 3]),
            received_ns: 1,
        };
        state.record(&[good.clone(), bad, good]);
        assert_eq!((state.delivered, state.lost_user), (2, 1));
        assert_eq!(state.delivery.count, 2);
        assert!((state.delivery.sum_seconds - 0.004).abs() < 1e-9);
        assert_eq!(state.top_talkers.shares(), [("10.0.0.2".to_owned(), 1.0)]);
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
