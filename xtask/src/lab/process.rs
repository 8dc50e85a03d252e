//! The lab's processes: each started inside a lab namespace by
//! `ip netns exec` (which execs it, so the pid is the program's), with its
//! output in a log file, killed if the lab process dies (PR_SET_PDEATHSIG)
//! and killed and reaped on drop.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// A running lab process.
pub struct LabProcess {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

/// How to start one.
pub struct Launch<'a> {
    /// Shown in messages, and the log's file name.
    pub name: &'a str,
    pub namespace: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    /// A UTS namespace of its own with this hostname (a node's name).
    pub hostname: Option<&'a str>,
}

impl LabProcess {
    pub fn start(launch: Launch<'_>, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{}.log", launch.name));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", launch.namespace])
            .arg(launch.program)
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let hostname = launch
            .hostname
            .map(|h| CString::new(h).context("a hostname with a NUL"))
            .transpose()?;
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe system calls on memory allocated
        // before the fork (the hostname).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(name) = &hostname {
                    if libc::unshare(libc::CLONE_NEWUTS) != 0
                        || libc::sethostname(name.as_ptr(), name.as_bytes().len()) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.program.display()))?;
        Ok(Self {
            name: launch.name.to_owned(),
            log,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// An error naming the process and its log's end if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: kill on the pid of a child not yet reaped.
        if unsafe { libc::kill(self.pid() as i32, signal) } != 0 {
            bail!(
                "signalling {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill on the pid of a child not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}
