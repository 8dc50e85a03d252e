use std::process::ExitCode;

use clap::Parser;
use telemetryd::cli::{Cli, Command};
use telemetryd::config::{Config, LogFormat, EX_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("telemetryd: {error}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    if let Some(listen) = cli.listen {
        config.http.listen = listen;
    }
    if !cli.interfaces.is_empty() {
        config.xdp.interfaces = cli.interfaces.clone();
    }
    if let Err(error) = telemetryd::logging::init(LogFormat::Text, &config.log.level) {
        eprintln!("telemetryd: {error}");
        return ExitCode::from(EX_USAGE as u8);
    }
    match cli.command {
        Some(Command::Check { .. }) => ExitCode::SUCCESS,
        Some(Command::Run) | None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("building the tokio runtime");
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
