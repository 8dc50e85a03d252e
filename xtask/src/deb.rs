//! `cargo xtask deb`: the Debian package, `target/debian/telemetryd_<version>_<arch>.deb`.
//!
//! Contents: `/usr/bin/telemetryd` (the stripped release binary),
//! `/lib/systemd/system/telemetryd.service` (the shipped unit with its paths
//! pointed at the package's), `/etc/telemetryd/telemetryd.toml` (the default
//! configuration, a conffile), README, copyright and changelog in
//! `/usr/share/doc/telemetryd`, and the manual page telemetryd(8). The maintainer scripts (`packaging/deb/`)
//! reload systemd when it runs, stop the service on removal, and never
//! enable or start it.
//!
//! [`check_lifecycle`] installs, removes and purges the package in a
//! throwaway dpkg root and asserts what is left at each step (run by
//! `cargo xtask test`).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};

use crate::command::{output as command_output, run};
use crate::install::Layout;
use crate::step;

pub const PACKAGE: &str = "telemetryd";

/// Who the package says maintains it, unless `DEBFULLNAME`/`DEBEMAIL` say
/// otherwise (the usual Debian variables).
const MAINTAINER_NAME: &str = "The telemetryd developers";
const MAINTAINER_EMAIL: &str = "telemetryd@example.org";

/// Where the installed files go, as the unit and the package see them.
fn installed_layout() -> Layout {
    Layout {
        binary: "/usr/bin/telemetryd".into(),
        unit: "/lib/systemd/system/telemetryd.service".into(),
        config: "/etc/telemetryd/telemetryd.toml".into(),
        doc: "/usr/share/doc/telemetryd/README.md".into(),
    }
}

const DOC_DIR: &str = "usr/share/doc/telemetryd";

const DESCRIPTION: &str = "\
eBPF node telemetry daemon for Linux mesh nodes
 telemetryd counts every packet arriving on the node's interfaces with an
 XDP program (by device, address family and protocol), traces syscall
 latency, counts kernel packet drops by reason and TCP retransmits, and
 serves it all to Prometheus. An in-process analyzer detects and explains
 packet loss and latency anomalies in its structured log, on its HTTP API
 and as Alertmanager alerts.
 .
 The package installs the systemd unit but neither enables nor starts it.";

/// The package built by [`build`].
pub struct Package {
    pub path: PathBuf,
    pub version: String,
    pub arch: String,
}

/// Builds the package from the release binary at
/// `target/release/telemetryd` (build it first).
pub fn build(root: &Path) -> Result<Package> {
    let version = workspace_version(root)?;
    check_changelog(root, &version)?;
    let arch = command_output("dpkg", &["--print-architecture"])?
        .trim()
        .to_owned();
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("{PACKAGE}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    step(&format!("staging the package in {}", stage.display()));
    let layout = installed_layout();
    let built = root.join("target/release/telemetryd");
    ensure!(
        built.is_file(),
        "{} is missing: build it with `cargo build --release -p telemetryd`",
        built.display()
    );
    let binary = staged(&stage, &layout.binary);
    put(&binary, &fs::read(&built)?, 0o755)?;
    // As dh_strip does: the eBPF objects are data inside the binary and
    // stay; only host symbols and notes go.
    run(
        "strip",
        &[
            "--remove-section=.comment",
            "--remove-section=.note",
            "--strip-unneeded",
            path_str(&binary)?,
        ],
    )?;
    let unit = fs::read_to_string(root.join("systemd/telemetryd.service"))?;
    put(
        &staged(&stage, &layout.unit),
        layout.unit_text(&unit).as_bytes(),
        0o644,
    )?;
    put(
        &staged(&stage, &layout.config),
        &fs::read(root.join("config/telemetryd.toml"))?,
        0o644,
    )?;
    put(
        &staged(&stage, &layout.doc),
        &fs::read(root.join("README.md"))?,
        0o644,
    )?;
    let doc = stage.join(DOC_DIR);
    put(
        &doc.join("copyright"),
        &fs::read(root.join("packaging/deb/copyright"))?,
        0o644,
    )?;
    let changelog = doc.join("changelog");
    put(
        &changelog,
        &fs::read(root.join("packaging/deb/changelog"))?,
        0o644,
    )?;
    put(
        &stage.join("usr/share/lintian/overrides/telemetryd"),
        &fs::read(root.join("packaging/deb/lintian-overrides"))?,
        0o644,
    )?;
    let manual = stage.join("usr/share/man/man8/telemetryd.8");
    put(
        &manual,
        &fs::read(root.join("packaging/deb/telemetryd.8"))?,
        0o644,
    )?;
    // -n: no name or time stamp in the header, so the build is reproducible.
    for file in [&changelog, &manual] {
        run("gzip", &["-9nf", path_str(file)?])?;
    }

    let control_dir = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &control_dir.join(script),
            &fs::read(root.join("packaging/deb").join(script))?,
            0o755,
        )?;
    }
    put(
        &control_dir.join("conffiles"),
        format!("{}\n", layout.config.display()).as_bytes(),
        0o644,
    )?;
    let (md5sums, installed_kib) = md5sums_and_size(&stage, &layout.config)?;
    put(&control_dir.join("md5sums"), md5sums.as_bytes(), 0o644)?;
    let depends = shared_library_depends(&out_dir, &binary)?;
    let control = control_file(&version, &arch, &depends, installed_kib);
    put(&control_dir.join("control"), control.as_bytes(), 0o644)?;

    let path = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    let mut dpkg_deb = Command::new("dpkg-deb");
    dpkg_deb
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&path);
    // Clamp every time stamp in the package to the last commit's, so two
    // builds of one commit are the same package.
    if let Ok(epoch) = command_output("git", &["-C", path_str(root)?, "log", "-1", "--format=%ct"])
    {
        dpkg_deb.env("SOURCE_DATE_EPOCH", epoch.trim());
    }
    let status = dpkg_deb.status().context("running dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb --build failed ({status})");
    step(&format!("built {}", path.display()));
    Ok(Package {
        path,
        version,
        arch,
    })
}

