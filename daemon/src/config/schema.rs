//! The configuration's schema: one struct per table, each with its
//! defaults, which equal the shipped `config/telemetryd.toml` (the
//! `shipped_file_equals_default` test keeps them in step).
//!
//! To add a key: a field here, its default, its check in `validate`, and
//! its documentation in `config/telemetryd.toml`.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(doc)]
use super::syscall_number;

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub xdp: XdpConfig,
    pub syscalls: SyscallsConfig,
    pub analyzer: AnalyzerSettings,
    pub metrics: MetricsConfig,
    /// The `--config` path it was loaded with (`None`: the default lookup),
    /// so that SIGHUP reloads from the same place. Not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    #[serde(with = "super::duration::text")]
    pub poll_interval: Duration,
    /// Sources (names of [`SOURCE_NAMES`]) that `/readyz` does not wait for.
    pub optional_sources: Vec<String>,
    /// A directory on a bpffs where the packet counter's links and maps
    /// are pinned, so that they outlive a restart; empty: off.
    pub pin_path: String,
    /// Have the kernel count the run time and runs of every eBPF program
    /// (`BPF_ENABLE_STATS`, held while telemetryd runs).
    pub ebpf_stats: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            poll_interval: Duration::from_secs(1),
            optional_sources: Vec::new(),
            pin_path: String::new(),
            ebpf_stats: false,
        }
    }
}

/// `[metrics]`: the caps of the per-device families (see
/// `crate::sources::cardinality`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A regular expression a device name must match (in full) to have
    /// series of its own; empty: every device.
    pub device_include: String,
    /// A regular expression of device names (in full) folded into
    /// `device="other"`; empty: none.
    pub device_exclude: String,
    /// Devices with series of their own in the XDP and interface families;
    /// further ones are folded into `device="other"`.
    pub max_devices: u32,
    /// Devices with series of their own in `telemetryd_kernel_device_drops_total`.
    pub max_drop_devices: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            device_include: String::new(),
            device_exclude: String::new(),
            max_devices: 64,
            max_drop_devices: 16,
        }
    }
}

/// The signals, as `telemetryd_source_up` labels them and
/// `daemon.optional_sources` names them.
pub const SOURCE_NAMES: [&str; 5] = [
    "xdp",
    "packet_events",
    "syscalls",
    "kernel_drops",
    "tcp_retransmits",
];

/// `[http]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub max_connections: u32,
    #[serde(with = "super::duration::text")]
    pub header_read_timeout: Duration,
    #[serde(with = "super::duration::text")]
    pub header_read_timeout_at_cap: Duration,
    #[serde(with = "super::duration::text")]
    pub idle_timeout: Duration,
    /// Web configuration file (exporter-toolkit format: TLS, basic auth,
    /// headers); empty: plain HTTP without authentication.
    pub web_config: String,
}

impl HttpConfig {
    /// The web configuration file, if one is set.
    pub fn web_config_path(&self) -> Option<&std::path::Path> {
        Some(std::path::Path::new(&self.web_config)).filter(|_| !self.web_config.is_empty())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9469)),
            max_connections: 512,
            header_read_timeout: Duration::from_secs(5),
            header_read_timeout_at_cap: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
            web_config: String::new(),
        }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A level name or an `EnvFilter` directive list; checked by [`check_log_level`].
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// How an XDP program is attached to an interface: in the driver (native)
/// or by the kernel's generic hook (`xdp.mode`, with `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

impl XdpMode {
    /// The `attach` label of `telemetryd_ebpf_program_attached`.
    pub fn label(self) -> &'static str {
        match self {
            XdpMode::Native => "xdp-native",
            XdpMode::Generic => "xdp-generic",
        }
    }
}

