//! `cargo xtask fuzz [TARGET] [--seconds N]`: the libFuzzer targets of
//! `fuzz/` (cargo-fuzz, nightly), each for N seconds, then a line per
//! target with its executions and the time it ran.
//!
//! The committed corpus `fuzz/corpus/<target>/` is read, never written:
//! what libFuzzer finds goes to `target/fuzz/corpus/<target>/`, crashes to
//! `fuzz/artifacts/<target>/` (not committed; a crash is fixed and its
//! input committed to the corpus, where the daemon's test replays it).
//! Built with AddressSanitizer (cargo-fuzz's default: without it a stack
//! overflow kills the target before libFuzzer can write the input out) and
//! with debug assertions, so that integer overflow panics.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::step;

const BUILD_FLAGS: [&str; 2] = ["--debug-assertions", "--release"];

/// Installs cargo-fuzz when `cargo fuzz` is missing (about 90 s on 2 cores).
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    step("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new(env!("CARGO"))
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status}); install it by hand and retry");
    }
    Ok(())
}

/// The targets: `fuzz/fuzz_targets/<name>.rs`.
fn target_names(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .arg("fuzz")
        .current_dir(root)
        // The targets load no eBPF programs: no need for the eBPF build.
        .env("AYA_BUILD_SKIP", "1")
        // The nightly cargo picks its own rustc, not the stable one that
        // runs xtask.
        .env_remove("RUSTC")
        .env_remove("CARGO");
    command
}

/// What one target's run printed.
struct Outcome {
    target: String,
    executions: Option<u64>,
    seconds: f64,
    corpus: Option<u64>,
    crash: Option<String>,
}

/// libFuzzer's `-print_final_stats=1` line `stat::<name>: <value>`.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .next_back()
        .and_then(|v| v.trim().parse().ok())
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let work = root.join("target/fuzz/corpus").join(target);
    std::fs::create_dir_all(&work)?;
    let seeds = root.join("fuzz/corpus").join(target);
    let log_dir = root.join("target/fuzz/logs");
    std::fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    step(&format!(
        "fuzzing {target} for {seconds} s (log: {})",
        log_path.display()
    ));
    let started = Instant::now();
    let status = cargo_fuzz(root)
        .arg("run")
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running cargo fuzz run")?;
    let text = std::fs::read_to_string(&log_path)?;
    // libFuzzer's own `Done N runs in S second(s)`; the wall time without it.
    let seconds = text
        .lines()
        .filter_map(|l| l.strip_prefix("Done "))
        .filter_map(|l| l.split(" runs in ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or_else(|| started.elapsed().as_secs_f64());
    let crash = (!status.success()).then(|| {
        let artifact = text
            .lines()
            .find(|l| l.contains("Test unit written to"))
            .unwrap_or("no artifact named in the log")
            .to_owned();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{status}: {artifact}\n{}", tail.join("\n"))
    });
    Ok(Outcome {
        target: target.to_owned(),
        executions: stat(&text, "number_of_executed_units"),
        seconds,
        corpus: std::fs::read_dir(&work).ok().map(|d| d.count() as u64),
        crash,
    })
}

pub fn run(root: &Path, which: Option<&str>, seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let all = target_names(root)?;
    let targets: Vec<String> = match which {
        None => all,
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_owned()],
        Some(t) => bail!("no fuzz target {t:?}; there are: {}", all.join(", ")),
    };
    step("building the fuzz targets (cargo +nightly fuzz build)");
    let status = cargo_fuzz(root)
        .arg("build")
        .args(BUILD_FLAGS)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(root, target, seconds)?);
    }
    println!(
        "{:<8} {:>14} {:>10} {:>12} {:>14}  result",
        "target", "executions", "seconds", "execs/s", "found corpus"
    );
    let mut crashed = Vec::new();
    for o in &outcomes {
        let execs = o.executions.map_or("?".to_owned(), |e| e.to_string());
        let rate = o
            .executions
            .map_or("?".to_owned(), |e| format!("{:.0}", e as f64 / o.seconds));
        println!(
            "{:<8} {:>14} {:>10.0} {:>12} {:>14}  {}",
            o.target,
            execs,
            o.seconds,
            rate,
            o.corpus.map_or("?".to_owned(), |c| c.to_string()),
            if o.crash.is_some() { "CRASH" } else { "ok" }
        );
        if let Some(crash) = &o.crash {
            crashed.push(format!("{}: {crash}", o.target));
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes:\n{}\nFix each, add a regression test, and commit the \
             input under fuzz/corpus/<target>/ (the corpus replay test runs it)",
            crashed.join("\n\n")
        );
    }
    Ok(())
}
