//! `tls_server_config` -> a rustls server configuration (ring provider):
//! the certificate and its key (which must match), client certificates as
//! Go's `client_auth_type` asks for them, protocol versions, cipher suites
//! and key-exchange groups by their Go names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::file::TlsServerConfig;
use super::Bad;

/// Go's `tls.ClientAuthType` names, as the exporter toolkit reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub const NAMES: &'static [&'static str] = &[
        "NoClientCert",
        "RequestClientCert",
        "RequireAnyClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    ];

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            "RequireAnyClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// What was built, for `telemetryd check` and the reload log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSummary {
    pub cert_file: PathBuf,
    pub client_auth: ClientAuth,
}

/// `None` when neither `cert_file` nor `key_file` is set (plain HTTP, as
/// in the exporter toolkit).
pub fn server_config(
    tls: &TlsServerConfig,
    dir: &Path,
) -> Result<Option<(Arc<ServerConfig>, TlsSummary)>, Bad> {
    let client_auth = ClientAuth::parse(&tls.client_auth_type).ok_or_else(|| {
        Bad::new(
            "tls_server_config.client_auth_type",
            format!(
                "unknown client_auth_type {:?}; expected one of {}",
                tls.client_auth_type,
                ClientAuth::NAMES.join(", ")
            ),
        )
    })?;
    match (tls.cert_file.is_empty(), tls.key_file.is_empty()) {
        (true, true) => {
            let set = [
                ("client_auth_type", !tls.client_auth_type.is_empty()),
                ("client_ca_file", !tls.client_ca_file.is_empty()),
                ("min_version", !tls.min_version.is_empty()),
                ("max_version", !tls.max_version.is_empty()),
                ("cipher_suites", !tls.cipher_suites.is_empty()),
                ("curve_preferences", !tls.curve_preferences.is_empty()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(Bad::new(
                    "tls_server_config.cert_file",
                    format!("missing: {key} is set but there is no certificate to serve TLS with"),
                ));
            }
            return Ok(None);
        }
        (true, false) => {
            return Err(Bad::new(
                "tls_server_config.cert_file",
                "missing: key_file is set without cert_file",
            ))
        }
        (false, true) => {
            return Err(Bad::new(
                "tls_server_config.key_file",
                "missing: cert_file is set without key_file",
            ))
        }
        (false, false) => {}
    }

    let min = version(&tls.min_version, "tls_server_config.min_version", "TLS12")?;
    let max = version(&tls.max_version, "tls_server_config.max_version", "TLS13")?;
    if min > max {
        return Err(Bad::new(
            "tls_server_config.min_version",
            format!(
                "{:?} is newer than max_version {:?}",
                tls.min_version, tls.max_version
            ),
        ));
    }
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, v)| v)
            .collect();

    let provider = Arc::new(provider(tls)?);
    check_client_ca(tls, client_auth)?;

    let cert_path = dir.join(&tls.cert_file);
    let key_path = dir.join(&tls.key_file);
    let certs = read_certs(&cert_path, "tls_server_config.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        Bad::new(
            "tls_server_config.key_file",
            format!("{}: {}", key_path.display(), pem_error(&e)),
        )
    })?;
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
        |e| {
            let message = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "{} does not match the certificate in {}",
                    key_path.display(),
                    cert_path.display()
                ),
                other => format!("{}: {other}", key_path.display()),
            };
            Bad::new("tls_server_config.key_file", message)
        },
    )?;

    let verifier = client_verifier(tls, client_auth, dir, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| Bad::new("tls_server_config.min_version", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Bad::new("tls_server_config.key_file", e.to_string()))?;
    config.ignore_client_order = tls.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((
        Arc::new(config),
        TlsSummary {
            cert_file: cert_path,
            client_auth,
        },
    )))
}

/// `TLS12` -> 12. TLS 1.0 and 1.1 are known names that rustls does not
/// speak, and are refused as such.
fn version(name: &str, key: &str, default: &str) -> Result<u8, Bad> {
    let name = if name.is_empty() { default } else { name };
    match name {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(Bad::new(
            key,
            format!("{name} is not supported (rustls speaks TLS12 and TLS13)"),
        )),
        _ => Err(Bad::new(
            key,
            format!("unknown TLS version {name:?}; expected TLS12 or TLS13"),
        )),
    }
}

