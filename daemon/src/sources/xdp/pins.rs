//! Pinning the packet counter on a bpffs (`daemon.pin_path`), so that its
//! links and counter maps outlive the daemon:
//!
//! ```text
//! <pin_path>/maps-v<LAYOUT_VERSION>/<MAP NAME>   the counter maps
//! <pin_path>/links/<ifindex>-<native|generic>    one XDP link per interface
//! ```
//!
//! A restarted (or upgraded) daemon whose counter maps have the same
//! layout (map type, key and value size, max_entries, flags, and
//! [`LAYOUT_VERSION`] in the directory name) loads its program on the
//! pinned maps and moves each pinned link over to it with
//! `BPF_LINK_UPDATE`: the program never leaves the interface and the counts
//! go on. A layout that does not match is removed before the object loads
//! and created anew, said in the log.

use std::fs;
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use telemetryd_common::xdp::{
    InterfaceCounters, LowIfindexCounters, COUNTERS_MAP, COUNTER_SLOTS, DIRECT_IFINDEX_LIMIT,
    ERRORS_MAP, LOW_IFINDEX_COUNTERS_MAP, MAX_INTERFACES, PROGRAM_ERROR_SLOTS, SLOTS_MAP,
    SLOT_COUNTERS_MAP,
};
use tracing::{info, warn};

use crate::config::{Named as _, XdpMode};
use crate::sys;

/// The meaning of the counter maps' contents. Bump it when a map keeps its
/// shape but changes what it holds: a daemon never adopts another
/// version's maps.
pub const LAYOUT_VERSION: u32 = 1;

