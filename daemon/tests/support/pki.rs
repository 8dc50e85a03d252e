//! Throwaway certificate authorities, certificates and bcrypt hashes made
//! at test time with the real tools (`openssl`, `htpasswd` from Debian's
//! apache2-utils), in a temporary directory removed on drop. No key is
//! ever kept in the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::netns::unique_name;

pub struct Pki {
    pub dir: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("pki"));
        std::fs::create_dir_all(&dir).expect("creating the PKI directory");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A self-signed CA, `NAME.crt` and `NAME.key`.
    pub fn ca(&self, name: &str) -> Issued {
        let issued = self.files(name);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path(&issued.key),
            "-out",
            path(&issued.cert),
        ]);
        issued
    }

    /// A certificate for 127.0.0.1 and localhost, for server and client
    /// use, signed by `ca`.
    pub fn leaf(&self, ca: &Issued, name: &str) -> Issued {
        let issued = self.files(name);
        let csr = self.path(&format!("{name}.csr"));
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth, clientAuth\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path(&issued.key),
            "-out",
            path(&csr),
        ]);
        let serial = format!("{}", std::process::id() as u64 * 1000 + rand_serial());
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&ca.cert),
            "-CAkey",
            path(&ca.key),
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-out",
            path(&issued.cert),
        ]);
        issued
    }

    fn files(&self, name: &str) -> Issued {
        Issued {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        }
    }

    /// Writes `text` to `name` through a temporary file and a rename, the
    /// way an operator (or certbot) replaces a file atomically.
    pub fn replace(&self, name: &str, text: &[u8]) {
        let tmp = self.path(&format!(".{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by `cargo xtask setup` (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A bcrypt hash of `password` made by `htpasswd -nbBC COST` (Debian's
/// apache2-utils), as an operator makes one: `$2y$...`.
pub fn bcrypt_hash(user: &str, password: &str, cost: u32) -> String {
    let output = Command::new("htpasswd")
        .args(["-nbBC", &cost.to_string(), user, password])
        .output()
        .expect("htpasswd is installed by `cargo xtask setup` (Debian package apache2-utils)");
    assert!(output.status.success(), "htpasswd failed");
    let line = String::from_utf8(output.stdout).unwrap();
    let (name, hash) = line.trim().split_once(':').expect("user:hash");
    assert_eq!(name, user);
    assert!(hash.starts_with("$2y$"), "{hash}");
    hash.to_owned()
}
