//! `cargo xtask vm-test [GUEST...]`: the kernel matrix. Boots Debian's 6.1
//! and 6.12 LTS kernels (the newest packages apt offers, fetched and cached
//! under `target/vm/`) under qemu TCG, runs the kernel-dependent root tests
//! inside each against that kernel, runs the systemd unit under a real
//! systemd as PID 1, and writes the kernel x feature x attach path x result
//! table to `target/vm/matrix.md` (`cargo xtask vm-readme` puts it into
//! README.md).
//!
//! Guests are `6.1` and `6.12` (the suite, see [`plan::suite`]) and
//! `systemd` (the unit, see [`plan::systemd`]); without arguments, all.
//! At most two run at once (one vCPU each, on 2 cores). A guest that does
//! not finish within its timeout is killed, and the run fails with the tail
//! of its serial console.

mod guest;
mod kernel;
mod plan;
pub mod results;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::step;
use guest::{Guest, Mode};
use kernel::Kernel;
use plan::{GuestPlan, Run};
use results::{KernelReport, Outcome, TestResults};

/// Debian packages the host needs to boot guests: (package, a command it provides).
pub const HOST_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("cpio", "cpio"),
    ("xz-utils", "xz"),
];

/// Guests a user can name: `6.1`, `6.12` (the suite on that kernel) and `systemd`.
pub fn guest_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = kernel::SERIES.iter().map(|s| s.name).collect();
    names.push("systemd");
    names
}

/// How the systemd guest installs telemetryd, as an operator would. This is
/// the one place that knows; the tests in the guest find the unit and the
/// binary through systemd (`systemctl show`), wherever they were put.
#[derive(Clone, Debug)]
pub enum Install {
    /// `cargo xtask install` from the checkout: /usr/local/bin, /etc/systemd/system.
    Xtask,
    /// A Debian package (`cargo xtask deb` builds `target/debian/*.deb`),
    /// installed with apt like any other.
    DebPackage(PathBuf),
}

impl Install {
    /// Shell commands run as root in the systemd guest, from the checkout.
    fn guest_commands(&self) -> String {
        match self {
            // As README says: install, then tell systemd.
            Install::Xtask => "cargo xtask install && systemctl daemon-reload".to_owned(),
            // The package's maintainer scripts tell systemd themselves.
            Install::DebPackage(deb) => format!(
                "apt-get install -y --no-install-recommends {}",
                shell_quote(&deb.display().to_string())
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Install::Xtask => "cargo xtask install".to_owned(),
            Install::DebPackage(deb) => format!("the Debian package {}", deb.display()),
        }
    }

    /// What the host must build before the guest boots (the guest's cargo
    /// then only checks that it is fresh: building under TCG takes ages).
    fn prepare(&self, root: &Path) -> Result<()> {
        match self {
            Install::Xtask => {
                crate::cargo(root, &["build", "--release", "--package", "telemetryd"])
            }
            Install::DebPackage(deb) if deb.exists() => Ok(()),
            Install::DebPackage(deb) => bail!("no package {}", deb.display()),
        }
    }
}

/// Wall time of each stage, printed at the end.
#[derive(Default)]
pub struct Stages(Vec<(String, Duration)>);

impl Stages {
    pub fn add(&mut self, name: impl Into<String>, took: Duration) {
        let name = name.into();
        step(&format!("stage {name}: {:.0} s", took.as_secs_f64()));
        self.0.push((name, took));
    }

