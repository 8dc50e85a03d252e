//! `telemetryd check`: the configuration is valid (main.rs already parsed
//! it, or exited 64); with `--probe`, what this kernel supports and what
//! would attach how.

use crate::bpf::probe::{self, KernelSupport};
use crate::bpf::syscalls::{self, SyscallTracer};
use crate::bpf::LoadedObject;
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
    if config.syscalls.enabled {
        print!("{}", syscall_attach_report(config, &support));
    }
    print!("{}", crate::bpf::drops::describe());
    0
}

/// Which syscall attach mode `run` would end up with, and why the ones
/// before it were passed over. As root this is a real trial (load, attach,
/// detach at once); otherwise only the compatibility table speaks.
fn syscall_attach_report(config: &Config, support: &KernelSupport) -> String {
    let mut out = format!(
        "syscalls: attach = {:?}, tracking {}\n",
        config.syscalls.attach,
        config.syscalls.track.join(", ")
    );
    let trial = syscalls::object_options(&config.syscalls)
        .map_err(|e| e.to_string())
        .and_then(|options| LoadedObject::load_with(&options).map_err(|e| e.to_string()))
        .and_then(|mut object| {
            SyscallTracer::start(&mut object, &config.syscalls, support).map_err(|e| e.to_string())
        });
    match trial {
        Ok(tracer) => {
            for (strategy, reason) in &tracer.skipped {
                out.push_str(&format!("  {:<11} no   {reason}\n", strategy.label()));
            }
            out.push_str(&format!(
                "  {:<11} yes  attached and detached in a trial: `run` would use it\n",
                tracer.strategy.label()
            ));
        }
        Err(error) => match syscalls::plan(config.syscalls.attach, support) {
            Ok((attempts, skipped)) => {
                for (strategy, reason) in &skipped {
                    out.push_str(&format!("  {:<11} no   {reason}\n", strategy.label()));
                }
                let order: Vec<&str> = attempts.iter().map(|s| s.label()).collect();
                out.push_str(&format!(
                    "  would try, in order: {} (the trial failed: {error})\n",
                    order.join(", ")
                ));
            }
            Err(plan_error) => out.push_str(&format!("  none: {plan_error}\n")),
        },
    }
    out
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
