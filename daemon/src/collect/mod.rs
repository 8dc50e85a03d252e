//! Polls the kernel maps once per interval into an immutable [`Snapshot`].

pub mod snapshot;

pub use snapshot::Snapshot;
