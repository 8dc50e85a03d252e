//! Configuration: the TOML file, its defaults and its validation.
//!
//! `config/telemetryd.toml` documents every key and is embedded as the default
//! ([`EMBEDDED`]); [`Config::default`] holds the same values (a unit test keeps them equal).
//! Every error names the file, the key as a dotted path, the line and column when known, the
//! bad value and what is allowed; callers exit with [`EX_USAGE`].

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cli::Overrides;
use crate::syscall_table;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/telemetryd/telemetryd.toml";

/// The shipped, documented default configuration.
pub const EMBEDDED: &str = include_str!("../../config/telemetryd.toml");

/// Exit code for a bad configuration or command line (sysexits.h `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// Origin used in errors about command-line flags.
const COMMAND_LINE: &str = "command line";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub xdp: XdpConfig,
    pub syscalls: SyscallsConfig,
    pub analyzer: AnalyzerConfig,
    /// The `--config` path it was loaded with (`None`: the default lookup),
    /// so that SIGHUP reloads from the same place. Not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    #[serde(with = "duration_str")]
    pub poll_interval: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub max_connections: u32,
    #[serde(with = "duration_str")]
    pub header_read_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9469)),
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
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

/// `xdp.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

/// `[xdp]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    pub enabled: bool,
    /// Empty: every interface that is up, except loopback.
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
    /// Publish 1 packet in N to the ring buffer; 0 = off.
    pub sample_rate: u32,
    pub replace: bool,
    /// Bytes; a power of two in 4096..=1 GiB.
    pub ring_buffer_size: u32,
    pub top_talkers: u32,
    #[serde(with = "duration_str")]
    pub top_talkers_window: Duration,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            enabled: true,
            interfaces: Vec::new(),
            mode: XdpMode::Auto,
            sample_rate: 0,
            replace: false,
            ring_buffer_size: 256 * 1024,
            top_talkers: 10,
            top_talkers_window: Duration::from_secs(60),
        }
    }
}

/// `syscalls.attach`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyscallAttach {
    #[default]
    Auto,
    Tracepoint,
    Kprobe,
    Fentry,
}

/// `[syscalls]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallsConfig {
    pub enabled: bool,
    pub attach: SyscallAttach,
    /// Syscall names of this architecture (see [`syscall_table`]).
    pub track: Vec<String>,
    /// Empty: every process.
    pub pids: Vec<u32>,
    /// Empty: every cgroup; else an absolute cgroup v2 path.
    pub cgroup: String,
    /// Entries of the in-flight start-timestamp map.
    pub max_in_flight: u32,
}

impl Default for SyscallsConfig {
    fn default() -> Self {
        SyscallsConfig {
            enabled: true,
            attach: SyscallAttach::Auto,
            track: [
                "read", "write", "sendto", "recvfrom", "connect", "accept", "accept4",
            ]
            .map(String::from)
            .to_vec(),
            pids: Vec::new(),
            cgroup: String::new(),
            max_in_flight: 16384,
        }
    }
}

/// `[analyzer]`: the MAPE-K loop's settings. One type, owned by the loop
/// ([`crate::mapek::AnalyzerSettings`]); every threshold is a key here.
///
/// To add a key: a field there, its default in its `Default`, its check in its `validate`,
/// and its documentation in `config/telemetryd.toml` (the `shipped_file_equals_default` test
/// keeps the file and `Default` in step).
pub use crate::mapek::AnalyzerSettings as AnalyzerConfig;

/// Checks `[analyzer]`: the file-level limits first (their messages say what is allowed),
/// then the loop's own checks, whose error names the key (`analyzer.<key> why`).
fn validate_analyzer(a: &AnalyzerConfig) -> Result<(), Invalid> {
    at_most("analyzer.warmup", a.warmup, Duration::from_secs(24 * 3600))?;
    in_range("analyzer.fire_after", a.fire_after, 1, 10_000)?;
    in_range("analyzer.resolve_after", a.resolve_after, 1, 10_000)?;
    if !a.webhook.is_empty() {
        check_webhook(&a.webhook).map_err(|m| Invalid::new("analyzer.webhook", m))?;
    }
    positive_at_most(
        "analyzer.webhook_timeout",
        a.webhook_timeout,
        Duration::from_secs(300),
    )?;
    a.validate().map_err(|e| {
        let (key, why) = e.split_once(' ').unwrap_or((e.as_str(), ""));
        Invalid::new(key, why.to_owned())
    })
}