    pub fn print(&self) {
        let mut text = String::from("wall time by stage:\n");
        for (name, took) in &self.0 {
            let _ = writeln!(text, "  {name:<28} {:>6.0} s", took.as_secs_f64());
        }
        eprint!("{text}");
    }
}

/// Runs the named guests (all when empty). `host` is the host kernel's run
/// of the suite, when the caller just ran it: its rows lead the table.
pub fn vm_test(
    root: &Path,
    names: &[String],
    install: &Install,
    host: Option<KernelReport>,
    stages: &mut Stages,
) -> Result<()> {
    let names: Vec<String> = if names.is_empty() {
        guest_names().iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    };
    for name in &names {
        if !guest_names().contains(&name.as_str()) {
            bail!("no guest {name:?}; there are: {}", guest_names().join(", "));
        }
    }
    crate::setup::debian_packages(HOST_PACKAGES)?;
    let vm_dir = root.join("target/vm");
    fs::create_dir_all(&vm_dir)?;

    let started = Instant::now();
    let binaries = build_test_binaries(root)?;
    if names.iter().any(|n| n == "systemd") {
        install.prepare(root)?;
    }
    stages.add("build for the guests", started.elapsed());

    let started = Instant::now();
    let mut kernels: BTreeMap<&str, Kernel> = BTreeMap::new();
    for series in kernel::SERIES {
        let wanted = names.iter().any(|n| n == series.name)
            || (series.name == plan::SYSTEMD_SERIES && names.iter().any(|n| n == "systemd"));
        if wanted {
            kernels.insert(
                series.name,
                kernel::fetch(*series, &vm_dir.join("kernels"))?,
            );
        }
    }
    stages.add("kernel packages", started.elapsed());

    let mut guests = Vec::new();
    for name in &names {
        let (kernel, plan) = if name == "systemd" {
            (&kernels[plan::SYSTEMD_SERIES], plan::systemd())
        } else {
            (&kernels[name.as_str()], plan::suite())
        };
        guests.push((
            plan.clone(),
            make_guest(root, kernel, &plan, &binaries, install)?,
        ));
    }

    let started = Instant::now();
    let outcomes = run_all(&guests, &vm_dir.join("runs"));
    stages.add("guests (in parallel)", started.elapsed());

    let mut reports: Vec<KernelReport> = host.into_iter().collect();
    let mut problems = Vec::new();
    for ((plan, guest), outcome) in guests.iter().zip(outcomes) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                problems.push(format!("guest {}: {error:#}", guest.name));
                continue;
            }
        };
        stages.add(format!("guest {}", guest.name), outcome.wall);
        let report = collect(guest, plan, &outcome, &mut problems);
        match reports.iter_mut().find(|r| r.kernel == report.kernel) {
            Some(existing) => {
                existing.results.tests.extend(report.results.tests);
                existing.records.extend(report.records);
                existing.not_run.extend(report.not_run);
            }
            None => reports.push(report),
        }
    }

    let table = results::render(&reports);
    fs::write(vm_dir.join("matrix.md"), &table)?;
    println!("\n{table}");
    step(&format!(
        "wrote {} (`cargo xtask vm-readme` puts it into README.md)",
        vm_dir.join("matrix.md").display()
    ));
    let readme = fs::read_to_string(root.join("README.md")).unwrap_or_default();
    if results::splice(&readme, &table).is_some_and(|updated| updated != readme) {
        step("README.md's kernel matrix table differs from this run's (new kernel versions, or other results)");
    }
    let passed: usize = reports
        .iter()
        .map(|r| r.results.count(Outcome::Passed))
        .sum();
    let failed: usize = reports
        .iter()
        .map(|r| r.results.count(Outcome::Failed))
        .sum();
    println!("kernel matrix: {passed} passed, {failed} failed");
    if !problems.is_empty() {
        bail!("the kernel matrix failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// README.md with the last run's table between its markers.
pub fn vm_readme(root: &Path) -> Result<()> {
    let table_path = root.join("target/vm/matrix.md");
    let table = fs::read_to_string(&table_path).with_context(|| {
        format!(
            "reading {} (written by `cargo xtask test` or `cargo xtask vm-test`)",
            table_path.display()
        )
    })?;
    let readme_path = root.join("README.md");
    let readme = fs::read_to_string(&readme_path)?;
    let updated = results::splice(&readme, &table).with_context(|| {
        format!(
            "README.md has no {} ... {} markers",
            results::BEGIN,
            results::END
        )
    })?;
    fs::write(&readme_path, updated)?;
    step("README.md: kernel matrix table updated");
    Ok(())
}

/// `cargo test --no-run`: the integration test binaries, by target name.
fn build_test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    step("cargo test --no-run --package telemetryd (the binaries the guests run)");
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--no-run",
            "--package",
            "telemetryd",
            "--tests",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed");
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(exe)) = (is_test, message["executable"].as_str()) {
            let name = message["target"]["name"].as_str().unwrap_or_default();
            binaries.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}

fn make_guest(
    root: &Path,
    kernel: &Kernel,
    plan: &GuestPlan,
    binaries: &BTreeMap<String, PathBuf>,
    install: &Install,
) -> Result<Guest> {
    let mut job = String::from(JOB_HEADER);
    let _ = writeln!(
        job,
        "cd {0} || {{ echo 'mtx-job: no checkout at {0} in the guest'; echo 1 > /vm/out/job-exit; exit 1; }}",
        shell_quote(&root.display().to_string())
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        job.push_str("export CI=true\n");
    }
    if plan.mode == Mode::Systemd {
        let _ = writeln!(
            job,
            "echo 'mtx-job: installing telemetryd: {}'\n\
             if ! ({}) > /vm/out/install.log 2>&1; then\n  \
               echo 'mtx-job: the install step failed'; cat /vm/out/install.log\n  \
               echo 1 > /vm/out/job-exit; exit 1\nfi",
            install.describe(),
            install.guest_commands()
        );
    }
    job.push_str("cd daemon\n");
    for (i, run) in plan.runs.iter().enumerate() {
        let binary = binaries
            .get(run.binary)
            .with_context(|| format!("no test binary {} was built", run.binary))?;
        let mut line = format!(
            "run {} {} --test-threads 1",
            run_name(i, run),
            shell_quote(&binary.display().to_string())
        );
        if run.ignored {
            line.push_str(" --ignored");
        }
        for filter in run.filters {
            line.push(' ');
            line.push_str(filter);
        }
        job.push_str(&line);
        job.push('\n');
    }
    job.push_str("echo \"$status\" > /vm/out/job-exit\nexit \"$status\"\n");
    Ok(Guest {
        name: format!("{}-{}", kernel.series.name, plan.kind),
        kernel: kernel.clone(),
        mode: plan.mode,
        job,
        nics: plan.nics,
        timeout: plan.timeout,
    })
}

/// Start of every job script: the environment, and `run NAME CMD...`,
/// which keeps each test binary's output and exit code under /vm/out.
const JOB_HEADER: &str = r#"#!/bin/sh
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1 TELEMETRYD_MATRIX_OUT=/vm/out/matrix.tsv
status=0
run() {
  name=$1
  shift
  echo "mtx-job: $name"
  started=$(date +%s)
  timeout --kill-after=10 600 "$@" > "/vm/out/$name.log" 2>&1
  code=$?
  echo "$code $(($(date +%s) - started))" > "/vm/out/$name.rc"
  echo "mtx-job: $name exited $code after $(($(date +%s) - started)) s"
  [ "$code" = 0 ] || status=1
}
"#;

fn run_name(index: usize, run: &Run) -> String {
    format!("{index:02}-{}", run.binary)
}

/// Runs the guests, at most two at a time, longest-planned first (the
/// order given).
fn run_all(guests: &[(GuestPlan, Guest)], dir: &Path) -> Vec<Result<guest::Outcome>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Result<guest::Outcome>>>> =
        Mutex::new((0..guests.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().unwrap();
                    let index = *next;
                    *next += 1;
                    index
                };
                let Some((_, guest)) = guests.get(index) else {
                    return;
                };
                step(&format!(
                    "guest {} booting {} (timeout {} s)",
                    guest.name,
                    guest.kernel.describe(),
                    guest.timeout.as_secs()
                ));
                let outcome = guest.run(&dir.join(&guest.name));
                if let Ok(o) = &outcome {
                    step(&format!(
                        "guest {} done after {:.0} s: {}",
                        guest.name,
                        o.wall.as_secs_f64(),
                        match (o.job_exit, o.timed_out) {
                            (_, true) => "TIMED OUT".to_owned(),
                            (Some(code), _) => format!("job exit {code}"),
                            (None, _) => "no job exit (did not boot, or crashed)".to_owned(),
                        }
                    ));
                }
                results.lock().unwrap()[index] = Some(outcome);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every guest ran"))
        .collect()
}

/// The kernel report of one guest; what went wrong goes into `problems`,
/// with the evidence printed.
fn collect(
    guest: &Guest,
    plan: &GuestPlan,
    outcome: &guest::Outcome,
    problems: &mut Vec<String>,
) -> KernelReport {
    let mut results = TestResults::default();
    if outcome.timed_out || outcome.job_exit.is_none() {
        let why = if outcome.timed_out {
            format!("timed out after {} s", guest.timeout.as_secs())
        } else {
            "ended without reporting its job's exit (failed to boot, or crashed)".to_owned()
        };
        eprintln!(
            "--- guest {}: {why}; last lines of its serial console ({}):\n{}\n---",
            guest.name,
            outcome.serial.display(),
            outcome.serial_tail(40)
        );
        problems.push(format!("guest {} {why}", guest.name));
    }
    if plan.mode == Mode::Systemd {
        if let Ok(log) = fs::read_to_string(outcome.out.join("install.log")) {
            if outcome.job_exit != Some(0) && !outcome.out.join("00-systemd_unit.rc").exists() {
                eprintln!("--- guest {}: install step output:\n{log}---", guest.name);
                problems.push(format!("guest {}: the install step failed", guest.name));
            }
        }
    }
    for (i, run) in plan.runs.iter().enumerate() {
        let name = run_name(i, run);
        let log = fs::read_to_string(outcome.out.join(format!("{name}.log")));
        let rc = fs::read_to_string(outcome.out.join(format!("{name}.rc")));
        let (Ok(log), Ok(rc)) = (log, rc) else {
            problems.push(format!(
                "guest {}: {name} did not run to its end",
                guest.name
            ));
            continue;
        };
        let mut this = TestResults::default();
        this.add_libtest_output(run.binary, &log);
        let code = rc.split_whitespace().next().unwrap_or("?");
        let secs = rc.split_whitespace().nth(1).unwrap_or("?");
        let ran = this.count(Outcome::Passed) + this.count(Outcome::Failed);
        step(&format!(
            "guest {}: {name}: {} passed, {} failed in {secs} s (exit {code})",
            guest.name,
            this.count(Outcome::Passed),
            this.count(Outcome::Failed),
        ));
        if code != "0" || ran == 0 {
            let failures = log
                .find("\nfailures:\n")
                .map(|at| &log[at..])
                .unwrap_or(&log);
            let tail: Vec<&str> = failures.lines().collect();
            let start = tail.len().saturating_sub(200);
            eprintln!(
                "--- guest {}: {name} (exit {code}), output:\n{}\n---",
                guest.name,
                tail[start..].join("\n")
            );
            problems.push(if ran == 0 {
                format!("guest {}: {name} ran no test", guest.name)
            } else {
                format!(
                    "guest {}: {name} failed: {}",
                    guest.name,
                    this.failed().join(", ")
                )
            });
        }
        results.tests.extend(this.tests);
    }
    let records = fs::read_to_string(outcome.out.join("matrix.tsv"))
        .map(|t| results::parse_records(&t))
        .unwrap_or_default();
    for (feature, why) in &plan.not_run {
        step(&format!("guest {}: not run: {feature}: {why}", guest.name));
    }
    KernelReport {
        kernel: format!("Debian {}", guest.kernel.describe()),
        results,
        records,
        not_run: plan
            .not_run
            .iter()
            .map(|(f, w)| (f.to_string(), w.to_string()))
            .collect(),
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `cargo test ARGS` on this machine's kernel, as `cargo xtask test` always
/// ran it; its output is shown as it comes and kept, so its results and the
/// tests' records make this kernel's rows of the table.
pub fn host_suite(root: &Path, args: &[String]) -> Result<KernelReport> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let records = root.join("target/vm/host-matrix.tsv");
    fs::create_dir_all(root.join("target/vm"))?;
    let _ = fs::remove_file(&records);
    step(&format!("cargo test {}", args.join(" ")));
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut child = Command::new(env!("CARGO"))
        .arg("test")
        .args(args)
        .current_dir(root)
        .env("TELEMETRYD_MATRIX_OUT", &records)
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .context("running cargo test")?;
    let mut output = String::new();
    let stdout = std::io::stdout();
    for line in BufReader::new(reader).lines() {
        let line = line?;
        let _ = writeln!(stdout.lock(), "{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    let mut results = TestResults::default();
    results.add_cargo_test_output(&output);
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Ok(KernelReport {
        kernel: format!("this machine: Linux {release}"),
        results,
        records: fs::read_to_string(&records)
            .map(|t| results::parse_records(&t))
            .unwrap_or_default(),
        not_run: Vec::new(),
    })
}
