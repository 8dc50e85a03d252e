//! Validation: every value its type alone does not constrain, each error
//! naming the key (as a dotted path) and what is allowed; `super` locates
//! the key in the file.

use std::collections::HashSet;
use std::time::Duration;

use telemetryd_common::syscalls::MAX_SYSCALL_NR;

use super::duration::format_duration;
use super::{latency_bucket_of, syscall_number, AnalyzerSettings, Config, SOURCE_NAMES};

impl Config {
    /// Checks every value that its type alone does not constrain.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let hour = Duration::from_secs(3600);

        positive_at_most("daemon.poll_interval", self.daemon.poll_interval, hour)?;
        check_source_names(&self.daemon.optional_sources)
            .map_err(|(i, m)| Invalid::new("daemon.optional_sources", m).at_index(i))?;
        check_pin_path(&self.daemon.pin_path).map_err(|m| Invalid::new("daemon.pin_path", m))?;

        let http = &self.http;
        in_range("http.max_connections", http.max_connections, 1, 10_000)?;
        positive_at_most(
            "http.header_read_timeout",
            http.header_read_timeout,
            Duration::from_secs(60),
        )?;
        positive_at_most(
            "http.header_read_timeout_at_cap",
            http.header_read_timeout_at_cap,
            Duration::from_secs(60),
        )?;
        positive_at_most(
            "http.idle_timeout",
            http.idle_timeout,
            Duration::from_secs(3600),
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
        check_latency_buckets(sys.latency_buckets_min, sys.latency_buckets_max)?;

        let metrics = &self.metrics;
        for (key, pattern) in [
            ("metrics.device_include", &metrics.device_include),
            ("metrics.device_exclude", &metrics.device_exclude),
        ] {
            check_device_pattern(pattern).map_err(|m| Invalid::new(key, m))?;
        }
        in_range("metrics.max_devices", metrics.max_devices, 0, 100_000)?;
        in_range(
            "metrics.max_drop_devices",
            metrics.max_drop_devices,
            0,
            100_000,
        )?;

        validate_analyzer(&self.analyzer)
    }
}

/// Checks `syscalls.latency_buckets_min` and `..._max`: each rounds to a
/// power of two of seconds between 2^-30 s and 2^32 s, the min no higher
/// than the max.
fn check_latency_buckets(min: Duration, max: Duration) -> Result<(), Invalid> {
    let bucket = |key: &'static str, d: Duration| {
        latency_bucket_of(d).ok_or_else(|| {
            Invalid::new(
                key,
                format!(
                    "{} is out of range: allowed 1ns to {}s (it is rounded to the nearest \
                     power of two of seconds, 2^-30 s to 2^32 s)",
                    format_duration(d),
                    1u64 << 32
                ),
            )
        })
    };
    let lo = bucket("syscalls.latency_buckets_min", min)?;
    let hi = bucket("syscalls.latency_buckets_max", max)?;
    if lo > hi {
        return Err(Invalid::new(
            "syscalls.latency_buckets_min",
            format!(
                "{} (2^{} s) is above syscalls.latency_buckets_max = {} (2^{} s)",
                format_duration(min),
                lo as i64 - 30,
                format_duration(max),
                hi as i64 - 30
            ),
        ));
    }
    Ok(())
}

/// `statfs` magic of a cgroup v2 file system (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl Config {
    /// What `run` needs of this host that reading it touches no kernel state
    /// for: `syscalls.cgroup` (when tracing is on) is a directory of the
    /// cgroup v2 file system.
    pub(super) fn validate_host(&self) -> Result<(), Invalid> {
        let sys = &self.syscalls;
        if sys.enabled && !sys.cgroup.is_empty() {
            check_cgroup_dir(&sys.cgroup).map_err(|m| Invalid::new("syscalls.cgroup", m))?;
        }
        Ok(())
    }
}

fn check_cgroup_dir(path: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{path:?}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!(
            "{path:?} is not a directory; expected a cgroup v2 directory"
        ));
    }
    let fs = rustix::fs::statfs(path).map_err(|e| format!("{path:?}: statfs: {e}"))?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 or u32 by architecture"
    )]
    if fs.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{path:?} is not on the cgroup v2 file system (file system magic {:#x}); \
             expected a directory under /sys/fs/cgroup on a unified (cgroup v2) hierarchy",
            fs.f_type
        ));
    }
    Ok(())
}

