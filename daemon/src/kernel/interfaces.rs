//! Network interfaces as the kernel reports them in sysfs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const SYS_CLASS_NET: &str = "/sys/class/net";
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub up: bool,
    pub loopback: bool,
}

/// Reads one interface; `Ok(None)` when it does not exist.
pub fn lookup(name: &str) -> io::Result<Option<Interface>> {
    lookup_in(Path::new(SYS_CLASS_NET), name)
}

/// Every interface of this network namespace, sorted by ifindex.
pub fn list() -> io::Result<Vec<Interface>> {
    let mut all = Vec::new();
    for entry in fs::read_dir(SYS_CLASS_NET)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(iface) = lookup_in(Path::new(SYS_CLASS_NET), name)? {
            all.push(iface);
        }
    }
    all.sort_by_key(|i| i.ifindex);
    Ok(all)
}

fn lookup_in(root: &Path, name: &str) -> io::Result<Option<Interface>> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Ok(None);
    }
    let dir = root.join(name);
    let ifindex = match read_number(&dir.join("ifindex"), 10) {
        Ok(n) => n,
        Err(e) if vanishing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let flags = match read_number(&dir.join("flags"), 16) {
        Ok(n) => n,
        Err(e) if vanishing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(Interface {
        name: name.to_owned(),
        ifindex,
        up: flags & IFF_UP != 0,
        loopback: flags & IFF_LOOPBACK != 0,
    }))
}

/// What reading an attribute of an interface that is being removed gives:
/// its directory is gone (ENOENT), or still there while the device is
/// unregistered (sysfs answers EINVAL; ENODEV from some attributes). Found
/// by the soak's interface churn: one such interface failed the whole
/// listing (`listing interfaces: Invalid argument`).
fn vanishing(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENODEV))
}

/// The kernel's own counters of an interface (`statistics/<counter>`).
pub fn statistic(name: &str, counter: &str) -> io::Result<u64> {
    let path: PathBuf = [SYS_CLASS_NET, name, "statistics", counter]
        .iter()
        .collect();
    let text = fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_number(path: &Path, radix: u32) -> io::Result<u32> {
    let text = fs::read_to_string(path)?;
    let text = text.trim();
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u32::from_str_radix(digits, radix).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_as_loopback() {
        let all = list().expect("listing /sys/class/net");
        let lo = all.iter().find(|i| i.name == "lo").expect("lo exists");
        assert!(lo.loopback);
        assert_eq!(lo.ifindex, 1);
    }

    /// An interface that goes away while it is read is not listed; other
    /// errors still fail the listing.
    #[test]
    fn vanishing_interfaces_are_none() {
        assert!(vanishing(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(vanishing(&io::Error::from_raw_os_error(libc::ENODEV)));
        assert!(vanishing(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(!vanishing(&io::Error::from_raw_os_error(libc::EACCES)));
        // Its directory still there, its flags already gone.
        let root = std::env::temp_dir().join(format!("td-ifaces-{}", std::process::id()));
        std::fs::create_dir_all(root.join("veth9")).unwrap();
        std::fs::write(root.join("veth9/ifindex"), "9\n").unwrap();
        let got = lookup_in(&root, "veth9");
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(got.unwrap(), None);
    }

    #[test]
    fn missing_and_bad_names_are_none() {
        assert_eq!(lookup("telemetryd-no-such-if").unwrap(), None);
        assert_eq!(lookup("../lo").unwrap(), None);
        assert_eq!(lookup("").unwrap(), None);
    }
}
