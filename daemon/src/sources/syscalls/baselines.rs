//! The syscall benchmark's reference programs (`examples/syscall_bench.rs`),
//! which exist only in the benchmark object (`LoadedObject::load_elf`), and
//! the kernel's run-time statistics of any loaded program.

use aya::programs::raw_trace_point::RawTracePointLink;
use aya::programs::tp_btf::BtfTracePointLink;
use aya::programs::trace_point::TracePointLink;
use aya::programs::TracePoint;
use telemetryd_common::syscalls as sc;

use super::attach::{
    attach_raw_tracepoint, attach_reason, attach_tp_btf, load_reason, program_mut, tracked,
    write_slots,
};
use crate::config::SyscallsConfig;
use crate::loader::LoadedObject;

/// The benchmark's comparison programs (see `examples/syscall_bench.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Empty programs on the raw `sys_enter` / `sys_exit`: the floor of
    /// the tracepoint method.
    Empty,
    /// Two clock reads per tracked call on the same tracepoints and nothing
    /// else: the floor of timing anything there.
    ClockFloor,
    /// Empty programs on `syscalls:sys_enter_<name>` / `sys_exit_<name>`
    /// of the tracked syscalls.
    SyscallTracepoints,
}

/// A [`Reference`] attached; detaches on drop.
pub struct ReferencePrograms {
    _raw: Vec<RawTracePointLink>,
    _btf: Vec<BtfTracePointLink>,
    _syscall: Vec<TracePointLink>,
}

impl ReferencePrograms {
    /// Attaches `reference`; `config.track` names the tracked syscalls
    /// (written into the slot map, which the clock floor consults).
    pub fn attach(
        object: &mut LoadedObject,
        reference: Reference,
        config: &SyscallsConfig,
    ) -> Result<Self, String> {
        let tracked = tracked(config).map_err(|e| e.to_string())?;
        write_slots(object, &tracked).map_err(|e| e.to_string())?;
        let mut programs = Self {
            _raw: Vec::new(),
            _btf: Vec::new(),
            _syscall: Vec::new(),
        };
        match reference {
            Reference::Empty => {
                programs
                    ._raw
                    .push(attach_raw_tracepoint(object, sc::EMPTY_EXIT, "sys_exit")?);
                programs
                    ._raw
                    .push(attach_raw_tracepoint(object, sc::EMPTY_ENTER, "sys_enter")?);
            }
            Reference::ClockFloor => {
                programs._btf.push(attach_tp_btf(
                    object,
                    sc::CLOCK_FLOOR_EXIT,
                    "sys_exit",
                    &mut None,
                )?);
                programs._raw.push(attach_raw_tracepoint(
                    object,
                    sc::CLOCK_FLOOR_ENTER,
                    "sys_enter",
                )?);
            }
            Reference::SyscallTracepoints => {
                for (program, side) in [
                    (sc::SYSCALL_TP_EMPTY_EXIT, "exit"),
                    (sc::SYSCALL_TP_EMPTY_ENTER, "enter"),
                ] {
                    let tp: &mut TracePoint = program_mut(object, program)?;
                    if tp.fd().is_err() {
                        tp.load().map_err(|e| load_reason(program, e))?;
                    }
                    for t in &tracked {
                        let name = format!("sys_{side}_{}", t.name);
                        let id = tp
                            .attach("syscalls", &name)
                            .map_err(|e| attach_reason(program, &name, e))?;
                        programs._syscall.push(
                            tp.take_link(id)
                                .map_err(|e| attach_reason(program, &name, e))?,
                        );
                    }
                }
            }
        }
        Ok(programs)
    }
}

/// Kernel run-time statistics of one loaded program (meaningful while BPF
/// stats are enabled, see `aya::sys::enable_stats`).
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Statistics of the named programs of `object` that are loaded.
pub fn program_stats(object: &LoadedObject, programs: &[&'static str]) -> Vec<ProgramStats> {
    programs
        .iter()
        .filter_map(|&name| {
            let info = object.ebpf.program(name)?.info().ok()?;
            Some(ProgramStats {
                program: name,
                run_time_ns: info.run_time().as_nanos() as u64,
                run_count: info.run_count(),
            })
        })
        .collect()
}
