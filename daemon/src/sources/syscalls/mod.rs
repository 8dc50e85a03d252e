//! The syscall-latency tracer: per tracked syscall a log2 histogram of
//! latencies, the exact sum and the error count, attached by fentry, kprobe
//! or the raw tracepoints (`syscalls.attach`). Its section of the snapshot
//! is [`TracerStats`].

pub mod attach;
pub mod baselines;
pub mod metrics;
pub mod names;
pub mod stats;

use std::os::unix::fs::MetadataExt as _;

use aya::maps::{MapData, PerCpuArray};
use aya::EbpfLoader;
use telemetryd_common::syscalls::{self as sc, SyscallHistogram, ERRORS_MAP, HISTOGRAMS_MAP};

pub use attach::{plan, tracked, Skipped, StartError, SyscallTracer, TrackedSyscall};
pub use stats::{SyscallStats, TracerStats, DEFAULT_CLASSIC_BUCKETS, LATENCY_BUCKETS};

use crate::config::{Config, SyscallsConfig};
use crate::loader::probe::KernelSupport;
use crate::loader::{LoadSettings, LoadedObject};

/// `offsetof(struct pt_regs, orig_ax)`: fifteen `unsigned long` before it
/// (arch/x86/include/asm/ptrace.h).
#[cfg(target_arch = "x86_64")]
pub const PT_REGS_NR_OFFSET: u32 = 15 * 8;
/// `offsetof(struct pt_regs, syscallno)`: `regs[31], sp, pc, pstate,
/// orig_x0` before it (arch/arm64/include/asm/ptrace.h).
#[cfg(target_arch = "aarch64")]
pub const PT_REGS_NR_OFFSET: u32 = 35 * 8;

/// The tracer's load-time settings: the in-flight map size and the
/// filters, as read-only globals the verifier prunes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallsLoad {
    /// Entries of the in-flight map.
    pub max_in_flight: u32,
    /// tgid never traced (the daemon itself).
    pub self_tgid: u32,
    /// Trace only the tgids written into the pid map.
    pub filter_pids: bool,
    /// cgroup v2 id to trace; 0 = every cgroup.
    pub cgroup_id: u64,
    /// Offset of the syscall number in `struct pt_regs`.
    pub nr_offset: u32,
}

impl Default for SyscallsLoad {
    fn default() -> Self {
        Self {
            max_in_flight: sc::DEFAULT_MAX_IN_FLIGHT,
            self_tgid: std::process::id(),
            filter_pids: false,
            cgroup_id: 0,
            nr_offset: PT_REGS_NR_OFFSET,
        }
    }
}

impl SyscallsLoad {
    /// The settings `[syscalls]` implies: the cgroup id is the inode number
    /// of the cgroup v2 directory (a missing path is an error).
    pub fn new(config: &SyscallsConfig) -> Result<Self, StartError> {
        let cgroup_id = if config.cgroup.is_empty() {
            0
        } else {
            std::fs::metadata(&config.cgroup)
                .map_err(|error| StartError::Cgroup {
                    path: config.cgroup.clone(),
                    error,
                })?
                .ino()
        };
        Ok(Self {
            max_in_flight: config.max_in_flight,
            filter_pids: !config.pids.is_empty(),
            cgroup_id,
            ..Self::default()
        })
    }
}

impl LoadSettings for SyscallsLoad {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .map_max_entries(sc::IN_FLIGHT_MAP, self.max_in_flight)
            .override_global(sc::SELF_TGID_GLOBAL, &self.self_tgid, true)
            .override_global(
                sc::FILTER_PIDS_GLOBAL,
                if self.filter_pids { &1u32 } else { &0u32 },
                true,
            )
            .override_global(sc::FILTER_CGROUP_GLOBAL, &self.cgroup_id, true)
            .override_global(sc::NR_OFFSET_GLOBAL, &self.nr_offset, true);
    }
}

/// The attached tracer and the maps it fills. Dropping it detaches.
pub struct SyscallSource {
    tracer: SyscallTracer,
    histograms: PerCpuArray<MapData, SyscallHistogram>,
    errors: PerCpuArray<MapData, u64>,
    classic_buckets: (usize, usize),
}

