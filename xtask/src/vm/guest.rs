//! One guest run: an initramfs (static busybox, the kernel's modules,
//! `init.sh`, the job script), qemu under TCG with a hard timeout, and what
//! came back: the job's exit code and files in the output share, or the tail
//! of the serial log when the guest did not finish.
//!
//! The guest's root is the host's own (9p, read-only, under a tmpfs
//! overlay), so the test binaries, the daemon, cargo and systemd are the
//! host's. Its only network is what [`Guest::nics`] asks for: two virtio-net
//! NICs on one qemu hub that has no other port, so no frame leaves qemu.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::kernel::{path_str, Kernel};

const INIT: &str = include_str!("init.sh");

/// How the guest runs its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `init.sh` runs the job in a chroot of the overlay root.
    Chroot,
    /// The host's systemd boots as PID 1 on the overlay root; the job is a
    /// unit of it (`mtx-job.service`).
    Systemd,
}

/// What one guest does.
pub struct Guest {
    /// Short name, used for its directory and in reports: `6.12-suite`.
    pub name: String,
    pub kernel: Kernel,
    pub mode: Mode,
    /// Shell script run as root in the guest, from `/vm/job.sh`; writes its
    /// results under `/vm/out`.
    pub job: String,
    /// Two virtio-net NICs joined by a qemu hub (for native XDP).
    pub nics: bool,
    pub timeout: Duration,
}

/// How a guest run ended.
pub struct Outcome {
    /// The job's exit code; `None` when the guest never reported one (it
    /// failed to boot, hung, or panicked).
    pub job_exit: Option<i32>,
    /// The output share: what the job wrote.
    pub out: PathBuf,
    pub serial: PathBuf,
    pub wall: Duration,
    pub timed_out: bool,
}

impl Outcome {
    /// The last `lines` lines of the serial console.
    pub fn serial_tail(&self, lines: usize) -> String {
        let text = fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(no serial log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A systemd unit the guest installs before booting (systemd mode).
const JOB_UNIT: &str = "\
[Unit]
Description=telemetryd kernel-matrix job
After=basic.target systemd-journald.service

[Service]
Type=oneshot
ExecStart=/bin/sh /vm/job.sh
StandardOutput=journal+console
StandardError=journal+console
# The job writes its exit code itself; then the guest is done.
ExecStopPost=/bin/systemctl poweroff --force --force
";

/// The target the systemd guest boots into (`systemd.unit=mtx.target`):
/// the basic system (journald, udev, tmpfiles) and the job, nothing else
/// the host has enabled.
const JOB_TARGET: &str = "\
[Unit]
Description=telemetryd kernel-matrix guest
Requires=basic.target mtx-job.service
After=basic.target
AllowIsolate=yes
";

impl Guest {
    /// Boots the guest in `dir` (emptied first) and waits for it, at most
    /// `self.timeout`.
    pub fn run(&self, dir: &Path) -> Result<Outcome> {
        let _ = fs::remove_dir_all(dir);
        let out = dir.join("out");
        fs::create_dir_all(&out)?;
        // The guest's root writes as root over 9p (security_model=none).
        fs::set_permissions(&out, fs::Permissions::from_mode(0o777))?;
        let initrd = dir.join("initrd.cpio");
        self.initramfs(&dir.join("initramfs"), &initrd)?;
        let serial = dir.join("serial.log");
        let mode = match self.mode {
            Mode::Chroot => "chroot",
            Mode::Systemd => "systemd",
        };
        let mut append =
            format!("console=ttyS0 panic=-1 oops=panic loglevel=4 mtx.mode={mode} net.ifnames=0");
        if self.mode == Mode::Systemd {
            append.push_str(
                " systemd.unit=mtx.target systemd.show_status=false systemd.journald.forward_to_console=0",
            );
        }
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "2048",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "-kernel".into(),
            path_str(&self.kernel.vmlinuz)?.into(),
            "-initrd".into(),
            path_str(&initrd)?.into(),
            "-append".into(),
            append,
            "-serial".into(),
            format!("file:{}", path_str(&serial)?),
            "-virtfs".into(),
            "local,path=/,mount_tag=host0,security_model=none,readonly=on,multidevs=remap".into(),
            "-virtfs".into(),
            format!(
                "local,path={},mount_tag=out0,security_model=none",
                path_str(&out)?
            ),
        ]);
        if self.nics {
            for (port, mac) in [("p0", "52:54:00:00:00:10"), ("p1", "52:54:00:00:00:11")] {
                args.push("-netdev".into());
                args.push(format!("hubport,id={port},hubid=0"));
                args.push("-device".into());
                args.push(format!("virtio-net-pci,netdev={port},mac={mac}"));
            }
        }
        let started = Instant::now();
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("qemu.log"))?)
            .stderr(fs::File::create(dir.join("qemu.err"))?)
            .spawn()
            .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
        let deadline = started + self.timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = qemu.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = qemu.kill();
                let _ = qemu.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let wall = started.elapsed();
        if let Some(status) = status {
            if !status.success() {
                let err = fs::read_to_string(dir.join("qemu.err")).unwrap_or_default();
                bail!("qemu exited with {status}: {}", err.trim());
            }
        }
        let job_exit = fs::read_to_string(out.join("job-exit"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(Outcome {
            job_exit,
            out,
            serial,
            wall,
            timed_out,
        })
    }

    fn initramfs(&self, stage: &Path, archive: &Path) -> Result<()> {
        let _ = fs::remove_dir_all(stage);
        for dir in ["bin", "proc", "sys", "dev", "modules", "units"] {
            fs::create_dir_all(stage.join(dir))?;
        }
        let busybox = which("busybox").context("no busybox (Debian package busybox-static)")?;
        fs::copy(&busybox, stage.join("bin/busybox"))?;
        let mut order = String::new();
        for module in &self.kernel.modules {
            let name = module.file_name().context("module path")?;
            fs::copy(module, stage.join("modules").join(name))?;
            order.push_str(&name.to_string_lossy().replace(".ko", ""));
            order.push('\n');
        }
        fs::write(stage.join("modules/load-order"), order)?;
        fs::copy(&self.kernel.config, stage.join("config"))?;
        write_exec(&stage.join("init"), INIT)?;
        write_exec(&stage.join("job.sh"), &self.job)?;
        if self.mode == Mode::Systemd {
            fs::write(stage.join("units/mtx-job.service"), JOB_UNIT)?;
            fs::write(stage.join("units/mtx.target"), JOB_TARGET)?;
        }
        let list = Command::new("find")
            .arg(".")
            .current_dir(stage)
            .output()
            .context("running find")?;
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
            .current_dir(stage)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(archive)?)
            .spawn()
            .context("running cpio (Debian package cpio)")?;
        use std::io::Write as _;
        cpio.stdin
            .take()
            .context("cpio stdin")?
            .write_all(&list.stdout)?;
        if !cpio.wait()?.success() {
            bail!("cpio failed building {}", archive.display());
        }
        Ok(())
    }
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn which(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/bin".into()])
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}