fn control_file(version: &str, arch: &str, depends: &str, installed_kib: u64) -> String {
    let name = std::env::var("DEBFULLNAME").unwrap_or_else(|_| MAINTAINER_NAME.into());
    let email = std::env::var("DEBEMAIL").unwrap_or_else(|_| MAINTAINER_EMAIL.into());
    let mut c = String::new();
    let _ = writeln!(c, "Package: {PACKAGE}");
    let _ = writeln!(c, "Version: {version}");
    let _ = writeln!(c, "Architecture: {arch}");
    let _ = writeln!(c, "Maintainer: {name} <{email}>");
    let _ = writeln!(c, "Installed-Size: {installed_kib}");
    if !depends.is_empty() {
        let _ = writeln!(c, "Depends: {depends}");
    }
    let _ = writeln!(c, "Section: net");
    let _ = writeln!(c, "Priority: optional");
    let _ = writeln!(c, "Description: {DESCRIPTION}");
    c
}

/// `md5sums` of every file except conffiles (dpkg keeps theirs itself), and
/// the installed size in KiB as dpkg-gencontrol counts it: each file rounded
/// up to a KiB, plus one per directory.
fn md5sums_and_size(stage: &Path, conffile: &Path) -> Result<(String, u64)> {
    let mut files = Vec::new();
    let mut kib = 0;
    let mut pending = vec![stage.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let relative = path.strip_prefix(stage)?.to_path_buf();
            if relative.starts_with("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                kib += 1;
                pending.push(path);
            } else {
                kib += fs::metadata(&path)?.len().div_ceil(1024);
                if Path::new("/").join(&relative) != conffile {
                    files.push(relative);
                }
            }
        }
    }
    files.sort();
    let mut sums = String::new();
    for file in files {
        let out = Command::new("md5sum")
            .arg(&file)
            .current_dir(stage)
            .output()
            .context("running md5sum")?;
        ensure!(out.status.success(), "md5sum {} failed", file.display());
        sums.push_str(&String::from_utf8(out.stdout)?);
    }
    Ok((sums, kib))
}

/// The `Depends` of the binary's shared libraries, from dpkg-shlibdeps
/// (which wants a `debian/control` in its working directory: a minimal one
/// in a scratch directory).
fn shared_library_depends(out_dir: &Path, binary: &Path) -> Result<String> {
    let scratch = out_dir.join("shlibdeps");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(binary)
        .current_dir(&scratch)
        .output()
        .context("running dpkg-shlibdeps (Debian package dpkg-dev)")?;
    let _ = fs::remove_dir_all(&scratch);
    ensure!(
        out.status.success(),
        "dpkg-shlibdeps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text}"))?;
    Ok(depends.trim().to_owned())
}

/// Builds the package from the release binary, runs lintian (failing on
/// errors) and [`check_lifecycle`].
pub fn build_and_check(root: &Path) -> Result<Package> {
    let package = build(root)?;
    let report = lintian(&package.path)?;
    eprint!("{}", report.output);
    if report.errors > 0 {
        bail!(
            "lintian found {} errors in {}",
            report.errors,
            package.path.display()
        );
    }
    check_lifecycle(root, &package.path)?;
    step(&format!(
        "{} (telemetryd {} for {}): lintian reports no errors and {} warnings; \
         install, remove and purge leave what they should",
        package.path.display(),
        package.version,
        package.arch,
        report.warnings
    ));
    Ok(package)
}

