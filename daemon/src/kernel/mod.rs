//! What the daemon reads from the running kernel without aya: its BTF, its
//! network interfaces (sysfs) and its link notifications (rtnetlink).

pub mod btf;
pub mod interfaces;
pub mod netlink;
