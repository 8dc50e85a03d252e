//! Interface hotplug: link notifications from rtnetlink wake the daemon so
//! it reconciles its XDP attachments at once, instead of at the next poll.
//! A burst of notifications (a flap, a rename) collapses into one wake-up.

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::kernel::netlink::{self, RouteSocket, RTMGRP_LINK};
use crate::logging::RepeatLimiter;
use crate::sys;

/// Link changes, as a wake-up: `changed().await` returns once per burst.
pub struct LinkWatch {
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkWatch {
    /// Subscribes to link notifications of this network namespace. On error
    /// (no netlink?) the caller keeps polling, which still finds changes.
    pub fn start() -> std::io::Result<Self> {
        let socket = RouteSocket::open(RTMGRP_LINK)?;
        let ready = sys::readable(socket.as_fd())?;
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn(listen(socket, ready, notify.clone()));
        Ok(Self { notify, task })
    }

    /// Resolves when links changed since the last call.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(socket: RouteSocket, ready: AsyncFd<OwnedFd>, notify: Arc<Notify>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut errors = RepeatLimiter::new(Duration::from_secs(60));
    loop {
        let mut guard = match ready.readable().await {
            Ok(guard) => guard,
            Err(error) => {
                warn!(%error, "link notifications stopped; interfaces are found by polling");
                return;
            }
        };
        let mut woke = false;
        loop {
            match socket.recv(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let events = netlink::link_events(&buf[..n]);
                    debug!(
                        new = events.new_link,
                        deleted = events.del_link,
                        "link notification"
                    );
                    woke = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                // The kernel dropped notifications because we were slow:
                // something changed, so reconcile anyway.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => woke = true,
                Err(error) => {
                    if let Some(suppressed) = errors.check("recv", Instant::now()) {
                        warn!(%error, suppressed, "reading link notifications");
                    }
                    woke = true;
                    guard.clear_ready();
                    break;
                }
            }
        }
        if woke {
            notify.notify_one();
        }
    }
}