impl Named for XdpMode {
    const ALL: &'static [Self] = &[XdpMode::Native, XdpMode::Generic];
    const CHOICES: &'static [&'static str] = &["auto", "native", "generic"];
    fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// `[xdp]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    pub enabled: bool,
    /// Empty: every interface that is up, except loopback.
    pub interfaces: Vec<String>,
    pub mode: Choice<XdpMode>,
    /// Publish 1 packet in N to the ring buffer; 0 = off.
    pub sample_rate: u32,
    pub replace: bool,
    /// Bytes; a power of two in 4096..=1 GiB.
    pub ring_buffer_size: u32,
    pub top_talkers: u32,
    #[serde(with = "super::duration::text")]
    pub top_talkers_window: Duration,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            enabled: true,
            interfaces: Vec::new(),
            mode: Choice::Auto,
            sample_rate: 0,
            replace: false,
            ring_buffer_size: 256 * 1024,
            top_talkers: 10,
            top_talkers_window: Duration::from_secs(60),
        }
    }
}

/// How the syscall tracer hooks the tracked syscalls (`syscalls.attach`,
/// with `auto`). [`Named::ALL`] is cheapest first, the order `auto` tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallAttach {
    /// fentry/fexit on the syscalls' entry functions.
    Fentry,
    /// kprobe/kretprobe on the same functions.
    Kprobe,
    /// The raw tracepoints `sys_enter` / `sys_exit`, which fire for every
    /// syscall of the node.
    Tracepoint,
}

impl SyscallAttach {
    /// The `attach` label of `telemetryd_ebpf_program_attached`, the
    /// configuration value and the `mode` field of the log.
    pub fn label(self) -> &'static str {
        self.name()
    }
}

impl Named for SyscallAttach {
    const ALL: &'static [Self] = &[
        SyscallAttach::Fentry,
        SyscallAttach::Kprobe,
        SyscallAttach::Tracepoint,
    ];
    const CHOICES: &'static [&'static str] = &["auto", "tracepoint", "kprobe", "fentry"];
    fn name(self) -> &'static str {
        match self {
            SyscallAttach::Fentry => "fentry",
            SyscallAttach::Kprobe => "kprobe",
            SyscallAttach::Tracepoint => "tracepoint",
        }
    }
}

/// `[syscalls]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallsConfig {
    pub enabled: bool,
    pub attach: Choice<SyscallAttach>,
    /// Syscall names of this architecture (see [`syscall_number`]).
    pub track: Vec<String>,
    /// Empty: every process.
    pub pids: Vec<u32>,
    /// Empty: every cgroup; else an absolute cgroup v2 path.
    pub cgroup: String,
    /// Entries of the in-flight start-timestamp map.
    pub max_in_flight: u32,
    /// Lowest classic `le` bound of `telemetryd_syscall_latency_seconds`,
    /// rounded to the nearest power of two of seconds (see
    /// [`SyscallsConfig::classic_buckets`]).
    #[serde(with = "super::duration::text")]
    pub latency_buckets_min: Duration,
    /// Highest finite classic `le` bound, rounded the same way.
    #[serde(with = "super::duration::text")]
    pub latency_buckets_max: Duration,
}

impl SyscallsConfig {
    /// The kernel buckets (`telemetryd_common::syscalls::bucket_index`)
    /// whose upper bounds are the classic histogram's finite `le` bounds,
    /// lowest and highest: `latency_buckets_min` and `latency_buckets_max`
    /// rounded to the nearest power of two of seconds. Valid once
    /// `validate` passed.
    pub fn classic_buckets(&self) -> (usize, usize) {
        (
            latency_bucket_of(self.latency_buckets_min).unwrap_or(0),
            latency_bucket_of(self.latency_buckets_max).unwrap_or(0),
        )
    }
}

/// The kernel bucket whose upper bound, `2^(i-30)` s, is the power of two
/// of seconds nearest to `d` (on a log scale: 250ns -> 2^-22 s = 238 ns,
/// 16s -> 2^4 s); `None` for zero and for anything past the last bucket
/// with a bound of its own (2^32 s).
pub fn latency_bucket_of(d: Duration) -> Option<usize> {
    if d.is_zero() {
        return None;
    }
    let exponent = d.as_secs_f64().log2().round() as i64;
    let i = exponent + i64::from(telemetryd_common::syscalls::UNIT_LOG2_SECONDS);
    (0..telemetryd_common::syscalls::BUCKETS as i64 - 1)
        .contains(&i)
        .then_some(i as usize)
}

