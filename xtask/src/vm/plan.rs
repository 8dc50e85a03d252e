//! What runs on which kernel: the guests of the matrix and the test
//! binaries (and filters) each one runs.
//!
//! TCG runs a root test binary at 10-40x its host time, so not everything
//! runs everywhere. Every guest kernel runs what depends on the kernel: the
//! syscall tracer in all three attach modes, XDP (veth native and generic,
//! and native on virtio-net), packet events through the ring buffer, the
//! drop tracers and BTF, the unit's capability set, and the daemon without
//! BTF. The systemd guest runs the
//! unit under a real systemd. The host's kernel runs the whole suite.

use std::time::Duration;

use super::guest::Mode;

/// One invocation of a test binary in a guest.
#[derive(Clone, Debug)]
pub struct Run {
    /// The test target (`tests/<binary>.rs`).
    pub binary: &'static str,
    /// libtest filters (a test runs if its name contains any); empty: all.
    pub filters: &'static [&'static str],
    /// Run the `#[ignore]`d tests among those (guest-only tests: they need
    /// a virtio-net NIC pair or systemd as PID 1).
    pub ignored: bool,
}

/// A guest of the matrix, before a kernel is chosen for it.
#[derive(Clone, Debug)]
pub struct GuestPlan {
    /// `suite` or `systemd`; the guest is named `<series>-<kind>`.
    pub kind: &'static str,
    pub mode: Mode,
    pub nics: bool,
    pub runs: Vec<Run>,
    /// What this guest leaves out, and why: `(feature, reason)`, shown in
    /// the table as not run.
    pub not_run: Vec<(&'static str, &'static str)>,
    /// Hard limit for the whole guest, boot to power-off: about three times
    /// what it takes on a busy 2-core machine.
    pub timeout: Duration,
}

/// The kernel-dependent tests, run on each guest kernel (the same on
/// every series; packet events included, whose test binary also guards
/// the verifier's cost of the XDP program on that kernel).
pub fn suite() -> GuestPlan {
    GuestPlan {
        kind: "suite",
        mode: Mode::Chroot,
        nics: true,
        runs: vec![
            Run {
                binary: "syscall_latency",
                filters: &[],
                ignored: false,
            },
            Run {
                binary: "xdp_counter",
                filters: &[],
                ignored: false,
            },
            Run {
                binary: "xdp_counter",
                filters: &["on_virtio_net"],
                ignored: true,
            },
            Run {
                binary: "packet_events",
                // All but the two top-talker loads of 1.2 M frames each,
                // which take longer than the guest's whole budget under TCG
                // (they run on the host; their code is the kernel's XDP path
                // the other tests already exercise, and user space).
                filters: &[
                    "every_frame_gives_one_exact_event",
                    "full_ring_buffer_with_paused_consumer_adds_up",
                    "both_builds_stay_far_below_the_verifiers_budget",
                    "a_refused_events_build_leaves_the_counter_counting_exactly",
                    "daemon_counts_every_event_and_top_talkers_exactly",
                    "daemon_with_paused_consumer_and_one_page_adds_up",
                    "sampling_one_in_100_is_binomial_and_top_talkers_track_shares",
                    "many_distinct_sources_stay_within_the_bound",
                ],
                ignored: false,
            },
            Run {
                binary: "anomalies",
                filters: &[
                    "loss_from_one_of_three_peers",
                    "retransmits_are_counted_by_the_remote_peer",
                ],
                ignored: false,
            },
            Run {
                binary: "operations",
                filters: &[
                    "the_units_capability_set",
                    "drop_and_retransmit_tracers",
                    "without_btf",
                ],
                ignored: false,
            },
        ],
        not_run: vec![(
            "top talkers with their error bound (1.2 M frames)",
            "under TCG the two loads take longer than the guest's budget; they run on the host",
        )],
        timeout: Duration::from_secs(15 * 60),
    }
}

/// The unit under systemd as PID 1, installed by [`super::Install`].
pub fn systemd() -> GuestPlan {
    GuestPlan {
        kind: "systemd",
        mode: Mode::Systemd,
        nics: false,
        runs: vec![
            Run {
                binary: "systemd_unit",
                filters: &[],
                ignored: true,
            },
            Run {
                binary: "operations",
                filters: &["the_unit"],
                ignored: false,
            },
        ],
        not_run: Vec::new(),
        timeout: Duration::from_secs(10 * 60),
    }
}

/// The series the systemd guest boots: the newer LTS, what a node
/// installed today runs.
pub const SYSTEMD_SERIES: &str = "6.12";
