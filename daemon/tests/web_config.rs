//! The web configuration end to end (needs root: the daemon runs in a test
//! namespace): TLS, client certificates and basic auth as curl and a real
//! Prometheus see them, certificates and users re-read on SIGHUP on the
//! same listener, and bad files refused at start with exit 64.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::curl::{curl, Reply};
use support::pki::{bcrypt_hash, Issued, Pki};
use support::{require_root, Daemon, NetNs, TestConfig};

const URL: &str = "https://127.0.0.1:9469";
/// htpasswd's lowest costs keep the unoptimised test build quick; the cost
/// does not change what is checked.
const COST: u32 = 5;

fn config(web_config: &Path) -> String {
    TestConfig::new()
        .set("xdp.enabled", false)
        .set("http.web_config", web_config.to_str().unwrap())
        .toml()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Waits until `GET /healthz` (open without a password) answers 200 with
/// these curl options, or panics with the daemon's log.
fn wait_healthy(daemon: &mut Daemon, curl_args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = curl(&daemon.ns_name, &format!("{URL}/healthz"), curl_args);
        if reply.status == 200 {
            return;
        }
        if let Some(status) = daemon.wait_exit(Duration::ZERO) {
            panic!(
                "telemetryd exited ({status}); its log:\n{}",
                daemon.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no 200 from /healthz within 30 s: {reply:?}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the daemon's log contains `needle` `count` times.
fn wait_log(daemon: &Daemon, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = daemon.log_text();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {count} time(s) within 15 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn user(name: &str, password: &str) -> String {
    format!("{name}:{password}")
}

#[test]
fn client_certificates_and_passwords_are_required_except_for_healthz() {
    require_root();
    let pki = Pki::new();
    let ca = pki.ca("ca");
    pki.leaf(&ca, "server"); // server.crt, server.key: named in web.yml
    let client = pki.leaf(&ca, "client");
    let rogue_ca = pki.ca("rogue-ca");
    let rogue = pki.leaf(&rogue_ca, "rogue");
    let web = pki.path("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  alice: {}\n",
            bcrypt_hash("alice", "wonderland", COST)
        ),
    )
    .unwrap();
    let ns = NetNs::new();
    let mut daemon = Daemon::spawn(&ns, &config(&web), &[]);
    let with_cert = |c: &Issued| {
        vec![
            "--cacert".to_owned(),
            p(&ca.cert).to_owned(),
            "--cert".to_owned(),
            p(&c.cert).to_owned(),
            "--key".to_owned(),
            p(&c.key).to_owned(),
        ]
    };
    let cert_args = with_cert(&client);
    let cert: Vec<&str> = cert_args.iter().map(String::as_str).collect();
    wait_healthy(&mut daemon, &cert);
    let get = |path: &str, extra: &[&str]| -> Reply {
        let mut args = cert.clone();
        args.extend_from_slice(extra);
        curl(&ns.name, &format!("{URL}{path}"), &args)
    };

    let alice = user("alice", "wonderland");
    let ok = get("/metrics", &["-u", &alice]);
    assert_eq!((ok.exit, ok.status), (0, 200), "{ok:?}");
    assert!(ok.body.contains("telemetryd_build_info"), "{}", ok.body);
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    for path in ["/readyz", "/api/v1/anomalies", "/api/v1/top-talkers"] {
        assert_eq!(get(path, &["-u", &alice]).status, 200, "{path}");
    }

    for (what, extra) in [
        ("no credentials", vec![]),
        ("a wrong password", vec!["-u", "alice:Wonderland"]),
        ("an empty password", vec!["-u", "alice:"]),
        ("an unknown user", vec!["-u", "mallory:wonderland"]),
    ] {
        for path in ["/metrics", "/api/v1/top-talkers", "/nope"] {
            let denied = get(path, &extra);
            assert_eq!(denied.status, 401, "{what} on {path}: {denied:?}");
            assert_eq!(
                denied.header("www-authenticate"),
                Some("Basic realm=\"telemetryd\", charset=\"UTF-8\""),
                "{what}"
            );
            assert_eq!(denied.header("x-content-type-options"), Some("nosniff"));
            assert!(
                !denied.body.contains("telemetryd_"),
                "{what}: {}",
                denied.body
            );
        }
    }
    let health = get("/healthz", &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    // Without a client certificate, or with one from another CA, there is
    // no TLS session at all: no HTTP status, whatever the password.
    let no_cert = curl(
        &ns.name,
        &format!("{URL}/healthz"),
        &["--cacert", p(&ca.cert), "-u", &alice],
    );
    assert_eq!(no_cert.status, 0, "{no_cert:?}");
    assert!(
        [35, 56].contains(&no_cert.exit),
        "a handshake refused: {no_cert:?}"
    );
    let rogue_args = with_cert(&rogue);
    let rogue_args: Vec<&str> = rogue_args.iter().map(String::as_str).collect();
    let untrusted = curl(
        &ns.name,
        &format!("{URL}/metrics"),
        &[&rogue_args[..], &["-u", &alice]].concat(),
    );
    assert_eq!(untrusted.status, 0, "{untrusted:?}");
    assert!([35, 56].contains(&untrusted.exit), "{untrusted:?}");
    // Plain HTTP on the TLS port gets no answer either.
    let plain = curl(&ns.name, "http://127.0.0.1:9469/healthz", &[]);
    assert_eq!(plain.status, 0, "{plain:?}");
    assert_ne!(plain.exit, 0, "{plain:?}");

    // None of that disturbed the server.
    let again = get("/metrics", &["-u", &alice]);
    assert_eq!(again.status, 200, "{again:?}");
}

/// The inode of the daemon's listening socket on port 9469 (from its
/// namespace's /proc/PID/net/tcp): the same inode is the same listener.
fn listener_inode(daemon: &Daemon) -> String {
    let table = std::fs::read_to_string(format!("/proc/{}/net/tcp", daemon.pid())).unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[1].ends_with(":24FD") && f[3] == "0A")
        .map(|f| f[9].to_owned())
        .unwrap_or_else(|| panic!("no listener on port 9469:\n{table}"))
}

#[test]
fn sighup_rotates_certificates_and_users_on_the_same_listener() {
    require_root();
    let pki = Pki::new();
    let ca_a = pki.ca("ca-a");
    let ca_b = pki.ca("ca-b");
    let a = pki.leaf(&ca_a, "a");
    let b = pki.leaf(&ca_b, "b");
    let web = pki.path("web.yml");
    let web_text = |user: &str, password: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  {user}: {}\n",
            bcrypt_hash(user, password, COST)
        )
    };
    let read = |path: &Path| std::fs::read(path).unwrap();
    pki.replace("server.crt", &read(&a.cert));
    pki.replace("server.key", &read(&a.key));
    pki.replace("web.yml", web_text("alice", "one").as_bytes());
    let ns = NetNs::new();
    let mut daemon = Daemon::spawn(&ns, &config(&web), &[]);
    let trust_a = ["--cacert", p(&ca_a.cert)];
    let trust_b = ["--cacert", p(&ca_b.cert)];
    wait_healthy(&mut daemon, &trust_a);
    let metrics = |trust: &[&str], credentials: &str| {
        curl(
            &ns.name,
            &format!("{URL}/metrics"),
            &[trust, &["-u", credentials]].concat(),
        )
    };
    assert_eq!(metrics(&trust_a, "alice:one").status, 200);
    let untrusted = metrics(&trust_b, "alice:one");
    assert_eq!((untrusted.exit, untrusted.status), (60, 0), "{untrusted:?}");
    let listener = listener_inode(&daemon);

    // An operator rotates the certificate and the users, each file by rename.
    pki.replace("server.crt", &read(&b.cert));
    pki.replace("server.key", &read(&b.key));
    pki.replace("web.yml", web_text("bob", "two").as_bytes());
    daemon.signal(libc::SIGHUP);
    wait_log(&daemon, "SIGHUP: web configuration reloaded", 1);
    let rotated = metrics(&trust_b, "bob:two");
    assert_eq!((rotated.exit, rotated.status), (0, 200), "{rotated:?}");
    assert!(
        rotated
            .body
            .contains("\ntelemetryd_config_last_reload_successful 1\n"),
        "{}",
        rotated.body
    );
    assert_eq!(metrics(&trust_b, "alice:one").status, 401, "alice is gone");
    let old = metrics(&trust_a, "bob:two");
    assert_eq!(
        (old.exit, old.status),
        (60, 0),
        "the old certificate is gone: {old:?}"
    );
    assert_eq!(listener_inode(&daemon), listener, "the listener was kept");

    // A broken certificate at SIGHUP keeps the running one, and says why.
    pki.replace("server.crt", b"-----BEGIN CERTIFICATE-----\nnot base64\n");
    daemon.signal(libc::SIGHUP);
    let log = wait_log(
        &daemon,
        "keeping the running TLS and authentication settings",
        1,
    );
    let line = log
        .lines()
        .find(|l| l.contains("keeping the running TLS"))
        .unwrap();
    assert!(
        line.contains("tls_server_config.cert_file") && line.contains(p(&pki.path("server.crt"))),
        "the log names the key and the file: {line}"
    );
    let kept = metrics(&trust_b, "bob:two");
    assert_eq!((kept.exit, kept.status), (0, 200), "{kept:?}");
    // A refused web configuration is a refused reload, as an invalid
    // telemetryd.toml is: the reload alert's metric says so.
    assert!(
        kept.body
            .contains("\ntelemetryd_config_last_reload_successful 0\n"),
        "{}",
        kept.body
    );

    // So do a key that does not match and a malformed hash.
    pki.replace("server.crt", &read(&b.cert));
    pki.replace("server.key", &read(&a.key));
    daemon.signal(libc::SIGHUP);
    let log = wait_log(
        &daemon,
        "keeping the running TLS and authentication settings",
        2,
    );
    assert!(log.contains("does not match the certificate"), "{log}");
    pki.replace("server.key", &read(&b.key));
    pki.replace(
        "web.yml",
        b"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  bob: two\n",
    );
    daemon.signal(libc::SIGHUP);
    let log = wait_log(
        &daemon,
        "keeping the running TLS and authentication settings",
        3,
    );
    assert!(log.contains("basic_auth_users.bob"), "{log}");
    assert_eq!(metrics(&trust_b, "bob:two").status, 200, "bob's hash kept");
    assert_eq!(metrics(&trust_b, "bob:wrong").status, 401);

    // An emptied file would serve /metrics in the clear and to anyone: a
    // reload refuses to turn TLS (or authentication) off.
    pki.replace("web.yml", b"");
    daemon.signal(libc::SIGHUP);
    let log = wait_log(
        &daemon,
        "keeping the running TLS and authentication settings",
        4,
    );
    assert!(log.contains("turns TLS off"), "{log}");
    let kept = metrics(&trust_b, "bob:two");
    assert_eq!(
        (kept.exit, kept.status),
        (0, 200),
        "TLS and bob kept: {kept:?}"
    );
    assert_eq!(metrics(&trust_b, "bob:wrong").status, 401);
    let plain = curl(
        &ns.name,
        &format!("{}/metrics", URL.replace("https://", "http://")),
        &[],
    );
    assert_ne!(plain.status, 200, "no plain HTTP: {plain:?}");
    assert_eq!(listener_inode(&daemon), listener);
    assert_eq!(
        daemon.wait_exit(Duration::ZERO),
        None,
        "still running:\n{}",
        daemon.log_text()
    );
}

/// `telemetryd ARGS --config CONFIG`: exit code and stderr.
fn telemetryd(ns: Option<&NetNs>, args: &[&str]) -> (Option<i32>, String) {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, support::process::BIN]);
            c
        }
        None => Command::new(support::process::BIN),
    };
    let output = command.args(args).output().expect("running telemetryd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_web_configs_exit_64_naming_the_file_and_the_key() {
    require_root();
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.leaf(&ca, "server");
    let other = pki.leaf(&ca, "other");
    std::fs::create_dir(pki.path("a-directory")).unwrap();
    std::fs::write(pki.path("garbage.crt"), "hello\n").unwrap();
    let tls = |cert: &Path, key: &Path| {
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            p(cert),
            p(key)
        )
    };
    let good_hash = bcrypt_hash("alice", "pw", COST);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing certificate",
            tls(&pki.path("nope.crt"), &server.key),
            "tls_server_config.cert_file",
            "No such file",
        ),
        (
            "unreadable certificate",
            tls(&pki.path("a-directory"), &server.key),
            "tls_server_config.cert_file",
            "a-directory",
        ),
        (
            "not a certificate",
            tls(&pki.path("garbage.crt"), &server.key),
            "tls_server_config.cert_file",
            "garbage.crt",
        ),
        (
            "missing key",
            tls(&server.cert, &pki.path("nope.key")),
            "tls_server_config.key_file",
            "nope.key",
        ),
        (
            "key of another certificate",
            tls(&server.cert, &other.key),
            "tls_server_config.key_file",
            "does not match the certificate",
        ),
        (
            "missing client CA",
            format!(
                "{}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nope.crt\n",
                tls(&server.cert, &server.key)
            ),
            "tls_server_config.client_ca_file",
            "nope.crt",
        ),
        (
            "malformed bcrypt hash",
            "basic_auth_users:\n  alice: plaintext\n".into(),
            "basic_auth_users.alice",
            "not a bcrypt hash",
        ),
        (
            "unknown key",
            format!("{}  cert: inline\n", tls(&server.cert, &server.key)),
            "tls_server_config.cert",
            "unknown field `cert`",
        ),
        (
            "unknown top-level key",
            format!("basic_auth_user:\n  alice: {good_hash}\n"),
            "basic_auth_user",
            "unknown field",
        ),
        (
            "unknown TLS version",
            format!("{}  min_version: TLS1.2\n", tls(&server.cert, &server.key)),
            "tls_server_config.min_version",
            "\"TLS1.2\"",
        ),
        (
            "unsupported TLS version",
            format!("{}  max_version: TLS11\n", tls(&server.cert, &server.key)),
            "tls_server_config.max_version",
            "TLS11",
        ),
        (
            "unknown cipher suite",
            format!(
                "{}  cipher_suites: [TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA]\n",
                tls(&server.cert, &server.key)
            ),
            "tls_server_config.cipher_suites[0]",
            "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        ),
    ];
    for (i, (what, text, key, says)) in cases.iter().enumerate() {
        let web = pki.path(&format!("web-{i}.yml"));
        std::fs::write(&web, text).unwrap();
        let cfg = pki.path(&format!("telemetryd-{i}.toml"));
        std::fs::write(&cfg, config(&web)).unwrap();
        let (code, stderr) = telemetryd(None, &["check", "--config", p(&cfg)]);
        println!("{what:<28} {}", stderr.trim());
        assert_eq!(code, Some(64), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("{}", web.display()))
                && stderr.contains(&format!(": {key}: ")),
            "{what}: names the file and {key}: {stderr}"
        );
        assert!(stderr.contains(says), "{what}: {stderr:?} lacks {says:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
    }

    // `run` refuses the same way, before it attaches or binds anything;
    // --web.config.file overrides http.web_config.
    let ns = NetNs::new();
    let web = pki.path("web-0.yml");
    let plain = pki.path("plain.toml");
    std::fs::write(&plain, TestConfig::new().set("xdp.enabled", false).toml()).unwrap();
    let (code, stderr) = telemetryd(
        Some(&ns),
        &["run", "--config", p(&plain), "--web.config.file", p(&web)],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("tls_server_config.cert_file"), "{stderr}");
    let missing = pki.path("no-such-web.yml");
    let (code, stderr) = telemetryd(
        Some(&ns),
        &[
            "run",
            "--config",
            p(&plain),
            "--web.config.file",
            p(&missing),
        ],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(p(&missing)) && stderr.contains("--web.config.file"),
        "{stderr}"
    );

    // And a good file passes `check`, which says what it will serve.
    let good = pki.path("good.yml");
    std::fs::write(
        &good,
        format!(
            "{}  min_version: TLS13\nbasic_auth_users:\n  alice: {good_hash}\n",
            tls(&server.cert, &server.key)
        ),
    )
    .unwrap();
    let output = Command::new(support::process::BIN)
        .args([
            "check",
            "--config",
            p(&plain),
            "--web.config.file",
            p(&good),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "web configuration: {}: TLS with {} (client certificates: NoClientCert), basic auth for 1 user(s), /healthz open",
            good.display(),
            server.cert.display()
        )),
        "{stdout}"
    );
}

