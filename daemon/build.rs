//! Builds the eBPF programs (`ebpf-programs/`, nightly + bpf-linker) and
//! leaves the object in OUT_DIR, where `bpf::object` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips that build (for `cargo check`, clippy and unit
//! tests on machines without the eBPF toolchain); the binary then carries an
//! empty object and refuses to load programs with a message saying why.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

const OBJECT: &str = "telemetryd-ebpf";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("daemon/ has no parent")?;
    let ebpf_dir = workspace.join("ebpf-programs");
    let common_dir = workspace.join("common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join(OBJECT);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // aya-build prints its own warning; leave an empty object behind.
        fs::write(&object, b"").context("writing the empty eBPF object")?;
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
    if !object.exists() {
        anyhow::bail!(
            "the eBPF build produced no {OBJECT} in {}",
            out_dir.display()
        );
    }
    Ok(())
}