impl Default for SyscallsConfig {
    fn default() -> Self {
        SyscallsConfig {
            enabled: true,
            attach: Choice::Auto,
            track: [
                "read", "write", "sendto", "recvfrom", "connect", "accept", "accept4",
            ]
            .map(String::from)
            .to_vec(),
            pids: Vec::new(),
            cgroup: String::new(),
            max_in_flight: 16384,
            // 2^-22 s (238 ns) .. 2^4 s: 27 finite buckets.
            latency_buckets_min: Duration::from_nanos(250),
            latency_buckets_max: Duration::from_secs(16),
        }
    }
}

/// Settings of the anomaly analyzer (`[analyzer]` in the config file).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerSettings {
    /// No anomaly fires for a signal before it has this much history
    /// (baselines still learn during warm-up).
    #[serde(with = "super::duration::text")]
    pub warmup: Duration,
    /// Consecutive anomalous polls before an anomaly fires.
    pub fire_after: u32,
    /// Consecutive normal polls before an active anomaly resolves.
    pub resolve_after: u32,
    /// Alertmanager base URL (plain `http://`); alerts are posted to
    /// `{webhook}/api/v2/alerts`. Empty: off.
    pub webhook: String,
    /// Timeout of one webhook request.
    #[serde(with = "super::duration::text")]
    pub webhook_timeout: Duration,
    /// Retries of a failed webhook request (with exponential backoff) before
    /// it is counted as failed.
    pub webhook_retries: u32,
    /// Alerts waiting for the webhook at most; further alerts are dropped
    /// (and counted) while the queue is full.
    pub webhook_queue: usize,
    /// EWMA smoothing factor of the baselines (0 < alpha <= 1); smaller
    /// learns slower and remembers longer.
    pub baseline_alpha: f64,
    /// A value is anomalous only beyond baseline mean + z_threshold standard
    /// deviations (and past the floors and factors below).
    pub z_threshold: f64,
    /// A firing anomaly is `critical` when its value is this many times past
    /// its threshold (below it, for traffic_drop), `warning` otherwise.
    pub critical_factor: f64,
    /// Polls of history kept per signal (rolling window).
    pub window: usize,
    /// Signals (per device, syscall, node) tracked at most; beyond it the
    /// longest idle ones are evicted (and counted).
    pub max_signals: usize,
    /// packet_loss: TCP segments sent per second below which the retransmit
    /// ratio is not judged.
    pub min_segments_per_second: f64,
    /// packet_loss: retransmit ratio (0..1) that must be reached before it
    /// can be anomalous, whatever the baseline.
    pub min_retransmit_ratio: f64,
    /// packet_loss: kernel drops (node) or interface drops+errors (device)
    /// per second that must be reached before they can be anomalous.
    pub min_drop_rate: f64,
    /// packet_loss and syscall_errors: the value must also be at least this
    /// many times its baseline.
    pub rise_factor: f64,
    /// traffic_drop and traffic_spike: packets per second a device must
    /// carry (as baseline for traffic_drop, as value for traffic_spike)
    /// before they apply.
    pub min_packets_per_second: f64,
    /// traffic_drop: a device is silent when its packet rate falls to this
    /// fraction (0..1) of its baseline.
    pub silence_ratio: f64,
    /// traffic_spike: a device's packet rate must reach this many times its
    /// baseline.
    pub spike_factor: f64,
    /// latency: a syscall's p99 must reach this many times its baseline p99.
    pub latency_factor: f64,
    /// latency: the p99 a syscall must reach before it can be anomalous,
    /// whatever its baseline: a rise from 10 µs to 50 µs is noise of a busy
    /// machine (preemption, softirq work), not an incident.
    #[serde(with = "super::duration::text")]
    pub min_latency: Duration,
    /// latency and syscall_errors: calls per poll below which a syscall is
    /// not judged.
    pub min_calls: u64,
    /// syscall_errors: error ratio (0..1) that must be reached before it can
    /// be anomalous, whatever the baseline.
    pub min_error_ratio: f64,
    /// packet_loss: whether kernel drops of a reason the class table does
    /// not know count as loss.
    pub unknown_drop_reasons: UnknownDropReasons,
}

