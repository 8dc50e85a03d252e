//! The immutable result of one poll, and the only thing downstream (the
//! `/metrics` renderer, the HTTP API, the MAPE-K loop) sees: plain data,
//! no aya. One typed section per source, `None` when the source is off or
//! did not start.
//!
//! Every counter is cumulative since its program was loaded (it never goes
//! down while the daemon runs). Consumers that want rates (the MAPE-K
//! monitor) take differences between consecutive snapshots.

use std::time::{Duration, Instant, SystemTime};

use prometheus::proto::MetricFamily;

use super::drops::DropStats;
use super::events::EventStats;
use super::program_stats::ProgramStats;
use super::syscalls::TracerStats;
use super::xdp::XdpStats;
use crate::metrics::family::{counter, gauge, Series};
use crate::metrics::NativeHistograms;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every poll.
    pub seq: u64,
    /// Monotonic time since the sources started, when this poll was taken.
    pub uptime: Duration,
    /// Wall clock time of the poll.
    pub taken_at: Option<SystemTime>,
    pub xdp: Option<XdpStats>,
    pub drops: Option<DropStats>,
    pub events: Option<EventStats>,
    pub syscalls: Option<TracerStats>,
    /// Why a source the configuration enables could not start (a missing
    /// capability, a missing kernel feature), by its `source` label.
    pub unavailable: Vec<(&'static str, String)>,
    /// The loaded programs' kernel counters (run time, runs).
    pub programs: ProgramStats,
}

/// One attachment of one eBPF program.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProgramAttachment {
    pub program: String,
    /// `xdp-native`, `xdp-generic`, `tracepoint`, `kprobe` or `fentry`.
    pub attach: String,
    /// The interface for XDP; empty for tracing programs.
    pub device: String,
}

/// (program, reason, count) of one of a program's own error counters.
pub type ProgramErrorCount = (&'static str, &'static str, u64);

/// What a source's section gives the `/metrics` renderer: its own
/// families, and its rows of the families every program shares.
pub trait Section {
    fn families(&self) -> Vec<MetricFamily>;
    /// Rows of `telemetryd_ebpf_program_attached`.
    fn attachments(&self) -> Vec<ProgramAttachment>;
    /// Rows of `telemetryd_ebpf_program_errors_total`.
    fn program_errors(&self) -> Vec<ProgramErrorCount>;
    /// Rows of `telemetryd_series_folded`: per capped family, the series
    /// folded into its `device="other"` roll-up (`[metrics]`).
    fn folded_series(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The native histograms of its histogram families, for the protobuf
    /// exposition (none by default).
    fn native_histograms(&self, _into: &mut NativeHistograms) {}
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit checked out when built (`unknown` outside git), from `build.rs`.
pub const REVISION: &str = env!("TELEMETRYD_GIT_REVISION");
/// `rustc --version` of the compiler that built telemetryd, from `build.rs`.
pub const RUSTC: &str = env!("TELEMETRYD_RUSTC_VERSION");

/// The signals of `telemetryd_source_up`: packet counts (XDP), packet
/// events (the sampled XDP build's ring buffer), syscall latency, kernel
/// drops and TCP retransmits.
pub const SOURCES: [&str; 5] = [
    "xdp",
    telemetryd_common::events::EVENTS_SOURCE,
    "syscalls",
    "kernel_drops",
    "tcp_retransmits",
];

impl Snapshot {
    /// The sections present, in the order the sources are polled.
    fn sections(&self) -> Vec<&dyn Section> {
        let mut sections: Vec<&dyn Section> = Vec::new();
        if let Some(s) = &self.xdp {
            sections.push(s);
        }
        if let Some(s) = &self.drops {
            sections.push(s);
        }
        if let Some(s) = &self.events {
            sections.push(s);
        }
        if let Some(s) = &self.syscalls {
            sections.push(s);
        }
        sections
    }

    /// Where every program is attached, section by section.
    pub fn attachments(&self) -> Vec<ProgramAttachment> {
        self.sections()
            .iter()
            .flat_map(|s| s.attachments())
            .collect()
    }

    /// Each signal of [`SOURCES`] and whether it is up.
    /// `telemetryd_source_up` and `/readyz` both say this.
    pub fn sources_up(&self) -> Vec<(&'static str, bool)> {
        // Built once: with 500 interfaces the list is long, and every
        // source but packet events looks through it.
        let attachments = self.attachments();
        SOURCES
            .iter()
            .map(|source| (*source, self.source_up(source, &attachments)))
            .collect()
    }

    /// Why `source` could not start, when it could not.
    pub fn unavailable_reason(&self, source: &str) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|(name, _)| *name == source)
            .map(|(_, reason)| reason.as_str())
    }

