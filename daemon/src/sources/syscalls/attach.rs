//! Loading and attaching the syscall-latency tracer the way the
//! configuration asks for (`syscalls.attach`).
//!
//! `auto` tries fentry, then kprobe, then the raw tracepoints: fentry and
//! kprobes fire only for the tracked syscalls, the tracepoints fire for
//! every syscall of the node (untracked ones leave after one array lookup).
//! Modes the kernel compatibility table ([`crate::loader::probe`]) rules out are
//! skipped without trying, with the table's reason; the others are tried,
//! and a failed load or attach falls back to the next, its kernel reason
//! logged once. An explicit mode that fails is a startup error.

use aya::maps::{Array, HashMap as BpfHashMap};
use aya::programs::fentry::FEntryLink;
use aya::programs::fexit::FExitLink;
use aya::programs::kprobe::KProbeLink;
use aya::programs::raw_trace_point::RawTracePointLink;
use aya::programs::tp_btf::BtfTracePointLink;
use aya::programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint};
use aya::Btf;
use telemetryd_common::syscalls as sc;
use tracing::{info, warn};

use super::names::entry_symbol;
use crate::config::{syscall_number, Choice, SyscallAttach, SyscallsConfig};
use crate::loader::probe::{self, KernelSupport};
use crate::loader::{LoadError, LoadedObject};

/// Modes passed over, each with the reason.
pub type Skipped = Vec<(SyscallAttach, String)>;

/// One tracked syscall: its name, number and slot in the histogram map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedSyscall {
    pub name: String,
    pub nr: u32,
    pub slot: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("syscalls.attach = \"{mode}\": this kernel cannot: {reason}")]
    Unsupported { mode: &'static str, reason: String },
    #[error("syscalls.attach = \"{mode}\": {reason}")]
    Failed { mode: &'static str, reason: String },
    #[error("no syscall attach mode works on this kernel: {0}")]
    Exhausted(String),
    #[error("syscalls.track: {0:?} has no number on this architecture")]
    UnknownSyscall(String),
    #[error("syscalls.track: {name:?} is syscall {nr}, beyond the tracer's table of {max}")]
    NumberTooLarge { name: String, nr: u32, max: u32 },
    #[error("syscalls.pids: {0} pids listed; the kernel side keeps at most {max}", max = sc::MAX_PIDS)]
    TooManyPids(usize),
    #[error("syscalls.cgroup = {path:?}: {error}")]
    Cgroup { path: String, error: std::io::Error },
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// A link of one of the tracer's programs; dropping it detaches it.
#[allow(dead_code, reason = "held for its Drop, never read")]
enum TracerLink {
    RawTracePoint(RawTracePointLink),
    BtfTracePoint(BtfTracePointLink),
    Kprobe(KProbeLink),
    Fentry(FEntryLink),
    Fexit(FExitLink),
}

/// The attached tracer. Dropping it detaches every program.
pub struct SyscallTracer {
    pub attach: SyscallAttach,
    pub tracked: Vec<TrackedSyscall>,
    /// Modes tried or skipped before `attach`, with the reason.
    pub skipped: Skipped,
    links: Vec<TracerLink>,
}

impl std::fmt::Debug for SyscallTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyscallTracer")
            .field("attach", &self.attach)
            .field("tracked", &self.tracked)
            .field("links", &self.links.len())
            .finish()
    }
}

/// Numbers and slots of the configured syscalls, in configuration order.
pub fn tracked(config: &SyscallsConfig) -> Result<Vec<TrackedSyscall>, StartError> {
    config
        .track
        .iter()
        .enumerate()
        .map(|(slot, name)| {
            let nr =
                syscall_number(name).ok_or_else(|| StartError::UnknownSyscall(name.clone()))?;
            if nr >= sc::MAX_SYSCALL_NR {
                return Err(StartError::NumberTooLarge {
                    name: name.clone(),
                    nr,
                    max: sc::MAX_SYSCALL_NR,
                });
            }
            Ok(TrackedSyscall {
                name: name.clone(),
                nr,
                slot: slot as u32,
            })
        })
        .collect()
}