/// `analyzer.unknown_drop_reasons`: what `packet_loss` makes of kernel
/// drops whose reason the class table does not know (a newer kernel's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownDropReasons {
    /// They count as loss (the default: nothing new is hidden).
    #[default]
    Loss,
    /// They are counted and shown, but not judged.
    Ignore,
}

impl AnalyzerSettings {
    /// Whether drops of unknown reasons count as loss.
    pub fn unknown_drops_are_loss(&self) -> bool {
        self.unknown_drop_reasons == UnknownDropReasons::Loss
    }
}

impl Default for AnalyzerSettings {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(60),
            fire_after: 3,
            resolve_after: 5,
            webhook: String::new(),
            webhook_timeout: Duration::from_secs(5),
            webhook_retries: 3,
            webhook_queue: 256,
            baseline_alpha: 0.05,
            z_threshold: 4.0,
            critical_factor: 2.0,
            window: 60,
            max_signals: 4096,
            min_segments_per_second: 10.0,
            min_retransmit_ratio: 0.02,
            min_drop_rate: 10.0,
            rise_factor: 3.0,
            min_packets_per_second: 50.0,
            silence_ratio: 0.05,
            spike_factor: 3.0,
            latency_factor: 4.0,
            min_latency: Duration::from_millis(1),
            min_calls: 50,
            min_error_ratio: 0.05,
            unknown_drop_reasons: UnknownDropReasons::Loss,
        }
    }
}

/// The webhook's part of `[analyzer]`, as one value: a reload restarts the
/// sender when it differs from the running one.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookSettings {
    /// Alertmanager base URL; empty: off.
    pub url: String,
    pub timeout: Duration,
    pub retries: u32,
    pub queue: usize,
}

impl AnalyzerSettings {
    pub fn webhook(&self) -> WebhookSettings {
        WebhookSettings {
            url: self.webhook.clone(),
            timeout: self.webhook_timeout,
            retries: self.webhook_retries,
            queue: self.webhook_queue,
        }
    }
}

/// The values of a mode that a configuration key can name besides `auto`.
pub trait Named: Copy + PartialEq + 'static {
    /// Every value, in the order `auto` tries them.
    const ALL: &'static [Self];
    /// `"auto"` and every value's name, for error messages.
    const CHOICES: &'static [&'static str];
    /// The name in the configuration file.
    fn name(self) -> &'static str;
}

/// A key that is `"auto"` (try every mode in [`Named::ALL`] order) or names
/// one mode.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice<T> {
    #[default]
    Auto,
    Only(T),
}

/// `Auto`, or the mode itself: `Native`, `Tracepoint`.
impl<T: std::fmt::Debug> std::fmt::Debug for Choice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Choice::Auto => f.write_str("Auto"),
            Choice::Only(mode) => mode.fmt(f),
        }
    }
}

impl<T: Named> Choice<T> {
    /// The modes to try, in order.
    pub fn candidates(&self) -> &[T] {
        match self {
            Choice::Auto => T::ALL,
            Choice::Only(mode) => std::slice::from_ref(mode),
        }
    }

    /// The name in the configuration file.
    pub fn name(&self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Only(mode) => mode.name(),
        }
    }
}

impl<T: Named> Serialize for Choice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de, T: Named> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);
        impl<T: Named> serde::de::Visitor<'_> for Visitor<T> {
            type Value = Choice<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "one of {}", T::CHOICES.join(", "))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Choice<T>, E> {
                if v == "auto" {
                    return Ok(Choice::Auto);
                }
                T::ALL
                    .iter()
                    .find(|mode| mode.name() == v)
                    .map(|mode| Choice::Only(*mode))
                    .ok_or_else(|| E::unknown_variant(v, T::CHOICES))
            }
        }
        d.deserialize_str(Visitor(PhantomData))
    }
}

/// `SocketAddr` from a string, with an error that shows the value and the expected form.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid socket address {text:?}; expected IP:PORT such as \"0.0.0.0:9469\" or \
             \"[::]:9469\""
        ))
    })
}
