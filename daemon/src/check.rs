//! `telemetryd check`: the configuration and the web configuration are
//! valid (main.rs already loaded both, or exited 64); with `--probe`, what
//! this kernel supports and what would attach how.

use crate::config::Config;
use crate::webconfig::WebSettings;

/// Prints the report and returns the process exit code.
pub fn run(config: &Config, web: &WebSettings, probe_kernel: bool) -> u8 {
    println!("configuration: valid");
    println!(
        "  poll every {:?}, listen on {}, log {:?} at {}",
        config.daemon.poll_interval, config.http.listen, config.log.format, config.log.level
    );
    println!("  web configuration: {}", web.describe());
    print!("{}", crate::sources::describe(config, probe_kernel));
    0
}
