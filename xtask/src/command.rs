//! Running a command and failing with its output when it fails.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Runs `program` and returns its standard output; a failure names the
/// command and carries what it printed.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`], for a command whose output is of no interest.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    output(program, args).map(drop)
}