    /// Whether one of [`SOURCES`] runs: its program is attached (and, for
    /// packet events, the attached build publishes them and their ring
    /// buffer is drained).
    fn source_up(&self, source: &str, attachments: &[ProgramAttachment]) -> bool {
        use telemetryd_common::{drops, syscalls, xdp};
        let attached = |program: &str| attachments.iter().any(|a| a.program == program);
        match source {
            "xdp" => attached(xdp::PROGRAM_NAME),
            "syscalls" => attached(syscalls::PROGRAM_LABEL),
            "kernel_drops" => attached(drops::DROPS_PROGRAM),
            "tcp_retransmits" => attached(drops::RETRANSMITS_PROGRAM),
            telemetryd_common::events::EVENTS_SOURCE => {
                self.events.is_some()
                    && self
                        .xdp
                        .as_ref()
                        .is_some_and(|x| x.publishes_events && !x.attachments.is_empty())
            }
            _ => false,
        }
    }

    /// Every metric family of the snapshot: each section's, the families
    /// all programs share, and `telemetryd_build_info`.
    pub fn families(&self) -> Vec<MetricFamily> {
        let sections = self.sections();
        let mut families: Vec<MetricFamily> = sections.iter().flat_map(|s| s.families()).collect();
        let mut errors: Vec<ProgramErrorCount> =
            sections.iter().flat_map(|s| s.program_errors()).collect();
        errors.sort();
        // Attachments of folded devices share device="other": counted.
        let mut places: std::collections::BTreeMap<ProgramAttachment, u64> = Default::default();
        for a in self.attachments() {
            *places.entry(a).or_default() += 1;
        }
        let attached = places
            .iter()
            .map(|(a, n)| {
                Series::new(
                    &[
                        ("program", &a.program),
                        ("attach", &a.attach),
                        ("device", &a.device),
                    ],
                    *n as f64,
                )
            })
            .collect();
        let mut folded: Vec<(&'static str, u64)> =
            sections.iter().flat_map(|s| s.folded_series()).collect();
        folded.sort();
        families.push(gauge(
            "telemetryd_series_folded",
            "Series of each capped family folded into its device=\"other\" roll-up as of the last poll ([metrics] device_include, device_exclude, max_devices, max_drop_devices).",
            folded
                .iter()
                .map(|(family, n)| Series::new(&[("family", family)], *n as f64))
                .collect(),
        ));
        families.push(counter(
            "telemetryd_ebpf_program_errors_total",
            "Errors of telemetryd's eBPF programs themselves; the traffic or call was still let through.",
            errors
                .iter()
                .map(|(program, reason, n)| {
                    Series::new(&[("program", program), ("reason", reason)], *n as f64)
                })
                .collect(),
        ));
        families.push(gauge(
            "telemetryd_ebpf_program_attached",
            "1 for each place an eBPF program of telemetryd is attached, with how; for device=\"other\", the number of folded devices it is attached to.",
            attached,
        ));
        families.push(gauge(
            "telemetryd_source_up",
            "1 while the signal's eBPF programs are attached and polled, else 0.",
            self.sources_up()
                .into_iter()
                .map(|(source, up)| Series::new(&[("source", source)], f64::from(u8::from(up))))
                .collect(),
        ));
        families.push(gauge(
            "telemetryd_build_info",
            "Always 1; the labels describe this build.",
            vec![Series::new(
                &[
                    ("version", VERSION),
                    ("revision", REVISION),
                    ("rustc", RUSTC),
                ],
                1.0,
            )],
        ));
        families.extend(self.programs.families());
        families
    }

    /// One `/metrics` scrape: the snapshot's families and `extra` (those
    /// other parts of the daemon own, such as the anomaly board's).
    pub fn render(&self, extra: Vec<MetricFamily>) -> Result<String, prometheus::Error> {
        let mut families = self.families();
        families.extend(extra);
        crate::metrics::render(families)
    }

    /// The native histograms of every section.
    pub fn native_histograms(&self) -> NativeHistograms {
        let mut native = NativeHistograms::default();
        for section in self.sections() {
            section.native_histograms(&mut native);
        }
        native
    }

    /// [`Snapshot::render`] in the protobuf format, with native histograms.
    pub fn render_protobuf(&self, extra: Vec<MetricFamily>) -> Vec<u8> {
        let mut families = self.families();
        families.extend(extra);
        crate::metrics::render_protobuf(families, &self.native_histograms())
    }
}

/// Numbers the snapshots and stamps them with the time of the poll.
pub struct SnapshotClock {
    started: Instant,
    seq: u64,
}

impl Default for SnapshotClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotClock {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            seq: 0,
        }
    }

    /// An empty snapshot for the next poll.
    pub fn start_poll(&mut self) -> Snapshot {
        self.seq += 1;
        Snapshot {
            seq: self.seq,
            uptime: self.started.elapsed(),
            taken_at: Some(SystemTime::now()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::XdpMode;
    use crate::sources::xdp::InterfaceStats;
    use telemetryd_common::xdp::{FAMILY_IPV4, FAMILY_IPV6, PROTOCOL_ICMP, PROTOCOL_UDP};

    fn sample_snapshot() -> Snapshot {
        let mut xdp = XdpStats::default();
        let mut stats = InterfaceStats::default();
        stats.packets[FAMILY_IPV4][PROTOCOL_UDP] = 7;
        stats.bytes[FAMILY_IPV4][PROTOCOL_UDP] = 700;
        stats.packets[FAMILY_IPV6][PROTOCOL_ICMP] = 3;
        stats.bytes[FAMILY_IPV6][PROTOCOL_ICMP] = 3 * 118;
        stats.malformed = 2;
        xdp.interfaces.insert("veth0".into(), stats);
        xdp.attachments.push(("veth0".into(), XdpMode::Generic));
        Snapshot {
            xdp: Some(xdp),
            ..Default::default()
        }
    }

    #[test]
    fn renders_exact_counter_lines() {
        let text = sample_snapshot().render(Vec::new()).unwrap();
        for line in [
            r#"telemetryd_xdp_packets_total{device="veth0",family="ipv4",protocol="udp"} 7"#,
            r#"telemetryd_xdp_bytes_total{device="veth0",family="ipv4",protocol="udp"} 700"#,
            r#"telemetryd_xdp_packets_total{device="veth0",family="ipv6",protocol="icmp"} 3"#,
            r#"telemetryd_xdp_bytes_total{device="veth0",family="ipv6",protocol="icmp"} 354"#,
            r#"telemetryd_xdp_packets_total{device="veth0",family="other",protocol="other"} 0"#,
            r#"telemetryd_xdp_malformed_packets_total{device="veth0"} 2"#,
            r#"telemetryd_ebpf_program_attached{attach="xdp-generic",device="veth0",program="xdp_packet_counter"} 1"#,
            r#"telemetryd_source_up{source="xdp"} 1"#,
            r#"telemetryd_source_up{source="syscalls"} 0"#,
            "# TYPE telemetryd_xdp_packets_total counter",
            "# TYPE telemetryd_build_info gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn every_family_combination_exists_from_the_start() {
        let mut xdp = XdpStats::default();
        xdp.interfaces
            .insert("eth0".into(), InterfaceStats::default());
        let snapshot = Snapshot {
            xdp: Some(xdp),
            ..Default::default()
        };
        let text = snapshot.render(Vec::new()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("telemetryd_xdp_packets_total{"))
            .count();
        assert_eq!(series, 12, "3 families x 4 protocols for one device");
    }

    #[test]
    fn an_empty_snapshot_renders_build_info_and_every_source_down() {
        let text = Snapshot::default().render(Vec::new()).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let mut want = vec![format!(
            "telemetryd_build_info{{revision=\"{REVISION}\",rustc=\"{RUSTC}\",version=\"{VERSION}\"}} 1"
        )];
        want.push("telemetryd_ebpf_stats_enabled 0".to_owned());
        for source in SOURCES {
            want.push(format!("telemetryd_source_up{{source=\"{source}\"}} 0"));
        }
        assert_eq!(samples, want, "{text}");
    }

    #[test]
    fn packet_events_are_up_only_while_the_attached_build_publishes_them() {
        let events_up = |publishes: bool, events: bool, attached: bool| {
            let mut snapshot = sample_snapshot();
            let xdp = snapshot.xdp.as_mut().unwrap();
            xdp.publishes_events = publishes;
            if !attached {
                xdp.attachments.clear();
            }
            snapshot.events = events.then(EventStats::default);
            let text = snapshot.render(Vec::new()).unwrap();
            let value = |v| format!("telemetryd_source_up{{source=\"packet_events\"}} {v}");
            match (
                text.lines().any(|l| l == value(1)),
                text.lines().any(|l| l == value(0)),
            ) {
                (true, false) => true,
                (false, true) => false,
                _ => panic!("no single packet_events line in:\n{text}"),
            }
        };
        assert!(events_up(true, true, true));
        // sample_rate = 0: the counter alone, the (empty) section present.
        assert!(!events_up(false, true, true));
        // The kernel refused the events build: no section either.
        assert!(!events_up(false, false, true));
        assert!(!events_up(true, false, true));
        // Nothing attached yet.
        assert!(!events_up(true, true, false));
    }

    #[test]
    fn families_are_sorted_and_counters_end_in_total() {
        let text = sample_snapshot().render(Vec::new()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for entry in names {
            let (name, kind) = entry.split_once(' ').unwrap();
            assert!(name.starts_with("telemetryd_"), "{name}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
        }
    }
}
