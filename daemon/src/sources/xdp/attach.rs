//! Attaching `xdp_packet_counter` to interfaces, and keeping its
//! attachments in line with the configuration and the interfaces that
//! exist.
//!
//! Links are created and detached here rather than through aya's `Xdp`:
//! detaching must take effect when `detach` returns (see
//! [`crate::sys::link_detach`]), and aya 0.14 gives no access to the
//! descriptor of a link it made.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::time::Duration;

use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use telemetryd_common::xdp::{
    program_symbol, InterfaceCounters, PROGRAM_NAME, SAMPLED_PROGRAM_NAME,
};
use tracing::{error, info, warn};

use super::counters::{CounterMaps, CounterPlace};
use super::pins::PinDir;
use crate::config::{Choice, XdpConfig, XdpMode};
use crate::kernel::interfaces::{self, Interface};
use crate::kernel::netlink::{RouteSocket, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};
use crate::loader::{LoadError, LoadedObject};
use crate::sys;

/// One interface the program is attached to. Dropping it without
/// [`PacketCounter::detach`] still detaches (when the link's last
/// reference goes), but leaves its counter slot taken.
#[derive(Debug)]
pub struct Attachment {
    pub interface: Interface,
    pub mode: XdpMode,
    /// Where the program counts its frames (the hash aside).
    pub counters: CounterPlace,
    link: OwnedFd,
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
        source: std::io::Error,
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
        source: std::io::Error,
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

/// `xdp_packet_counter`, loaded, with its counter maps.
pub struct PacketCounter {
    /// The build loaded: with or without packet events, see
    /// [`telemetryd_common::xdp::program_symbol`]; both count the same way.
    program: &'static str,
    /// Why the kernel refused the sampled build, when it did and the
    /// counter runs alone.
    events_refused: Option<EventsRefused>,
    /// The program's descriptor, for creating links.
    fd: OwnedFd,
    maps: CounterMaps,
    /// Where links are pinned (`daemon.pin_path`).
    pins: Option<PinDir>,
}

/// The kernel's verifier refused the sampled build (`xdp.sample_rate` > 0):
/// the counter runs without packet events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsRefused {
    /// What `BPF_PROG_LOAD` returned.
    pub errno: String,
    /// The verifier's reason, from the end of its log (see [`verifier_reason`]).
    pub reason: String,
}

impl PacketCounter {
    /// Loads the build for `sample_rate` through the verifier and takes the
    /// counter maps out of `object`. A kernel whose verifier refuses the
    /// sampled build gets the counter alone: that is logged with the
    /// verifier's reason, and [`PacketCounter::publishes_events`] is false.
    /// Anything else that fails (a missing privilege, the counter itself
    /// refused) is an error.
    pub fn load(
        object: &mut LoadedObject,
        sample_rate: u32,
        pins: Option<PinDir>,
    ) -> Result<Self, LoadError> {
        let wanted = program_symbol(sample_rate);
        let maps = CounterMaps::take(object)?;
        let (program, fd, events_refused) = match load_program(object, wanted) {
            Ok(fd) => (wanted, fd, None),
            Err(LoadError::Program {
                source:
                    ProgramError::LoadError {
                        io_error,
                        verifier_log,
                    },
                ..
            }) if wanted == SAMPLED_PROGRAM_NAME => {
                let refused = EventsRefused {
                    errno: io_error.to_string(),
                    reason: verifier_reason(&verifier_log.to_string()),
                };
                error!(
                    program = SAMPLED_PROGRAM_NAME,
                    errno = %refused.errno,
                    verifier = %refused.reason,
                    sample_rate,
                    "the kernel's verifier refused the XDP program with packet events; \
                     counting packets without them (packet events and top talkers are off)"
                );
                let fd = load_program(object, PROGRAM_NAME)?;
                (PROGRAM_NAME, fd, Some(refused))
            }
            Err(error) => return Err(error),
        };
        Ok(Self {
            program,
            events_refused,
            fd,
            maps,
            pins,
        })
    }

    /// Where links are pinned, with `daemon.pin_path`.
    pub fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// Takes over the links an earlier run pinned: each is moved to this
    /// program with `BPF_LINK_UPDATE` (atomically: every frame runs one
    /// program or the other, both counting into the same pinned maps).
    /// Links of interfaces that are gone, or in a mode `mode` does not
    /// allow, are detached and unpinned.
    pub fn adopt_pinned(&mut self, mode: Choice<XdpMode>) -> Vec<Attachment> {
        let Some(pins) = self.pins.clone() else {
            return Vec::new();
        };
        let present = interfaces::list().unwrap_or_default();
        let mut adopted = Vec::new();
        for pinned in pins.pinned_links() {
            let interface = present.iter().find(|i| i.ifindex == pinned.ifindex);
            let refused = match interface {
                None => Some("its interface is gone".to_owned()),
                Some(_) if !mode.candidates().contains(&pinned.mode) => {
                    Some(format!("xdp.mode is now {}", mode.name()))
                }
                Some(_) => sys::link_update(pinned.link.as_fd(), self.fd.as_fd())
                    .err()
                    .map(|e| format!("moving it to this program: {e}")),
            };
            if let Some(reason) = refused {
                info!(ifindex = pinned.ifindex, %reason, "pinned xdp link dropped");
                let _ = sys::link_detach(pinned.link.as_fd());
                pinned.unpin();
                continue;
            }
            let interface = interface.expect("checked above").clone();
            let counters = self.maps.adopt(interface.ifindex);
            info!(
                device = %interface.name,
                ifindex = interface.ifindex,
                mode = pinned.mode.label(),
                counters = counters.label(),
                "xdp adopted from its pin; the program never left the interface"
            );
            adopted.push(Attachment {
                interface,
                mode: pinned.mode,
                counters,
                link: pinned.link,
            });
        }
        adopted
    }