/// A configuration error. Its `Display` is one line meant for the operator, e.g.
/// `/etc/x.toml:12:9: syscalls.track: unknown syscall "raed" (see syscall names of x86_64)`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}:{line}:{column}: {}TOML syntax error: {message}", near(key))]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        /// The key on the offending line, when one can be made out.
        key: Option<String>,
        message: String,
    },
    /// A key is unknown, has the wrong type or a value that is not allowed.
    #[error("{origin}{}: {key}: {message}", at(line_col))]
    Invalid {
        /// File path, `<embedded>` or `command line`.
        origin: String,
        /// Dotted key (`syscalls.track`) or, for a flag, the flag (`--interface`).
        key: String,
        line_col: Option<(usize, usize)>,
        message: String,
    },
}

fn near(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

fn at(line_col: &Option<(usize, usize)>) -> String {
    line_col
        .map(|(l, c)| format!(":{l}:{c}"))
        .unwrap_or_default()
}

impl ConfigError {
    /// The dotted key (or flag) the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// 1-based line and column in the file, if known.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, column, .. } => Some((*line, *column)),
            ConfigError::Invalid { line_col, .. } => *line_col,
        }
    }

    /// The process exit code for this error: always [`EX_USAGE`].
    pub fn exit_code(&self) -> i32 {
        EX_USAGE
    }
}

impl Config {
    /// Loads the configuration. `None`: [`DEFAULT_PATH`] if it exists, else [`EMBEDDED`].
    /// `Some(path)`: that file, which must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Config::load_from(path)?;
        config.source = path.map(Path::to_owned);
        Ok(config)
    }

    fn load_from(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
            None => return Config::from_toml(EMBEDDED, "<embedded>"),
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors (normally the file path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let (line, column) = line_col(text, offset);
                let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
                return Err(ConfigError::Syntax {
                    origin: origin.to_owned(),
                    line,
                    column,
                    key: key_on_line(text, offset),
                    message: format!(
                        "{} (in {source_line:?})",
                        e.message().trim().replace('\n', "; ")
                    ),
                });
            }
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let key = span
                .as_ref()
                .and_then(|s| key_at(doc.as_table(), s.start))
                .unwrap_or_else(|| "(top level)".to_owned());
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                line_col: span.map(|s| line_col(text, s.start)),
                message: e.message().trim().to_owned(),
            }
        })?;
        config.validate().map_err(|inv| {
            let span = span_of(doc.as_table(), &inv.key, inv.index);
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: inv.key,
                line_col: span.map(|s| line_col(text, s.start)),
                message: inv.message,
            }
        })?;
        Ok(config)
    }

    /// Applies command-line flags over the file: `--listen`, `--interface` (a non-empty list
    /// replaces `xdp.interfaces`), `--log-format`, `--log-level`. Errors name the flag.
    pub fn apply_overrides(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let flag_error = |flag: &str, message: String| ConfigError::Invalid {
            origin: COMMAND_LINE.to_owned(),
            key: flag.to_owned(),
            line_col: None,
            message,
        };
        // Check everything before changing anything: a bad flag leaves `self` as it was.
        if !o.interfaces.is_empty() {
            check_interfaces(&o.interfaces).map_err(|(_, m)| flag_error("--interface", m))?;
        }
        if let Some(level) = &o.log_level {
            check_log_level(level).map_err(|m| flag_error("--log-level", m))?;
        }
        if let Some(listen) = o.listen {
            self.http.listen = listen;
        }
        if !o.interfaces.is_empty() {
            self.xdp.interfaces = o.interfaces.clone();
        }
        if let Some(format) = o.log_format {
            self.log.format = format;
        }
        if let Some(level) = &o.log_level {
            self.log.level = level.clone();
        }
        Ok(())
    }

    /// Checks every value that its type alone does not constrain.
    fn validate(&self) -> Result<(), Invalid> {
        let hour = Duration::from_secs(3600);

        positive_at_most("daemon.poll_interval", self.daemon.poll_interval, hour)?;

        let http = &self.http;
        in_range("http.max_connections", http.max_connections, 1, 10_000)?;
        positive_at_most(
            "http.header_read_timeout",
            http.header_read_timeout,
            Duration::from_secs(60),
        )?;

        check_log_level(&self.log.level).map_err(|m| Invalid::new("log.level", m))?;

        let xdp = &self.xdp;
        check_interfaces(&xdp.interfaces)
            .map_err(|(i, m)| Invalid::new("xdp.interfaces", m).at_index(i))?;
        check_ring_buffer_size(xdp.ring_buffer_size)
            .map_err(|m| Invalid::new("xdp.ring_buffer_size", m))?;
        in_range("xdp.top_talkers", xdp.top_talkers, 1, 1000)?;
        positive_at_most("xdp.top_talkers_window", xdp.top_talkers_window, hour)?;

        let sys = &self.syscalls;
        check_track(&sys.track).map_err(|(i, m)| {
            let inv = Invalid::new("syscalls.track", m);
            match i {
                Some(i) => inv.at_index(i),
                None => inv,
            }
        })?;
        check_pids(&sys.pids).map_err(|(i, m)| Invalid::new("syscalls.pids", m).at_index(i))?;
        if !sys.cgroup.is_empty() && !sys.cgroup.starts_with('/') {
            return Err(Invalid::new(
                "syscalls.cgroup",
                format!(
                    "{:?} is not an absolute path; expected \"\" (every cgroup) or a cgroup v2 \
                     path such as \"/sys/fs/cgroup/system.slice/nginx.service\"",
                    sys.cgroup
                ),
            ));
        }
        in_range("syscalls.max_in_flight", sys.max_in_flight, 1, 1 << 20)?;

        validate_analyzer(&self.analyzer)
    }
}

