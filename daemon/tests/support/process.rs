//! A real `telemetryd` process inside a test namespace.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::metrics::{http_get, Scrape};
use super::netns::{in_namespace, unique_name, NetNs};

pub const BIN: &str = env!("CARGO_BIN_EXE_telemetryd");

/// The daemon listens here inside its namespace.
pub const LISTEN: &str = "127.0.0.1:9469";

/// How to start the daemon: see [`Daemon::spawn_with`].
#[derive(Default)]
pub struct Spawn<'a> {
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub wrapper: &'a [&'a str],
}

pub struct Daemon {
    child: Option<Child>,
    pub ns_name: String,
    pub log: PathBuf,
    config: PathBuf,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts `telemetryd run` in `ns` with `config` (TOML) and waits until
    /// `/readyz` answers 200, or panics with the daemon's log.
    pub fn start(ns: &NetNs, config: &str) -> Self {
        let daemon = Self::spawn(ns, config, &[]);
        daemon.wait_ready(Duration::from_secs(30));
        daemon
    }

    /// Starts the daemon without waiting, with extra command-line arguments.
    pub fn spawn(ns: &NetNs, config: &str, args: &[&str]) -> Self {
        Self::spawn_with(
            ns,
            config,
            &Spawn {
                args,
                ..Spawn::default()
            },
        )
    }

    /// Starts the daemon without waiting: extra arguments, environment
    /// variables, and a wrapper command (`setpriv ...`) that execs it.
    pub fn spawn_with(ns: &NetNs, config: &str, spawn: &Spawn<'_>) -> Self {
        let dir = std::env::temp_dir();
        let tag = unique_name("d");
        let config_path = dir.join(format!("{tag}.toml"));
        let log = dir.join(format!("{tag}.log"));
        fs::write(&config_path, config).expect("writing the test config");
        let log_file = fs::File::create(&log).expect("creating the daemon log");
        // The config must be readable by a non-root daemon (setpriv).
        let _ = fs::set_permissions(&config_path, fs::Permissions::from_mode(0o644));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(spawn.wrapper)
            .args([BIN, "run", "--config"])
            .arg(&config_path)
            .args(spawn.args)
            .envs(spawn.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawning telemetryd");
        Self {
            child: Some(child),
            ns_name: ns.name.clone(),
            log,
            config: config_path,
            addr: LISTEN.parse().unwrap(),
        }
    }

    /// Replaces the configuration file (for SIGHUP).
    pub fn rewrite_config(&self, config: &str) {
        fs::write(&self.config, config).expect("rewriting the test config");
    }

    /// Open file descriptors of the daemon.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("reading /proc/PID/fd")
            .count()
    }

    /// The config file the daemon was started with (rewrite it, then
    /// send SIGHUP, to test reloads).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET inside the daemon's namespace.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = self.addr;
        let path = path.to_owned();
        in_namespace(&self.ns_name, move || http_get(addr, &path))
    }

    pub fn scrape(&self) -> Scrape {
        let (status, body) = self
            .get("/metrics")
            .unwrap_or_else(|e| panic!("scraping /metrics: {e}\n{}", self.log_text()));
        assert_eq!(status, 200, "/metrics answered {status}");
        Scrape::parse(&body)
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "telemetryd was not ready within {timeout:?}; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes until `done(scrape)` holds or `timeout` passes; returns the
    /// last scrape either way, so the caller asserts exact values on it.
    pub fn scrape_until(&self, timeout: Duration, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + timeout;
        loop {
            let scrape = self.scrape();
            if done(&scrape) || Instant::now() >= deadline {
                return scrape;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the daemon (through `ip netns exec`, which execs
    /// it: the child's pid is the daemon's).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on a pid we spawned and have not reaped yet.
        let ret = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(ret, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the daemon to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("waitpid") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.config);
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
    }
}
