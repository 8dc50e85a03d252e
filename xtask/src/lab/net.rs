//! The lab's network: a namespace per node joined in a ring by veth links
//! with static routes, and a monitoring namespace whose bridge reaches every
//! node over a management veth. Nothing is created in the host's namespace:
//! each veth is made inside one lab namespace with its peer placed directly
//! in the other, so the host never sees an interface of the lab.
//!
//! Names: namespaces `lab-<pid>-n<i>` and `lab-<pid>-mon` (the pid of the
//! lab process, so a stale one is recognisable once that process is gone);
//! interfaces `lab-to-n<j>` (node i's link to node j), `lab-mgmt` (node
//! side of the management link), `lab-n<i>` and the bridge `lab-br` (in the
//! monitoring namespace).
//!
//! Addresses come from 198.18.0.0/15, the range set aside for benchmark
//! networks (RFC 2544), and never leave the lab's namespaces.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

pub use crate::command::run;
use crate::step;

/// Namespace and interface names start with this.
pub const PREFIX: &str = "lab";

/// The monitoring namespace's address on its bridge (Alertmanager listens
/// here for the nodes' webhooks).
pub const MONITOR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// Node `i`'s (1-based) management address: Prometheus scrapes it.
pub fn mgmt_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i as u8)
}

/// Node `i`'s own address (on its loopback), reached over the mesh.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, i as u8)
}

/// Node `i`'s address on ring link `k` (the link from node k to node k+1).
fn link_ip(k: usize, near_end: bool) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + k as u8, if near_end { 1 } else { 2 })
}

/// Node `i`'s interface towards node `j`.
pub fn link_device(j: usize) -> String {
    format!("{PREFIX}-to-n{j}")
}

/// The node's name: its namespace's UTS hostname, hence the `instance` of
/// its webhook alerts, and its Prometheus `instance` label.
pub fn node_name(i: usize) -> String {
    format!("{PREFIX}-n{i}")
}

/// The neighbours of node `i` in a ring of `n`: (clockwise, counter-clockwise).
pub fn neighbours(i: usize, n: usize) -> (usize, usize) {
    (i % n + 1, (i + n - 2) % n + 1)
}

/// The next hop from node `i` towards node `j` (shortest way round the
/// ring; clockwise on a tie).
pub fn next_hop(i: usize, j: usize, n: usize) -> usize {
    let clockwise = (j + n - i) % n;
    let (cw, ccw) = neighbours(i, n);
    if clockwise <= n / 2 {
        cw
    } else {
        ccw
    }
}

/// A named network namespace, deleted (with every interface and nftables
/// table in it) on drop.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No IPv6: the kernel would send neighbour discovery and MLD on its
        // own; the lab's traffic is the workload's and the monitoring's.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<()> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The ring of nodes and the monitoring namespace.
pub struct Topology {
    pub nodes: Vec<Namespace>,
    pub monitor: Namespace,
}

impl Topology {
    /// `n` nodes (at least 3) in a ring, each also on the management bridge.
    pub fn build(tag: &str, n: usize) -> Result<Self> {
        if n < 3 {
            bail!("a ring needs at least 3 nodes, not {n}");
        }
        step(&format!(
            "lab network: {n} node namespaces in a ring and a monitoring namespace"
        ));
        let monitor = Namespace::new(format!("{PREFIX}-{tag}-mon"))?;
        monitor.ip(&["link", "add", "lab-br", "type", "bridge"])?;
        monitor.ip(&["addr", "add", &format!("{MONITOR_IP}/24"), "dev", "lab-br"])?;
        monitor.ip(&["link", "set", "lab-br", "up"])?;

        let mut nodes = Vec::with_capacity(n);
        for i in 1..=n {
            let ns = Namespace::new(format!("{PREFIX}-{tag}-n{i}"))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            // Ties on an even ring route one way out and the other way back.
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            ns.ip(&["addr", "add", &format!("{}/32", node_ip(i)), "dev", "lo"])?;
            // Management link: lab-mgmt in the node, lab-n<i> on the bridge.
            let peer = format!("{PREFIX}-n{i}");
            ns.ip(&[
                "link",
                "add",
                "lab-mgmt",
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &monitor.name,
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", mgmt_ip(i)),
                "dev",
                "lab-mgmt",
            ])?;
            ns.ip(&["link", "set", "lab-mgmt", "up"])?;
            monitor.ip(&["link", "set", &peer, "master", "lab-br", "up"])?;
            nodes.push(ns);
        }

        // Ring links: link k joins node k and node k+1 (node n and node 1).
        for k in 1..=n {
            let (a, b) = (k, k % n + 1);
            let (ns_a, ns_b) = (&nodes[a - 1], &nodes[b - 1]);
            let (dev_a, dev_b) = (link_device(b), link_device(a));
            ns_a.ip(&[
                "link", "add", &dev_a, "type", "veth", "peer", "name", &dev_b, "netns", &ns_b.name,
            ])?;
            for (ns, dev, near) in [(ns_a, &dev_a, true), (ns_b, &dev_b, false)] {
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", link_ip(k, near)),
                    "dev",
                    dev,
                ])?;
                ns.ip(&["link", "set", dev, "up"])?;
            }
        }

        // Routes to every other node's address, via the next hop's end of
        // the link towards it.
        for i in 1..=n {
            for j in (1..=n).filter(|&j| j != i) {
                let hop = next_hop(i, j, n);
                let via = if hop == i % n + 1 {
                    link_ip(i, false)
                } else {
                    link_ip(hop, true)
                };
                nodes[i - 1].ip(&[
                    "route",
                    "add",
                    &format!("{}/32", node_ip(j)),
                    "via",
                    &via.to_string(),
                    "dev",
                    &link_device(hop),
                ])?;
            }
        }
        Ok(Self { nodes, monitor })
    }

    pub fn node(&self, i: usize) -> &Namespace {
        &self.nodes[i - 1]
    }
}

/// Deletes lab namespaces whose lab process is gone (a run that was
/// killed before it could clean up): `lab-<pid>-...` with no process <pid>.
pub fn remove_stale_namespaces() -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            step(&format!("removing stale lab namespace {name}"));
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_routes_take_the_short_way() {
        assert_eq!(neighbours(1, 5), (2, 5));
        assert_eq!(neighbours(5, 5), (1, 4));
        assert_eq!(next_hop(1, 3, 5), 2);
        assert_eq!(next_hop(1, 4, 5), 5);
        assert_eq!(next_hop(3, 1, 5), 2);
        assert_eq!(next_hop(5, 2, 5), 1);
        // A tie on an even ring goes clockwise.
        assert_eq!(next_hop(1, 4, 6), 2);
        for n in 3..=9 {
            for i in 1..=n {
                for j in (1..=n).filter(|&j| j != i) {
                    // Following next hops reaches j in at most n/2 hops.
                    let (mut at, mut hops) = (i, 0);
                    while at != j {
                        at = next_hop(at, j, n);
                        hops += 1;
                        assert!(hops <= n / 2, "{i} -> {j} in a ring of {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        for name in [
            link_device(99),
            "lab-mgmt".into(),
            format!("{PREFIX}-n99"),
            "lab-br".into(),
        ] {
            assert!(name.len() <= 15 && name.starts_with(PREFIX), "{name}");
        }
    }
}
