//! Attaching `xdp_packet_counter` to interfaces.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode as KernelXdpMode};
use telemetryd_common::xdp::{
    InterfaceCounters, LowIfindexCounters, COUNTER_SLOTS, DIRECT_IFINDEX_LIMIT,
    LOW_IFINDEX_COUNTERS_MAP, LOW_IFINDEX_LIMIT, SLOTS_MAP, SLOT_COUNTERS_MAP,
};
use tracing::{debug, info, warn};

use super::interfaces::{self, Interface};
use super::object::{LoadError, LoadedObject};
use crate::config::{XdpConfig, XdpMode};
use crate::netlink::{RouteSocket, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};

/// How the program ended up attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    /// The `attach` label of `telemetryd_ebpf_program_attached`.
    pub fn label(self) -> &'static str {
        match self {
            AttachMode::Native => "xdp-native",
            AttachMode::Generic => "xdp-generic",
        }
    }
}

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub interface: Interface,
    pub mode: AttachMode,
    /// Where the program counts its frames (the fallback hash aside).
    pub counters: CounterPlace,
    link: XdpLinkId,
}

/// Where the program counts an attached interface's frames, besides the
/// fallback hash (which catches frames that raced the attach).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterPlace {
    /// Its entry of the low-ifindex table (ifindex below
    /// `LOW_IFINDEX_LIMIT`); `baseline` is what the entry held when it was
    /// attached (left by an earlier interface with the same ifindex).
    LowIfindex { baseline: InterfaceCounters },
    /// A counter slot, zeroed when it was given out.
    Slot(u32),
    /// The fallback hash alone.
    Hash,
}

impl CounterPlace {
    /// A label for the log.
    pub fn label(&self) -> &'static str {
        match self {
            CounterPlace::LowIfindex { .. } => "low-ifindex table",
            CounterPlace::Slot(_) => "slot",
            CounterPlace::Hash => "hash",
        }
    }
}