/// Lintian's verdict: its full output, and whether it found errors.
pub struct LintianReport {
    pub output: String,
    pub errors: usize,
    pub warnings: usize,
}

pub fn lintian(package: &Path) -> Result<LintianReport> {
    step(&format!("lintian {}", package.display()));
    let out = Command::new("lintian")
        .args(["--display-info", "--pedantic"])
        .arg(package)
        .output()
        .context("running lintian (Debian package lintian; `cargo xtask setup` installs it)")?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |prefix: &str| output.lines().filter(|l| l.starts_with(prefix)).count();
    let report = LintianReport {
        errors: count("E: "),
        warnings: count("W: "),
        output,
    };
    // Lintian exits non-zero for errors (counted above) and for its own
    // failures, which print no tags.
    if !out.status.success() && report.errors == 0 {
        bail!("lintian failed ({}): {}", out.status, report.output);
    }
    Ok(report)
}

/// Installs, removes and purges `package` with dpkg in a throwaway root
/// under `target/debian/`, checking what exists after each step: the files
/// after install, only the (edited) conffile after remove, nothing after
/// purge (also not the link an administrator's `systemctl enable` made).
pub fn check_lifecycle(root: &Path, package: &Path) -> Result<()> {
    let dpkg_root = root.join("target/debian/dpkg-root");
    if dpkg_root.exists() {
        fs::remove_dir_all(&dpkg_root)?;
    }
    let admin = dpkg_root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    fs::write(admin.join("status"), "")?;
    for dir in BASE_DIRS {
        fs::create_dir_all(dpkg_root.join(dir))?;
    }
    let dpkg = |args: &[&str]| -> Result<String> {
        let root_arg = format!("--root={}", dpkg_root.display());
        // Scripts run outside a chroot (the root has no shell) with
        // DPKG_ROOT set, which they honour; the root has no libc6 either.
        let mut full = vec![
            root_arg.as_str(),
            "--force-script-chrootless",
            "--force-depends",
        ];
        full.extend_from_slice(args);
        command_output("dpkg", &full)
    };
    let installed_files = [
        "usr/bin/telemetryd",
        "lib/systemd/system/telemetryd.service",
        "etc/telemetryd/telemetryd.toml",
        "usr/share/doc/telemetryd/README.md",
        "usr/share/doc/telemetryd/copyright",
        "usr/share/doc/telemetryd/changelog.gz",
        "usr/share/man/man8/telemetryd.8.gz",
        "usr/share/lintian/overrides/telemetryd",
    ];

    step("package lifecycle: dpkg -i in a throwaway root");
    dpkg(&["-i", path_str(package)?])?;
    for file in installed_files {
        ensure!(dpkg_root.join(file).is_file(), "/{file} is not installed");
    }
    let status = dpkg(&["-s", PACKAGE])?;
    ensure!(
        status.contains("Status: install ok installed"),
        "after install: {status}"
    );
    ensure!(
        status.contains("/etc/telemetryd/telemetryd.toml"),
        "the configuration is not a conffile: {status}"
    );
    let unit = fs::read_to_string(dpkg_root.join("lib/systemd/system/telemetryd.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/bin/telemetryd run --config /etc/telemetryd/telemetryd.toml"),
        "the unit does not run the packaged binary:\n{unit}"
    );
    let mode = fs::metadata(dpkg_root.join("usr/bin/telemetryd"))?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o755, "binary mode {mode:o}");
    let version = Command::new(dpkg_root.join("usr/bin/telemetryd"))
        .arg("--version")
        .output()?;
    ensure!(
        version.status.success(),
        "the stripped binary does not run: {}",
        String::from_utf8_lossy(&version.stderr)
    );

    step("package lifecycle: edit the conffile, enable the unit as systemctl would, dpkg -r");
    let config = dpkg_root.join("etc/telemetryd/telemetryd.toml");
    let edited = format!(
        "{}\n# edited by the administrator\n",
        fs::read_to_string(&config)?
    );
    fs::write(&config, &edited)?;
    let wants = dpkg_root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/lib/systemd/system/telemetryd.service",
        wants.join("telemetryd.service"),
    )?;
    dpkg(&["-r", PACKAGE])?;
    let left = remaining(&dpkg_root)?;
    ensure!(
        left == [
            "etc/systemd/system/multi-user.target.wants/telemetryd.service",
            "etc/telemetryd/telemetryd.toml"
        ],
        "after remove, expected only the conffile and the administrator's link, found: {left:?}"
    );
    ensure!(
        fs::read_to_string(&config)? == edited,
        "remove changed the edited conffile"
    );
    let status = dpkg(&["-s", PACKAGE])?;
    ensure!(
        status.contains("Status: deinstall ok config-files"),
        "after remove: {status}"
    );

    step("package lifecycle: dpkg -P");
    dpkg(&["-P", PACKAGE])?;
    let left = remaining(&dpkg_root)?;
    ensure!(left.is_empty(), "after purge, left behind: {left:?}");
    let listed = dpkg(&["-l"])?;
    ensure!(
        !listed.lines().any(|l| l.contains(PACKAGE)),
        "dpkg still knows the package after purge: {listed}"
    );
    fs::remove_dir_all(&dpkg_root)?;
    step("package lifecycle: install, remove and purge left exactly what they should");
    Ok(())
}

