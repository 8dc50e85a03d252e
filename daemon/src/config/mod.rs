//! Configuration: the TOML file, its defaults and its validation.
//!
//! `config/telemetryd.toml` documents every key and is embedded as the default
//! ([`EMBEDDED`]); [`Config::default`] holds the same values (a unit test keeps them equal).
//! Every error names the file, the key as a dotted path, the line and column when known, the
//! bad value and what is allowed; callers exit with [`EX_USAGE`].
//!
//! [`schema`]: the tables and their defaults; [`validate`]: what a value may
//! be; [`locate`]: where a key is in the file; [`duration`]: `"500ms"`;
//! [`overrides`]: the command-line flags over the file.

pub mod duration;
pub mod file;
mod locate;
pub mod overrides;
pub mod schema;
pub mod validate;

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

pub use duration::{format_duration, parse_duration};
pub use overrides::Overrides;
pub use schema::{
    latency_bucket_of, AnalyzerSettings, Choice, Config, DaemonConfig, HttpConfig, LogConfig,
    LogFormat, MetricsConfig, Named, SyscallAttach, SyscallsConfig, UnknownDropReasons,
    WebhookSettings, XdpConfig, XdpMode, SOURCE_NAMES,
};
pub use validate::{check_interface_name, check_log_level, webhook_uri};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/telemetryd/telemetryd.toml";

/// The shipped, documented default configuration.
pub const EMBEDDED: &str = include_str!("../../../config/telemetryd.toml");

/// Exit code for a bad configuration or command line (sysexits.h `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// The file [`Config::load`] reads: `path`, or [`DEFAULT_PATH`] if it
/// exists; `None`: the embedded default.
pub fn resolve(path: Option<&Path>) -> Option<&Path> {
    match path {
        Some(p) => Some(p),
        None if Path::new(DEFAULT_PATH).exists() => Some(Path::new(DEFAULT_PATH)),
        None => None,
    }
}

/// Origin used in errors about command-line flags.
const COMMAND_LINE: &str = "command line";

/// The number of syscall `name` on the architecture this daemon is built
/// for: the names `syscalls.track` accepts.
pub fn syscall_number(name: &str) -> Option<u32> {
    let sysno = syscalls::Sysno::from_str(name).ok()?;
    u32::try_from(sysno.id()).ok()
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
    /// The file is not one the daemon reads: not a regular file, larger
    /// than [`file::MAX_FILE_SIZE`], not UTF-8.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
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
            ConfigError::Read { .. } | ConfigError::File { .. } => None,
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// 1-based line and column in the file, if known.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Read { .. } | ConfigError::File { .. } => None,
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
        match resolve(path) {
            Some(path) => {
                let read = file::read(path)?;
                Config::from_file_text(&read.text, path)
            }
            None => Config::from_toml_on_host(EMBEDDED, "<embedded>"),
        }
    }

    /// Parses `text` read from `path` (see [`Config::from_toml_on_host`]);
    /// `source` is set to `path`.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::from_toml_on_host(text, &path.display().to_string())?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// [`Config::from_toml`], then the checks that look at this host
    /// without touching kernel state (the cgroup directory exists and is
    /// cgroup v2): everything `run` would refuse later.
    pub fn from_toml_on_host(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(text, origin)?;
        config
            .validate_host()
            .map_err(|inv| Config::locate(text, origin, inv))?;
        Ok(config)
    }

    /// An error about `key` found after loading (the listen address cannot
    /// be bound, say), located in the file the configuration came from when
    /// the key is written there.
    pub fn key_error(&self, key: &str, message: String) -> ConfigError {
        let (origin, text) = match resolve(self.source.as_deref()) {
            Some(path) => (
                path.display().to_string(),
                file::read(path).map(|f| f.text).unwrap_or_default(),
            ),
            None => ("<embedded>".to_owned(), EMBEDDED.to_owned()),
        };
        Config::locate(
            &text,
            &origin,
            validate::Invalid {
                key: key.to_owned(),
                index: None,
                message,
            },
        )
    }

    fn locate(text: &str, origin: &str, inv: validate::Invalid) -> ConfigError {
        let span = toml_edit::ImDocument::parse(text)
            .ok()
            .and_then(|doc| locate::span_of(doc.as_table(), &inv.key, inv.index));
        ConfigError::Invalid {
            origin: origin.to_owned(),
            key: inv.key,
            line_col: span.map(|s| locate::line_col(text, s.start)),
            message: inv.message,
        }
    }

    /// Parses and validates `text`; `origin` names it in errors (normally the file path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let (line, column) = locate::line_col(text, offset);
                let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
                return Err(ConfigError::Syntax {
                    origin: origin.to_owned(),
                    line,
                    column,
                    key: locate::key_on_line(text, offset),
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
                .and_then(|s| locate::key_at(doc.as_table(), s.start))
                .unwrap_or_else(|| "(top level)".to_owned());
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                line_col: span.map(|s| locate::line_col(text, s.start)),
                message: e.message().trim().to_owned(),
            }
        })?;
        config.validate().map_err(|inv| {
            let span = locate::span_of(doc.as_table(), &inv.key, inv.index);
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: inv.key,
                line_col: span.map(|s| locate::line_col(text, s.start)),
                message: inv.message,
            }
        })?;
        Ok(config)
    }
}