/// Why an interface could not be attached. None of these stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {0} does not exist")]
    Missing(String),
    #[error("interface {0} is down")]
    Down(String),
    #[error(
        "interface {0} already carries an XDP program that telemetryd did not attach; \
         left alone (set xdp.replace = true to replace it)"
    )]
    Busy(String),
    #[error(
        "interface {name} carries an XDP program that telemetryd did not attach and \
         xdp.replace = true, but it could not be removed: {reason}"
    )]
    NotReplaced { name: String, reason: String },
    #[error(
        "attaching XDP to {name} was refused ({source}): telemetryd needs CAP_NET_ADMIN \
         (and CAP_BPF) to attach XDP programs"
    )]
    Permission {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("reading interface {name}: {source}")]
    Sysfs {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching to {name} in {mode} mode: {source}")]
    Kernel {
        name: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl AttachError {
    /// The interface the error is about.
    pub fn interface(&self) -> &str {
        match self {
            AttachError::Missing(n) | AttachError::Down(n) | AttachError::Busy(n) => n,
            AttachError::Sysfs { name, .. }
            | AttachError::Kernel { name, .. }
            | AttachError::NotReplaced { name, .. }
            | AttachError::Permission { name, .. } => name,
        }
    }
}

/// The loaded packet counter program.
pub struct PacketCounter<'a> {
    program: &'a mut Xdp,
    slots: CounterSlots,
}

/// The fast paths' bookkeeping: the low-ifindex table (read only: see
/// [`CounterPlace::LowIfindex`]) and which interface has which counter slot.
///
/// A freed slot goes to the back of the free queue, so it is reused as late
/// as possible: long after any frame still in flight on the old interface
/// (XDP runs under RCU, a grace period is microseconds) could touch it.
/// A slot's counters are zeroed when it is given out, after which its
/// ifindex mapping is written; only then is the program attached.
struct CounterSlots {
    low_ifindex: Array<MapData, LowIfindexCounters>,
    by_ifindex: Array<MapData, u32>,
    counters: PerCpuArray<MapData, InterfaceCounters>,
    free: VecDeque<u32>,
}

impl<'a> PacketCounter<'a> {
    /// Loads the program through the verifier (once; later calls reuse it).
    pub fn load(object: &'a mut LoadedObject) -> Result<Self, LoadError> {
        // The build with or without packet events, as the object was
        // loaded for; both count the same way.
        let name = object.xdp_program;
        let slots = CounterSlots {
            low_ifindex: object.take_map(LOW_IFINDEX_COUNTERS_MAP)?,
            by_ifindex: object.take_map(SLOTS_MAP)?,
            counters: object.take_map(SLOT_COUNTERS_MAP)?,
            free: (0..COUNTER_SLOTS).collect(),
        };
        let program: &mut Xdp = object
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { program: name })?
            .try_into()
            .map_err(|source| LoadError::Program {
                program: name,
                source,
            })?;
        if program.fd().is_err() {
            program.load().map_err(|source| {
                let refused = match &source {
                    // EACCES is also how the verifier rejects a program; it
                    // is a missing privilege only when the kernel refused
                    // before verifying anything (no verifier output).
                    ProgramError::LoadError {
                        io_error,
                        verifier_log,
                    } => match io_error.raw_os_error() {
                        Some(libc::EPERM) => true,
                        Some(libc::EACCES) => verifier_log.to_string().trim().is_empty(),
                        _ => false,
                    },
                    other => is_permission(other),
                };
                if refused {
                    // The kernel wants CAP_NET_ADMIN for networking programs
                    // (bpf_net_capable) on top of CAP_BPF.
                    LoadError::NotPermitted {
                        program: name,
                        needs: "CAP_NET_ADMIN and CAP_BPF",
                        source,
                    }
                } else {
                    LoadError::Program {
                        program: name,
                        source,
                    }
                }
            })?;
        }
        Ok(Self { program, slots })
    }

    /// Attaches to the named interface. `auto` tries native (driver) mode
    /// and falls back to generic for this interface alone. An XDP program
    /// someone else attached is left alone ([`AttachError::Busy`]) unless
    /// `replace`: then it is removed (loudly) and ours attached instead.
    pub fn attach(
        &mut self,
        name: &str,
        mode: XdpMode,
        replace: bool,
    ) -> Result<Attachment, AttachError> {
        match self.attach_once(name, mode) {
            Err(AttachError::Busy(_)) if replace => {
                let interface = interfaces::lookup(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| AttachError::Missing(name.to_owned()))?;
                remove_foreign_program(&interface)?;
                self.attach_once(name, mode)
            }
            other => other,
        }
    }

    fn attach_once(&mut self, name: &str, mode: XdpMode) -> Result<Attachment, AttachError> {
        let interface = interfaces::lookup(name)
            .map_err(|source| AttachError::Sysfs {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| AttachError::Missing(name.to_owned()))?;
        if !interface.up {
            return Err(AttachError::Down(name.to_owned()));
        }
        let attempts: &[AttachMode] = match mode {
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Generic],
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Generic => &[AttachMode::Generic],
        };
        let place = self.slots.assign(interface.ifindex);
        let mut last_error = None;
        for &attempt in attempts {
            let kernel_mode = match attempt {
                AttachMode::Native => KernelXdpMode::Driver,
                AttachMode::Generic => KernelXdpMode::Skb,
            };
            match self
                .program
                .attach_to_if_index(interface.ifindex, kernel_mode)
            {
                Ok(link) => {
                    info!(
                        device = %interface.name,
                        ifindex = interface.ifindex,
                        mode = attempt.label(),
                        counters = place.label(),
                        "xdp attached"
                    );
                    return Ok(Attachment {
                        interface,
                        mode: attempt,
                        counters: place,
                        link,
                    });
                }
                Err(error) if is_busy(&error) => {
                    self.slots.release(interface.ifindex, &place);
                    return Err(AttachError::Busy(name.to_owned()));
                }
                Err(error) if is_permission(&error) => {
                    self.slots.release(interface.ifindex, &place);
                    return Err(AttachError::Permission {
                        name: name.to_owned(),
                        source: error,
                    });
                }
                Err(error) => {
                    if attempts.len() > 1 && attempt == AttachMode::Native {
                        info!(
                            device = %interface.name,
                            %error,
                            "native xdp not available, falling back to generic"
                        );
                    }
                    last_error = Some(AttachError::Kernel {
                        name: name.to_owned(),
                        mode: attempt.label(),
                        source: error,
                    });
                }
            }
        }
        self.slots.release(interface.ifindex, &place);
        Err(last_error.expect("at least one attach mode was tried"))
    }

    /// The counters of each of `attachments` (in order) from its
    /// low-ifindex entry or its slot, summed over CPUs; zero for those
    /// counted by the hash alone, which is the collector's to add. Reads
    /// the low-ifindex table once, whatever the number of attachments.
    pub fn fast_path_counters(&self, attachments: &[Attachment]) -> Vec<InterfaceCounters> {
        let needs_table = attachments
            .iter()
            .any(|a| matches!(a.counters, CounterPlace::LowIfindex { .. }));
        let table = if needs_table {
            self.slots.read_low_ifindex()
        } else {
            None
        };
        attachments
            .iter()
            .map(|attachment| match &attachment.counters {
                CounterPlace::LowIfindex { baseline } => table
                    .as_ref()
                    .map(|table| low_ifindex_entry(table, attachment.interface.ifindex))
                    .unwrap_or_default()
                    .since(baseline),
                CounterPlace::Slot(slot) => {
                    let mut sum = InterfaceCounters::default();
                    if let Ok(per_cpu) = self.slots.counters.get(slot, 0) {
                        per_cpu.iter().for_each(|cpu| sum.add(cpu));
                    }
                    sum
                }
                CounterPlace::Hash => InterfaceCounters::default(),
            })
            .collect()
    }

    /// The low-ifindex table's entry of `ifindex`, summed over CPUs, as it
    /// stands (no baseline): for tests that drive the program themselves.
    pub fn low_ifindex_counters(&self, ifindex: u32) -> Option<InterfaceCounters> {
        (ifindex < LOW_IFINDEX_LIMIT)
            .then(|| self.slots.read_low_ifindex())
            .flatten()
            .map(|table| low_ifindex_entry(&table, ifindex))
    }

    /// The same entry in each CPU's table, indexed by CPU id.
    pub fn low_ifindex_counters_by_cpu(&self, ifindex: u32) -> Option<Vec<InterfaceCounters>> {
        let table = self.slots.read_low_ifindex()?;
        table
            .iter()
            .map(|cpu| cpu.get(ifindex as usize).map(|entry| entry.counters))
            .collect()
    }

    /// Runs the program `repeat` times on `frame` through BPF_PROG_TEST_RUN,
    /// as if it had arrived on loopback (ifindex 1); returns the XDP action
    /// and the kernel's average run time. For tests and the benchmark: the
    /// frame is counted like any other.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), ProgramError> {
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        let result = self.program.test_run(options)?;
        Ok((result.return_value, result.duration))
    }

    /// Detaches from one interface. An interface that vanished already took
    /// the link with it; that is not an error worth more than a warning.
    pub fn detach(&mut self, attachment: Attachment) {
        if let Err(error) = self.program.detach(attachment.link) {
            warn!(device = %attachment.interface.name, %error, "xdp detach");
        } else {
            info!(device = %attachment.interface.name, "xdp detached");
        }
        self.slots
            .release(attachment.interface.ifindex, &attachment.counters);
    }
}

