//! Debian kernel packages for the guests: which one is newest (asked of apt
//! at run time), downloading and unpacking it once into `target/vm/kernels/`,
//! and the kernel modules the guests load, with their dependencies.
//!
//! A package ships no `modules.dep` (its postinst runs depmod), so the
//! dependencies are read from each module's `.modinfo` (`depends=`); 6.12's
//! modules are `.ko.xz` and are decompressed here (busybox insmod cannot).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::command::{output, run};
use crate::step;

/// A kernel line the matrix covers, and how apt names its packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// What a user types: `cargo xtask vm-test 6.1`.
    pub name: &'static str,
    /// Prefix of the package name before the number that grows with each
    /// release: `linux-image-6.1.0-57-amd64`, `linux-image-6.12.117+deb12-amd64`.
    prefix: &'static str,
    /// What follows that number.
    suffix: &'static str,
}

/// Debian 12's 6.1 LTS and the 6.12 LTS (bookworm-security; the kernel of
/// Debian 13). The generic `-amd64` flavour: `-cloud-amd64` has no 9p.
pub const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
    },
];

/// Modules every guest loads at boot (with their dependencies): 9p and
/// overlayfs for the root, veth and virtio-net for the network tests,
/// nftables (with `numgen`) for the drop tests, the bridge for the loss by
/// neighbour test. A name with no module file is built into that kernel.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "virtio_net",
    "nf_tables",
    "nft_numgen",
    "bridge",
];

/// One kernel, unpacked and ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: Series,
    pub package: String,
    /// The Debian package version apt chose, e.g. `6.12.117-1~deb12u1`.
    pub version: String,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// Decompressed modules in load order (dependencies first).
    pub modules: Vec<PathBuf>,
}

impl Kernel {
    /// `linux-image-6.12.117+deb12-amd64 6.12.117-1~deb12u1`
    pub fn describe(&self) -> String {
        format!("{} {}", self.package, self.version)
    }
}

/// The newest package of `series` apt knows, downloaded and unpacked under
/// `cache` (done once per package version).
pub fn fetch(series: Series, cache: &Path) -> Result<Kernel> {
    let (package, version) = match newest(series)? {
        Some(found) => found,
        None => {
            step("apt knows no such kernel package yet: apt-get update");
            apt_update()?;
            newest(series)?.with_context(|| {
                format!(
                    "apt has no package {}N{} (is bookworm-security in the apt sources?)",
                    series.prefix, series.suffix
                )
            })?
        }
    };
    step(&format!("kernel {}: {package} {version}", series.name));
    let dir = cache.join(format!("{package}_{}", version.replace(['~', ':'], "_")));
    // The marker holds the module list it was unpacked for: a cache made
    // before a module joined GUEST_MODULES is unpacked again.
    let done = dir.join("ready");
    let wanted = GUEST_MODULES.join("\n");
    if fs::read_to_string(&done).ok().as_deref() != Some(wanted.as_str()) {
        unpack(&package, &version, &dir)?;
        fs::write(&done, wanted.as_bytes())?;
    }
    load(series, package, version, &dir)
}

/// `(package, version)` of the newest package of `series` apt lists.
fn newest(series: Series) -> Result<Option<(String, String)>> {
    let pattern = format!(
        "^{}[0-9]+{}$",
        regex_escape(series.prefix),
        regex_escape(series.suffix)
    );
    let out = output("apt-cache", &["search", "--names-only", &pattern])?;
    let best = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let number: u32 = name
                .strip_prefix(series.prefix)?
                .strip_suffix(series.suffix)?
                .parse()
                .ok()?;
            Some((number, name.to_owned()))
        })
        .max();
    let Some((_, package)) = best else {
        return Ok(None);
    };
    let show = output("apt-cache", &["show", "--no-all-versions", &package])?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("apt-cache show {package} names no version"))?
        .trim()
        .to_owned();
    Ok(Some((package, version)))
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if ".+*?()[]{}|^$\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Downloads `package=version`, keeps `boot/` and the modules the guests
/// need (decompressed), and drops the rest of the ~470 MB tree.
fn unpack(package: &str, version: &str, dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    let download = dir.join("download");
    fs::create_dir_all(&download)?;
    let spec = format!("{package}={version}");
    let started = std::time::Instant::now();
    if !download_into(&download, &spec)? {
        step("apt-get download failed; updating the package lists and trying once more");
        apt_update()?;
        if !download_into(&download, &spec)? {
            bail!("apt-get download {spec} failed");
        }
    }
    let deb = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = dir.join("tree");
    run("dpkg-deb", &["-x", path_str(&deb)?, path_str(&tree)?])?;
    step(&format!(
        "downloaded and unpacked {} ({} MB) in {:.1} s",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        fs::metadata(&deb)?.len() / 1_000_000,
        started.elapsed().as_secs_f64()
    ));
    fs::create_dir_all(dir.join("boot"))?;
    for entry in fs::read_dir(tree.join("boot"))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("vmlinuz-") || name.starts_with("config-") {
            fs::copy(&path, dir.join("boot").join(&*name))?;
        }
    }
    let release = single_dir(&tree.join("lib/modules"))
        .or_else(|_| single_dir(&tree.join("usr/lib/modules")))?;
    let index = ModuleIndex::scan(&release)?;
    let order = index.load_order(GUEST_MODULES)?;
    let modules = dir.join("modules");
    fs::create_dir_all(&modules)?;
    let mut list = String::new();
    for name in &order {
        let source = &index.files[name];
        fs::write(modules.join(format!("{name}.ko")), decompress(source)?)?;
        list.push_str(name);
        list.push('\n');
    }
    fs::write(modules.join("load-order"), list)?;
    fs::write(
        dir.join("release"),
        release
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .as_bytes(),
    )?;
    fs::remove_dir_all(&tree)?;
    fs::remove_dir_all(&download)?;
    Ok(())
}

