//! Command line: `telemetryd [run] [--config PATH]`, `telemetryd check [--config PATH] [--probe]`.
//!
//! Flags given on the command line override the configuration file (see
//! [`Config::apply_overrides`](crate::config::Config::apply_overrides)).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Overrides, EX_USAGE};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub command: Command,
    /// `--config PATH`; `None`: the default path, else the embedded configuration.
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The subcommand. `run` is the default when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration without root and without touching the kernel; exit 64 if
    /// it is invalid.
    Check {
        /// Also probe the kernel (needs root): BTF, XDP, tracepoints, kprobes, fentry, ring
        /// buffer, and report what would attach how.
        #[arg(long)]
        probe: bool,
    },
    /// Detach and remove everything pinned under `daemon.pin_path` (the XDP links and the
    /// counter maps a stopped telemetryd left for the next run).
    Unpin,
}

/// The clap definition; [`Cli`] is its resolved form.
#[derive(Debug, Parser)]
#[command(name = "telemetryd", version, about = "eBPF node telemetry daemon")]
struct CommandLine {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (default /etc/telemetryd/telemetryd.toml, else the built-in one).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

impl Cli {
    /// Parses the process arguments. On `--help`/`--version` prints and exits 0; on a usage
    /// error prints the error (which names the flag) and exits with [`EX_USAGE`].
    pub fn parse() -> Cli {
        match Cli::try_parse_from(std::env::args_os()) {
            Ok(cli) => cli,
            Err(e) => {
                let code = if e.use_stderr() { EX_USAGE } else { 0 };
                // Nothing useful to do if stdout/stderr are gone.
                let _ = e.print();
                std::process::exit(code);
            }
        }
    }

    /// Parses `args` (the first is the program name).
    pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let a = CommandLine::try_parse_from(args)?;
        Ok(Cli {
            command: a.command.unwrap_or(Command::Run),
            config: a.config,
            overrides: a.overrides,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    #[test]
    fn default_command_is_run() {
        let cli = Cli::try_parse_from(["telemetryd"]).unwrap();
        assert_eq!(cli.command, Command::Run);
        assert_eq!(cli.config, None);
        assert_eq!(cli.overrides, Overrides::default());
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("telemetryd").chain(args.iter().copied()))
    }

    #[test]
    fn subcommands_and_config_path() {
        let cli = parse(&["run", "--config", "/a.toml"]).unwrap();
        assert_eq!(cli.command, Command::Run);
        assert_eq!(cli.config, Some(PathBuf::from("/a.toml")));

        let cli = parse(&["--config", "/b.toml", "check"]).unwrap();
        assert_eq!(cli.command, Command::Check { probe: false });
        assert_eq!(cli.config, Some(PathBuf::from("/b.toml")));

        let cli = parse(&["check", "--probe", "--config", "/c.toml"]).unwrap();
        assert_eq!(cli.command, Command::Check { probe: true });
        assert_eq!(cli.config, Some(PathBuf::from("/c.toml")));

        let cli = parse(&["--config", "/d.toml"]).unwrap();
        assert_eq!(cli.command, Command::Run);
        assert!(
            parse(&["run", "--probe"]).is_err(),
            "--probe belongs to check"
        );
    }

    #[test]
    fn override_flags() {
        let cli = parse(&[
            "check",
            "--listen",
            "[::]:9100",
            "--interface",
            "eth0",
            "--interface",
            "wg0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--web.config.file",
            "/etc/telemetryd/web.yml",
        ])
        .unwrap();
        let o = cli.overrides;
        assert_eq!(o.listen, Some("[::]:9100".parse().unwrap()));
        assert_eq!(o.interfaces, ["eth0", "wg0"]);
        assert_eq!(o.log_format, Some(LogFormat::Json));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(
            o.web_config.as_deref(),
            Some(std::path::Path::new("/etc/telemetryd/web.yml"))
        );
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        for (args, flag, value) in [
            (&["--listen", "localhost"][..], "--listen", "localhost"),
            (&["--interface", "a/b"][..], "--interface", "a/b"),
            (
                &["--interface", "abcdefghijklmnop"][..],
                "--interface",
                "abcdefghijklmnop",
            ),
            (&["--log-format", "xml"][..], "--log-format", "xml"),
            (&["--log-level", "loud"][..], "--log-level", "loud"),
            (
                &["check", "--log-level", "info,x=loud"][..],
                "--log-level",
                "info,x=loud",
            ),
        ] {
            let err = parse(args).expect_err(flag);
            let text = err.to_string();
            assert!(
                text.contains(flag) && text.contains(value),
                "{args:?}: {text}"
            );
            assert!(
                err.use_stderr(),
                "{args:?} is a usage error (exit {EX_USAGE})"
            );
        }
        assert!(parse(&["--bogus"]).is_err());
        assert!(
            !parse(&["--help"]).unwrap_err().use_stderr(),
            "--help exits 0"
        );
    }
}