/// A validation failure before it is located in the document.
#[derive(Debug)]
struct Invalid {
    key: String,
    /// Element of an array value, when the failure is about one element.
    index: Option<usize>,
    message: String,
}

impl Invalid {
    fn new(key: impl Into<String>, message: String) -> Self {
        Invalid {
            key: key.into(),
            index: None,
            message,
        }
    }

    fn at_index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

fn in_range(key: &'static str, value: u32, min: u32, max: u32) -> Result<(), Invalid> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        format!("{value} is out of range; allowed: {min} to {max}"),
    ))
}

fn positive_at_most(key: &'static str, value: Duration, max: Duration) -> Result<(), Invalid> {
    if value.is_zero() {
        return Err(Invalid::new(
            key,
            format!(
                "\"{}\" is zero; allowed: greater than 0 and at most \"{}\"",
                format_duration(value),
                format_duration(max)
            ),
        ));
    }
    at_most(key, value, max)
}

fn at_most(key: &'static str, value: Duration, max: Duration) -> Result<(), Invalid> {
    if value <= max {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        format!(
            "\"{}\" is too long; allowed: at most \"{}\"",
            format_duration(value),
            format_duration(max)
        ),
    ))
}

/// Checks a network interface name the way the kernel would (`dev_valid_name`).
pub fn check_interface_name(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > 15 {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is reserved"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.chars().any(|c| c.is_whitespace() || c == ':') {
        "contains whitespace or ':'"
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid interface name {name:?}: it {why}; allowed: 1 to 15 bytes without '/', ':' or \
         whitespace, not \".\" or \"..\""
    ))
}

/// Checks an interface list: valid names, no duplicates. On error, the index of the bad entry.
fn check_interfaces(names: &[String]) -> Result<(), (usize, String)> {
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        check_interface_name(name).map_err(|m| (i, m))?;
        if !seen.insert(name.as_str()) {
            return Err((i, format!("interface {name:?} is listed twice")));
        }
    }
    Ok(())
}

fn check_ring_buffer_size(size: u32) -> Result<(), String> {
    const MIN: u32 = 4096;
    const MAX: u32 = 1 << 30;
    if size.is_power_of_two() && (MIN..=MAX).contains(&size) {
        return Ok(());
    }
    Err(format!(
        "{size} bytes is not allowed; expected a power of two from {MIN} (one page) to {MAX} \
         (1 GiB), e.g. 262144"
    ))
}

