//! `telemetryd`: parses the command line and configuration, sets up logging
//! and the runtime, and hands over to `service::Service::run` or `check::run`.

use std::process::ExitCode;

use telemetryd::cli::{Cli, Command};
use telemetryd::config::{ConfigError, EX_USAGE};
use telemetryd::notify::Notifier;
use telemetryd::reload::ConfigSource;
use telemetryd::service::Service;
use telemetryd::webconfig::WebSettings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = ConfigSource {
        path: cli.config.clone(),
        overrides: cli.overrides.clone(),
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("telemetryd: invalid configuration: {error}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    let web = match WebSettings::load(config.http.web_config_path()) {
        Ok(web) => web,
        Err(error) => {
            eprintln!("telemetryd: invalid web configuration: {error}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    match cli.command {
        Command::Check { probe } => ExitCode::from(telemetryd::check::run(&config, &web, probe)),
        Command::Unpin => ExitCode::from(telemetryd::sources::unpin(&config)),
        Command::Run => {
            let log = match telemetryd::logging::init(config.log.format, &config.log.level) {
                Ok(log) => log,
                Err(error) => {
                    eprintln!("telemetryd: {error}");
                    return ExitCode::from(EX_USAGE as u8);
                }
            };
            // Before the runtime starts threads: it edits the environment.
            let notifier = Notifier::from_env();
            let service = Service {
                source,
                log: Some(log),
                notifier,
                web,
            };
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
            match runtime.block_on(service.run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    // A configuration error found only at start (the listen
                    // address, a pin path not on a bpffs): exit 64 like one
                    // found in the file.
                    if telemetryd::service::is_configuration_error(&error)
                        || error.downcast_ref::<ConfigError>().is_some()
                    {
                        ExitCode::from(EX_USAGE as u8)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}
