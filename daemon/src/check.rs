//! `telemetryd check`: the configuration is valid (main.rs already parsed
//! it, or exited 64); with `--probe`, what this kernel supports and what
//! would attach how.

use crate::config::Config;

/// Prints the report and returns the process exit code.
pub fn run(config: &Config, probe_kernel: bool) -> u8 {
    println!("configuration: valid");
    println!(
        "  poll every {:?}, listen on {}, log {:?} at {}",
        config.daemon.poll_interval, config.http.listen, config.log.format, config.log.level
    );
    print!("{}", crate::sources::describe(config, probe_kernel));
    0
}
