//! `cargo xtask install [--prefix DIR]`: the release binary, the systemd unit
//! and the default configuration, where systemd expects them.
//!
//! Without `--prefix`: `/usr/local/bin/telemetryd`,
//! `/etc/systemd/system/telemetryd.service`, `/etc/telemetryd/telemetryd.toml`
//! (only if absent: an operator's file is never overwritten) and
//! `/usr/local/share/doc/telemetryd/README.md`.
//! With `--prefix DIR` (a staging root, for packaging or testing): the same
//! layout under DIR (`DIR/bin`, `DIR/etc/systemd/system`, `DIR/etc/telemetryd`,
//! `DIR/share/doc/telemetryd`), with the unit's paths pointing into DIR.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::step;

/// Where each installed file goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub config: PathBuf,
    pub doc: PathBuf,
}

impl Layout {
    pub fn new(prefix: Option<&Path>) -> Self {
        match prefix {
            None => Self {
                binary: "/usr/local/bin/telemetryd".into(),
                unit: "/etc/systemd/system/telemetryd.service".into(),
                config: "/etc/telemetryd/telemetryd.toml".into(),
                doc: "/usr/local/share/doc/telemetryd/README.md".into(),
            },
            Some(p) => Self {
                binary: p.join("bin/telemetryd"),
                unit: p.join("etc/systemd/system/telemetryd.service"),
                config: p.join("etc/telemetryd/telemetryd.toml"),
                doc: p.join("share/doc/telemetryd/README.md"),
            },
        }
    }

    /// The shipped unit with its paths pointed at this layout.
    pub fn unit_text(&self, shipped: &str) -> String {
        shipped
            .replace(
                "/usr/local/bin/telemetryd",
                &self.binary.display().to_string(),
            )
            .replace(
                "/etc/telemetryd/telemetryd.toml",
                &self.config.display().to_string(),
            )
            .replace(
                "/usr/local/share/doc/telemetryd/README.md",
                &self.doc.display().to_string(),
            )
    }
}

/// Copies the files of an already built release binary into `layout`.
pub fn install(root: &Path, layout: &Layout) -> Result<()> {
    let built = root.join("target/release/telemetryd");
    copy(&built, &layout.binary, 0o755)?;
    let shipped = fs::read_to_string(root.join("systemd/telemetryd.service"))?;
    write(&layout.unit, &layout.unit_text(&shipped), 0o644)?;
    if layout.config.exists() {
        step(&format!(
            "kept the existing {} (the default is config/telemetryd.toml)",
            layout.config.display()
        ));
    } else {
        copy(&root.join("config/telemetryd.toml"), &layout.config, 0o644)?;
    }
    copy(&root.join("README.md"), &layout.doc, 0o644)?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let text = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &text, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

/// Writes next to the target and renames, so a running binary is replaced,
/// not modified in place.
fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to
        .parent()
        .context("installing to a path without a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = to.with_extension("xtask-tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    step(&format!("installed {}", to.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_prefixed_layouts() {
        let layout = Layout::new(None);
        assert_eq!(layout.binary, Path::new("/usr/local/bin/telemetryd"));
        assert_eq!(
            layout.unit,
            Path::new("/etc/systemd/system/telemetryd.service")
        );
        let shipped =
            "ExecStart=/usr/local/bin/telemetryd run --config /etc/telemetryd/telemetryd.toml";
        assert_eq!(layout.unit_text(shipped), shipped);

        let staged = Layout::new(Some(Path::new("/tmp/stage")));
        assert_eq!(staged.binary, Path::new("/tmp/stage/bin/telemetryd"));
        assert_eq!(
            staged.unit_text(shipped),
            "ExecStart=/tmp/stage/bin/telemetryd run --config /tmp/stage/etc/telemetryd/telemetryd.toml"
        );
    }

    #[test]
    fn installs_into_a_prefix_and_keeps_an_existing_config() {
        let root = crate::workspace_root();
        let stage = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&stage);
        let layout = Layout::new(Some(&stage));
        // A stand-in for the release binary, so the test needs no build.
        let fake_root = stage.join("src");
        for file in [
            "systemd/telemetryd.service",
            "config/telemetryd.toml",
            "README.md",
        ] {
            let to = fake_root.join(file);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(root.join(file), to).unwrap();
        }
        fs::create_dir_all(fake_root.join("target/release")).unwrap();
        fs::write(fake_root.join("target/release/telemetryd"), b"#!/bin/sh\n").unwrap();

        install(&fake_root, &layout).unwrap();
        let mode = fs::metadata(&layout.binary).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let unit = fs::read_to_string(&layout.unit).unwrap();
        assert!(unit.contains(&format!("ExecStart={} run", layout.binary.display())));
        assert!(layout.config.exists() && layout.doc.exists());

        fs::write(&layout.config, "# mine\n").unwrap();
        install(&fake_root, &layout).unwrap();
        assert_eq!(fs::read_to_string(&layout.config).unwrap(), "# mine\n");
        let _ = fs::remove_dir_all(&stage);
    }
}
