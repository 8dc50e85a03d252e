//! `telemetryd check`: the configuration is valid (main.rs already parsed
//! it, or exited 64); with `--probe`, what this kernel supports and what
//! would attach how.

use crate::bpf::probe::{self, KernelSupport};
use crate::config::Config;

/// Prints the report and returns the process exit code.
pub fn run(config: &Config, probe_kernel: bool) -> u8 {
    println!("configuration: valid");
    println!(
        "  poll every {:?}, listen on {}, log {:?} at {}",
        config.daemon.poll_interval, config.http.listen, config.log.format, config.log.level
    );
    if config.xdp.enabled {
        let interfaces = if config.xdp.interfaces.is_empty() {
            "every interface that is up, except loopback".to_owned()
        } else {
            config.xdp.interfaces.join(", ")
        };
        println!("  xdp: {:?} mode on {interfaces}", config.xdp.mode);
    } else {
        println!("  xdp: disabled");
    }
    if !probe_kernel {
        return 0;
    }
    let support = probe::probe();
    print!("{}", render(&support));
    print!("{}", crate::bpf::drops::describe());
    0
}

fn render(support: &KernelSupport) -> String {
    let mut out = String::from("kernel:\n");
    out.push_str(&format!("  release: {}\n", support.release));
    for feature in &support.features {
        let state = if feature.available { "yes" } else { "no" };
        out.push_str(&format!(
            "  {:<20} {state:<4} {}\n",
            feature.name, feature.detail
        ));
    }
    out
}
