//! Everything that loads eBPF programs into the kernel and attaches them.
//! Together with `collect`, the only part of the daemon that imports aya.

pub mod drops;
pub mod interfaces;
pub mod object;
pub mod probe;
pub mod syscalls;
pub mod xdp;

pub use object::{LoadError, LoadOptions, LoadedObject};
