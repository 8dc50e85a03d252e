//! Packet events: drains the XDP program's ring buffer through the async
//! runtime's readiness (epoll on the ring buffer's fd; no busy loop),
//! decodes each event, records its delivery latency and feeds top talkers.
//!
//! Accounting: the kernel counts frames it sampled and reservations that
//! failed (`lost_kernel`); user space counts events delivered and events it
//! received but could not decode (`lost_user`, never a crash).

use std::io;
use std::mem::offset_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use telemetryd_common::events::{
    EventCounter, PacketEvent, EVENTS_MAP, EVENTS_SOURCE, EVENT_COUNTERS_MAP, EVENT_HAS_ADDRESSES,
    EVENT_HAS_PORTS, EVENT_HAS_TCP_FLAGS, EVENT_KNOWN_FLAGS, EVENT_MALFORMED, PACKET_EVENT_SIZE,
};
use telemetryd_common::xdp::{FAMILIES, FAMILY_IPV4, FAMILY_IPV6, PROTOCOLS};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, warn};

use super::snapshot::{DeliveryLatency, PacketEventStats, Snapshot};
use crate::bpf::{LoadError, LoadedObject};
use crate::config::XdpConfig;
use crate::top_talkers::TopTalkers;

/// Most events handed to the consumer at once; the drain goes on until the
/// ring buffer is empty.
pub const BATCH: usize = 1024;

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    /// CLOCK_MONOTONIC nanoseconds when XDP saw the frame.
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub frame_len: u32,
    /// `FAMILY_*` and `PROTOCOL_*` slots of `telemetryd_common::xdp`.
    pub family: usize,
    pub protocol: usize,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub tcp_flags: Option<u8>,
    pub malformed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {PACKET_EVENT_SIZE}")]
    Length(usize),
    #[error("unknown family slot {0}")]
    Family(u8),
    #[error("unknown protocol slot {0}")]
    Protocol(u8),
    #[error("unknown flags {0:#x}")]
    Flags(u32),
    #[error("addresses flagged on a frame that is neither IPv4 nor IPv6")]
    Addresses,
}

fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

/// Decodes one ring buffer record, field by field from its bytes (no
/// unsafe casts: any byte string is either an event or an error).
pub fn decode(bytes: &[u8]) -> Result<PacketRecord, DecodeError> {
    if bytes.len() != PACKET_EVENT_SIZE {
        return Err(DecodeError::Length(bytes.len()));
    }
    let u32_at = |o| u32::from_ne_bytes(field(bytes, o));
    let u16_at = |o| u16::from_ne_bytes(field(bytes, o));
    let family = bytes[offset_of!(PacketEvent, family)];
    let protocol = bytes[offset_of!(PacketEvent, protocol)];
    let flags = u32_at(offset_of!(PacketEvent, flags));
    if usize::from(family) >= FAMILIES {
        return Err(DecodeError::Family(family));
    }
    if usize::from(protocol) >= PROTOCOLS {
        return Err(DecodeError::Protocol(protocol));
    }
    if flags & !EVENT_KNOWN_FLAGS != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let (src, dst) = if flags & EVENT_HAS_ADDRESSES == 0 {
        (None, None)
    } else {
        let src: [u8; 16] = field(bytes, offset_of!(PacketEvent, src));
        let dst: [u8; 16] = field(bytes, offset_of!(PacketEvent, dst));
        match usize::from(family) {
            FAMILY_IPV4 => (
                Some(IpAddr::V4(Ipv4Addr::from(field::<4>(&src, 0)))),
                Some(IpAddr::V4(Ipv4Addr::from(field::<4>(&dst, 0)))),
            ),
            FAMILY_IPV6 => (
                Some(IpAddr::V6(Ipv6Addr::from(src))),
                Some(IpAddr::V6(Ipv6Addr::from(dst))),
            ),
            _ => return Err(DecodeError::Addresses),
        }
    };
    let has_ports = flags & EVENT_HAS_PORTS != 0;
    Ok(PacketRecord {
        timestamp_ns: u64::from_ne_bytes(field(bytes, offset_of!(PacketEvent, timestamp_ns))),
        ifindex: u32_at(offset_of!(PacketEvent, ifindex)),
        frame_len: u32_at(offset_of!(PacketEvent, frame_len)),
        family: family.into(),
        protocol: protocol.into(),
        src,
        dst,
        src_port: has_ports.then(|| u16_at(offset_of!(PacketEvent, src_port))),
        dst_port: has_ports.then(|| u16_at(offset_of!(PacketEvent, dst_port))),
        tcp_flags: (flags & EVENT_HAS_TCP_FLAGS != 0)
            .then(|| bytes[offset_of!(PacketEvent, tcp_flags)]),
        malformed: flags & EVENT_MALFORMED != 0,
    })
}