/// Directories of the throwaway root that exist before the package, as on
/// any system (systemd owns /etc/systemd/system).
const BASE_DIRS: [&str; 5] = ["var", "var/lib", "etc", "etc/systemd", "etc/systemd/system"];

/// Every file, link and directory under `root` outside dpkg's own database
/// (`var/lib/dpkg`) and [`BASE_DIRS`], relative and sorted; directories only
/// when empty.
fn remaining(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut empty = true;
        for entry in fs::read_dir(&dir)? {
            empty = false;
            let path = entry?.path();
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if relative == "var/lib/dpkg" {
                continue;
            }
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                pending.push(path);
            } else {
                found.push(relative);
            }
        }
        let relative = dir.strip_prefix(root)?.to_string_lossy().into_owned();
        if empty && !relative.is_empty() && !BASE_DIRS.contains(&relative.as_str()) {
            found.push(format!("{relative}/"));
        }
    }
    found.sort();
    Ok(found)
}

fn staged(stage: &Path, installed: &Path) -> PathBuf {
    stage.join(installed.strip_prefix("/").unwrap_or(installed))
}

fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a path without a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    // dpkg-deb wants 0755 directories whatever the umask made them.
    let mut d = Some(dir);
    while let Some(dir) = d {
        if dir.ends_with("target/debian") {
            break;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        d = dir.parent();
    }
    Ok(())
}

/// The workspace's `version = "..."` (Cargo.toml, `[workspace.package]`).
pub fn workspace_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package {
            if let Some(value) = line.strip_prefix("version") {
                let value = value.trim_start().trim_start_matches('=').trim();
                return Ok(value.trim_matches('"').to_owned());
            }
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

/// The newest entry of `packaging/deb/changelog` must be this version: the
/// package's changelog says what changed in it.
fn check_changelog(root: &Path, version: &str) -> Result<()> {
    let path = root.join("packaging/deb/changelog");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default();
    let expected = format!("{PACKAGE} ({version}) ");
    ensure!(
        first.starts_with(&expected),
        "{}: the newest entry is {first:?}, but the workspace version is {version}: add an \
         entry for {version} (what changed, and the date as `date -R` prints it)",
        path.display()
    );
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_changelog_names_the_workspace_version() {
        let root = crate::workspace_root();
        let version = workspace_version(&root).unwrap();
        assert!(version.split('.').count() == 3, "{version}");
        check_changelog(&root, &version).unwrap();
    }

    #[test]
    fn the_packaged_unit_points_at_the_packaged_files() {
        let root = crate::workspace_root();
        let shipped = fs::read_to_string(root.join("systemd/telemetryd.service")).unwrap();
        let unit = installed_layout().unit_text(&shipped);
        assert!(
            unit.contains(
                "ExecStart=/usr/bin/telemetryd run --config /etc/telemetryd/telemetryd.toml"
            ),
            "{unit}"
        );
        assert!(
            unit.contains("Documentation=file:///usr/share/doc/telemetryd/README.md"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local"), "{unit}");
    }

    #[test]
    fn control_file_fields() {
        let c = control_file("1.2.3", "amd64", "libc6 (>= 2.34)", 4321);
        assert!(c.starts_with("Package: telemetryd\nVersion: 1.2.3\nArchitecture: amd64\n"));
        assert!(c.contains("\nInstalled-Size: 4321\nDepends: libc6 (>= 2.34)\n"));
        // Every continuation line of the description starts with a space.
        let description = c.split_once("Description: ").unwrap().1;
        assert!(
            description.lines().skip(1).all(|l| l.starts_with(' ')),
            "{c}"
        );
        assert!(c.ends_with(".\n"));
    }
}
