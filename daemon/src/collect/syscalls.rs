//! Reads the syscall tracer's per-CPU histograms into the snapshot.

use aya::maps::{MapData, PerCpuArray};
use telemetryd_common::syscalls::{
    ProgramError, SyscallHistogram, PROGRAM_ERROR_LABELS, PROGRAM_LABEL, SCHED_SWITCH_LABEL,
};

use super::snapshot::{ProgramAttachment, Snapshot, SyscallStats};
use crate::bpf::syscalls::{SyscallTracer, TrackedSyscall};

/// Owns the tracer's histogram and error maps.
pub struct SyscallCollector {
    histograms: PerCpuArray<MapData, SyscallHistogram>,
    errors: PerCpuArray<MapData, u64>,
}

impl SyscallCollector {
    pub fn new(
        histograms: PerCpuArray<MapData, SyscallHistogram>,
        errors: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self { histograms, errors }
    }

    /// Fills `snapshot.syscalls` (every tracked syscall, zero until its
    /// first call), the tracer's error counts and its attachment.
    pub fn poll(&self, tracer: &SyscallTracer, snapshot: &mut Snapshot) {
        for tracked in &tracer.tracked {
            snapshot
                .syscalls
                .insert(tracked.name.clone(), self.read(tracked));
        }
        for (slot, label) in PROGRAM_ERROR_LABELS.iter().enumerate() {
            let count = self.error_count(slot as u32);
            snapshot
                .program_errors
                .insert((PROGRAM_LABEL.to_owned(), (*label).to_owned()), count);
        }
        snapshot.syscall_in_flight_overflows =
            Some(self.error_count(ProgramError::InFlightFull as u32));
        snapshot.attachments.push(ProgramAttachment {
            program: PROGRAM_LABEL.to_owned(),
            attach: tracer.strategy.label().to_owned(),
            device: String::new(),
        });
        if tracer.sched_switch_attached() {
            snapshot.attachments.push(ProgramAttachment {
                program: SCHED_SWITCH_LABEL.to_owned(),
                attach: tracer.strategy.label().to_owned(),
                device: String::new(),
            });
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
