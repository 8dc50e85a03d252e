//! Builds the eBPF programs (`ebpf-programs/`, nightly + bpf-linker) and
//! leaves both objects in OUT_DIR: `telemetryd-ebpf`, which `loader`
//! embeds in the daemon, and `telemetryd-ebpf-bench` (the same programs and
//! the benchmarks' references), which only `examples/` embed.
//!
//! `AYA_BUILD_SKIP=1` skips that build (for `cargo check`, clippy and unit
//! tests on machines without the eBPF toolchain); the binary then carries an
//! empty object and refuses to load programs with a message saying why.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

const OBJECTS: [&str; 2] = ["telemetryd-ebpf", "telemetryd-ebpf-bench"];

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("daemon/ has no parent")?;
    let ebpf_dir = workspace.join("ebpf-programs");
    let common_dir = workspace.join("common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

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