/// The modes to try, in order, and those the compatibility table rules out
/// (with its reason). An explicit mode the table rules out is an error.
pub fn plan(
    attach: Choice<SyscallAttach>,
    support: &KernelSupport,
) -> Result<(Vec<SyscallAttach>, Skipped), StartError> {
    let wanted = attach.candidates();
    let mut attempts = Vec::new();
    let mut skipped = Vec::new();
    for &strategy in wanted {
        let feature = match strategy {
            SyscallAttach::Fentry => probe::FENTRY,
            SyscallAttach::Kprobe => probe::KPROBES,
            SyscallAttach::Tracepoint => probe::TRACEPOINTS,
        };
        if support.has(feature) {
            attempts.push(strategy);
        } else {
            let reason = support
                .features
                .iter()
                .find(|f| f.name == feature)
                .map_or_else(|| format!("{feature} not probed"), |f| f.detail.clone());
            skipped.push((strategy, reason));
        }
    }
    if attempts.is_empty() {
        let reasons = skipped
            .iter()
            .map(|(s, r)| format!("{}: {r}", s.label()))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(if attach == Choice::Auto {
            StartError::Exhausted(reasons)
        } else {
            StartError::Unsupported {
                mode: wanted[0].label(),
                reason: reasons,
            }
        });
    }
    Ok((attempts, skipped))
}

impl SyscallTracer {
    /// Fills the slot and pid maps of `object` (loaded with
    /// [`super::SyscallsLoad`]) and attaches the tracer as `config.attach` says.
    pub fn start(
        object: &mut LoadedObject,
        config: &SyscallsConfig,
        support: &KernelSupport,
    ) -> Result<Self, StartError> {
        let tracked = tracked(config)?;
        write_slots(object, &tracked)?;
        write_pids(object, &config.pids)?;
        let (attempts, mut skipped) = plan(config.attach, support)?;
        for (strategy, reason) in &skipped {
            info!(
                mode = strategy.label(),
                reason = %reason,
                "syscall attach mode skipped: the kernel lacks it"
            );
        }
        let last = attempts.len() - 1;
        // aya's own BTF, for fentry and tp_btf loads: parsed once, at the
        // first mode that needs it, and dropped when attaching is done.
        let mut btf = None;
        for (i, &strategy) in attempts.iter().enumerate() {
            match attach(object, strategy, &tracked, &mut btf) {
                Ok(links) => {
                    info!(
                        mode = strategy.label(),
                        syscalls = %config.track.join(","),
                        "syscall latency tracer attached"
                    );
                    return Ok(Self {
                        attach: strategy,
                        tracked,
                        skipped,
                        links,
                    });
                }
                Err(reason) if i < last => {
                    warn!(
                        mode = strategy.label(),
                        reason = %reason,
                        next = attempts[i + 1].label(),
                        "syscall attach mode failed, falling back"
                    );
                    skipped.push((strategy, reason));
                }
                Err(reason) => {
                    return Err(if config.attach == Choice::Auto {
                        skipped.push((strategy, reason));
                        StartError::Exhausted(
                            skipped
                                .iter()
                                .map(|(s, r)| format!("{}: {r}", s.label()))
                                .collect::<Vec<_>>()
                                .join("; "),
                        )
                    } else {
                        StartError::Failed {
                            mode: strategy.label(),
                            reason,
                        }
                    });
                }
            }
        }
        unreachable!("plan returns at least one attempt")
    }

    /// Links held (every program on every hook it is attached to).
    pub fn attached_programs(&self) -> usize {
        self.links.len()
    }

    /// Whether the `sched_switch` hand-off is attached (tracepoint mode).
    pub fn sched_switch_attached(&self) -> bool {
        self.attach == SyscallAttach::Tracepoint
    }
}

impl Drop for SyscallTracer {
    /// Detaches in the reverse order of attaching: the entry program first,
    /// the `sched_switch` hand-off last.
    fn drop(&mut self) {
        while let Some(link) = self.links.pop() {
            drop(link);
        }
    }
}

pub(super) fn write_slots(
    object: &mut LoadedObject,
    tracked: &[TrackedSyscall],
) -> Result<(), LoadError> {
    let map = object
        .ebpf
        .map_mut(sc::SLOTS_MAP)
        .ok_or(LoadError::MissingMap { map: sc::SLOTS_MAP })?;
    let mut slots: Array<_, u32> = Array::try_from(map).map_err(|source| LoadError::Map {
        map: sc::SLOTS_MAP,
        source,
    })?;
    for t in tracked {
        slots
            .set(t.nr, t.slot + 1, 0)
            .map_err(|source| LoadError::Map {
                map: sc::SLOTS_MAP,
                source,
            })?;
    }
    Ok(())
}