fn download_into(dir: &Path, spec: &str) -> Result<bool> {
    step(&format!("apt-get download {spec}"));
    let status = Command::new("apt-get")
        .args(["download", "-qq", spec])
        .current_dir(dir)
        .status()
        .context("running apt-get download")?;
    Ok(status.success())
}

fn apt_update() -> Result<()> {
    run("apt-get", &["update", "-qq"])
}

fn load(series: Series, package: String, version: String, dir: &Path) -> Result<Kernel> {
    let release = fs::read_to_string(dir.join("release"))?.trim().to_owned();
    let modules_dir = dir.join("modules");
    let modules = fs::read_to_string(modules_dir.join("load-order"))?
        .lines()
        .map(|name| modules_dir.join(format!("{name}.ko")))
        .collect();
    Ok(Kernel {
        series,
        package,
        version,
        vmlinuz: dir.join(format!("boot/vmlinuz-{release}")),
        config: dir.join(format!("boot/config-{release}")),
        modules,
    })
}

fn single_dir(parent: &Path) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(parent)
        .with_context(|| format!("reading {}", parent.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    if dirs.len() != 1 {
        bail!(
            "{} holds {} kernel releases, not one",
            parent.display(),
            dirs.len()
        );
    }
    Ok(dirs.remove(0))
}

/// Every module file of one kernel release, by module name.
struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
}

impl ModuleIndex {
    fn scan(release_dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        let mut stack = vec![release_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = module_name(&path) {
                    files.insert(name, path);
                }
            }
        }
        Ok(Self { files })
    }

    /// `wanted` and everything they depend on, dependencies first. A wanted
    /// name without a file is built in (nothing to load).
    fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            if self.files.contains_key(*name) {
                self.visit(name, &mut seen, &mut order)?;
            } else {
                step(&format!("module {name}: no file, built into this kernel"));
            }
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let file = self
            .files
            .get(name)
            .with_context(|| format!("module {name} is a dependency but has no file"))?;
        let module = decompress(file)?;
        for dep in depends(&module) {
            self.visit(&dep, seen, order)?;
        }
        // `softdep=pre:` names what must be there before the module's init
        // runs (libcrc32c asks the crypto API for "crc32c"). Such a name is
        // an algorithm, not always a file: its portable implementation is
        // `<name>_generic`.
        for soft in soft_pre_depends(&module) {
            let generic = format!("{soft}_generic");
            if self.files.contains_key(&soft) {
                self.visit(&soft, seen, order)?;
            } else if self.files.contains_key(&generic) {
                self.visit(&generic, seen, order)?;
            }
        }
        order.push(name.to_owned());
        Ok(())
    }
}

/// `veth` for `.../veth.ko.xz`; module names use `_` where files may use `-`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko.xz", ".ko.zst", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// The value of `key=` in a module's `.modinfo` section.
fn modinfo<'a>(module: &'a [u8], key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let key = format!("\0{key}=");
    let at = module
        .windows(key.len())
        .position(|w| w == key.as_bytes())?;
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]))
}

/// The `depends=` list of a module.
fn depends(module: &[u8]) -> Vec<String> {
    modinfo(module, "depends")
        .map(|list| {
            list.split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The `pre:` names of a module's `softdep=` (`softdep=pre: crc32c`).
fn soft_pre_depends(module: &[u8]) -> Vec<String> {
    let Some(soft) = modinfo(module, "softdep") else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut pre = false;
    for word in soft.split_whitespace() {
        match word {
            "pre:" => pre = true,
            "post:" => pre = false,
            name if pre => names.push(name.replace('-', "_")),
            _ => {}
        }
    }
    names
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .args(["-dc", path_str(path)?])
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

pub fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_dependencies() {
        assert_eq!(
            module_name(Path::new("/x/kernel/net/9p/9pnet_virtio.ko.xz")).as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(
            module_name(Path::new("/x/crc32c-intel.ko")).as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name(Path::new("/x/modules.order")), None);
        let modinfo = b"\x7fELF...\0license=GPL\0depends=netfs,9pnet\0retpoline=Y\0";
        assert_eq!(depends(modinfo), ["netfs", "9pnet"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
        assert_eq!(
            soft_pre_depends(b"\0softdep=pre: crc32c post: x\0depends=\0"),
            ["crc32c"]
        );
    }

    #[test]
    fn package_patterns_are_escaped() {
        assert_eq!(regex_escape("6.12.+deb"), "6\\.12\\.\\+deb");
    }
}
