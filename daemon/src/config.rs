//! TEMPORARY minimal configuration (replaced by the config branch).
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub const EX_USAGE: i32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub poll_interval: Duration,
}
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}
#[derive(Clone, Debug)]
pub struct XdpConfig {
    pub enabled: bool,
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
    pub sample_rate: u32,
    pub replace: bool,
}
#[derive(Clone, Debug)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub xdp: XdpConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    pub fn load(_path: Option<&Path>) -> Result<Config, ConfigError> {
        Ok(Config {
            daemon: DaemonConfig {
                poll_interval: Duration::from_secs(1),
            },
            http: HttpConfig {
                listen: "0.0.0.0:9469".parse().unwrap(),
                max_connections: 64,
                header_read_timeout: Duration::from_secs(5),
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            xdp: XdpConfig {
                enabled: true,
                interfaces: vec![],
                mode: XdpMode::Auto,
                sample_rate: 0,
                replace: false,
            },
        })
    }
}