fn write_pids(object: &mut LoadedObject, pids: &[u32]) -> Result<(), StartError> {
    if pids.len() > sc::MAX_PIDS as usize {
        return Err(StartError::TooManyPids(pids.len()));
    }
    let map = object
        .ebpf
        .map_mut(sc::PIDS_MAP)
        .ok_or(LoadError::MissingMap { map: sc::PIDS_MAP })?;
    let mut filter: BpfHashMap<_, u32, u32> =
        BpfHashMap::try_from(map).map_err(|source| LoadError::Map {
            map: sc::PIDS_MAP,
            source,
        })?;
    for &pid in pids {
        filter.insert(pid, 1, 0).map_err(|source| LoadError::Map {
            map: sc::PIDS_MAP,
            source,
        })?;
    }
    Ok(())
}

/// Attaches the entry/exit pair of `strategy`. On failure, whatever was
/// attached is detached again and the kernel's reason returned.
fn attach(
    object: &mut LoadedObject,
    strategy: SyscallAttach,
    tracked: &[TrackedSyscall],
    btf: &mut Option<Btf>,
) -> Result<Vec<TracerLink>, String> {
    let mut links = Vec::new();
    match strategy {
        SyscallAttach::Tracepoint => {
            // The sched_switch hand-off first: the entry program's per-CPU
            // fast path is only exact while it runs (see the eBPF side), so
            // it must be there before any entry is recorded. Detached last
            // (`Drop for SyscallTracer` drops links in reverse).
            links.push(TracerLink::RawTracePoint(attach_raw_tracepoint(
                object,
                sc::TRACEPOINT_SCHED_SWITCH,
                "sched_switch",
            )?));
            // Exit next: an entry recorded before its exit program exists
            // would only wait in the in-flight map. The BTF-typed exit is
            // cheaper; without BTF the raw one does the same work.
            match attach_tp_btf(object, sc::TP_BTF_EXIT, "sys_exit", btf) {
                Ok(link) => links.push(TracerLink::BtfTracePoint(link)),
                Err(reason) => {
                    info!(%reason, "BTF tracepoint sys_exit unavailable, using the raw one");
                    links.push(TracerLink::RawTracePoint(attach_raw_tracepoint(
                        object,
                        sc::TRACEPOINT_EXIT,
                        "sys_exit",
                    )?));
                }
            }
            links.push(TracerLink::RawTracePoint(attach_raw_tracepoint(
                object,
                sc::TRACEPOINT_ENTER,
                "sys_enter",
            )?));
        }
        SyscallAttach::Kprobe => {
            for program in [sc::KPROBE_EXIT, sc::KPROBE_ENTER] {
                let kprobe: &mut KProbe = program_mut(object, program)?;
                if kprobe.fd().is_err() {
                    kprobe.load().map_err(|e| load_reason(program, e))?;
                }
                for t in tracked {
                    let symbol = entry_symbol(&t.name);
                    let id = kprobe
                        .attach(&symbol, 0)
                        .map_err(|e| attach_reason(program, &symbol, e))?;
                    let link = kprobe
                        .take_link(id)
                        .map_err(|e| attach_reason(program, &symbol, e))?;
                    links.push(TracerLink::Kprobe(link));
                }
            }
        }
        SyscallAttach::Fentry => {
            let btf = kernel_btf(btf)?;
            // One program instance per target: load for a symbol, attach,
            // keep the link (it holds the program), unload our handle and
            // load again for the next symbol.
            for t in tracked {
                let symbol = entry_symbol(&t.name);
                let fexit: &mut FExit = program_mut(object, sc::FEXIT_EXIT)?;
                fexit
                    .load(&symbol, btf)
                    .map_err(|e| load_reason(sc::FEXIT_EXIT, e))?;
                let attached = fexit.attach().and_then(|id| fexit.take_link(id));
                let _ = fexit.unload();
                links.push(TracerLink::Fexit(
                    attached.map_err(|e| attach_reason(sc::FEXIT_EXIT, &symbol, e))?,
                ));
                let fentry: &mut FEntry = program_mut(object, sc::FENTRY_ENTER)?;
                fentry
                    .load(&symbol, btf)
                    .map_err(|e| load_reason(sc::FENTRY_ENTER, e))?;
                let attached = fentry.attach().and_then(|id| fentry.take_link(id));
                let _ = fentry.unload();
                links.push(TracerLink::Fentry(
                    attached.map_err(|e| attach_reason(sc::FENTRY_ENTER, &symbol, e))?,
                ));
            }
        }
    }
    Ok(links)
}

