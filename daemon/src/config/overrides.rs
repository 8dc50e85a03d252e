//! Command-line flags that override keys of the file: `--listen`,
//! `--interface`, `--log-format`, `--log-level`, `--web.config.file`. They are parsed by the
//! command line (`crate::cli`) and applied here, over the file, at start and
//! after every reload.

use clap::Args;

use super::validate::{check_interface_name, check_interfaces, check_log_level};
use super::{Config, ConfigError, LogFormat, COMMAND_LINE};

/// Flags that override keys of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Overrides {
    /// Listen address of the HTTP server, IP:PORT (overrides http.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Interface to attach XDP to; repeatable. Replaces xdp.interfaces.
    #[arg(long = "interface", global = true, value_name = "NAME", value_parser = interface_name)]
    pub interfaces: Vec<String>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level or EnvFilter directives, e.g. "debug" or "info,telemetryd=debug"
    /// (overrides log.level).
    #[arg(long, global = true, value_name = "LEVEL", value_parser = log_level)]
    pub log_level: Option<String>,
    /// Web configuration file: TLS, basic auth and headers in the Prometheus
    /// exporter-toolkit format (overrides http.web_config).
    #[arg(long = "web.config.file", global = true, value_name = "PATH")]
    pub web_config: Option<std::path::PathBuf>,
}

impl Config {
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
        if let Some(path) = &o.web_config {
            self.http.web_config = path.display().to_string();
        }
        Ok(())
    }
}

fn interface_name(s: &str) -> Result<String, String> {
    check_interface_name(s).map(|()| s.to_owned())
}

fn log_level(s: &str) -> Result<String, String> {
    check_log_level(s).map(|()| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpConfig;

    fn overrides(args: &[&str]) -> Overrides {
        let argv = std::iter::once("telemetryd").chain(args.iter().copied());
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            overrides: Overrides,
        }
        <Flags as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .overrides
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
            "--web.config.file",
            "web.yml",
        ]))
        .unwrap();
        assert_eq!(c.http.web_config, "web.yml");
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