impl Config {
    /// A fingerprint of the configuration as it runs (the file with defaults
    /// and command-line flags applied, written out canonically): 16 hex
    /// digits of FNV-1a 64, the same on every node and every build that runs
    /// the same settings, whatever the file's comments or key order.
    pub fn fingerprint(&self) -> String {
        let canonical = toml::to_string(self).unwrap_or_default();
        let hash = canonical.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fingerprint_follows_settings_not_text() {
        let a = Config::from_toml("[log]\nlevel = \"debug\"\n", "a").unwrap();
        let b = Config::from_toml("# a comment\nlog.level = \"debug\"\n", "b").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert_ne!(a.fingerprint(), Config::default().fingerprint());
    }

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
        bad("unknown optional source", "[daemon]\noptional_sources = [\"xdp\", \"drops\"]\n", "daemon.optional_sources", Some((2, 28)), "\"drops\" is not a source"),
        bad("optional source twice", "[daemon]\noptional_sources = [\"xdp\", \"xdp\"]\n", "daemon.optional_sources", Some((2, 28)), "\"xdp\" is listed twice"),
        bad("relative pin path", "[daemon]\npin_path = \"bpf/telemetryd\"\n", "daemon.pin_path", Some((2, 12)), "\"bpf/telemetryd\" is not an absolute path"),
        bad("pin path with ..", "[daemon]\npin_path = \"/sys/fs/bpf/../x\"\n", "daemon.pin_path", Some((2, 12)), "without . or .."),
        bad("zero idle timeout", "[http]\nidle_timeout = \"0s\"\n", "http.idle_timeout", Some((2, 16)), "greater than 0"),
        bad("header timeout at cap too long", "[http]\nheader_read_timeout_at_cap = \"2m\"\n", "http.header_read_timeout_at_cap", Some((2, 30)), "at most \"1m\""),
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
        bad("bad device pattern", "[metrics]\ndevice_exclude = \"veth(\"\n", "metrics.device_exclude", Some((2, 18)), "not a regular expression"),
        bad("too many devices", "[metrics]\nmax_devices = 100001\n", "metrics.max_devices", Some((2, 15)), "0 to 100000"),
        bad("ebpf_stats as string", "[daemon]\nebpf_stats = \"on\"\n", "daemon.ebpf_stats", Some((2, 14)), "\"on\""),
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
        bad("zero latency bucket", "[syscalls]\nlatency_buckets_min = \"0s\"\n", "syscalls.latency_buckets_min", Some((2, 23)), "out of range"),
        bad("huge latency bucket", "[syscalls]\nlatency_buckets_max = \"10000000000s\"\n", "syscalls.latency_buckets_max", Some((2, 23)), "out of range"),
        bad("latency buckets min above max", "[syscalls]\nlatency_buckets_min = \"1s\"\nlatency_buckets_max = \"10ms\"\n", "syscalls.latency_buckets_min", Some((2, 23)), "is above syscalls.latency_buckets_max"),
        bad("latency bucket without unit", "[syscalls]\nlatency_buckets_max = \"16\"\n", "syscalls.latency_buckets_max", Some((2, 23)), "missing unit"),
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
        let names: Vec<String> = syscalls::Sysno::iter()
            .map(|s| s.name())
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
            ebpf_stats = true
            [metrics]
            device_include = "eth[0-9]+|bond.*"
            device_exclude = "eth9"
            max_devices = 100000
            max_drop_devices = 0
            [http]
            listen = "[::1]:9000"
            max_connections = 10000
            header_read_timeout = "250ms"
            web_config = "/etc/telemetryd/web.yml"
            header_read_timeout_at_cap = "20ms"
            idle_timeout = "1h"
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
            latency_buckets_min = "1us"
            latency_buckets_max = "1m"
            [analyzer]
            warmup = "0s"
            fire_after = 1
            resolve_after = 10000
            window = 10000
            webhook = "http://[::1]:9093/alertmanager"
        "#;
        let c = Config::from_toml(text, "t.toml").unwrap();
        assert_eq!(c.daemon.poll_interval, Duration::from_millis(1500));
        assert!(c.daemon.ebpf_stats);
        assert_eq!(c.metrics.device_include, "eth[0-9]+|bond.*");
        assert_eq!(c.metrics.device_exclude, "eth9");
        assert_eq!(c.metrics.max_devices, 100_000);
        assert_eq!(c.metrics.max_drop_devices, 0);
        assert_eq!(c.http.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.http.max_connections, 10000);
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(250));
        assert_eq!(
            c.http.web_config_path(),
            Some(Path::new("/etc/telemetryd/web.yml"))
        );
        assert_eq!(c.http.header_read_timeout_at_cap, Duration::from_millis(20));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info,telemetryd=debug");
        assert!(!c.xdp.enabled);
        assert_eq!(c.xdp.interfaces, ["eth0", "veth-mesh0"]);
        assert_eq!(c.xdp.mode, Choice::Only(XdpMode::Generic));
        assert_eq!(c.xdp.sample_rate, 100);
        assert!(c.xdp.replace);
        assert_eq!(c.xdp.ring_buffer_size, 1 << 30);
        assert_eq!(c.xdp.top_talkers, 1000);
        assert_eq!(c.xdp.top_talkers_window, Duration::from_secs(120));
        assert!(!c.syscalls.enabled);
        assert_eq!(c.syscalls.attach, Choice::Only(SyscallAttach::Tracepoint));
        assert_eq!(c.syscalls.track, ["clock_nanosleep", "read"]);
        assert_eq!(c.syscalls.pids, [1, 4194304]);
        assert_eq!(c.syscalls.cgroup, "/sys/fs/cgroup/system.slice");
        assert_eq!(c.syscalls.max_in_flight, 1 << 20);
        // 1 us = 2^-19.9 s -> 2^-20 s; 60 s = 2^5.9 s -> 2^6 s.
        assert_eq!(c.syscalls.classic_buckets(), (10, 36));
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