/// `ifindex`'s entry of the low-ifindex table, summed over CPUs.
fn low_ifindex_entry(table: &[LowIfindexCounters], ifindex: u32) -> InterfaceCounters {
    let mut sum = InterfaceCounters::default();
    for cpu in table {
        if let Some(entry) = cpu.get(ifindex as usize) {
            sum.add(&entry.counters);
        }
    }
    sum
}

impl CounterSlots {
    /// Where `ifindex` is to be counted: its low-ifindex entry (noting
    /// what the entry holds now), else a zeroed slot, else the hash alone:
    /// its ifindex is beyond the slot table, every slot is taken, or a map
    /// access failed (logged).
    fn assign(&mut self, ifindex: u32) -> CounterPlace {
        if ifindex < LOW_IFINDEX_LIMIT {
            match self.read_low_ifindex() {
                Some(table) => {
                    return CounterPlace::LowIfindex {
                        baseline: low_ifindex_entry(&table, ifindex),
                    };
                }
                None => {
                    warn!(
                        ifindex,
                        "reading the low-ifindex table; counted through the hash"
                    );
                    return CounterPlace::Hash;
                }
            }
        }
        self.assign_slot(ifindex)
            .map_or(CounterPlace::Hash, CounterPlace::Slot)
    }

    /// The low-ifindex table of every CPU, `None` when a read failed.
    fn read_low_ifindex(&self) -> Option<Vec<LowIfindexCounters>> {
        (0..self.low_ifindex.len())
            .map(|cpu| self.low_ifindex.get(&cpu, 0).ok())
            .collect()
    }