impl SyscallSource {
    /// Attaches the tracer (see [`SyscallTracer::start`]) and takes its maps.
    pub fn start(
        object: &mut LoadedObject,
        config: &SyscallsConfig,
        support: &KernelSupport,
    ) -> Result<Self, StartError> {
        let tracer = SyscallTracer::start(object, config, support)?;
        Ok(Self {
            tracer,
            histograms: object.take_map(HISTOGRAMS_MAP)?,
            errors: object.take_map(ERRORS_MAP)?,
            classic_buckets: config.classic_buckets(),
        })
    }

    pub fn tracer(&self) -> &SyscallTracer {
        &self.tracer
    }

    /// One poll: every tracked syscall (zero until its first call) and the
    /// tracer's own errors.
    pub fn poll(&self) -> TracerStats {
        TracerStats {
            attach: self.tracer.attach,
            sched_switch: self.tracer.sched_switch_attached(),
            syscalls: self
                .tracer
                .tracked
                .iter()
                .map(|tracked| (tracked.name.clone(), self.read(tracked)))
                .collect(),
            errors: std::array::from_fn(|slot| self.error_count(slot as u32)),
            classic_buckets: self.classic_buckets,
        }
    }

    fn read(&self, tracked: &TrackedSyscall) -> SyscallStats {
        let mut stats = SyscallStats::default();
        if let Ok(per_cpu) = self.histograms.get(&tracked.slot, 0) {
            for cpu in per_cpu.iter() {
                add(&mut stats, cpu);
            }
        }
        stats
    }

    fn error_count(&self, slot: u32) -> u64 {
        self.errors
            .get(&slot, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// Adds one CPU's histogram to `stats`.
pub fn add(stats: &mut SyscallStats, cpu: &SyscallHistogram) {
    for (total, n) in stats.buckets.iter_mut().zip(cpu.buckets.iter()) {
        *total += n;
    }
    stats.sum_ns += cpu.sum_ns;
    stats.count += cpu.count;
    stats.errors += cpu.errors;
}

/// What `check --probe` says about the tracer: which mode `run` would end
/// up with, and why the ones before it were passed over. As root this is a
/// real trial (load, attach, detach at once); otherwise only the
/// compatibility table speaks.
pub fn describe(config: &Config, support: &KernelSupport) -> String {
    let config = &config.syscalls;
    let mut out = format!(
        "syscalls: attach = {:?}, tracking {}\n",
        config.attach,
        config.track.join(", ")
    );
    let trial = SyscallsLoad::new(config)
        .map_err(|e| e.to_string())
        .and_then(|settings| LoadedObject::load(&[&settings]).map_err(|e| e.to_string()))
        .and_then(|mut object| {
            SyscallTracer::start(&mut object, config, support).map_err(|e| e.to_string())
        });
    match trial {
        Ok(tracer) => {
            for (mode, reason) in &tracer.skipped {
                out.push_str(&format!("  {:<11} no   {reason}\n", mode.label()));
            }
            out.push_str(&format!(
                "  {:<11} yes  attached and detached in a trial: `run` would use it\n",
                tracer.attach.label()
            ));
        }
        Err(error) => match plan(config.attach, support) {
            Ok((attempts, skipped)) => {
                for (mode, reason) in &skipped {
                    out.push_str(&format!("  {:<11} no   {reason}\n", mode.label()));
                }
                let order: Vec<&str> = attempts.iter().map(|s| s.label()).collect();
                out.push_str(&format!(
                    "  would try, in order: {} (the trial failed: {error})\n",
                    order.join(", ")
                ));
            }
            Err(plan_error) => out.push_str(&format!("  none: {plan_error}\n")),
        },
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_add_up() {
        let mut a = SyscallHistogram::default();
        a.buckets[10] = 2;
        a.sum_ns = 2000;
        a.count = 2;
        let mut b = SyscallHistogram::default();
        b.buckets[10] = 1;
        b.buckets[22] = 1;
        b.sum_ns = 3_001_000;
        b.count = 2;
        b.errors = 1;
        let mut stats = SyscallStats::default();
        add(&mut stats, &a);
        add(&mut stats, &b);
        assert_eq!(stats.buckets[10], 3);
        assert_eq!(stats.buckets[22], 1);
        assert_eq!(stats.sum_ns, 3_003_000);
        assert_eq!(stats.count, 4);
        assert_eq!(stats.errors, 1);
    }
}
