//! The systemd notification protocol (`sd_notify`), without libsystemd:
//! datagrams such as `READY=1`, `WATCHDOG=1`, `STOPPING=1` sent to the unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). With `Type=notify` systemd waits for `READY=1`; with
//! `WatchdogSec=` it restarts the service when `WATCHDOG=1` stops arriving.
//!
//! By hand rather than through the `sd-notify` crate: that crate reads the
//! environment on every call, where the daemon must read and clear it once
//! before the runtime starts threads, and this is one `sendto` on a std
//! socket.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// Where notifications go; `None` fields when not started by systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    /// `READY=1` has been sent: systemd counts the service as started.
    started: bool,
    /// The last `STATUS=` sent.
    status: String,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, then
    /// removes them from the environment so child processes do not inherit
    /// them. Never fails: a bad value is logged and notifications are off.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let notifier = Self::new(
            socket.as_deref().and_then(|s| s.to_str()),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        );
        // Read once at start-up, before the runtime starts other threads.
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        notifier
    }

    /// Builds a notifier from the variables' values (for tests).
    pub fn new(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Self {
        let socket = socket.and_then(|path| match connect(path) {
            Ok(socket) => Some(socket),
            Err(error) => {
                warn!(socket = path, %error, "NOTIFY_SOCKET is unusable; not notifying systemd");
                None
            }
        });
        let watchdog = watchdog_interval(usec, pid, own_pid);
        Self {
            socket,
            watchdog,
            last_ping: None,
            started: false,
            status: String::new(),
        }
    }

    /// The watchdog timeout systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Called after every poll with whether the daemon is ready (every
    /// required source up, the listener bound) and the readiness summary.
    /// The first time it is ready: `READY=1`, so systemd counts the service
    /// as started only then (a unit whose required source cannot start
    /// fails its start). Otherwise `STATUS=` when the summary changed.
    pub fn readiness(&mut self, ready: bool, status: &str) {
        if ready && !self.started {
            self.started = true;
            self.status = status.to_owned();
            self.send(&format!("READY=1\nSTATUS={status}"));
            self.last_ping = Some(Instant::now());
        } else if self.status != status {
            self.status = status.to_owned();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// Whether `READY=1` has been sent.
    pub fn started(&self) -> bool {
        self.started
    }

    /// `READY=1` again, ending a reload (only once started: before that,
    /// the first `READY=1` is readiness's).
    pub fn reloaded(&mut self) {
        if self.started {
            self.send("READY=1");
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1");
    }

    /// `RELOADING=1` ... `READY=1` ([`Self::reloaded`]) around a
    /// configuration reload, once started.
    pub fn reloading(&mut self, monotonic_usec: u64) {
        if !self.started {
            return;
        }
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}"));
    }

    /// Called once per poll: sends `WATCHDOG=1` at most every half timeout,
    /// so a poll loop that stops turning stops the pings.
    pub fn poll_alive(&mut self, now: Instant) {
        let Some(timeout) = self.watchdog else { return };
        if self
            .last_ping
            .is_some_and(|last| now.duration_since(last) < timeout / 2)
        {
            return;
        }
        self.send("WATCHDOG=1");
        self.last_ping = Some(now);
    }

    /// Sends one notification. Losing one is not worth stopping for.
    pub fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.socket else {
            return;
        };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => debug!(message, "sd_notify"),
            Err(error) => warn!(%error, message, "sd_notify failed"),
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it.
pub fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

fn connect(path: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if path.starts_with('/') {
        SocketAddr::from_pathname(path)?
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor @abstract",
        ));
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, addr))
}

/// The watchdog timeout: `WATCHDOG_USEC` when set, positive, and meant for
/// this process (`WATCHDOG_PID` absent or ours).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_variables() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_interval(Some("500000"), Some("7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(watchdog_interval(Some("500000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_paces_watchdog_pings() {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut n = Notifier::new(Some(path.to_str().unwrap()), Some("1000000"), None, 1);
        // Not ready: a status, no READY=1, and reloads are not announced.
        n.readiness(false, "not ready: xdp (no CAP_NET_ADMIN) down");
        assert_eq!(
            receive(&server),
            "STATUS=not ready: xdp (no CAP_NET_ADMIN) down"
        );
        n.readiness(false, "not ready: xdp (no CAP_NET_ADMIN) down");
        n.reloading(1);
        n.reloaded();
        assert!(!n.started());
        n.readiness(true, "ready: xdp up");
        assert_eq!(receive(&server), "READY=1\nSTATUS=ready: xdp up");
        n.readiness(true, "ready: xdp up");
        n.reloading(7);
        assert_eq!(receive(&server), "RELOADING=1\nMONOTONIC_USEC=7");
        n.reloaded();
        assert_eq!(receive(&server), "READY=1");
        let t0 = Instant::now();
        n.poll_alive(t0); // right after READY: too soon
        n.poll_alive(t0 + Duration::from_millis(600));
        assert_eq!(receive(&server), "WATCHDOG=1");
        n.poll_alive(t0 + Duration::from_millis(700)); // too soon again
        n.stopping();
        assert_eq!(receive(&server), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn abstract_socket_and_bad_values_are_harmless() {
        let name = format!("telemetryd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut n = Notifier::new(Some(&format!("@{name}")), None, None, 1);
        n.readiness(true, "ready");
        assert!(receive(&server).starts_with("READY=1"));
        assert_eq!(n.watchdog(), None);

        // Relative path, missing socket, nothing at all: no panic, no error.
        for bad in [Some("relative"), Some("/nonexistent/notify.sock"), None] {
            let mut n = Notifier::new(bad, Some("1000"), None, 1);
            n.readiness(true, "ready");
            n.poll_alive(Instant::now() + Duration::from_secs(1));
            n.stopping();
        }
    }
}