    /// A zeroed slot for `ifindex`, or `None`, see [`CounterSlots::assign`].
    fn assign_slot(&mut self, ifindex: u32) -> Option<u32> {
        if ifindex >= DIRECT_IFINDEX_LIMIT {
            debug!(
                ifindex,
                "ifindex beyond the slot table; counted through the hash"
            );
            return None;
        }
        let Some(slot) = self.free.pop_front() else {
            debug!(
                ifindex,
                "every counter slot is taken; counted through the hash"
            );
            return None;
        };
        let zeroed = PerCpuValues::try_from(vec![InterfaceCounters::default(); nr_cpus()])
            .map_err(|e| e.to_string())
            .and_then(|zero| self.counters.set(slot, zero, 0).map_err(|e| e.to_string()))
            .and_then(|()| {
                self.by_ifindex
                    .set(ifindex, slot + 1, 0)
                    .map_err(|e| e.to_string())
            });
        match zeroed {
            Ok(()) => Some(slot),
            Err(error) => {
                warn!(ifindex, slot, %error, "assigning a counter slot; counted through the hash");
                let _ = self.by_ifindex.set(ifindex, 0, 0);
                self.free.push_back(slot);
                None
            }
        }
    }

    /// Unmaps `ifindex` and queues its slot for reuse, last. A low-ifindex
    /// entry needs nothing: the next interface with this ifindex notes
    /// where it starts from.
    fn release(&mut self, ifindex: u32, place: &CounterPlace) {
        let CounterPlace::Slot(slot) = *place else {
            return;
        };
        if let Err(error) = self.by_ifindex.set(ifindex, 0, 0) {
            // The slot stays mapped; never hand it to another interface.
            warn!(ifindex, slot, %error, "unmapping a counter slot; it is not reused");
            return;
        }
        self.free.push_back(slot);
    }
}

/// Possible CPUs, the length of a per-CPU map value.
fn nr_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

/// EBUSY / EEXIST from the attach: another program holds the interface.
fn is_busy(error: &ProgramError) -> bool {
    matches!(os_error(error), Some(libc::EBUSY) | Some(libc::EEXIST))
}

/// EPERM / EACCES from the attach: a missing capability.
fn is_permission(error: &ProgramError) -> bool {
    matches!(os_error(error), Some(libc::EPERM) | Some(libc::EACCES))
}

fn os_error(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

/// Removes the XDP program(s) another tool attached to `interface` through
/// netlink, in both generic and native mode. A program held by someone
/// else's bpf_link cannot be removed this way (the kernel answers EBUSY);
/// that is reported, and the interface stays unavailable.
fn remove_foreign_program(interface: &Interface) -> Result<(), AttachError> {
    let not_replaced = |reason: String| AttachError::NotReplaced {
        name: interface.name.clone(),
        reason,
    };
    let socket = RouteSocket::open(0).map_err(|e| not_replaced(format!("netlink socket: {e}")))?;
    for (flags, mode) in [
        (XDP_FLAGS_SKB_MODE, "generic"),
        (XDP_FLAGS_DRV_MODE, "native"),
    ] {
        match socket.set_xdp(interface.ifindex, -1, flags) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(not_replaced(format!(
                    "it is held by another process's bpf_link ({mode} mode): {e}"
                )))
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(not_replaced(format!("removing it ({mode} mode): {e}"))),
        }
    }
    warn!(
        device = %interface.name,
        ifindex = interface.ifindex,
        "xdp.replace = true: REMOVED an XDP program that telemetryd did not attach"
    );
    Ok(())
}

