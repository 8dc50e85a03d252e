//! The embedded eBPF object and loading it.

use aya::{Ebpf, EbpfLoader};
use telemetryd_common::events::{
    sample_threshold, DEFAULT_RING_BUFFER_SIZE, EVENTS_MAP, SAMPLE_RATE_GLOBAL,
    SAMPLE_THRESHOLD_GLOBAL,
};
use telemetryd_common::syscalls as sc;
use telemetryd_common::xdp;
use tracing::debug;

/// The object built from `ebpf-programs/` by `build.rs`, embedded so the
/// binary is self-contained. Empty when built with `AYA_BUILD_SKIP=1`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/telemetryd-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this telemetryd binary was built without its eBPF programs (AYA_BUILD_SKIP=1); \
         rebuild it with the eBPF toolchain (`cargo xtask setup`)"
    )]
    NotEmbedded,
    #[error("parsing the embedded eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("eBPF program {program} is missing from the embedded object")]
    MissingProgram { program: &'static str },
    /// The kernel refused the program for lack of a capability.
    #[error("loading eBPF program {program} was refused ({source}): it needs {needs}")]
    NotPermitted {
        program: &'static str,
        needs: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map} is missing from the embedded object")]
    MissingMap { map: &'static str },
    /// The kernel refused the program; `source` carries the verifier log.
    #[error("loading eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "ring buffer size {size} bytes: the kernel needs a power-of-two multiple of the \
         page size ({page_size} bytes here)"
    )]
    RingBufferSize { size: u32, page_size: u64 },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The embedded object, parsed and its maps created in the kernel. Programs
/// are loaded one by one, only those the configuration asks for.
pub struct LoadedObject {
    pub ebpf: Ebpf,
    /// The XDP entry point for this object's sample rate, see
    /// [`telemetryd_common::xdp::program_symbol`].
    pub xdp_program: &'static str,
}

/// Load-time settings of the object: map sizes and read-only globals, which
/// cannot change once the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Publish 1 frame in N to the packet events ring buffer; 0 = off.
    pub sample_rate: u32,
    /// Bytes of the packet events ring buffer.
    pub ring_buffer_size: u32,
    /// Entries of the syscall tracer's in-flight map.
    pub max_in_flight: u32,
    /// tgid the syscall tracer never traces (the daemon itself).
    pub self_tgid: u32,
    /// Trace only the tgids written into the pid map.
    pub filter_pids: bool,
    /// cgroup v2 id to trace; 0 = every cgroup.
    pub cgroup_id: u64,
    /// Offset of the syscall number in `struct pt_regs`.
    pub nr_offset: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            sample_rate: 0,
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
            max_in_flight: sc::DEFAULT_MAX_IN_FLIGHT,
            self_tgid: std::process::id(),
            filter_pids: false,
            cgroup_id: 0,
            nr_offset: PT_REGS_NR_OFFSET,
        }
    }
}

impl LoadOptions {
    /// Sets what `[xdp]` decides at load time (sampling, ring buffer size).
    pub fn with_xdp(self, xdp: &crate::config::XdpConfig) -> Self {
        Self {
            sample_rate: xdp.sample_rate,
            ring_buffer_size: xdp.ring_buffer_size,
            ..self
        }
    }
}

/// `offsetof(struct pt_regs, orig_ax)`: fifteen `unsigned long` before it
/// (arch/x86/include/asm/ptrace.h).
#[cfg(target_arch = "x86_64")]
pub const PT_REGS_NR_OFFSET: u32 = 15 * 8;
/// `offsetof(struct pt_regs, syscallno)`: `regs[31], sp, pc, pstate,
/// orig_x0` before it (arch/arm64/include/asm/ptrace.h).
#[cfg(target_arch = "aarch64")]
pub const PT_REGS_NR_OFFSET: u32 = 35 * 8;

impl LoadedObject {
    /// Loads with [`LoadOptions::default`]: packet events off, the daemon's
    /// own tgid excluded from syscall tracing, no filters.
    pub fn load() -> Result<Self, LoadError> {
        Self::load_with(&LoadOptions::default())
    }

    pub fn load_with(options: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_with_globals(options, &[])
    }

