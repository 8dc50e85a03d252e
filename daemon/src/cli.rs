//! TEMPORARY minimal CLI (replaced by the config branch).
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "telemetryd", version, about = "eBPF node telemetry daemon")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, global = true)]
    pub listen: Option<std::net::SocketAddr>,
    #[arg(long = "interface", global = true)]
    pub interfaces: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run,
    Check {
        #[arg(long)]
        probe: bool,
    },
}