/// The kernel's BTF as aya parses it, read at the first call.
fn kernel_btf(btf: &mut Option<Btf>) -> Result<&Btf, String> {
    if btf.is_none() {
        *btf = Some(Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF: {e}"))?);
    }
    Ok(btf.as_ref().expect("set above"))
}

pub(super) fn attach_raw_tracepoint(
    object: &mut LoadedObject,
    program: &'static str,
    tracepoint: &str,
) -> Result<RawTracePointLink, String> {
    let tp: &mut RawTracePoint = program_mut(object, program)?;
    if tp.fd().is_err() {
        tp.load().map_err(|e| load_reason(program, e))?;
    }
    let id = tp
        .attach(tracepoint)
        .map_err(|e| attach_reason(program, tracepoint, e))?;
    tp.take_link(id)
        .map_err(|e| attach_reason(program, tracepoint, e))
}

pub(super) fn attach_tp_btf(
    object: &mut LoadedObject,
    program: &'static str,
    tracepoint: &str,
    btf: &mut Option<Btf>,
) -> Result<BtfTracePointLink, String> {
    let tp: &mut BtfTracePoint = program_mut(object, program)?;
    if tp.fd().is_err() {
        tp.load(tracepoint, kernel_btf(btf)?)
            .map_err(|e| load_reason(program, e))?;
    }
    let id = tp
        .attach()
        .map_err(|e| attach_reason(program, tracepoint, e))?;
    tp.take_link(id)
        .map_err(|e| attach_reason(program, tracepoint, e))
}

pub(super) fn program_mut<'a, T>(
    object: &'a mut LoadedObject,
    name: &'static str,
) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    object
        .ebpf
        .program_mut(name)
        .ok_or_else(|| LoadError::MissingProgram { program: name }.to_string())?
        .try_into()
        .map_err(|e: ProgramError| format!("{name}: {e}"))
}

/// The kernel's answer to a load, verifier log included (aya's error text
/// carries it).
pub(super) fn load_reason(program: &str, error: ProgramError) -> String {
    let text = error_chain(&error);
    let trimmed = text.trim_end();
    if trimmed.ends_with("Verifier output:") {
        // The kernel refused before the verifier ran (EPERM under lockdown
        // or without BPF trampolines, for example): say so.
        format!("loading {program}: {trimmed} (empty: refused before verification)")
    } else {
        format!("loading {program}: {text}")
    }
}

pub(super) fn attach_reason(program: &str, target: &str, error: ProgramError) -> String {
    format!("attaching {program} to {target}: {}", error_chain(&error))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::probe::Feature;

    fn support(fentry: bool, kprobes: bool, tracepoints: bool) -> KernelSupport {
        let feature = |name, available, detail: &str| Feature {
            name,
            available,
            detail: detail.into(),
        };
        KernelSupport {
            release: "test".into(),
            features: vec![
                feature(probe::FENTRY, fentry, "needs BTF"),
                feature(probe::KPROBES, kprobes, "CONFIG_KPROBES is off"),
                feature(probe::TRACEPOINTS, tracepoints, "probe load"),
            ],
        }
    }

    #[test]
    fn auto_tries_the_cheapest_first_and_says_why_others_are_skipped() {
        let (attempts, skipped) = plan(Choice::Auto, &support(true, false, true)).unwrap();
        assert_eq!(attempts, [SyscallAttach::Fentry, SyscallAttach::Tracepoint]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, SyscallAttach::Kprobe);
        assert!(skipped[0].1.contains("CONFIG_KPROBES"));
    }

    #[test]
    fn explicit_mode_the_kernel_lacks_is_an_error_with_the_reason() {
        let err = plan(
            Choice::Only(SyscallAttach::Kprobe),
            &support(true, false, true),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("kprobe") && text.contains("CONFIG_KPROBES"),
            "{text}"
        );
    }

    #[test]
    fn auto_with_nothing_left_is_an_error() {
        let err = plan(Choice::Auto, &support(false, false, false)).unwrap_err();
        assert!(matches!(err, StartError::Exhausted(_)), "{err}");
    }

    #[test]
    fn slots_follow_configuration_order() {
        let config = SyscallsConfig {
            track: vec!["write".into(), "read".into()],
            ..SyscallsConfig::default()
        };
        let tracked = tracked(&config).unwrap();
        assert_eq!(tracked[0].slot, 0);
        assert_eq!(tracked[1].name, "read");
        assert_eq!(tracked[1].slot, 1);
        assert_eq!(tracked[1].nr, syscall_number("read").unwrap());
    }
}
