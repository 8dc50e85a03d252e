//! TLS and basic authentication of the HTTP endpoint, configured by a web
//! configuration file in the Prometheus exporter-toolkit format
//! (`--web.config.file`, `http.web_config`; see [`file`]).
//!
//! [`WebSettings::load`] parses and checks the file (a bad one is an
//! [`WebConfigError`]: exit 64 at start, naming the file and the key);
//! [`WebAccess`] holds the settings in force, which SIGHUP replaces
//! ([`WebAccess::reload`]: a bad file keeps the running ones) without
//! touching the listener. The HTTP server asks it to wrap each accepted
//! connection ([`WebAccess::accept`]: the TLS handshake, bounded by a
//! timeout, in the connection's own task) and to answer each request
//! ([`WebAccess::respond`]: basic auth, except for `/healthz`, and the
//! configured headers).

pub mod basic_auth;
pub mod file;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info};

use basic_auth::BasicAuth;
use file::WebConfigFile;
use tls::TlsSummary;

/// The one path served without credentials when basic auth is on (TLS and
/// client certificates still apply to it: they are per connection).
pub const OPEN_PATH: &str = "/healthz";

/// `WWW-Authenticate` of a 401.
pub const CHALLENGE: &str = "Basic realm=\"telemetryd\", charset=\"UTF-8\"";

/// A key of the web configuration and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub key: String,
    pub message: String,
}

impl Bad {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A web configuration that cannot be used. One line, naming the file and
/// the key: `/etc/telemetryd/web.yml:3:3: tls_server_config.cert_file: ...`.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error(
        "{}: cannot read the web configuration (http.web_config, --web.config.file): {source}",
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {key}: {message}", path.display(), at(line_col))]
    Invalid {
        path: PathBuf,
        key: String,
        line_col: Option<(usize, usize)>,
        message: String,
    },
}

fn at(line_col: &Option<(usize, usize)>) -> String {
    line_col
        .map(|(l, c)| format!(":{l}:{c}"))
        .unwrap_or_default()
}