/// A process killed and reaped on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_over_tls_with_a_client_certificate_and_basic_auth() {
    require_root();
    let pki = Pki::new();
    let ca = pki.ca("ca");
    pki.leaf(&ca, "server"); // server.crt, server.key: named in web.yml
    let client = pki.leaf(&ca, "prometheus");
    let web = pki.path("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS12\n\
             basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash("prometheus", "scrape-me", COST)
        ),
    )
    .unwrap();
    let ns = NetNs::new();
    let mut daemon = Daemon::spawn(&ns, &config(&web), &[]);
    wait_healthy(
        &mut daemon,
        &[
            "--cacert",
            p(&ca.cert),
            "--cert",
            p(&client.cert),
            "--key",
            p(&client.key),
        ],
    );

    let prometheus_yml = pki.path("prometheus.yml");
    std::fs::write(
        &prometheus_yml,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: telemetryd\n    scheme: https\n    \
             basic_auth:\n      username: prometheus\n      password: scrape-me\n    \
             tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n    \
             static_configs:\n      - targets: ['127.0.0.1:9469']\n",
            p(&ca.cert),
            p(&client.cert),
            p(&client.key)
        ),
    )
    .unwrap();
    let data = pki.path("prometheus-data");
    let log_path = pki.path("prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "prometheus"])
        .arg(format!("--config.file={}", p(&prometheus_yml)))
        .arg(format!("--storage.tsdb.path={}", p(&data)))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus is installed by `cargo xtask setup` (Debian package prometheus)");
    let _prometheus = Background(child);

    // up == 1, with the target healthy and no scrape error, within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        let reply = curl(&ns.name, "http://127.0.0.1:9090/api/v1/targets", &[]);
        let target = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["data"]["activeTargets"].get(0).cloned());
        if let Some(t) = &target {
            if t["health"] == "up" {
                break t.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape telemetryd within 30 s: {target:?}\n{}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(target["scrapeUrl"], "https://127.0.0.1:9469/metrics");
    assert_eq!(target["lastError"], "");
    let query = curl(
        &ns.name,
        "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22telemetryd%22%7D",
        &[],
    );
    let result: serde_json::Value = serde_json::from_str(&query.body).unwrap();
    let series = result["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{result}");
    assert_eq!(series[0]["value"][1], "1", "up == 1: {result}");
    // The scrape carried telemetryd's own series.
    let query = curl(
        &ns.name,
        "http://127.0.0.1:9090/api/v1/query?query=telemetryd_build_info",
        &[],
    );
    let result: serde_json::Value = serde_json::from_str(&query.body).unwrap();
    assert_eq!(
        result["data"]["result"].as_array().unwrap().len(),
        1,
        "{result}"
    );
}

#[test]
fn client_auth_types_versions_and_ciphers_behave_as_in_go_and_stalled_handshakes_are_cut() {
    require_root();
    let pki = Pki::new();
    let ca = pki.ca("ca");
    pki.leaf(&ca, "server"); // server.crt, server.key: named in web.yml
    let good = pki.leaf(&ca, "client");
    let rogue_ca = pki.ca("rogue-ca");
    let rogue = pki.leaf(&rogue_ca, "rogue");
    let web = pki.path("web.yml");
    let write = |tls_extra: &str| {
        pki.replace(
            "web.yml",
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{tls_extra}"
            )
            .as_bytes(),
        )
    };
    write("  client_auth_type: RequestClientCert\n");
    let ns = NetNs::new();
    let config = TestConfig::new()
        .set("xdp.enabled", false)
        .set("http.web_config", p(&web))
        .set("http.header_read_timeout", "500ms")
        .toml();
    let mut daemon = Daemon::spawn(&ns, &config, &[]);
    let trust = ["--cacert", p(&ca.cert)];
    wait_healthy(&mut daemon, &trust);
    let get = |extra: &[&str]| {
        curl(
            &ns.name,
            &format!("{URL}/healthz"),
            &[&trust[..], extra].concat(),
        )
    };
    let good_cert = ["--cert", p(&good.cert), "--key", p(&good.key)];
    let rogue_cert = ["--cert", p(&rogue.cert), "--key", p(&rogue.key)];

    // (client_auth_type, served without a certificate, with one from the
    // CA, with one from another CA)
    let mut reloads = 0;
    for (auth, none, trusted, untrusted) in [
        ("RequestClientCert", true, true, true),
        ("RequireAnyClientCert", false, true, true),
        ("VerifyClientCertIfGiven", true, true, false),
        ("RequireAndVerifyClientCert", false, true, false),
        ("NoClientCert", true, true, true),
    ] {
        if reloads > 0 {
            let ca_line = if auth.starts_with("Verify") || auth.starts_with("RequireAnd") {
                "  client_ca_file: ca.crt\n"
            } else {
                ""
            };
            write(&format!("  client_auth_type: {auth}\n{ca_line}"));
            daemon.signal(libc::SIGHUP);
            wait_log(&daemon, "SIGHUP: web configuration reloaded", reloads);
        }
        reloads += 1;
        for (what, args, served) in [
            ("no certificate", &[][..], none),
            ("a trusted certificate", &good_cert[..], trusted),
            ("an untrusted certificate", &rogue_cert[..], untrusted),
        ] {
            let reply = get(args);
            let got = reply.status == 200;
            assert_eq!(got, served, "{auth} with {what}: {reply:?}");
            if !served {
                assert!([35, 56].contains(&reply.exit), "{auth}, {what}: {reply:?}");
            }
        }
    }

    // min_version TLS13 refuses a TLS 1.2 client.
    write("  min_version: TLS13\n");
    daemon.signal(libc::SIGHUP);
    wait_log(&daemon, "SIGHUP: web configuration reloaded", reloads);
    reloads += 1;
    assert_eq!(get(&[]).status, 200);
    let old = get(&["--tls-max", "1.2"]);
    assert_eq!((old.exit, old.status), (35, 0), "{old:?}");

    // max_version TLS12 and one cipher suite: only that suite is served.
    write("  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n");
    daemon.signal(libc::SIGHUP);
    wait_log(&daemon, "SIGHUP: web configuration reloaded", reloads);
    assert_eq!(
        get(&["--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"]).status,
        200
    );
    let other = get(&[
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ]);
    assert_eq!((other.exit, other.status), (35, 0), "{other:?}");
    let tls13 = get(&["--tlsv1.3"]);
    assert_eq!((tls13.exit, tls13.status), (35, 0), "{tls13:?}");

    // A client that opens a connection and never starts the handshake is
    // cut off after header_read_timeout (500 ms), and meanwhile others are
    // served.
    let started = Instant::now();
    let silent = ns.enter(|| {
        use std::io::Read as _;
        let mut stream = std::net::TcpStream::connect("127.0.0.1:9469").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        stream.read(&mut buf).map_err(|e| e.kind())
    });
    let waited = started.elapsed();
    assert!(
        matches!(silent, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the silent client was closed, not kept: {silent:?}"
    );
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    assert_eq!(get(&[]).status, 200);
}