    #[test]
    fn the_pid_cap_is_the_kernel_sides() {
        let max = telemetryd_common::syscalls::MAX_PIDS as usize;
        let list = |n: usize| {
            let pids: Vec<String> = (1..=n).map(|p| p.to_string()).collect();
            format!("[syscalls]\npids = [{}]\n", pids.join(", "))
        };
        let ok = Config::from_toml(&list(max), "t.toml").unwrap();
        assert_eq!(ok.syscalls.pids.len(), max);
        let err = Config::from_toml(&list(100_000), "/etc/x.toml").unwrap_err();
        assert_eq!(err.key(), Some("syscalls.pids"));
        assert_eq!(err.exit_code(), EX_USAGE);
        let text = err.to_string();
        assert!(text.starts_with("/etc/x.toml:2:"), "{text}");
        assert!(
            text.contains("100000 pids listed; the kernel side keeps at most 4096"),
            "{text}"
        );
    }

    /// The mount point of a cgroup v2 hierarchy on this host, from mountinfo.
    fn cgroup2_mount() -> Option<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2"))
                .then(|| left.split(' ').nth(4).map(str::to_owned))?
        })
    }

    #[test]
    fn the_cgroup_must_be_a_cgroup2_directory_on_this_host() {
        let with = |cgroup: &str, enabled: bool| {
            format!("[syscalls]\nenabled = {enabled}\ncgroup = \"{cgroup}\"\n")
        };
        let refused = |text: &str, says: &str| {
            let err = Config::from_toml_on_host(text, "/etc/x.toml").unwrap_err();
            assert_eq!(err.key(), Some("syscalls.cgroup"), "{err}");
            assert_eq!(err.line_col(), Some((3, 10)), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        };
        refused(&with("/nonexistent/tdt", true), "No such file or directory");
        refused(&with("/proc/self/status", true), "is not a directory");
        refused(&with("/tmp", true), "is not on the cgroup v2 file system");
        // With tracing off the key is not used, and not checked.
        assert!(Config::from_toml_on_host(&with("/nonexistent/tdt", false), "t").is_ok());
        // Parsing alone never looks at the host.
        assert!(Config::from_toml(&with("/nonexistent/tdt", true), "t").is_ok());
        let mount = cgroup2_mount().expect("this host mounts a cgroup v2 hierarchy");
        let ok = Config::from_toml_on_host(&with(&mount, true), "t").unwrap();
        assert_eq!(ok.syscalls.cgroup, mount);
    }

    #[test]
    fn a_file_that_is_not_regular_is_refused_by_load() {
        for path in ["/dev/zero", "/dev/urandom"] {
            let err = Config::load(Some(Path::new(path))).unwrap_err();
            assert!(matches!(err, ConfigError::File { .. }), "{err}");
            assert_eq!(err.exit_code(), EX_USAGE);
        }
    }
}
