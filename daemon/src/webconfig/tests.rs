//! Parsing and checking web configurations that need no certificate on
//! disk; certificates, keys and the served endpoint are tested end to end
//! in `daemon/tests/web_config.rs`.

use super::*;

fn load(text: &str) -> Result<WebSettings, WebConfigError> {
    let dir = std::env::temp_dir().join(format!("webconfig-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = dir.join(format!(
        "web-{}.yml",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    let loaded = WebSettings::load(Some(&path));
    let _ = std::fs::remove_file(&path);
    loaded
}

/// (what, file, key the error must name, a fragment of its message)
#[rustfmt::skip]
const BAD: &[(&str, &str, &str, &str)] = &[
    ("unknown top-level key", "tls_config:\n  cert_file: a\n", "tls_config", "unknown field `tls_config`"),
    ("unknown TLS key", "tls_server_config:\n  certfile: a\n", "tls_server_config.certfile", "unknown field `certfile`"),
    ("unknown http key", "http_server_config:\n  header: {}\n", "http_server_config.header", "unknown field `header`"),
    ("wrong type", "basic_auth_users: [alice]\n", "basic_auth_users", "invalid type"),
    ("wrong type in TLS", "tls_server_config:\n  cert_file: [a]\n", "tls_server_config.cert_file", "invalid type: sequence"),
    ("YAML syntax", "tls_server_config:\n  cert_file: \"a\n", "tls_server_config.cert_file", "quoted scalar"),
    ("YAML tab", "tls_server_config:\n\tcert_file: a\n", "tls_server_config", "cannot start any token"),
    ("cert without key", "tls_server_config:\n  cert_file: a.crt\n", "tls_server_config.key_file", "missing"),
    ("key without cert", "tls_server_config:\n  key_file: a.key\n", "tls_server_config.cert_file", "missing"),
    ("client CA without cert", "tls_server_config:\n  client_ca_file: ca.crt\n", "tls_server_config.cert_file", "client_ca_file is set"),
    ("unknown client_auth_type", "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Always\n", "tls_server_config.client_auth_type", "RequireAndVerifyClientCert"),
    ("unknown min_version", "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n", "tls_server_config.min_version", "\"TLS14\""),
    ("TLS 1.0", "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "tls_server_config.min_version", "not supported"),
    ("unknown max_version", "tls_server_config:\n  cert_file: a\n  key_file: b\n  max_version: SSL3\n", "tls_server_config.max_version", "\"SSL3\""),
    ("min above max", "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n", "tls_server_config.min_version", "newer"),
    ("unknown cipher", "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_FOO]\n", "tls_server_config.cipher_suites[1]", "\"TLS_FOO\""),
    ("CBC cipher", "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", "tls_server_config.cipher_suites[0]", "unsupported"),
    ("unknown curve", "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n", "tls_server_config.curve_preferences[0]", "not supported"),
    ("CA without verification", "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: ca\n", "tls_server_config.client_ca_file", "NoClientCert"),
    ("verification without CA", "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file", "missing"),
    ("missing cert file", "tls_server_config:\n  cert_file: /nonexistent/a.crt\n  key_file: /nonexistent/a.key\n", "tls_server_config.cert_file", "/nonexistent/a.crt"),
    ("malformed hash", "basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice", "not a bcrypt hash"),
    ("header not settable", "http_server_config:\n  headers:\n    Content-Type: text/html\n", "http_server_config.headers.Content-Type", "cannot be configured"),
    ("header value not allowed", "http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config.headers.X-Frame-Options", "\"allow\""),
];

#[test]
fn bad_files_name_the_file_and_the_key() {
    for (what, text, key, says) in BAD {
        let err = load(text).expect_err(what);
        let message = err.to_string();
        println!("{what:<28} {message}");
        assert_eq!(err.key(), Some(*key), "{what}: {message}");
        assert!(message.contains("/web-"), "{what}: the file in {message}");
        assert!(message.contains(&format!(": {key}: ")), "{what}: {message}");
        assert!(message.contains(says), "{what}: {message:?} lacks {says:?}");
        assert!(!message.contains('\n'), "{what}: {message:?}");
    }
}

#[test]
fn unreadable_file_is_named() {
    let err = WebSettings::load(Some(Path::new("/nonexistent/web.yml"))).unwrap_err();
    assert!(matches!(err, WebConfigError::Read { .. }));
    assert!(
        err.to_string().starts_with("/nonexistent/web.yml: "),
        "{err}"
    );
}

#[test]
fn no_file_and_empty_sections_serve_plain_http() {
    let none = WebSettings::load(None).unwrap();
    assert!(none.tls().is_none() && none.users() == 0 && none.file.is_none());
    assert!(WebSettings::load(Some(Path::new("")))
        .unwrap()
        .file
        .is_none());
    for text in [
        "",
        "tls_server_config: {}\nbasic_auth_users: {}\n",
        "http_server_config:\n  http2: false\n",
    ] {
        let settings = load(text).unwrap();
        assert!(settings.tls().is_none(), "{text:?}");
        assert_eq!(settings.users(), 0, "{text:?}");
    }
}

fn request(path: &str, authorization: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().uri(path);
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    builder.body(()).unwrap()
}

/// A SIGHUP's two halves, as `Reloader::reload` runs them.
fn reload(access: &WebAccess, path: Option<&Path>) -> bool {
    match access.prepare(path) {
        Some(settings) => {
            access.apply(settings);
            true
        }
        None => false,
    }
}

fn ok(_: &Request<()>) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

#[tokio::test]
async fn auth_guards_everything_but_healthz_and_headers_are_added() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let text = format!(
        "basic_auth_users:\n  alice: {hash}\nhttp_server_config:\n  headers:\n    \
         X-Frame-Options: deny\n    Strict-Transport-Security: max-age=60\n"
    );
    let access = WebAccess::new(load(&text).unwrap());
    // alice:s3cret, alice:wrong
    let good = Some("Basic YWxpY2U6czNjcmV0");
    let wrong = Some("Basic YWxpY2U6d3Jvbmc=");
    for (path, auth, status) in [
        ("/metrics", good, StatusCode::OK),
        ("/metrics", wrong, StatusCode::UNAUTHORIZED),
        ("/metrics", None, StatusCode::UNAUTHORIZED),
        ("/nope", None, StatusCode::UNAUTHORIZED),
        ("/api/v1/top-talkers", None, StatusCode::UNAUTHORIZED),
        ("/healthz", None, StatusCode::OK),
        ("/healthz", wrong, StatusCode::OK),
    ] {
        let response = access.respond(request(path, auth), ok).await;
        assert_eq!(response.status(), status, "{path} {auth:?}");
        assert_eq!(response.headers()["x-frame-options"], "deny");
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=60"
        );
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(response.headers()[WWW_AUTHENTICATE], CHALLENGE);
        }
    }

    // A reload that fails keeps alice; one that succeeds replaces her.
    let path = std::env::temp_dir().join(format!("webconfig-reload-{}.yml", std::process::id()));
    std::fs::write(&path, "basic_auth_users:\n  bob: nonsense\n").unwrap();
    assert!(!reload(&access, Some(&path)));
    let response = access.respond(request("/metrics", good), ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    // One that would turn authentication off, an emptied file or none at
    // all, is refused too: alice still needs her password.
    std::fs::write(&path, "").unwrap();
    assert!(
        !reload(&access, Some(&path)),
        "an emptied file is not applied"
    );
    assert!(!reload(&access, None), "no file is not applied");
    let response = access.respond(request("/metrics", None), ok).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "auth kept");
    let bob = bcrypt::hash("two", 4).unwrap();
    std::fs::write(&path, format!("basic_auth_users:\n  bob: {bob}\n")).unwrap();
    assert!(reload(&access, Some(&path)));
    // bob:two
    let response = access
        .respond(request("/metrics", Some("Basic Ym9iOnR3bw==")), ok)
        .await;
    assert_eq!(response.status(), StatusCode::OK, "bob replaces alice");
    let response = access.respond(request("/metrics", good), ok).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "alice is gone");
    assert!(
        response.headers().get("x-frame-options").is_none(),
        "the new file's headers (none) apply"
    );
    let _ = std::fs::remove_file(&path);
}
