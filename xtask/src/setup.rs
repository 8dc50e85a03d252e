//! Installing the build and test prerequisites, each only when missing.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::command::output;
use crate::step;

/// bpf-linker version known to work with aya-ebpf 0.2 and this nightly.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, benchmarks, the package build and the lab
/// run: (package, a command it provides).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("prometheus", "promtool"),
    ("procps", "sysctl"),
    ("bpftool", "bpftool"),
    ("systemd", "systemd-analyze"),
    ("util-linux", "setpriv"),
    ("strace", "strace"),
    // The web-config tests: a TLS client, certificates and bcrypt hashes
    // made at test time.
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("apache2-utils", "htpasswd"),
    // The Debian package (cargo xtask deb) and its checks.
    ("dpkg-dev", "dpkg-shlibdeps"),
    ("binutils", "strip"),
    ("lintian", "lintian"),
    // The mesh lab (cargo xtask lab, and its short run in cargo xtask test).
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    ("victoria-metrics", "victoria-metrics"),
];

pub fn all() -> Result<()> {
    build_tools()?;
    debian_packages(DEBIAN_PACKAGES)
}

/// What building the eBPF object needs: nightly with rust-src, bpf-linker.
pub fn build_tools() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()
}

fn nightly_rust_src() -> Result<()> {
    let has_nightly = quiet("rustup", &["run", "nightly", "rustc", "--version"]);
    if !has_nightly {
        step("installing the nightly toolchain (minimal profile)");
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to the nightly toolchain (eBPF builds use -Z build-std=core)");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker, built against the LLVM that ships inside the nightly
/// toolchain (no system LLVM needed). See shared/toolchain.md.
fn bpf_linker() -> Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    if bin.exists() && quiet(bin.to_str().unwrap_or("bpf-linker"), &["--version"]) {
        return Ok(());
    }
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let nightly_lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| {
            format!(
                "no libLLVM in {}: the nightly toolchain should ship one; reinstall it with \
                 `rustup toolchain install nightly`",
                nightly_lib.display()
            )
        })?;
    let version = output("rustc", &["+nightly", "-vV"])?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not name its LLVM version")?
        .to_owned();

    // bpf-linker links against LLVM_PREFIX/lib/libLLVM.so and keeps that
    // directory as its run path, so the prefix must stay where it is. Both
    // the plain name and the SONAME are needed for it to start outside cargo.
    let prefix = cargo_home().join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm.file_name().expect("a file name").to_owned();
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM {major} (about a minute)"
    ));
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "installing bpf-linker failed ({status}); it needs crates.io and the nightly \
             toolchain's libLLVM ({})",
            libllvm.display()
        );
    }
    Ok(())
}

/// Installs those of `packages` (package, a command it provides) whose
/// command is missing.
pub fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, command)| !on_path(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!(
            "the tests need these Debian packages, and apt-get is not available to install \
             them: {}",
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!(
            "apt-get install {} failed ({status}); run it as root",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Namespaces left behind by a test run that was killed (their Drop guards
/// never ran): the tests name every namespace they create `tdt...`. Only
/// namespaces older than [`STALE_AFTER`] are removed: a younger one may
/// belong to a test run still going on beside this one (another checkout's
/// suite on the same machine), and a killed run's leftovers do not collide
/// with new ones (their names carry the creating process id).
pub fn remove_stale_test_namespaces() {
    let Ok(list) = output("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !name.starts_with("tdt") {
            continue;
        }
        let age = std::fs::metadata(format!("/run/netns/{name}"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age > STALE_AFTER) {
            step(&format!("removing stale test namespace {name}"));
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// No test run takes this long, so a test namespace this old is stale.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

fn on_path(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(command).is_file())
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