/// The interfaces the program is attached to, kept in line with what the
/// configuration wants and what exists: interfaces that appear (or come up)
/// are attached, ones that vanish or are renamed are dropped.
#[derive(Default)]
pub struct AttachedInterfaces {
    attachments: Vec<Attachment>,
    /// Last failure said per interface, so each is logged once, not per poll.
    reported: HashMap<String, String>,
}

impl AttachedInterfaces {
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// One pass of attach/detach. `xdp.interfaces` empty means every
    /// interface that is up, except loopback.
    pub fn reconcile(&mut self, counter: &mut PacketCounter<'_>, xdp: &XdpConfig) {
        let (configured, mode) = (&xdp.interfaces, xdp.mode);
        let present = match interfaces::list() {
            Ok(present) => present,
            Err(error) => {
                self.report("*", format!("listing interfaces: {error}"));
                return;
            }
        };
        // Drop attachments whose interface vanished or changed identity.
        let (keep, gone): (Vec<_>, Vec<_>) = self.attachments.drain(..).partition(|a| {
            present
                .iter()
                .any(|p| p.name == a.interface.name && p.ifindex == a.interface.ifindex)
        });
        self.attachments = keep;
        for attachment in gone {
            info!(device = %attachment.interface.name, "interface vanished or was renamed; dropping it");
            counter.detach(attachment);
        }
        // Drop attachments no longer wanted (SIGHUP changed the list).
        let wanted_now = wanted(configured, &present);
        let (keep, unwanted): (Vec<_>, Vec<_>) = self
            .attachments
            .drain(..)
            .partition(|a| wanted_now.contains(&a.interface.name));
        self.attachments = keep;
        for attachment in unwanted {
            info!(device = %attachment.interface.name, "interface is down or no longer configured; detaching");
            counter.detach(attachment);
        }
        self.reported
            .retain(|device, _| device == "*" || wanted_now.contains(device));
        for name in wanted_now {
            if self.attachments.iter().any(|a| a.interface.name == name) {
                continue;
            }
            match counter.attach(&name, mode, xdp.replace) {
                Ok(attachment) => {
                    self.reported.remove(&name);
                    self.attachments.push(attachment);
                }
                Err(error) => self.report(error.interface(), error.to_string()),
            }
        }
    }

    /// Detaches everything (shutdown).
    pub fn detach_all(&mut self, counter: &mut PacketCounter<'_>) {
        for attachment in self.attachments.drain(..) {
            counter.detach(attachment);
        }
    }

    fn report(&mut self, device: &str, message: String) {
        if self.reported.get(device) != Some(&message) {
            warn!(device, "{message}");
            self.reported.insert(device.to_owned(), message);
        }
    }
}

/// Names of the interfaces to attach to: the configured ones (whatever their
/// state: attach reports missing or down ones), or, when none are configured,
/// every interface that is up except loopback.
pub fn wanted(configured: &[String], present: &[Interface]) -> Vec<String> {
    if configured.is_empty() {
        present
            .iter()
            .filter(|i| i.up && !i.loopback)
            .map(|i| i.name.clone())
            .collect()
    } else {
        configured.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ifindex: u32, up: bool, loopback: bool) -> Interface {
        Interface {
            name: name.into(),
            ifindex,
            up,
            loopback,
        }
    }

    #[test]
    fn default_is_every_up_interface_but_loopback() {
        let present = [
            iface("lo", 1, true, true),
            iface("eth0", 2, true, false),
            iface("eth1", 3, false, false),
            iface("wg0", 4, true, false),
        ];
        assert_eq!(wanted(&[], &present), ["eth0", "wg0"]);
    }

    #[test]
    fn configured_interfaces_are_taken_as_given() {
        let present = [iface("eth0", 2, true, false)];
        let configured = vec!["eth9".to_owned(), "lo".to_owned()];
        assert_eq!(wanted(&configured, &present), configured);
    }
}