    /// Whether the build loaded publishes packet events.
    pub fn publishes_events(&self) -> bool {
        self.program == SAMPLED_PROGRAM_NAME
    }

    /// Why the sampled build was refused, when it was.
    pub fn events_refused(&self) -> Option<&EventsRefused> {
        self.events_refused.as_ref()
    }

    /// Attaches to the named interface. `auto` tries native (driver) mode
    /// and falls back to generic for this interface alone. An XDP program
    /// someone else attached is left alone ([`AttachError::Busy`]) unless
    /// `replace`: then it is removed (loudly) and ours attached instead.
    pub fn attach(
        &mut self,
        name: &str,
        mode: Choice<XdpMode>,
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

    fn attach_once(
        &mut self,
        name: &str,
        mode: Choice<XdpMode>,
    ) -> Result<Attachment, AttachError> {
        let interface = interfaces::lookup(name)
            .map_err(|source| AttachError::Sysfs {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| AttachError::Missing(name.to_owned()))?;
        if !interface.up {
            return Err(AttachError::Down(name.to_owned()));
        }
        let attempts = mode.candidates();
        let place = self.maps.assign(interface.ifindex);
        let mut last_error = None;
        for &attempt in attempts {
            let flags = match attempt {
                XdpMode::Native => XDP_FLAGS_DRV_MODE,
                XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            };
            match sys::xdp_link_create(self.fd.as_fd(), interface.ifindex, flags) {
                Ok(link) => {
                    if let Some(pins) = &self.pins {
                        if let Err(error) = pins.pin_link(link.as_fd(), interface.ifindex, attempt)
                        {
                            warn!(device = %interface.name, %error, "pinning the xdp link; it detaches when telemetryd stops");
                        }
                    }
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
                    self.maps.release(interface.ifindex, &place);
                    return Err(AttachError::Busy(name.to_owned()));
                }
                Err(error) if is_permission(&error) => {
                    self.maps.release(interface.ifindex, &place);
                    return Err(AttachError::Permission {
                        name: name.to_owned(),
                        source: error,
                    });
                }
                Err(error) => {
                    if attempts.len() > 1 && attempt == XdpMode::Native {
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
        self.maps.release(interface.ifindex, &place);
        Err(last_error.expect("at least one attach mode was tried"))
    }

    /// Detaches from one interface, at once (see [`sys::link_detach`]). An
    /// interface that vanished already took the link with it.
    pub fn detach(&mut self, attachment: Attachment) {
        if let Some(pins) = &self.pins {
            pins.unpin_link(attachment.interface.ifindex);
        }
        match sys::link_detach(attachment.link.as_fd()) {
            Ok(()) => info!(device = %attachment.interface.name, "xdp detached"),
            Err(error) => warn!(
                device = %attachment.interface.name,
                %error,
                "xdp detach; the link goes with its last reference"
            ),
        }
        drop(attachment.link);
        self.maps
            .release(attachment.interface.ifindex, &attachment.counters);
    }

    /// The counters of each of `attachments` (in order) from its
    /// low-ifindex entry or its slot, summed over CPUs; zero for those
    /// counted by the hash alone. See [`PacketCounter::counters`] for the
    /// whole count.
    pub fn fast_path_counters(&self, attachments: &[Attachment]) -> Vec<InterfaceCounters> {
        let places: Vec<(u32, &CounterPlace)> = attachments
            .iter()
            .map(|a| (a.interface.ifindex, &a.counters))
            .collect();
        self.maps.fast_path(&places)
    }

    /// Every frame counted for each of `attachments`: its fast path and
    /// the hash (frames that had no fast path, or raced the attach).
    pub fn counters(&self, attachments: &[Attachment]) -> Vec<InterfaceCounters> {
        let mut counters = self.fast_path_counters(attachments);
        for (sum, attachment) in counters.iter_mut().zip(attachments) {
            sum.add(&self.maps.hashed(attachment.interface.ifindex));
        }
        counters
    }

    pub fn maps(&self) -> &CounterMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut CounterMaps {
        &mut self.maps
    }

    /// Runs the program `repeat` times on `frame` through BPF_PROG_TEST_RUN,
    /// as if it had arrived on loopback (ifindex 1); returns the XDP action
    /// and the kernel's average run time. For tests and the benchmark: the
    /// frame is counted like any other. `object` is the one it was loaded from.
    pub fn test_run(
        &self,
        object: &LoadedObject,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), ProgramError> {
        let program: &Xdp = object
            .ebpf
            .program(self.program)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        let result = program.test_run(options)?;
        Ok((result.return_value, result.duration))
    }
}

/// A refused load: a missing privilege when the kernel refused before
/// verifying anything, the verifier's log otherwise.
/// Loads `name` through the verifier (once: a loaded program is reused)
/// and returns its descriptor.
fn load_program(object: &mut LoadedObject, name: &'static str) -> Result<OwnedFd, LoadError> {
    let program: &mut Xdp = object.program_mut(name)?;
    if program.fd().is_err() {
        program.load().map_err(|source| load_error(name, source))?;
    }
    program
        .fd()
        .map_err(|source| LoadError::Program {
            program: name,
            source,
        })?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| LoadError::Descriptor {
            program: name,
            source,
        })
}

/// The verifier's reason for a refusal, from the end of its log: the last
/// line that is not one of its closing statistics, followed by the
/// "processed N insns" line when there is one (it says how far it got).
/// The log (instruction by instruction, megabytes at worst) stays out of
/// the daemon's log.
pub fn verifier_reason(log: &str) -> String {
    let is_statistic = |line: &str| {
        line.starts_with("processed ")
            || line.starts_with("verification time")
            || line.starts_with("stack depth")
    };
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let reason = lines.iter().rev().find(|l| !is_statistic(l));
    let processed = lines.iter().rev().find(|l| l.starts_with("processed "));
    match (reason, processed) {
        (Some(reason), Some(processed)) => format!("{reason} ({processed})"),
        (Some(reason), None) => (*reason).to_owned(),
        (None, Some(processed)) => (*processed).to_owned(),
        (None, None) => "no verifier output".to_owned(),
    }
}

fn load_error(program: &'static str, source: ProgramError) -> LoadError {
    let refused = match &source {
        // EACCES is also how the verifier rejects a program; it is a
        // missing privilege only when the kernel refused before verifying
        // anything (no verifier output).
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => match io_error.raw_os_error() {
            Some(libc::EPERM) => true,
            Some(libc::EACCES) => verifier_log.to_string().trim().is_empty(),
            _ => false,
        },
        ProgramError::SyscallError(e) => is_permission(&e.io_error),
        _ => false,
    };
    if refused {
        // The kernel wants CAP_NET_ADMIN for networking programs
        // (bpf_net_capable) on top of CAP_BPF.
        LoadError::NotPermitted {
            program,
            needs: "CAP_NET_ADMIN and CAP_BPF",
            source,
        }
    } else {
        LoadError::Program { program, source }
    }
}

/// EBUSY / EEXIST from the attach: another program holds the interface.
fn is_busy(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST))
}

/// EPERM / EACCES from the attach: a missing capability.
fn is_permission(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
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
    pub fn reconcile(&mut self, counter: &mut PacketCounter, xdp: &XdpConfig) {
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
    pub fn detach_all(&mut self, counter: &mut PacketCounter) {
        for attachment in self.attachments.drain(..) {
            counter.detach(attachment);
        }
    }

    /// Why the wanted interfaces are not attached, as last logged.
    pub fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self.reported.values().cloned().collect();
        failures.sort();
        failures
    }

    /// Takes attachments adopted from their pins.
    pub fn adopt(&mut self, adopted: Vec<Attachment>) {
        self.attachments.extend(adopted);
    }

    /// Closes every link without detaching: pinned links stay attached.
    pub fn forget_all(&mut self) {
        self.attachments.clear();
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
    fn the_verifiers_reason_is_its_last_line_before_the_statistics() {
        // The end of Debian 6.1.192's log for the sampled build before the
        // fix (its first 2,600 lines are instructions).
        let log = "\
637: (18) r3 = 0xff35a7d09ff1e7a7     ; frame3: R3_w=map_value(off=151,ks=4,vs=164,imm=0) refs=8721
639: (71) r4 = *(u8 *)(r3 +0)
BPF program is too large. Processed 1000001 insn
verification time 38142146 usec
stack depth 8+208+0+24+72+0+64
processed 1000001 insns (limit 1000000) max_states_per_insn 46 total_states 32586 peak_states 2165 mark_read 20
";
        assert_eq!(
            verifier_reason(log),
            "BPF program is too large. Processed 1000001 insn (processed 1000001 insns \
             (limit 1000000) max_states_per_insn 46 total_states 32586 peak_states 2165 mark_read 20)"
        );
        assert_eq!(
            verifier_reason("fd 9 is not pointing to valid bpf_map\nverification time 9 usec\n"),
            "fd 9 is not pointing to valid bpf_map"
        );
        assert_eq!(verifier_reason("\n  \n"), "no verifier output");
    }

    #[test]
    fn configured_interfaces_are_taken_as_given() {
        let present = [iface("eth0", 2, true, false)];
        let configured = vec!["eth9".to_owned(), "lo".to_owned()];
        assert_eq!(wanted(&configured, &present), configured);
    }
}
