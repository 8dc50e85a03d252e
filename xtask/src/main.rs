//! `cargo xtask`: set-up, run, test, benchmark.
//!
//! Every command says what it does before doing it, installs what is
//! missing on its own (nightly rust-src, bpf-linker, Debian packages), and
//! fails with a message that says what to do when it cannot.

mod command;
mod deb;
mod fuzz;
mod install;
mod lab;
mod monitoring;
mod noisy_world;
mod setup;
mod soak;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "telemetryd development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: the nightly toolchain's
    /// rust-src, bpf-linker, and the Debian packages the tests use.
    Setup,
    /// Build the workspace's default members (the eBPF object is built by
    /// daemon/build.rs and embedded in the daemon).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build in release mode and run telemetryd as root on the embedded
    /// default configuration (or the arguments given after `--`).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: unit and root integration tests on this
    /// machine's kernel, then, without a test filter, build and check the
    /// Debian package, run a short mesh lab (5 nodes, the loss fault), and
    /// the kernel matrix (`vm-test`, with that package in its systemd guest).
    Test {
        /// No kernel matrix: this machine's kernel, the package and the lab.
        #[arg(long)]
        host_only: bool,
        /// Arguments passed on to `cargo test` (a test name filter, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The kernel matrix alone: boot Debian's 6.1 and 6.12 LTS kernels under
    /// qemu (fetched and cached under target/vm/), run the kernel-dependent
    /// root tests in them, and the systemd unit under a real systemd.
    VmTest {
        /// Guests to run: 6.1, 6.12 (the suite on that kernel), systemd.
        /// Default: all.
        guests: Vec<String>,
        /// Install telemetryd in the systemd guest from this Debian package
        /// instead of with `cargo xtask install`.
        #[arg(long, value_name = "DEB")]
        deb: Option<PathBuf>,
    },
    /// Put the last run's kernel matrix table (target/vm/matrix.md) into
    /// README.md.
    VmReadme,
    /// Build in release mode and install the binary, the systemd unit and
    /// the default configuration (kept if present). Without --prefix:
    /// /usr/local/bin, /etc/systemd/system, /etc/telemetryd (needs root).
    Install {
        /// Install under DIR instead (DIR/bin, DIR/etc/systemd/system,
        /// DIR/etc/telemetryd), with the unit pointing there.
        #[arg(long, value_name = "DIR")]
        prefix: Option<PathBuf>,
    },
    /// Build in release mode and make the Debian package,
    /// target/debian/telemetryd_<version>_<arch>.deb; run lintian on it, and
    /// install, remove and purge it in a throwaway dpkg root.
    Deb,
    /// Run the mesh lab (root): telemetryd on N network namespaces in a ring,
    /// a real Prometheus, Alertmanager and VictoriaMetrics, 10% loss on one
    /// link and slowed reads on one node; checks the alerts, the remote
    /// write and the dashboard, and prints a report with the timings.
    Lab {
        /// Nodes in the ring (at least 5).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
    },
    /// The workload of one lab node (started by `cargo xtask lab`).
    #[command(hide = true)]
    LabAgent(lab::AgentArgs),
    /// cargo fmt --check and cargo clippy with warnings denied.
    Lint,
    /// Run the libFuzzer targets of fuzz/ (nightly; installs cargo-fuzz if
    /// missing): all, or TARGET (config, event, http, btf), N seconds each;
    /// prints executions and time per target.
    Fuzz {
        target: Option<String>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Run the benchmarks (root) and print their figures.
    Bench {
        /// Which benchmark: a name of daemon/examples/*_bench.rs without the
        /// suffix (xdp, syscall, events, anomaly, render), or all; or soak (not
        /// in all): the release daemon under traffic, scrapes, SIGHUPs and
        /// interface churn, its RSS, fds and CPU per poll at the start, the
        /// end, and their slope; or noisy_world (the analyzer's soak: two
        /// runs of --minutes each; not part of all).
        #[arg(default_value = "all")]
        which: String,
        /// soak: how long it runs (30m, 2m, 90s).
        #[arg(long, default_value = "30m")]
        duration: String,
        /// noisy_world: minutes per run (at least 4).
        #[arg(long, default_value_t = 20)]
        minutes: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup => setup::all(),
        Task::Build { release } => {
            setup::build_tools()?;
            let mut args = vec!["build"];
            if release {
                args.push("--release");
            }
            cargo(&root, &args)
        }
        Task::Run { args } => {
            setup::build_tools()?;
            require_root("telemetryd loads eBPF programs")?;
            cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
            let bin = root.join("target/release/telemetryd");
            step(&format!("running {} {}", bin.display(), args.join(" ")));
            let status = Command::new(&bin).args(&args).status()?;
            if !status.success() {
                bail!("telemetryd exited with {status}");
            }
            Ok(())
        }
        Task::Test { host_only, args } => {
            setup::all()?;
            require_root("the integration tests load eBPF programs and create network namespaces")?;
            setup::remove_stale_test_namespaces();
            let mut stages = vm::Stages::default();
            let started = std::time::Instant::now();
            let host = vm::host_suite(&root, &args);
            stages.add("host suite", started.elapsed());
            let host = host?;
            if !args.is_empty() {
                step("arguments for cargo test were given: the package, lab and matrix stages do not run");
                return Ok(());
            }
            let started = std::time::Instant::now();
            let package = stage("the Debian package", || {
                cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
                deb::build_and_check(&root)
            })?;
            stages.add("Debian package", started.elapsed());
            let started = std::time::Instant::now();
            stage("the short mesh lab", || {
                let report = lab::run(&root, &short_lab(&root))?;
                print!("{report}");
                Ok(())
            })?;
            stages.add("short mesh lab", started.elapsed());
            if host_only {
                stages.print();
                return Ok(());
            }
            let install = vm::Install::DebPackage(package.path);
            let matrix = vm::vm_test(&root, &[], &install, Some(host), &mut stages);
            stages.print();
            matrix
        }
        Task::VmTest { guests, deb } => {
            setup::all()?;
            require_root("qemu's 9p export of / must read every file")?;
            let install = deb.map_or(vm::Install::Xtask, vm::Install::DebPackage);
            let mut stages = vm::Stages::default();
            let result = vm::vm_test(&root, &guests, &install, None, &mut stages);
            stages.print();
            result
        }
        Task::VmReadme => vm::vm_readme(&root),
        Task::Lab { nodes } => {
            setup::all()?;
            require_root("the lab creates network namespaces and loads eBPF programs")?;
            cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
            let options = lab::Options {
                nodes,
                latency_fault: true,
                binary: root.join("target/release/telemetryd"),
            };
            let report = lab::run(&root, &options)?;
            print!("{report}");
            Ok(())
        }
        Task::LabAgent(args) => lab::run_agent(args),
        Task::Fuzz { target, seconds } => fuzz::run(&root, target.as_deref(), seconds),
        Task::Install { prefix } => {
            setup::build_tools()?;
            if prefix.is_none() {
                require_root("installing into /usr/local and /etc")?;
            }
            cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
            let layout = install::Layout::new(prefix.as_deref());
            install::install(&root, &layout)?;
            if prefix.is_none() {
                step("now: systemctl daemon-reload && systemctl enable --now telemetryd");
            }
            Ok(())
        }
        Task::Deb => {
            setup::all()?;
            cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
            deb::build_and_check(&root).map(drop)
        }
        Task::Lint => {
            setup::build_tools()?;
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cargo(&root, &["clippy", "--all-targets", "--", "-D", "warnings"])
        }
        Task::Bench {
            which,
            duration,
            minutes,
        } => {
            setup::all()?;
            require_root("the benchmarks load eBPF programs")?;
            if which == "soak" {
                let duration = soak::parse_duration(&duration)?;
                cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
                return soak::run(&root, &root.join("target/release/telemetryd"), duration);
            }
            if which == "noisy_world" {
                cargo(&root, &["build", "--release", "--package", "telemetryd"])?;
                return noisy_world::run(&noisy_world::Options {
                    minutes,
                    binary: root.join("target/release/telemetryd"),
                });
            }
            let benches = bench_names(&root)?;
            let selected: Vec<&String> = benches
                .iter()
                .filter(|b| which == "all" || **b == which)
                .collect();
            if selected.is_empty() {
                bail!("no benchmark {which:?}; there are: {}", benches.join(", "));
            }
            for bench in selected {
                let example = format!("{bench}_bench");
                cargo(
                    &root,
                    &[
                        "run",
                        "--release",
                        "--package",
                        "telemetryd",
                        "--example",
                        &example,
                    ],
                )?;
            }
            Ok(())
        }
    }
}

/// The lab `cargo xtask test` runs: 5 nodes, the loss fault only.
fn short_lab(root: &Path) -> lab::Options {
    lab::Options {
        nodes: 5,
        latency_fault: false,
        binary: root.join("target/release/telemetryd"),
    }
}

/// Runs one stage of `cargo xtask test` and says how long it took.
fn stage<T>(name: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    step(&format!("stage: {name}"));
    let start = std::time::Instant::now();
    let result = run();
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(_) => step(&format!("stage passed in {secs:.0} s: {name}")),
        Err(_) => step(&format!("stage failed after {secs:.0} s: {name}")),
    }
    result.with_context(|| format!("stage: {name}"))
}

/// Names of the benchmarks: daemon/examples/<name>_bench.rs.
fn bench_names(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("daemon/examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix("_bench.rs") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn step(message: &str) {
    eprintln!("xtask: {message}");
}

pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn require_root(why: &str) -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("run this as root: {why} (for example: sudo -E cargo xtask ...)");
    }
    Ok(())
}