/// Checks `[analyzer]`: the file-level limits first (their messages say what is allowed),
/// then the loop's own checks, whose error names the key (`analyzer.<key> why`).
fn validate_analyzer(a: &AnalyzerSettings) -> Result<(), Invalid> {
    at_most("analyzer.warmup", a.warmup, Duration::from_secs(24 * 3600))?;
    in_range("analyzer.fire_after", a.fire_after, 1, 10_000)?;
    in_range("analyzer.resolve_after", a.resolve_after, 1, 10_000)?;
    if !a.webhook.is_empty() {
        webhook_uri(&a.webhook).map_err(|m| Invalid::new("analyzer.webhook", m))?;
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

impl AnalyzerSettings {
    /// Checks every field; the error names the offending key
    /// (`analyzer.<key>`) and why.
    pub fn validate(&self) -> Result<(), String> {
        fn bad(key: &str, why: impl std::fmt::Display) -> Result<(), String> {
            Err(format!("analyzer.{key} {why}"))
        }
        fn positive(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(key, format_args!("must be a positive number (got {v})"))
            }
        }
        fn non_negative(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(key, format_args!("must be zero or more (got {v})"))
            }
        }
        fn fraction(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(key, format_args!("must be between 0 and 1 (got {v})"))
            }
        }
        fn factor(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 1.0 {
                Ok(())
            } else {
                bad(key, format_args!("must be 1 or more (got {v})"))
            }
        }
        if self.fire_after == 0 {
            return bad("fire_after", "must be at least 1 (got 0)");
        }
        if self.resolve_after == 0 {
            return bad("resolve_after", "must be at least 1 (got 0)");
        }
        if !self.webhook.is_empty() {
            webhook_uri(&self.webhook).map_err(|e| format!("analyzer.webhook {e}"))?;
        }
        if self.webhook_timeout.is_zero() {
            return bad("webhook_timeout", "must be longer than 0s");
        }
        if self.webhook_retries > 10 {
            return bad(
                "webhook_retries",
                format_args!("must be at most 10 (got {})", self.webhook_retries),
            );
        }
        if self.webhook_queue == 0 {
            return bad("webhook_queue", "must be at least 1 (got 0)");
        }
        if !(self.baseline_alpha.is_finite()
            && self.baseline_alpha > 0.0
            && self.baseline_alpha <= 1.0)
        {
            return bad(
                "baseline_alpha",
                format_args!("must be in (0, 1] (got {})", self.baseline_alpha),
            );
        }
        positive("z_threshold", self.z_threshold)?;
        factor("critical_factor", self.critical_factor)?;
        let longest = self.fire_after.max(self.resolve_after) as usize;
        if self.window < longest || self.window > 100_000 {
            return bad(
                "window",
                format_args!(
                    "must be between max(fire_after, resolve_after) = {longest} and 100000 (got {})",
                    self.window
                ),
            );
        }
        if self.max_signals == 0 || self.max_signals > 1_000_000 {
            return bad(
                "max_signals",
                format_args!("must be between 1 and 1000000 (got {})", self.max_signals),
            );
        }
        non_negative("min_segments_per_second", self.min_segments_per_second)?;
        fraction("min_retransmit_ratio", self.min_retransmit_ratio)?;
        non_negative("min_drop_rate", self.min_drop_rate)?;
        factor("rise_factor", self.rise_factor)?;
        non_negative("min_packets_per_second", self.min_packets_per_second)?;
        fraction("silence_ratio", self.silence_ratio)?;
        factor("spike_factor", self.spike_factor)?;
        factor("latency_factor", self.latency_factor)?;
        fraction("min_error_ratio", self.min_error_ratio)?;
        Ok(())
    }
}

/// A validation failure before it is located in the document.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) key: String,
    /// Element of an array value, when the failure is about one element.
    pub(super) index: Option<usize>,
    pub(super) message: String,
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

/// `daemon.pin_path`: empty, or an absolute, normal path (no `.` or `..`)
/// whose parent exists on a bpffs is checked at start-up, where the kernel is
/// at hand.
fn check_pin_path(path: &str) -> Result<(), String> {
    use std::path::{Component, Path};
    if path.is_empty() {
        return Ok(());
    }
    let p = Path::new(path);
    let normal = p
        .components()
        .skip(1)
        .all(|c| matches!(c, Component::Normal(_)));
    if !p.is_absolute() || !normal || p.parent().is_none() {
        return Err(format!(
            "{path:?} is not an absolute path without . or ..; expected \"\" (off) or a \
             directory on a bpffs such as \"/sys/fs/bpf/telemetryd\""
        ));
    }
    Ok(())
}