/// Checks `syscalls.track`. On error, the index of the bad entry when there is one.
fn check_track(track: &[String]) -> Result<(), (Option<usize>, String)> {
    const MAX: usize = 64;
    if track.is_empty() {
        return Err((
            None,
            "the list is empty; name 1 to 64 syscalls, e.g. [\"read\", \"write\"], or set \
             syscalls.enabled = false"
                .to_owned(),
        ));
    }
    if track.len() > MAX {
        return Err((
            Some(MAX),
            format!("{} syscalls listed; allowed: at most {MAX}", track.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (i, name) in track.iter().enumerate() {
        if syscall_table::number(name).is_none() {
            return Err((
                Some(i),
                format!(
                    "unknown syscall {name:?} (see syscall names of {})",
                    syscall_table::ARCH
                ),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err((Some(i), format!("syscall {name:?} is listed twice")));
        }
    }
    Ok(())
}

/// Highest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u32 = 4_194_304;

fn check_pids(pids: &[u32]) -> Result<(), (usize, String)> {
    let mut seen = HashSet::new();
    for (i, &pid) in pids.iter().enumerate() {
        if pid == 0 || pid > PID_MAX_LIMIT {
            return Err((
                i,
                format!("pid {pid} is out of range; allowed: 1 to {PID_MAX_LIMIT}"),
            ));
        }
        if !seen.insert(pid) {
            return Err((i, format!("pid {pid} is listed twice")));
        }
    }
    Ok(())
}

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Checks `log.level` / `--log-level`: a level name, or an `EnvFilter` directive list that
/// names at least one target or several directives (`"info,telemetryd=debug"`).
pub fn check_log_level(level: &str) -> Result<(), String> {
    if LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    let allowed = "allowed: trace, debug, info, warn, error, or a directive list such as \
                   \"info,telemetryd=debug\"";
    if !level.contains('=') && !level.contains(',') {
        return Err(format!("unknown log level {level:?}; {allowed}"));
    }
    // EnvFilter takes a bare word as a target name, so check each directive that has no
    // `=` is a level, then let EnvFilter judge the whole string.
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown log level {directive:?} in {level:?}; {allowed}"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| format!("invalid log directive {level:?}: {e}; {allowed}"))
}

/// Checks `analyzer.webhook`: `http://HOST:PORT` with an optional path.
fn check_webhook(url: &str) -> Result<(), String> {
    let example = "expected \"\" (off) or an http:// URL with host and port, e.g. \
                   \"http://alertmanager:9093\"";
    if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") {
        return Err(format!(
            "{url:?}: https is not supported (telemetryd has no TLS client); {example}"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} is not an http:// URL; {example}"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let bad = |why: &str| Err(format!("{url:?}: {why}; {example}"));
    if authority.contains('@') {
        return bad("user information is not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once("]:") {
            Some((h, p)) => (h, p),
            None => return bad("missing port"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => return bad("missing port"),
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '[' || c == ']')
    {
        return bad("missing or invalid host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("invalid port"),
    }
}

/// Parses a duration written as a number and a unit: `"500ms"`, `"1s"`, `"1.5s"`, `"2m"`,
/// `"1h"` (units ns, us, ms, s, m, h).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("expected a number followed by a unit".to_owned());
    }
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err("missing unit (ns, us, ms, s, m, h)".to_owned()),
        _ => return Err(format!("unknown unit {unit:?} (ns, us, ms, s, m, h)")),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("{number:?} is not a number"));
    }
    if frac.len() > 9 {
        return Err("more than 9 decimal places".to_owned());
    }
    let too_large = || "too large".to_owned();
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_large())?
    };
    let nanos = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(frac_value * unit_ns / 10u128.pow(frac.len() as u32)))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration the way the config file does (`"1s"`, `"500ms"`, `"2m"`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (n, unit) = UNITS
        .iter()
        .find(|(n, _)| nanos.is_multiple_of(*n))
        .copied()
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / n)
}

/// Serde adapter for `Duration` as a string with a unit.
pub(crate) mod duration_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    const EXPECTED: &str = "a duration string such as \"500ms\", \"1s\", \"1.5s\", \"2m\", \"1h\"";

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(|why| {
                E::custom(format!(
                    "invalid duration {v:?}: {why}; expected {EXPECTED}"
                ))
            })
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {v}: write it as a string with a unit; expected {EXPECTED}"
            )))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_i64(v as i64)
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {v}: write it as a string with a unit; expected {EXPECTED}"
            )))
        }
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

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The entries of a table (`[name]`, dotted keys or `{ inline }`), with their keys' spans.
fn entries(table: &dyn toml_edit::TableLike) -> Vec<(&toml_edit::Key, &toml_edit::Item)> {
    table
        .iter()
        .filter_map(|(k, _)| table.get_key_value(k))
        .collect()
}

