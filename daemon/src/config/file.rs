//! Reading the configuration file within bounds: a regular file of at most
//! [`MAX_FILE_SIZE`] bytes of UTF-8. Anything else (a FIFO, a device such as
//! `/dev/zero`, a directory, a socket) is refused at once, without waiting
//! for a writer: the file is opened with `O_NONBLOCK` and checked with
//! `fstat` before a byte is read, and never more than the cap is read even
//! when the file grows meanwhile.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::ConfigError;

/// The largest configuration file accepted: 1 MiB (the shipped, fully
/// commented file is under 20 KiB).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// What identifies one version of the file: a rename gives another inode,
/// an in-place rewrite another size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One read of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileText {
    pub text: String,
    /// The file as `fstat` saw it before the read.
    pub stamp: Stamp,
    /// `fstat` after the read differed from before: the file was being
    /// written while it was read, and `text` may be torn.
    pub changed_while_reading: bool,
}

/// Reads `path` within the bounds above; errors name the path and why.
pub fn read(path: &Path) -> Result<FileText, ConfigError> {
    let refuse = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let io = |source: std::io::Error| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO with no writer returns at once instead of
    // blocking; O_NOCTTY: a terminal never becomes ours.
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let before = file.metadata().map_err(io)?;
    let kind = before.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(refuse(format!(
            "is {what}; the configuration must be a regular file"
        )));
    }
    let too_large = |size: u64| {
        refuse(format!(
            "is {size} bytes or more; a configuration file may be at most {MAX_FILE_SIZE} \
             bytes (1 MiB)"
        ))
    };
    if before.size() > MAX_FILE_SIZE {
        return Err(too_large(before.size()));
    }
    let mut bytes = Vec::with_capacity(before.size() as usize);
    (&mut file)
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    let after = file.metadata().map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        refuse(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let stamp = Stamp::of(&before);
    Ok(FileText {
        changed_while_reading: Stamp::of(&after) != stamp || text.len() as u64 != stamp.size,
        text,
        stamp,
    })
}

/// FNV-1a (64 bit) of `text`, in hex: names the version of the file a
/// reload applied, in its log line.
pub fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("telemetryd-file-{}-{name}", std::process::id()))
    }

    fn refused(path: &Path) -> String {
        match read(path) {
            Err(e @ ConfigError::File { .. }) => {
                assert_eq!(e.exit_code(), super::super::EX_USAGE);
                e.to_string()
            }
            other => panic!("{}: expected a refusal, got {other:?}", path.display()),
        }
    }

    #[test]
    fn a_regular_file_is_read_with_its_stamp() {
        let path = temp("ok.toml");
        std::fs::write(&path, "[log]\nlevel = \"debug\"\n").unwrap();
        let read1 = read(&path).unwrap();
        assert_eq!(read1.text, "[log]\nlevel = \"debug\"\n");
        assert!(!read1.changed_while_reading);
        assert_eq!(
            read(&path).unwrap(),
            read1,
            "an unchanged file reads the same"
        );
        std::fs::write(&path, "[log]\nlevel = \"info\" \n").unwrap();
        assert_ne!(read(&path).unwrap().stamp, read1.stamp);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn devices_and_directories_are_refused_at_once() {
        let started = Instant::now();
        for (path, what) in [
            ("/dev/zero", "a character device"),
            ("/dev/urandom", "a character device"),
            ("/dev/null", "a character device"),
            ("/tmp", "a directory"),
        ] {
            let text = refused(Path::new(path));
            assert!(text.starts_with(&format!("{path}: is {what}")), "{text}");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_fifo_without_a_writer_is_refused_without_blocking() {
        let path = temp("fifo");
        let _ = std::fs::remove_file(&path);
        use rustix::fs::Mode;
        rustix::fs::mkfifoat(rustix::fs::CWD, &path, Mode::RUSR | Mode::WUSR).unwrap();
        let started = Instant::now();
        let text = refused(&path);
        assert!(text.contains("is a FIFO"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(1));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_size_cap_is_exact() {
        let path = temp("big.toml");
        let at_cap = format!("{}\n", "#".repeat(MAX_FILE_SIZE as usize - 1));
        std::fs::write(&path, &at_cap).unwrap();
        assert_eq!(read(&path).unwrap().text.len() as u64, MAX_FILE_SIZE);
        std::fs::write(&path, format!("{at_cap}\n")).unwrap();
        let text = refused(&path);
        assert!(text.contains("at most 1048576 bytes"), "{text}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn binary_content_is_refused() {
        let path = temp("bin.toml");
        std::fs::write(&path, b"a = 1\n\xff\xfe").unwrap();
        assert!(refused(&path).contains("not UTF-8 text (invalid byte at offset 6)"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn digest_is_fnv1a() {
        assert_eq!(digest(""), "cbf29ce484222325");
        assert_eq!(digest("a"), "af63dc4c8601ec8c");
    }
}