/// The ring provider, with `cipher_suites` (TLS 1.2 suites, by Go name; as
/// in Go, they do not restrict TLS 1.3, whose suites are all on) and
/// `curve_preferences` applied.
fn provider(tls: &TlsServerConfig) -> Result<CryptoProvider, Bad> {
    let mut provider = ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .copied()
            .collect();
        let tls13: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        let mut chosen = Vec::new();
        for (i, name) in tls.cipher_suites.iter().enumerate() {
            let key = format!("tls_server_config.cipher_suites[{i}]");
            let go_alias = name
                .strip_suffix("_POLY1305")
                .map(|n| format!("{n}_POLY1305_SHA256"));
            let wanted = go_alias.as_deref().unwrap_or(name);
            if tls13.iter().any(|s| suite_name(s) == wanted) {
                continue;
            }
            let suite = tls12
                .iter()
                .find(|s| suite_name(s) == wanted)
                .ok_or_else(|| {
                    let known: Vec<String> = tls12.iter().map(suite_name).collect();
                    Bad::new(
                        key.clone(),
                        format!(
                            "unknown or unsupported cipher suite {name:?}; rustls offers {}",
                            known.join(", ")
                        ),
                    )
                })?;
            if chosen.contains(suite) {
                return Err(Bad::new(key, format!("{name:?} is listed twice")));
            }
            chosen.push(*suite);
        }
        chosen.extend(tls13);
        provider.cipher_suites = chosen;
    }
    if !tls.curve_preferences.is_empty() {
        let mut groups = Vec::new();
        for (i, name) in tls.curve_preferences.iter().enumerate() {
            let key = format!("tls_server_config.curve_preferences[{i}]");
            let group = match name.as_str() {
                "X25519" => ring::kx_group::X25519,
                "CurveP256" => ring::kx_group::SECP256R1,
                "CurveP384" => ring::kx_group::SECP384R1,
                "CurveP521" => {
                    return Err(Bad::new(
                        key,
                        "CurveP521 is not supported (rustls offers X25519, CurveP256, CurveP384)",
                    ))
                }
                _ => {
                    return Err(Bad::new(
                        key,
                        format!("unknown curve {name:?}; expected X25519, CurveP256 or CurveP384"),
                    ))
                }
            };
            groups.push(group);
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

fn suite_name(suite: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, Bad> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Bad::new(key, format!("{}: {}", path.display(), pem_error(&e))))?
        .collect();
    let certs =
        certs.map_err(|e| Bad::new(key, format!("{}: {}", path.display(), pem_error(&e))))?;
    if certs.is_empty() {
        return Err(Bad::new(
            key,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    for cert in &certs {
        webpki_parse(cert).map_err(|e| {
            Bad::new(
                key,
                format!("{}: not a valid X.509 certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(certs)
}

fn webpki_parse(cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone())
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// `client_ca_file` is set exactly when `client_auth_type` verifies.
fn check_client_ca(tls: &TlsServerConfig, auth: ClientAuth) -> Result<(), Bad> {
    const KEY: &str = "tls_server_config.client_ca_file";
    let has_ca = !tls.client_ca_file.is_empty();
    if auth.verifies() != has_ca {
        let message = if has_ca {
            format!(
                "set, but client_auth_type {:?} verifies no client certificate; use \
                 VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                if tls.client_auth_type.is_empty() {
                    "NoClientCert"
                } else {
                    &tls.client_auth_type
                }
            )
        } else {
            format!(
                "missing: client_auth_type {} verifies client certificates against it",
                tls.client_auth_type
            )
        };
        return Err(Bad::new(KEY, message));
    }
    Ok(())
}

fn client_verifier(
    tls: &TlsServerConfig,
    auth: ClientAuth,
    dir: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Bad> {
    const KEY: &str = "tls_server_config.client_ca_file";
    let algorithms = provider.signature_verification_algorithms;
    Ok(match auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Arc::new(AnyClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                algorithms,
            })
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let path = dir.join(&tls.client_ca_file);
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&path, KEY)? {
                roots
                    .add(cert)
                    .map_err(|e| Bad::new(KEY, format!("{}: {e}", path.display())))?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| Bad::new(KEY, format!("{}: {e}", path.display())))?
        }
    })
}

/// `RequestClientCert` / `RequireAnyClientCert`: a client certificate is
/// asked for (and, for the second, required) but not checked against any
/// CA, as in Go; the handshake signature is still checked, so the client
/// holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
