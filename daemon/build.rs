//! Builds the eBPF programs (`ebpf-programs/`, nightly + bpf-linker) and
//! leaves both objects in OUT_DIR: `telemetryd-ebpf`, which `loader`
//! embeds in the daemon, and `telemetryd-ebpf-bench` (the same programs and
//! the benchmarks' references), which only `examples/` embed.
//!
//! `AYA_BUILD_SKIP=1` skips that build (for `cargo check`, clippy and unit
//! tests on machines without the eBPF toolchain); the binary then carries an
//! empty object and refuses to load programs with a message saying why.

use std::{env, fs, path::Path, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

const OBJECTS: [&str; 2] = ["telemetryd-ebpf", "telemetryd-ebpf-bench"];

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("daemon/ has no parent")?;
    let ebpf_dir = workspace.join("ebpf-programs");
    let common_dir = workspace.join("common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    build_info(workspace);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // aya-build prints its own warning; leave empty objects behind.
        for object in OBJECTS {
            fs::write(out_dir.join(object), b"").context("writing an empty eBPF object")?;
        }
    }

    let ebpf_dir = ebpf_dir.to_str().context("non UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ebpf-programs",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed. They need the nightly toolchain with rust-src and \
         bpf-linker: run `cargo xtask setup` once (it installs both), or set AYA_BUILD_SKIP=1 \
         to build a daemon without eBPF programs",
    )?;
    for object in OBJECTS {
        if !out_dir.join(object).exists() {
            anyhow::bail!(
                "the eBPF build produced no {object} in {}",
                out_dir.display()
            );
        }
    }
    Ok(())
}

/// `telemetryd_build_info`'s labels, as compile-time environment variables:
/// `TELEMETRYD_GIT_REVISION` (the commit checked out; `unknown` without
/// git or a repository, as in a tarball build) and `TELEMETRYD_RUSTC_VERSION` (`rustc --version` of the compiler
/// cargo uses).
fn build_info(workspace: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    // The commit alone: a "-dirty" mark would go stale, since this script
    // only reruns when HEAD or the index change, not on every edit.
    let revision =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    // Rebuilt when HEAD moves (a commit, a checkout) or the index changes
    // (`--git-path` resolves them in a linked worktree too).
    let mut watched = vec!["HEAD".to_owned(), "index".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for file in watched {
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &file]);
        // A missing file (a packed ref) would rerun this script on every build.
        if let Some(path) = path.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TELEMETRYD_GIT_REVISION={revision}");
    println!("cargo:rustc-env=TELEMETRYD_RUSTC_VERSION={rustc_version}");
}
