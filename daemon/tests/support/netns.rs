//! Network namespaces and veth pairs that clean up after themselves.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace and interface the tests create, so a stale
/// one (from a killed run) is recognisable: `cargo xtask test` removes them.
pub const PREFIX: &str = "tdt";

/// A short name unique to this process and call, within IFNAMSIZ (15).
pub fn unique_name(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{PREFIX}{}{tag}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name} is longer than IFNAMSIZ");
    name
}

/// Runs a command and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `f` on a fresh thread inside the named namespace and returns its result.
pub fn in_namespace<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace fd changes only the network
        // namespace of this (fresh, single-purpose) thread.
        let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        let name = unique_name("n");
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets it
    /// opens live there. The calling thread's namespace is untouched.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_namespace(&self.name, f)
    }

    /// Like [`NetNs::enter`], and the thread also sees this namespace's
    /// interfaces in /sys/class/net (which shows the namespace sysfs was
    /// mounted in): it gets a mount namespace of its own with a fresh
    /// sysfs, as `ip netns exec` does. For code that reads interfaces from
    /// sysfs, such as the daemon's attach.
    pub fn enter_with_sysfs<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_namespace(&self.name, move || {
            // SAFETY: these calls change only this thread's mount namespace
            // (unshare gives the thread its own, and its own fs state); the
            // strings are NUL-terminated literals.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
                let none = std::ptr::null();
                assert_eq!(
                    libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        none,
                        libc::MS_SLAVE | libc::MS_REC,
                        std::ptr::null()
                    ),
                    0,
                    "making / a slave mount"
                );
                libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
                assert_eq!(
                    libc::mount(
                        c"sysfs".as_ptr(),
                        c"/sys".as_ptr(),
                        c"sysfs".as_ptr(),
                        0,
                        std::ptr::null()
                    ),
                    0,
                    "mounting sysfs: {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
    }
}

impl Drop for NetNs {
    /// Deletes the namespace, and with it the interfaces inside it. A
    /// failed clean-up fails the test (it would leave a namespace behind for
    /// every later run to trip over), unless the test is failing already:
    /// then it is only reported, so the first failure stays the one shown.
    fn drop(&mut self) {
        let outcome = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let failure = match outcome {
            Ok(output) if output.status.success() => return,
            Ok(output) => format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => error.to_string(),
        };
        let message = format!("removing network namespace {}: {failure}", self.name);
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// A veth pair with one end in each namespace, both up, with IPv6
/// switched off on both ends so the kernel sends nothing on its own
/// (no neighbour discovery, no MLD, no router solicitations). Static
/// neighbour entries stand in for ARP.
pub struct VethPair {
    pub a: String,
    pub b: String,
    pub a_mac: String,
    pub b_mac: String,
    pub a_ip: String,
    pub b_ip: String,
    pub a_ifindex: u32,
}

impl VethPair {
    pub fn new(ns_a: &NetNs, ns_b: &NetNs) -> Self {
        Self::with_a_index(ns_a, ns_b, None)
    }

    /// Like [`VethPair::new`], with end `a` given interface index
    /// `a_index` (in a fresh namespace every index is free).
    pub fn with_a_index(ns_a: &NetNs, ns_b: &NetNs, a_index: Option<u32>) -> Self {
        let a = unique_name("a");
        let b = unique_name("b");
        let (a_mac, b_mac) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b");
        let index = a_index.map(|i| i.to_string());
        let mut args = vec!["link", "add", &a];
        if let Some(index) = &index {
            args.extend(["index", index.as_str()]);
        }
        args.extend([
            "netns", &ns_a.name, "address", a_mac, "type", "veth", "peer", "name", &b, "netns",
            &ns_b.name, "address", b_mac,
        ]);
        run("ip", &args);
        Self::configure(ns_a, ns_b, a, b, a_mac, b_mac)
    }

    /// Like [`VethPair::new`], with two existing interfaces of one segment
    /// (two NICs on one switch, such as a test guest's virtio-net pair)
    /// moved from the calling namespace into `ns_a` and `ns_b` and set up
    /// the same way. They go back when the namespaces are deleted.
    pub fn adopt(ns_a: &NetNs, ns_b: &NetNs, a: &str, b: &str) -> Self {
        let (a_mac, b_mac) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b");
        for (ns, dev, mac) in [(ns_a, a, a_mac), (ns_b, b, b_mac)] {
            run("ip", &["link", "set", "dev", dev, "down"]);
            run("ip", &["link", "set", "dev", dev, "netns", &ns.name]);
            ns.ip(&["link", "set", "dev", dev, "address", mac]);
        }
        Self::configure(ns_a, ns_b, a.to_owned(), b.to_owned(), a_mac, b_mac)
    }

    fn configure(
        ns_a: &NetNs,
        ns_b: &NetNs,
        a: String,
        b: String,
        a_mac: &str,
        b_mac: &str,
    ) -> Self {
        let (a_ip, b_ip) = ("10.203.0.1", "10.203.0.2");
        for (ns, dev, ip, peer_ip, peer_mac) in
            [(ns_a, &a, a_ip, b_ip, b_mac), (ns_b, &b, b_ip, a_ip, a_mac)]
        {
            ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&[
                "neigh",
                "replace",
                peer_ip,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        let a_ifindex = ns_a
            .exec("cat", &[&format!("/sys/class/net/{a}/ifindex")])
            .trim()
            .parse()
            .expect("ifindex");
        Self {
            a,
            b,
            a_mac: a_mac.into(),
            b_mac: b_mac.into(),
            a_ip: a_ip.into(),
            b_ip: b_ip.into(),
            a_ifindex,
        }
    }
}
