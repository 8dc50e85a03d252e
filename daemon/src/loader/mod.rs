//! The embedded eBPF object and loading it. Each source contributes its own
//! load-time settings (read-only globals, map sizes) through [`LoadSettings`];
//! the loader knows none of them. Together with `sources`, the only part of
//! the daemon that touches aya.

pub mod probe;

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
    #[error("eBPF program {program}: {source}")]
    Descriptor {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What one source sets before the object's maps exist: its read-only
/// globals (which the kernel freezes, so the verifier prunes what they turn
/// off) and the sizes of its maps.
pub trait LoadSettings {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>);
}

/// The embedded object, parsed and its maps created in the kernel. Programs
/// are loaded one by one by the sources that use them; sources take the
/// maps they read.
pub struct LoadedObject {
    pub ebpf: Ebpf,
}

impl LoadedObject {
    /// Loads the embedded object with every source's `settings`.
    pub fn load(settings: &[&dyn LoadSettings]) -> Result<Self, LoadError> {
        Self::load_elf(OBJECT, settings)
    }

    /// Loads another object built from `ebpf-programs/` (the benchmarks'
    /// object, which adds reference programs to the daemon's).
    pub fn load_elf(elf: &[u8], settings: &[&dyn LoadSettings]) -> Result<Self, LoadError> {
        if elf.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        // Rust eBPF programs carry no CO-RE relocations, so the kernel BTF
        // is not needed as a relocation target; programs that need it
        // (fentry, tp_btf) are handed it by their source.
        loader.btf(None);
        for source in settings {
            source.apply(&mut loader);
        }
        let ebpf = loader.load(elf).map_err(LoadError::Object)?;
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

    /// Takes a map out of the object so a source can own it.
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

    /// A program of the object, as its type.
    pub fn program_mut<'a, T>(&'a mut self, program: &'static str) -> Result<&'a mut T, LoadError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf
            .program_mut(program)
            .ok_or(LoadError::MissingProgram { program })?
            .try_into()
            .map_err(|source| LoadError::Program { program, source })
    }
}

/// Forwards `aya-log` records from the kernel as they arrive.
pub async fn forward_logs(mut logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use std::os::fd::AsFd as _;
    let ready = match crate::sys::readable(logger.as_fd()) {
        Ok(ready) => ready,
        Err(error) => {
            tracing::warn!(%error, "kernel-side logs are not forwarded");
            return;
        }
    };
    loop {
        let mut guard = match ready.readable().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::warn!(%error, "kernel-side log channel failed");
                return;
            }
        };
        logger.flush();
        guard.clear_ready();
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use
/// memory cgroups and ignore it. Raising it is harmless either way.
fn raise_memlock_limit() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    if let Err(error) = setrlimit(Resource::Memlock, unlimited) {
        debug!(
            %error,
            "could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11"
        );
    }
}
