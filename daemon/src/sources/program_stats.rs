//! What telemetryd's own eBPF programs cost the kernel: each loaded
//! program's accumulated run time and run count from its `bpf_prog_info`
//! (`telemetryd_ebpf_program_run_seconds_total`,
//! `telemetryd_ebpf_program_runs_total`).
//!
//! The kernel only counts while BPF statistics are on. With
//! `daemon.ebpf_stats = true` telemetryd turns them on through
//! `bpf(BPF_ENABLE_STATS)`: the kernel counts for as long as the returned
//! descriptor is open, so they go off again when telemetryd exits, however
//! it exits (the kernel closes the descriptor even after `kill -9`), and
//! never stay on behind its back as a written `kernel.bpf_stats_enabled`
//! sysctl would. Someone else may hold them on too (the sysctl, bpftool):
//! the counters then run while `telemetryd_ebpf_stats_enabled` is 0.

use std::os::fd::OwnedFd;

use aya::Ebpf;
use prometheus::proto::MetricFamily;
use tracing::{info, warn};

use crate::metrics::family::{counter, gauge, Series};

/// One loaded program's kernel counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramRun {
    /// The program's name in telemetryd's object.
    pub program: String,
    pub run_seconds: f64,
    pub runs: u64,
}

/// The programs' counters as of one poll, and whether telemetryd holds
/// BPF statistics on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramStats {
    pub runs: Vec<ProgramRun>,
    pub stats_enabled: bool,
}

/// The BPF statistics switch telemetryd holds (or not).
#[derive(Debug, Default)]
pub struct StatsSwitch {
    held: Option<OwnedFd>,
}

impl StatsSwitch {
    /// Holds statistics on when `on`, lets them go otherwise. Failing to
    /// turn them on (no CAP_SYS_ADMIN, a kernel before 5.8) is logged and
    /// leaves them off; the daemon runs on.
    pub fn set(&mut self, on: bool) {
        match (on, self.held.is_some()) {
            (true, false) => match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => {
                    info!("BPF run-time statistics on (daemon.ebpf_stats) while telemetryd runs");
                    self.held = Some(fd);
                }
                Err(error) => warn!(
                    %error,
                    "daemon.ebpf_stats: the kernel refused BPF_ENABLE_STATS (it needs \
                     CAP_SYS_ADMIN and Linux 5.8); eBPF program run time is not counted"
                ),
            },
            (false, true) => {
                self.held = None;
                info!("BPF run-time statistics released (daemon.ebpf_stats = false)");
            }
            _ => {}
        }
    }

    pub fn is_on(&self) -> bool {
        self.held.is_some()
    }

    /// The counters of every program of `object` that is loaded.
    pub fn read(&self, object: &Ebpf) -> ProgramStats {
        let mut runs: Vec<ProgramRun> = object
            .programs()
            .filter(|(_, program)| program.fd().is_ok())
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramRun {
                    program: name.to_owned(),
                    run_seconds: info.run_time().as_secs_f64(),
                    runs: info.run_count(),
                })
            })
            .collect();
        runs.sort_by(|a, b| a.program.cmp(&b.program));
        ProgramStats {
            runs,
            stats_enabled: self.is_on(),
        }
    }
}

impl ProgramStats {
    pub fn families(&self) -> Vec<MetricFamily> {
        let label =
            |run: &ProgramRun, value: f64| Series::new(&[("program", run.program.as_str())], value);
        vec![
            counter(
                "telemetryd_ebpf_program_run_seconds_total",
                "Time the kernel spent running each loaded eBPF program of telemetryd (bpf_prog_info run_time_ns); counts only while BPF statistics are on.",
                self.runs.iter().map(|r| label(r, r.run_seconds)).collect(),
            ),
            counter(
                "telemetryd_ebpf_program_runs_total",
                "Runs of each loaded eBPF program of telemetryd (bpf_prog_info run_cnt); counts only while BPF statistics are on.",
                self.runs.iter().map(|r| label(r, r.runs as f64)).collect(),
            ),
            gauge(
                "telemetryd_ebpf_stats_enabled",
                "1 while telemetryd holds the kernel's BPF run-time statistics on (daemon.ebpf_stats), else 0.",
                vec![Series::new::<&str, &str>(
                    &[],
                    f64::from(u8::from(self.stats_enabled)),
                )],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_program_and_the_switch() {
        let stats = ProgramStats {
            runs: vec![
                ProgramRun {
                    program: "sys_enter".into(),
                    run_seconds: 0.25,
                    runs: 1000,
                },
                ProgramRun {
                    program: "xdp_packet_counter".into(),
                    run_seconds: 0.0,
                    runs: 0,
                },
            ],
            stats_enabled: false,
        };
        let text = crate::metrics::render(stats.families()).unwrap();
        for line in [
            r#"telemetryd_ebpf_program_run_seconds_total{program="sys_enter"} 0.25"#,
            r#"telemetryd_ebpf_program_runs_total{program="sys_enter"} 1000"#,
            r#"telemetryd_ebpf_program_run_seconds_total{program="xdp_packet_counter"} 0"#,
            r#"telemetryd_ebpf_program_runs_total{program="xdp_packet_counter"} 0"#,
            "telemetryd_ebpf_stats_enabled 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
