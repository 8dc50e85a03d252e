//! Shared helpers of the root-only integration tests: throwaway network
//! namespaces joined by veth, a real `telemetryd` process inside one of
//! them, raw frames, and scraping `/metrics`.
//!
//! Everything created here is removed by `Drop` guards, also when a test
//! fails. Test traffic never leaves the namespaces the tests create.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part of this module"
)]

pub mod config;
pub mod curl;
pub mod frames;
pub mod hostile;
pub mod kernel;
pub mod matrix;
pub mod metrics;
pub mod netns;
pub mod pki;
pub mod process;
pub mod traffic;

pub use config::TestConfig;
pub use netns::{NetNs, VethPair};
pub use process::{Daemon, Spawn};

/// Fails the test run with a clear message unless we are root: these tests
/// need CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, which CI has.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs and create network namespaces: \
         run them as root (`cargo xtask test` does)"
    );
}