impl WebConfigError {
    /// The web-config key the error is about (`None`: the file itself).
    pub fn key(&self) -> Option<&str> {
        match self {
            WebConfigError::Read { .. } => None,
            WebConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// What the web configuration asks for, checked and ready to serve.
#[derive(Clone, Default)]
pub struct WebSettings {
    /// The file it came from; `None`: no web configuration (plain HTTP,
    /// no authentication).
    pub file: Option<PathBuf>,
    tls: Option<(TlsAcceptor, TlsSummary)>,
    auth: Option<Arc<BasicAuth>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Headers the exporter toolkit lets `http_server_config.headers` set, and
/// the values each may take (`None`: any).
const SETTABLE_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

impl WebSettings {
    /// Reads and checks `path`; `None` (or an empty path): no web
    /// configuration. Relative paths in the file are taken from its
    /// directory, as the exporter toolkit does.
    pub fn load(path: Option<&Path>) -> Result<Self, WebConfigError> {
        let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |bad: Bad, line_col| WebConfigError::Invalid {
            path: path.to_owned(),
            key: bad.key,
            line_col,
            message: bad.message,
        };
        let parsed: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            let deserializer = serde_yaml::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                let key = match e.path().to_string() {
                    p if p == "." || p.is_empty() => "(top level)".to_owned(),
                    p => p,
                };
                let inner = e.into_inner();
                let line_col = inner.location().map(|l| (l.line(), l.column()));
                let message = strip_path(&key, &strip_location(&inner.to_string()));
                invalid(Bad::new(key, message), line_col)
            })?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::build(&parsed, dir)
            .map(|mut settings| {
                settings.file = Some(path.to_owned());
                settings
            })
            .map_err(|bad| invalid(bad, None))
    }

    fn build(parsed: &WebConfigFile, dir: &Path) -> Result<Self, Bad> {
        let tls = match &parsed.tls_server_config {
            Some(tls) => tls::server_config(tls, dir)?
                .map(|(config, summary)| (TlsAcceptor::from(config), summary)),
            None => None,
        };
        let auth = BasicAuth::new(&parsed.basic_auth_users)?.map(Arc::new);
        let mut headers = Vec::new();
        for (name, value) in &parsed.http_server_config.headers {
            let key = format!("http_server_config.headers.{name}");
            let Some((_, allowed)) = SETTABLE_HEADERS.iter().find(|(n, _)| n == name) else {
                let names: Vec<&str> = SETTABLE_HEADERS.iter().map(|(n, _)| *n).collect();
                return Err(Bad::new(
                    key,
                    format!(
                        "header {name:?} cannot be configured; allowed: {}",
                        names.join(", ")
                    ),
                ));
            };
            if let Some(allowed) = allowed {
                if !allowed.contains(&value.as_str()) {
                    return Err(Bad::new(
                        key,
                        format!("{value:?} is not allowed; expected one of {allowed:?}"),
                    ));
                }
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| Bad::new(key, format!("{value:?} is not a valid header value")))?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .expect("the names of SETTABLE_HEADERS are valid");
            headers.push((name, value));
        }
        Ok(Self {
            file: None,
            tls,
            auth,
            headers,
        })
    }

    pub fn tls(&self) -> Option<&TlsSummary> {
        self.tls.as_ref().map(|(_, summary)| summary)
    }

    pub fn users(&self) -> usize {
        self.auth.as_ref().map_or(0, |a| a.len())
    }

    /// What `next` would turn off that these settings have on: TLS, or
    /// authentication. A reload must not do either (see [`WebAccess::prepare`]).
    fn downgrade_to(&self, next: &WebSettings) -> Option<&'static str> {
        if self.tls.is_some() && next.tls.is_none() {
            Some("TLS")
        } else if self.users() > 0 && next.users() == 0 {
            Some("basic authentication")
        } else {
            None
        }
    }

    /// One line for `telemetryd check` and the log.
    pub fn describe(&self) -> String {
        let Some(file) = &self.file else {
            return "none (plain HTTP, no authentication)".to_owned();
        };
        let tls = match self.tls() {
            Some(t) => format!(
                "TLS with {} (client certificates: {:?})",
                t.cert_file.display(),
                t.client_auth
            ),
            None => "plain HTTP".to_owned(),
        };
        let auth = match self.users() {
            0 => "no authentication".to_owned(),
            n => format!("basic auth for {n} user(s), {OPEN_PATH} open"),
        };
        format!(
            "{}: {tls}, {auth}, {} extra header(s)",
            file.display(),
            self.headers.len()
        )
    }
}

/// serde_yaml starts with the path of the map it was in (`tls_server_config:
/// unknown field`); the key, more precise, is printed already.
fn strip_path(key: &str, message: &str) -> String {
    match message.split_once(": ") {
        Some((path, rest)) if key.starts_with(path) => rest.to_owned(),
        _ => message.to_owned(),
    }
}

/// serde_yaml appends " at line L column C"; the position is printed
/// before the key instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// A connection as the HTTP server reads it: plain TCP or TLS over it.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// The web settings in force, shared by the listener's connections and the
/// SIGHUP path; cheap to clone.
#[derive(Clone, Default)]
pub struct WebAccess {
    current: Arc<RwLock<Arc<WebSettings>>>,
}

impl WebAccess {
    pub fn new(settings: WebSettings) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(settings))),
        }
    }

    pub fn current(&self) -> Arc<WebSettings> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn replace(&self, settings: WebSettings) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(settings);
    }

    /// SIGHUP, first half: re-reads `path` (certificates, key, users,
    /// headers) without applying it. A file that
    /// does not load is refused, and so is one that would turn TLS or
    /// authentication off: an emptied or half-deployed file must not
    /// silently serve /metrics in the clear or to anyone; turning either off
    /// takes a restart. `None`: refused, the reason logged.
    pub fn prepare(&self, path: Option<&Path>) -> Option<WebSettings> {
        match WebSettings::load(path) {
            Ok(settings) => match self.current().downgrade_to(&settings) {
                Some(what) => {
                    error!(
                        web_config = %settings.describe(),
                        "SIGHUP: the new web configuration turns {what} off; keeping the running \
                         TLS and authentication settings (turning {what} off takes a restart)"
                    );
                    None
                }
                None => Some(settings),
            },
            Err(reason) => {
                error!(
                    error = %reason,
                    key = reason.key().unwrap_or(""),
                    "SIGHUP: the new web configuration is invalid; keeping the running TLS and \
                     authentication settings"
                );
                None
            }
        }
    }

    /// SIGHUP, second half: new connections get `settings`; connections
    /// already open keep the TLS session they have.
    pub fn apply(&self, settings: WebSettings) {
        info!(web_config = %settings.describe(), "SIGHUP: web configuration reloaded");
        self.replace(settings);
    }

    /// Wraps an accepted connection: as it is without TLS, else after the
    /// TLS handshake, which must finish within `timeout`. `None`: the
    /// handshake failed or timed out (logged at debug) and the connection
    /// is dropped.
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<Box<dyn Connection>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some((acceptor, _)) = self.current().tls.clone() else {
            return Some(Box::new(stream));
        };
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(error)) => {
                debug!(%peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, ?timeout, "TLS handshake timed out");
                None
            }
        }
    }

    /// Answers `request` with `handle` once its credentials check out
    /// (always for [`OPEN_PATH`] and without `basic_auth_users`), else with
    /// 401; adds the configured headers either way. The bcrypt check runs
    /// on the blocking pool.
    pub async fn respond<B>(
        &self,
        request: Request<B>,
        handle: impl FnOnce(&Request<B>) -> Response<Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        let web = self.current();
        let allowed = match &web.auth {
            Some(auth) if request.uri().path() != OPEN_PATH => {
                let auth = auth.clone();
                let header = request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.as_bytes().to_vec());
                tokio::task::spawn_blocking(move || auth.verify(header.as_deref()))
                    .await
                    .unwrap_or(false)
            }
            _ => true,
        };
        let mut response = if allowed {
            handle(&request)
        } else {
            debug!(
                path = request.uri().path(),
                "HTTP request without valid credentials"
            );
            unauthorized()
        };
        for (name, value) in &web.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"unauthorized\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