/// Now on CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass, which lives
    // for the call; CLOCK_MONOTONIC always exists on Linux.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    pub async fn run(self, mut on_batch: impl FnMut(&[Received])) -> io::Error {
        // SAFETY: `EventRing` owns the ring buffer map, whose fd stays open
        // and unchanged until the ring is dropped; it moves into the AsyncFd,
        // so the fd outlives the registration, and `as_raw_fd` always
        // returns that same fd.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(error) => return error.into_parts().1,
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => return error,
            };
            loop {
                batch.clear();
                let n = guard.get_inner_mut().drain(BATCH, &mut batch);
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

impl std::os::fd::AsRawFd for EventRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// What the drain task accumulates; read once per poll.
#[derive(Debug)]
pub struct EventState {
    pub delivered: u64,
    pub lost_user: u64,
    pub delivery: DeliveryLatency,
    pub top_talkers: TopTalkers,
}

impl EventState {
    pub fn new(top_talkers: TopTalkers) -> Self {
        Self {
            delivered: 0,
            lost_user: 0,
            delivery: DeliveryLatency::default(),
            top_talkers,
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

    /// Fills the packet event counters and top talkers of `snapshot`.
    pub fn fill(&self, snapshot: &mut Snapshot) {
        let (sampled, lost_kernel) = self.counts.read();
        let mut state = lock(&self.state);
        let report = state.top_talkers.report(monotonic_ns());
        snapshot.packet_events = Some(PacketEventStats {
            source: EVENTS_SOURCE.to_owned(),
            sampled,
            delivered: state.delivered,
            lost_kernel,
            lost_user: state.lost_user,
            delivery: state.delivery.clone(),
            top_talkers_tracked: state.top_talkers.entries() as u64,
            top_talkers_bound: state.top_talkers.bound() as u64,
        });
        debug!(
            sampled,
            delivered = state.delivered,
            lost_kernel,
            lost_user = state.lost_user,
            "packet events"
        );
        snapshot.top_talkers = Some(report);
    }

    /// The top talkers' (peer, share) for the MAPE-K loop, callable from
    /// anywhere: `move || events_shares()`.
    pub fn shares_source(&self) -> impl Fn() -> Vec<(String, f64)> + Send + Sync + 'static {
        let state = self.state.clone();
        move || lock(&state).top_talkers.shares()
    }
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
    use super::*;
    use telemetryd_common::xdp::{FAMILY_OTHER, PROTOCOL_OTHER, PROTOCOL_TCP, PROTOCOL_UDP};

    fn bytes_of(event: &PacketEvent) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&event.timestamp_ns.to_ne_bytes());
        out.extend_from_slice(&event.src);
        out.extend_from_slice(&event.dst);
        out.extend_from_slice(&event.ifindex.to_ne_bytes());
        out.extend_from_slice(&event.frame_len.to_ne_bytes());
        out.extend_from_slice(&event.flags.to_ne_bytes());
        out.extend_from_slice(&event.src_port.to_ne_bytes());
        out.extend_from_slice(&event.dst_port.to_ne_bytes());
        out.extend_from_slice(&[event.family, event.protocol, event.tcp_flags]);
        out.extend_from_slice(&event._pad);
        assert_eq!(out.len(), PACKET_EVENT_SIZE);
        out
    }

    fn tcp4() -> PacketEvent {
        let mut e = PacketEvent {
            timestamp_ns: 123,
            ifindex: 7,
            frame_len: 74,
            flags: EVENT_HAS_ADDRESSES | EVENT_HAS_PORTS | EVENT_HAS_TCP_FLAGS,
            src_port: 12345,
            dst_port: 80,
            family: FAMILY_IPV4 as u8,
            protocol: PROTOCOL_TCP as u8,
            tcp_flags: 0x02,
            ..Default::default()
        };
        e.src[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        e
    }

    #[test]
    fn decodes_every_field() {
        let got = decode(&bytes_of(&tcp4())).unwrap();
        assert_eq!(
            got,
            PacketRecord {
                timestamp_ns: 123,
                ifindex: 7,
                frame_len: 74,
                family: FAMILY_IPV4,
                protocol: PROTOCOL_TCP,
                src: Some("10.0.0.2".parse().unwrap()),
                dst: Some("10.0.0.1".parse().unwrap()),
                src_port: Some(12345),
                dst_port: Some(80),
                tcp_flags: Some(0x02),
                malformed: false,
            }
        );
        let mut v6 = tcp4();
        v6.family = FAMILY_IPV6 as u8;
        v6.protocol = PROTOCOL_UDP as u8;
        v6.flags = EVENT_HAS_ADDRESSES | EVENT_HAS_PORTS;
        v6.src = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let got = decode(&bytes_of(&v6)).unwrap();
        assert_eq!(got.src, Some("fd00::2".parse().unwrap()));
        assert_eq!(got.tcp_flags, None);
        let other = PacketEvent {
            family: FAMILY_OTHER as u8,
            protocol: PROTOCOL_OTHER as u8,
            flags: EVENT_MALFORMED,
            ..Default::default()
        };
        let got = decode(&bytes_of(&other)).unwrap();
        assert_eq!((got.src, got.src_port, got.malformed), (None, None, true));
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        let good = bytes_of(&tcp4());
        assert_eq!(decode(&good[..10]), Err(DecodeError::Length(10)));
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        let mut bad = tcp4();
        bad.family = 9;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Family(9)));
        let mut bad = tcp4();
        bad.protocol = 4;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Protocol(4)));
        let mut bad = tcp4();
        bad.flags |= 1 << 20;
        assert!(matches!(
            decode(&bytes_of(&bad)),
            Err(DecodeError::Flags(_))
        ));
        let mut bad = tcp4();
        bad.family = FAMILY_OTHER as u8;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Addresses));
        // Every byte string of every length decodes or errs.
        for len in 0..80 {
            let _ = decode(&vec![0xff; len]);
        }
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