    /// Like [`LoadedObject::load_with`], also setting global variables of
    /// the programs (name, bytes of the value), e.g. kernel struct offsets
    /// read from BTF. Every name must exist in the object.
    pub fn load_with_globals(
        options: &LoadOptions,
        globals: &[(&str, &[u8])],
    ) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        check_ring_buffer_size(options.ring_buffer_size, page_size())?;
        raise_memlock_limit();
        let filter_pids = u32::from(options.filter_pids);
        let threshold = sample_threshold(options.sample_rate);
        let cpus = cpu_id_bound();
        let mut loader = EbpfLoader::new();
        // Rust eBPF programs carry no CO-RE relocations, so the kernel BTF
        // is not needed as a relocation target; programs that need it
        // (fentry, tp_btf) load it themselves.
        loader
            .btf(None)
            .override_global(SAMPLE_RATE_GLOBAL, &options.sample_rate, true)
            .override_global(SAMPLE_THRESHOLD_GLOBAL, &threshold, true)
            .map_max_entries(EVENTS_MAP, options.ring_buffer_size)
            .map_max_entries(xdp::LOW_IFINDEX_COUNTERS_MAP, cpus)
            .map_max_entries(xdp::FLOOR_COUNTERS_MAP, cpus)
            .map_max_entries(sc::IN_FLIGHT_MAP, options.max_in_flight)
            .override_global(sc::SELF_TGID_GLOBAL, &options.self_tgid, true)
            .override_global(sc::FILTER_PIDS_GLOBAL, &filter_pids, true)
            .override_global(sc::FILTER_CGROUP_GLOBAL, &options.cgroup_id, true)
            .override_global(sc::NR_OFFSET_GLOBAL, &options.nr_offset, true);
        for (name, value) in globals {
            loader.override_global(name, *value, true);
        }
        let ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        Ok(Self {
            ebpf,
            xdp_program: xdp::program_symbol(options.sample_rate),
        })
    }

    /// Routes the programs' `aya-log` records to the daemon's log. Returns
    /// `None` (and says why at debug level) when no program logs.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                debug!(%error, "no kernel-side log channel");
                None
            }
        }
    }

    /// Takes a map out of the object so a collector can own it.
    pub fn take_map<T>(&mut self, map: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let raw = self
            .ebpf
            .take_map(map)
            .ok_or(LoadError::MissingMap { map })?;
        T::try_from(raw).map_err(|source| LoadError::Map { map, source })
    }
}

/// The kernel takes a ring buffer of a power-of-two number of pages; the
/// configuration checks the power of two against 4 KiB pages, this against
/// the real page size (larger on some arm64 and ppc64 kernels).
fn check_ring_buffer_size(size: u32, page_size: u64) -> Result<(), LoadError> {
    if size.is_power_of_two() && u64::from(size) >= page_size && u64::from(size) % page_size == 0 {
        Ok(())
    } else {
        Err(LoadError::RingBufferSize { size, page_size })
    }
}

/// Highest possible CPU id + 1: the rows of the XDP low-ifindex table,
/// which the program indexes by CPU id. Possible CPUs are `0..n` on every
/// kernel we know; should the list have holes, the table still covers the
/// highest id. Unreadable: as many rows as aya counts CPUs (a CPU beyond
/// the table is counted through the hash, so nothing is lost).
fn cpu_id_bound() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|list| highest_cpu_in(&list))
        .map(|highest| highest + 1)
        .unwrap_or_else(|| aya::util::nr_cpus().map_or(1, |n| n as u32))
}

/// The highest id of a kernel CPU list ("0-3,8-11\n" -> 11).
fn highest_cpu_in(list: &str) -> Option<u32> {
    list.trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.trim().parse::<u32>().ok())
        .max()
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads its integer argument.
    #[allow(unsafe_code)]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use
/// memory cgroups and ignore it. Raising it is harmless either way.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct we pass by reference.
    #[allow(unsafe_code)]
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if ret != 0 {
        // Only matters before 5.11; later kernels account BPF memory to cgroups.
        debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_size_must_be_whole_pages() {
        assert!(check_ring_buffer_size(4096, 4096).is_ok());
        assert!(check_ring_buffer_size(1 << 20, 4096).is_ok());
        assert!(check_ring_buffer_size(4096, 16384).is_err());
        assert!(check_ring_buffer_size(16384, 16384).is_ok());
        assert!(check_ring_buffer_size(3 * 4096, 4096).is_err());
        assert!(page_size() >= 4096);
    }

    #[test]
    fn the_cpu_table_covers_the_highest_possible_cpu() {
        assert_eq!(highest_cpu_in("0\n"), Some(0));
        assert_eq!(highest_cpu_in("0-1\n"), Some(1));
        assert_eq!(highest_cpu_in("0-3,8-11\n"), Some(11));
        assert_eq!(highest_cpu_in("0,2,5"), Some(5));
        assert_eq!(highest_cpu_in(""), None);
        assert_eq!(highest_cpu_in("x-y"), None);
        let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
        assert!(
            cpu_id_bound() as usize >= aya::util::nr_cpus().unwrap(),
            "{possible}"
        );
    }
}
