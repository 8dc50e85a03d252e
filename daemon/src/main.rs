//! `telemetryd`: parses the command line and configuration, sets up logging
//! and the runtime, and hands over to `daemon::run` or `check::run`.

use std::process::ExitCode;

use telemetryd::cli::{Cli, Command};
use telemetryd::config::{Config, EX_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).and_then(|mut config| {
        config.apply_overrides(&cli.overrides)?;
        Ok(config)
    });
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("telemetryd: invalid configuration: {error}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    match cli.command {
        Command::Check { probe } => ExitCode::from(telemetryd::check::run(&config, probe)),
        Command::Run => {
            if let Err(error) = telemetryd::logging::init(config.log.format, &config.log.level) {
                eprintln!("telemetryd: {error}");
                return ExitCode::from(EX_USAGE as u8);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("telemetryd")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("telemetryd: starting the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(telemetryd::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