/// The dotted key of the innermost key or value whose span holds byte `offset`.
fn key_at(root: &toml_edit::Table, offset: usize) -> Option<String> {
    fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }
    fn search(table: &dyn toml_edit::TableLike, offset: usize, path: &mut Vec<String>) -> bool {
        for (key, item) in entries(table) {
            path.push(key.get().to_owned());
            let found = contains(key.span(), offset)
                || item
                    .as_table_like()
                    .is_some_and(|t| search(t, offset, path))
                || contains(item.span(), offset);
            if found {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = Vec::new();
    search(root, offset, &mut path).then(|| path.join("."))
}

/// The span of the value at dotted `key` (and array element `index`) in the document.
fn span_of(root: &toml_edit::Table, key: &str, index: Option<usize>) -> Option<Range<usize>> {
    let mut parts = key.split('.');
    let mut item = root.get(parts.next()?)?;
    for part in parts {
        item = item.as_table_like()?.get(part)?;
    }
    let element = index.and_then(|i| item.as_array()?.get(i));
    element.and_then(|v| v.span()).or_else(|| item.span())
}

/// For a syntax error: the dotted key written on the line that holds byte `offset`.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (lhs, _) = line.split_once('=')?;
    let key = lhs.trim();
    let bare = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !bare(key) {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l
            .strip_prefix('[')?
            .split(']')
            .next()?
            .trim_matches('[')
            .trim();
        bare(inner).then(|| inner.to_owned())
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_equals_default() {
        let parsed = Config::from_toml(EMBEDDED, "<embedded>").unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::from_toml("", "empty").unwrap(), Config::default());
    }

    /// One bad file: the key the error must name, the 1-based line:column it must point at
    /// (`None` when the failure has no single position) and a fragment of the message (the
    /// bad value or what is allowed).
    struct Bad {
        what: &'static str,
        toml: &'static str,
        key: &'static str,
        at: Option<(usize, usize)>,
        says: &'static str,
    }

    const fn bad(
        what: &'static str,
        toml: &'static str,
        key: &'static str,
        at: Option<(usize, usize)>,
        says: &'static str,
    ) -> Bad {
        Bad {
            what,
            toml,
            key,
            at,
            says,
        }
    }

    #[rustfmt::skip]
    const BAD_FILES: &[Bad] = &[
        bad("unknown top-level key", "bogus = 1\n", "bogus", Some((1, 1)), "unknown field `bogus`"),
        bad("unknown top-level table", "[bogus]\nx = 1\n", "bogus", Some((1, 2)), "unknown field `bogus`"),
        bad("unknown nested key", "[daemon]\npoll_intervall = \"1s\"\n", "daemon.poll_intervall", Some((2, 1)), "poll_interval"),
        bad("unknown analyzer key", "[analyzer]\nthreshold = 3\n", "analyzer.threshold", Some((2, 1)), "fire_after"),
        bad("wrong type: string for integer", "[http]\nmax_connections = \"many\"\n", "http.max_connections", Some((2, 19)), "\"many\""),
        bad("wrong type: string for bool", "[xdp]\nenabled = \"yes\"\n", "xdp.enabled", Some((2, 11)), "\"yes\""),
        bad("wrong type: table for section", "daemon = 3\n", "daemon", Some((1, 10)), "3"),
        bad("negative interval", "[daemon]\npoll_interval = \"-1s\"\n", "daemon.poll_interval", Some((2, 17)), "\"-1s\""),
        bad("zero interval", "[daemon]\npoll_interval = \"0s\"\n", "daemon.poll_interval", Some((2, 17)), "greater than 0"),
        bad("interval without unit", "[daemon]\npoll_interval = \"5\"\n", "daemon.poll_interval", Some((2, 17)), "missing unit"),
        bad("interval as integer", "[daemon]\npoll_interval = 5\n", "daemon.poll_interval", Some((2, 17)), "with a unit"),
        bad("interval garbage", "[daemon]\npoll_interval = \"soon\"\n", "daemon.poll_interval", Some((2, 17)), "\"soon\""),
        bad("interval unknown unit", "[daemon]\npoll_interval = \"1d\"\n", "daemon.poll_interval", Some((2, 17)), "unknown unit \"d\""),
        bad("interval too long", "[daemon]\npoll_interval = \"2h\"\n", "daemon.poll_interval", Some((2, 17)), "at most \"1h\""),
        bad("zero interval, dotted key", "daemon.poll_interval = \"0s\"\n", "daemon.poll_interval", Some((1, 24)), "\"0s\""),
        bad("zero interval, inline table", "daemon = { poll_interval = \"0s\" }\n", "daemon.poll_interval", Some((1, 28)), "\"0s\""),
        bad("zero header timeout", "[http]\nheader_read_timeout = \"0ms\"\n", "http.header_read_timeout", Some((2, 23)), "greater than 0"),
        bad("unknown attach mode", "[syscalls]\nattach = \"uprobe\"\n", "syscalls.attach", Some((2, 10)), "uprobe"),
        bad("unknown xdp mode", "[xdp]\nmode = \"offload\"\n", "xdp.mode", Some((2, 8)), "offload"),
        bad("bad listen address", "[http]\nlisten = \"localhost:9469\"\n", "http.listen", Some((2, 10)), "\"localhost:9469\""),
        bad("listen without port", "[http]\nlisten = \"0.0.0.0\"\n", "http.listen", Some((2, 10)), "IP:PORT"),
        bad("max_connections = 0", "[http]\nmax_connections = 0\n", "http.max_connections", Some((2, 19)), "1 to 10000"),
        bad("duplicated interface", "[xdp]\ninterfaces = [\"eth0\", \"eth1\", \"eth0\"]\n", "xdp.interfaces", Some((2, 31)), "\"eth0\" is listed twice"),
        bad("interface name too long", "[xdp]\ninterfaces = [\"abcdefghijklmnop\"]\n", "xdp.interfaces", Some((2, 15)), "15 bytes"),
        bad("interface name with slash", "[xdp]\ninterfaces = [\"eth0\", \"a/b\"]\n", "xdp.interfaces", Some((2, 23)), "\"a/b\""),
        bad("interface name ..", "[xdp]\ninterfaces = [\"..\"]\n", "xdp.interfaces", Some((2, 15)), "\"..\""),
        bad("non-power-of-two ring buffer", "[xdp]\nring_buffer_size = 300000\n", "xdp.ring_buffer_size", Some((2, 20)), "300000"),
        bad("too-small ring buffer", "[xdp]\nring_buffer_size = 2048\n", "xdp.ring_buffer_size", Some((2, 20)), "2048"),
        bad("negative sample rate", "[xdp]\nsample_rate = -1\n", "xdp.sample_rate", Some((2, 15)), "-1"),
        bad("top_talkers = 0", "[xdp]\ntop_talkers = 0\n", "xdp.top_talkers", Some((2, 15)), "1 to 1000"),
        bad("invalid syscall name", "[syscalls]\ntrack = [\"read\", \"raed\"]\n", "syscalls.track", Some((2, 18)), "unknown syscall \"raed\""),
        bad("empty track list", "[syscalls]\ntrack = []\n", "syscalls.track", Some((2, 9)), "empty"),
        bad("duplicate syscall", "[syscalls]\ntrack = [\"read\", \"write\", \"read\"]\n", "syscalls.track", Some((2, 27)), "\"read\" is listed twice"),
        bad("syscall as number", "[syscalls]\ntrack = [0]\n", "syscalls.track", Some((2, 10)), "0"),
        bad("pid as string", "[syscalls]\npids = [\"123\"]\n", "syscalls.pids", Some((2, 9)), "\"123\""),
        bad("negative pid", "[syscalls]\npids = [1, -5]\n", "syscalls.pids", Some((2, 12)), "-5"),
        bad("zero pid", "[syscalls]\npids = [0]\n", "syscalls.pids", Some((2, 9)), "pid 0"),
        bad("relative cgroup path", "[syscalls]\ncgroup = \"system.slice\"\n", "syscalls.cgroup", Some((2, 10)), "\"system.slice\""),
        bad("max_in_flight too large", "[syscalls]\nmax_in_flight = 2000000\n", "syscalls.max_in_flight", Some((2, 17)), "1 to 1048576"),
        bad("bad log level", "[log]\nlevel = \"loud\"\n", "log.level", Some((2, 9)), "\"loud\""),
        bad("bad log directive", "[log]\nlevel = \"info,telemetryd=loud\"\n", "log.level", Some((2, 9)), "info,telemetryd=loud"),
        bad("bad log format", "[log]\nformat = \"xml\"\n", "log.format", Some((2, 10)), "xml"),
        bad("fire_after = 0", "[analyzer]\nfire_after = 0\n", "analyzer.fire_after", Some((2, 14)), "1 to 10000"),
        bad("resolve_after = 0", "[analyzer]\nresolve_after = 0\n", "analyzer.resolve_after", Some((2, 17)), "1 to 10000"),
        bad("negative warmup", "[analyzer]\nwarmup = \"-5m\"\n", "analyzer.warmup", Some((2, 10)), "negative"),
        bad("bad webhook URL", "[analyzer]\nwebhook = \"alertmanager:9093\"\n", "analyzer.webhook", Some((2, 11)), "\"alertmanager:9093\""),
        bad("webhook without port", "[analyzer]\nwebhook = \"http://am/\"\n", "analyzer.webhook", Some((2, 11)), "missing port"),
        bad("https webhook", "[analyzer]\nwebhook = \"https://am:9093\"\n", "analyzer.webhook", Some((2, 11)), "https is not supported"),
        bad("z_threshold = 0", "[analyzer]\nz_threshold = 0.0\n", "analyzer.z_threshold", Some((2, 15)), "positive number (got 0)"),
        bad("silence_ratio > 1", "[analyzer]\nwarmup = \"1s\"\nsilence_ratio = 1.5\n", "analyzer.silence_ratio", Some((3, 17)), "between 0 and 1 (got 1.5)"),
        bad("window below fire_after", "[analyzer]\nfire_after = 30\nwindow = 10\n", "analyzer.window", Some((3, 10)), "(got 10)"),
        bad("zero webhook_timeout", "[analyzer]\nwebhook_timeout = \"0s\"\n", "analyzer.webhook_timeout", Some((2, 19)), "is zero"),
        bad("zero alpha", "[analyzer]\nbaseline_alpha = 0.0\n", "analyzer.baseline_alpha", Some((2, 18)), "must be in (0, 1] (got 0)"),
        bad("TOML syntax error: bare duration", "[daemon]\npoll_interval = 1s\n", "daemon.poll_interval", Some((2, 18)), "(in \"poll_interval = 1s\")"),
        bad("TOML syntax error: unclosed table", "[daemon\npoll_interval = \"1s\"\n", "", Some((1, 8)), "TOML syntax error"),
        bad("TOML syntax error: duplicate key", "[xdp]\nreplace = true\nreplace = false\n", "xdp.replace", Some((3, 1)), "TOML syntax error: duplicate key"),
    ];

    #[test]
    fn bad_files_name_key_position_and_value() {
        assert!(BAD_FILES.len() >= 25);
        for case in BAD_FILES {
            let err = Config::from_toml(case.toml, "/etc/x.toml").expect_err(case.what);
            let text = err.to_string();
            println!("{:<40} {text}", case.what);
            assert_eq!(err.exit_code(), EX_USAGE);
            // An empty `key`: a syntax error on a line that names no key.
            let key = Some(case.key).filter(|k| !k.is_empty());
            assert_eq!(err.key(), key, "{}: {text}", case.what);
            assert_eq!(err.line_col(), case.at, "{}: {text}", case.what);
            let location = match case.at {
                Some((l, c)) => format!("/etc/x.toml:{l}:{c}: "),
                None => "/etc/x.toml: ".to_owned(),
            };
            let prefix = match key {
                Some(k) => format!("{location}{k}: "),
                None => location,
            };
            assert!(
                text.starts_with(&prefix),
                "{}: {text:?} lacks {prefix:?}",
                case.what
            );
            assert!(
                text.contains(case.says),
                "{}: {text:?} lacks {:?}",
                case.what,
                case.says
            );
            assert!(!text.contains('\n'), "{}: multi-line {text:?}", case.what);
        }
    }

    #[test]
    fn too_many_syscalls() {
        let names: Vec<String> = syscall_table::names()
            .take(65)
            .map(|n| format!("{n:?}"))
            .collect();
        let text = format!("[syscalls]\ntrack = [{}]\n", names.join(", "));
        let err = Config::from_toml(&text, "t.toml").unwrap_err();
        assert_eq!(err.key(), Some("syscalls.track"));
        assert!(err.to_string().contains("at most 64"), "{err}");
        let ok = format!("[syscalls]\ntrack = [{}]\n", names[..64].join(", "));
        assert_eq!(
            Config::from_toml(&ok, "t.toml")
                .unwrap()
                .syscalls
                .track
                .len(),
            64
        );
    }

    #[test]
    fn every_key_can_be_set() {
        let text = r#"
            [daemon]
            poll_interval = "1.5s"
            [http]
            listen = "[::1]:9000"
            max_connections = 10000
            header_read_timeout = "250ms"
            [log]
            format = "json"
            level = "info,telemetryd=debug"
            [xdp]
            enabled = false
            interfaces = ["eth0", "veth-mesh0"]
            mode = "generic"
            sample_rate = 100
            replace = true
            ring_buffer_size = 1073741824
            top_talkers = 1000
            top_talkers_window = "2m"
            [syscalls]
            enabled = false
            attach = "tracepoint"
            track = ["clock_nanosleep", "read"]
            pids = [1, 4194304]
            cgroup = "/sys/fs/cgroup/system.slice"
            max_in_flight = 1048576
            [analyzer]
            warmup = "0s"
            fire_after = 1
            resolve_after = 10000
            window = 10000
            webhook = "http://[::1]:9093/alertmanager"
        "#;
        let c = Config::from_toml(text, "t.toml").unwrap();
        assert_eq!(c.daemon.poll_interval, Duration::from_millis(1500));
        assert_eq!(c.http.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.http.max_connections, 10000);
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info,telemetryd=debug");
        assert!(!c.xdp.enabled);
        assert_eq!(c.xdp.interfaces, ["eth0", "veth-mesh0"]);
        assert_eq!(c.xdp.mode, XdpMode::Generic);
        assert_eq!(c.xdp.sample_rate, 100);
        assert!(c.xdp.replace);
        assert_eq!(c.xdp.ring_buffer_size, 1 << 30);
        assert_eq!(c.xdp.top_talkers, 1000);
        assert_eq!(c.xdp.top_talkers_window, Duration::from_secs(120));
        assert!(!c.syscalls.enabled);
        assert_eq!(c.syscalls.attach, SyscallAttach::Tracepoint);
        assert_eq!(c.syscalls.track, ["clock_nanosleep", "read"]);
        assert_eq!(c.syscalls.pids, [1, 4194304]);
        assert_eq!(c.syscalls.cgroup, "/sys/fs/cgroup/system.slice");
        assert_eq!(c.syscalls.max_in_flight, 1 << 20);
        assert_eq!(c.analyzer.warmup, Duration::ZERO);
        assert_eq!(c.analyzer.fire_after, 1);
        assert_eq!(c.analyzer.resolve_after, 10000);
        assert_eq!(c.analyzer.webhook, "http://[::1]:9093/alertmanager");

        // Serializing writes durations the way the file does, and reads back equal.
        let written = toml::to_string(&c).unwrap();
        assert!(written.contains("poll_interval = \"1500ms\""), "{written}");
        assert_eq!(Config::from_toml(&written, "written").unwrap(), c);
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("1s", Duration::from_secs(1)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0.5h", Duration::from_secs(1800)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            ("0s", Duration::ZERO),
            ("1.000000001s", Duration::new(1, 1)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(&format_duration(want)), Ok(want), "{text}");
        }
        for text in [
            "",
            "-1s",
            "-0s",
            "1",
            "s",
            "1.s",
            ".5s",
            "1..5s",
            "1.2.3s",
            "1 s",
            " 1s",
            "1s ",
            "1S",
            "1e3s",
            "1sec",
            "abc",
            "1.0000000001s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn log_levels() {
        for ok in [
            "trace",
            "debug",
            "info",
            "warn",
            "error",
            "INFO",
            "info,telemetryd=debug",
            "warn,hyper=off",
            "telemetryd=trace",
        ] {
            assert_eq!(check_log_level(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "loud",
            "verbose",
            "info,loud",
            "telemetryd=loud",
            "info,telemetryd=debug,x=[y",
        ] {
            assert!(check_log_level(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn webhooks() {
        for ok in [
            "http://alertmanager:9093",
            "http://10.0.0.1:9093/",
            "http://[::1]:9093/api/v2",
        ] {
            assert_eq!(check_webhook(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://",
            "http://:9093",
            "http://am",
            "http://am:0",
            "http://am:x",
            "http://u@am:9093",
            "HTTPS://am:9093",
            "ftp://am:21",
            "am:9093",
        ] {
            assert!(check_webhook(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn load_reads_the_given_file_and_names_a_missing_one() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/telemetryd.toml");
        let loaded = Config::load(Some(&shipped)).unwrap();
        assert_eq!(loaded.source.as_deref(), Some(shipped.as_path()));
        assert_eq!(
            Config {
                source: None,
                ..loaded
            },
            Config::default()
        );

        let missing = Path::new("/nonexistent/telemetryd.toml");
        let err = Config::load(Some(missing)).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert_eq!(err.exit_code(), EX_USAGE);
        assert!(
            err.to_string()
                .starts_with("/nonexistent/telemetryd.toml: "),
            "{err}"
        );

        if !Path::new(DEFAULT_PATH).exists() {
            assert_eq!(Config::load(None).unwrap(), Config::default());
        }
    }

    fn overrides(args: &[&str]) -> Overrides {
        let argv = std::iter::once("telemetryd").chain(args.iter().copied());
        crate::cli::Cli::try_parse_from(argv).unwrap().overrides
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = Config::from_toml("[xdp]\ninterfaces = [\"eth0\"]\n", "t.toml").unwrap();
        c.apply_overrides(&overrides(&[])).unwrap();
        assert_eq!(
            c.xdp.interfaces,
            ["eth0"],
            "no --interface keeps the file's list"
        );
        assert_eq!(c.http.listen, HttpConfig::default().listen);

        c.apply_overrides(&overrides(&[
            "--listen",
            "127.0.0.1:9100",
            "--interface",
            "wg0",
            "--interface",
            "mesh1",
            "--log-format",
            "json",
            "--log-level",
            "info,telemetryd=trace",
        ]))
        .unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.xdp.interfaces, ["wg0", "mesh1"]);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info,telemetryd=trace");
    }

    #[test]
    fn bad_override_names_the_flag() {
        let mut c = Config::default();
        let err = c
            .apply_overrides(&overrides(&["--interface", "eth0", "--interface", "eth0"]))
            .unwrap_err();
        assert_eq!(err.key(), Some("--interface"));
        assert_eq!(
            err.to_string(),
            "command line: --interface: interface \"eth0\" is listed twice"
        );
        assert_eq!(
            c,
            Config::default(),
            "a failed override must leave the config as it was"
        );

        // Values built by hand (not through clap) are checked too.
        let o = Overrides {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            log_level: Some("loud".into()),
            ..Overrides::default()
        };
        let err = c.apply_overrides(&o).unwrap_err();
        assert_eq!(err.key(), Some("--log-level"));
        assert!(err.to_string().contains("\"loud\""), "{err}");
        assert_eq!(
            c,
            Config::default(),
            "--listen must not apply when --log-level fails"
        );
    }
}
