//! The embedded eBPF object and loading it.

use aya::{Ebpf, EbpfLoader};
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
    #[error("eBPF map {map} is missing from the embedded object")]
    MissingMap { map: &'static str },
    /// The kernel refused the program; `source` carries the verifier log.
    #[error("loading eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
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
}

impl LoadedObject {
    pub fn load() -> Result<Self, LoadError> {
        Self::load_with_globals(&[])
    }

    /// Like [`LoadedObject::load`], first setting global variables of the
    /// programs (name, bytes of the value), e.g. kernel struct offsets read
    /// from BTF. Every name must exist in the object.
    pub fn load_with_globals(globals: &[(&str, &[u8])]) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        for (name, value) in globals {
            loader.override_global(name, *value, true);
        }
        let ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        Ok(Self { ebpf })
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