/// `daemon.optional_sources`: each a source's name, once.
fn check_source_names(names: &[String]) -> Result<(), (usize, String)> {
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        if !SOURCE_NAMES.contains(&name.as_str()) {
            return Err((
                i,
                format!(
                    "{name:?} is not a source; expected one of {}",
                    SOURCE_NAMES.map(|n| format!("{n:?}")).join(", ")
                ),
            ));
        }
        if !seen.insert(name) {
            return Err((i, format!("{name:?} is listed twice")));
        }
    }
    Ok(())
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

/// A device name pattern: empty, or a regular expression (matched against
/// the whole name).
fn check_device_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Ok(());
    }
    regex_lite::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))
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
pub(super) fn check_interfaces(names: &[String]) -> Result<(), (usize, String)> {
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
        if syscall_number(name).is_none() {
            return Err((
                Some(i),
                format!(
                    "unknown syscall {name:?} (see syscall names of {})",
                    std::env::consts::ARCH
                ),
            ));
        }
        if let Some(nr) = syscall_number(name).filter(|&nr| nr >= MAX_SYSCALL_NR) {
            return Err((
                Some(i),
                format!(
                    "syscall {name:?} is number {nr}, beyond the tracer's table of \
                     {MAX_SYSCALL_NR}"
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
    let max = telemetryd_common::syscalls::MAX_PIDS as usize;
    if pids.len() > max {
        return Err((
            max,
            format!(
                "{} pids listed; the kernel side keeps at most {max} (trace a cgroup instead \
                 with syscalls.cgroup)",
                pids.len()
            ),
        ));
    }
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

/// The Alertmanager endpoint alerts are posted to, `{base}/api/v2/alerts`,
/// from `analyzer.webhook`: `http://HOST:PORT` with an optional path.
pub fn webhook_uri(base: &str) -> Result<hyper::Uri, String> {
    let example = "expected \"\" (off) or an http:// URL with host and port, e.g. \
                   \"http://alertmanager:9093\"";
    let bad = |why: &str| Err(format!("{base:?}: {why}; {example}"));
    let uri: hyper::Uri = match base.parse() {
        Ok(uri) => uri,
        Err(e) => return bad(&format!("not a URL ({e})")),
    };
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) if s.eq_ignore_ascii_case("https") => {
            return bad("https is not supported (telemetryd has no TLS client)")
        }
        _ => return Err(format!("{base:?} is not an http:// URL; {example}")),
    }
    let Some(authority) = uri.authority() else {
        return bad("missing host");
    };
    if authority.as_str().contains('@') {
        return bad("user information is not supported");
    }
    if authority.host().is_empty() {
        return bad("missing or invalid host");
    }
    match authority.port_u16() {
        Some(port) if port > 0 => {}
        Some(_) => return bad("invalid port"),
        None => return bad("missing port"),
    }
    let path = uri.path().trim_end_matches('/');
    format!("http://{authority}{path}/api/v2/alerts")
        .parse()
        .or_else(|e| bad(&format!("not a URL ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(webhook_uri(ok).is_ok(), "{ok}");
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
            assert!(webhook_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn webhook_alerts_path() {
        assert_eq!(
            webhook_uri("http://am:9093").unwrap(),
            "http://am:9093/api/v2/alerts"
        );
        assert_eq!(
            webhook_uri("http://[::1]:9093/alertmanager/").unwrap(),
            "http://[::1]:9093/alertmanager/api/v2/alerts"
        );
    }

    #[test]
    fn defaults_are_valid() {
        AnalyzerSettings::default().validate().unwrap();
    }

    #[test]
    fn parses_toml_with_durations_and_defaults() {
        let s: AnalyzerSettings = toml::from_str(
            "warmup = \"500ms\"\nfire_after = 2\nwebhook = \"http://127.0.0.1:9093\"",
        )
        .unwrap();
        assert_eq!(s.warmup, Duration::from_millis(500));
        assert_eq!(s.fire_after, 2);
        assert_eq!(s.resolve_after, 5);
        s.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_names_bad_key() {
        assert!(toml::from_str::<AnalyzerSettings>("fire_afterr = 1").is_err());
        let s = AnalyzerSettings {
            resolve_after: 0,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("analyzer.resolve_after"));
        let s = AnalyzerSettings {
            webhook: "https://am:9093".into(),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("analyzer.webhook"));
        let s = AnalyzerSettings {
            silence_ratio: 1.5,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("analyzer.silence_ratio"));
    }
}