/// `BPF_F_MMAPABLE`, the low-ifindex table's flag.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The shape of one counter map, as the kernel reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct MapLayout {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapLayout {
    fn of(name: &'static str, info: &MapInfo) -> Option<Self> {
        Some(Self {
            name,
            map_type: info.map_type().ok()?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{:?} key {} value {} max_entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The counter maps of `xdp_packet_counter` as this build creates them
/// (`cpus`: rows of the low-ifindex table). The pinning test checks this
/// against what the loader creates: a restart adopts what it pinned.
pub fn counter_layouts(cpus: u32) -> [MapLayout; 5] {
    let counters = size_of::<InterfaceCounters>() as u32;
    [
        MapLayout {
            name: LOW_IFINDEX_COUNTERS_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<LowIfindexCounters>() as u32,
            max_entries: cpus,
            flags: BPF_F_MMAPABLE,
        },
        MapLayout {
            name: SLOTS_MAP,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 4,
            max_entries: DIRECT_IFINDEX_LIMIT,
            flags: 0,
        },
        MapLayout {
            name: SLOT_COUNTERS_MAP,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: counters,
            max_entries: COUNTER_SLOTS,
            flags: 0,
        },
        MapLayout {
            name: COUNTERS_MAP,
            map_type: MapType::PerCpuHash,
            key_size: 4,
            value_size: counters,
            max_entries: MAX_INTERFACES,
            flags: 0,
        },
        MapLayout {
            name: ERRORS_MAP,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: PROGRAM_ERROR_SLOTS,
            flags: 0,
        },
    ]
}

/// Why `daemon.pin_path` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("daemon.pin_path {}: {what}", path.display())]
pub struct PinPathError {
    path: PathBuf,
    what: String,
    #[source]
    source: io::Error,
}

/// One pinned XDP link found at start-up.
pub struct PinnedLink {
    pub ifindex: u32,
    pub mode: XdpMode,
    pub link: OwnedFd,
    path: PathBuf,
}

impl PinnedLink {
    /// Removes the pin (the link stays while `link` is open).
    pub fn unpin(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The pin directory, created.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Creates `root` and its folders (its parent must be on a bpffs).
    pub fn create(root: &Path) -> Result<Self, PinPathError> {
        let error = |what: &str, source| PinPathError {
            path: root.to_owned(),
            what: what.to_owned(),
            source,
        };
        let dir = Self {
            root: root.to_owned(),
        };
        let created = match fs::create_dir(root) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(error("creating it", e)),
        };
        if !sys::is_bpffs(root).map_err(|e| error("reading its file system", e))? {
            if created {
                let _ = fs::remove_dir(root);
            }
            return Err(error(
                "is not on a bpffs",
                io::Error::other("mount -t bpf bpf DIR, or use a directory under /sys/fs/bpf"),
            ));
        }
        for path in [dir.maps(), dir.links()] {
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(error("creating its folders", e)),
            }
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{LAYOUT_VERSION}"))
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Before the object loads: keeps the pinned maps when every one has
    /// the layout `wanted` says (the loader then uses them), else removes
    /// them all (and other layout versions' folders), logging why. Returns
    /// where each map is pinned, for the loader: it adopts a map pinned
    /// there, or creates and pins one.
    pub fn prepare_maps(&self, wanted: &[MapLayout]) -> Vec<(&'static str, PathBuf)> {
        let current = format!("maps-v{LAYOUT_VERSION}");
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("maps-v") && name != current {
                warn!(
                    path = %entry.path().display(),
                    layout = LAYOUT_VERSION,
                    "pinned counter maps of another layout version; replaced (counts start from zero)"
                );
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let pins: Vec<(&'static str, PathBuf)> = wanted
            .iter()
            .map(|layout| (layout.name, self.maps().join(layout.name)))
            .collect();
        let mut found = 0;
        let mut mismatch = None;
        for (layout, (_, path)) in wanted.iter().zip(&pins) {
            if !path.exists() {
                continue;
            }
            found += 1;
            let pinned = MapInfo::from_pin(path)
                .ok()
                .and_then(|info| MapLayout::of(layout.name, &info));
            if pinned.as_ref() != Some(layout) {
                mismatch = Some((layout, pinned));
                break;
            }
        }
        if let Some((layout, pinned)) = mismatch {
            warn!(
                map = layout.name,
                pinned = %pinned.map_or_else(|| "unreadable".to_owned(), |p| p.describe()),
                wanted = %layout.describe(),
                path = %self.maps().display(),
                "pinned counter map layout does not match; replaced (counts start from zero)"
            );
            for (_, path) in &pins {
                let _ = fs::remove_file(path);
            }
        } else if found == pins.len() {
            info!(path = %self.maps().display(), "pinned counter maps adopted");
        } else if found > 0 {
            warn!(
                path = %self.maps().display(),
                found,
                "some pinned counter maps are missing; replaced (counts start from zero)"
            );
            for (_, path) in &pins {
                let _ = fs::remove_file(path);
            }
        } else {
            info!(path = %self.maps().display(), "counter maps pinned");
        }
        pins
    }

    fn link_path(&self, ifindex: u32, mode: XdpMode) -> PathBuf {
        self.links().join(format!("{ifindex}-{}", mode.name()))
    }

    /// Pins the link of `ifindex`.
    pub fn pin_link(&self, link: BorrowedFd<'_>, ifindex: u32, mode: XdpMode) -> io::Result<()> {
        let path = self.link_path(ifindex, mode);
        let _ = fs::remove_file(&path);
        sys::obj_pin(link, &path)
    }

    /// Removes the pin of `ifindex`'s link, whatever its mode.
    pub fn unpin_link(&self, ifindex: u32) {
        for mode in [XdpMode::Native, XdpMode::Generic] {
            let _ = fs::remove_file(self.link_path(ifindex, mode));
        }
    }

    /// The links pinned here; unreadable pins are removed (logged).
    pub fn pinned_links(&self) -> Vec<PinnedLink> {
        let mut links = Vec::new();
        for entry in fs::read_dir(self.links()).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name.split_once('-').and_then(|(ifindex, mode)| {
                let mode = match mode {
                    "native" => XdpMode::Native,
                    "generic" => XdpMode::Generic,
                    _ => return None,
                };
                Some((ifindex.parse().ok()?, mode))
            });
            match parsed.map(|p| (p, sys::obj_get(&path))) {
                Some(((ifindex, mode), Ok(link))) => links.push(PinnedLink {
                    ifindex,
                    mode,
                    link,
                    path,
                }),
                Some((_, Err(error))) => {
                    warn!(path = %path.display(), %error, "unreadable pinned link; removed");
                    let _ = fs::remove_file(&path);
                }
                None => {
                    warn!(path = %path.display(), "not a pinned link of telemetryd; left alone")
                }
            }
        }
        links
    }
}

/// `telemetryd unpin`: detaches every pinned link and removes everything
/// under `root`, and `root` itself. Returns what it removed.
pub fn unpin_all(root: &Path) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    if !root.exists() {
        return Ok(removed);
    }
    let dir = PinDir {
        root: root.to_owned(),
    };
    for link in dir.pinned_links() {
        sys::link_detach(link.link.as_fd())?;
        link.unpin();
        removed.push(format!("xdp link of ifindex {} (detached)", link.ifindex));
    }
    for folder in fs::read_dir(root)?.flatten() {
        for entry in fs::read_dir(folder.path()).into_iter().flatten().flatten() {
            removed.push(format!("{}", entry.path().display()));
        }
    }
    fs::remove_dir_all(root)?;
    removed.push(format!("{}", root.display()));
    Ok(removed)
}
