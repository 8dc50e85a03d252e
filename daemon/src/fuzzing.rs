//! The fuzz targets' bodies: what `fuzz/fuzz_targets/*.rs` run under
//! libFuzzer (`cargo xtask fuzz`) and what the corpus replay test below
//! runs on stable, on every committed corpus file (`fuzz/corpus/<target>/`),
//! so a crash once found stays fixed in CI.
//!
//! Each target takes any byte string and must return: errors are fine,
//! panics, overflows, hangs and unbounded allocations are bugs. Built
//! with the `fuzzing` feature (the fuzz crate turns it on) and in tests.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use http_body_util::BodyExt as _;
use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{handle, HttpState};
use crate::kernel::btf::KernelBtf;
use crate::sources::Snapshot;

/// A target: any byte string in, a panic when it finds a bug.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their corpus folder.
pub const TARGETS: [(&str, Target); 4] = [
    ("config", config),
    ("event", event),
    ("http", http),
    ("btf", btf),
];

/// `telemetryd check`'s parsing and validation of a configuration file
/// (what `Config::load` does once the file is read), then the description
/// `check` prints. A valid configuration survives a round trip through
/// TOML unchanged.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(config) => {
            let _ = crate::sources::describe(&config, false);
            let again = toml::to_string(&config).expect("a parsed configuration serializes");
            let reparsed = Config::from_toml(&again, "round trip")
                .unwrap_or_else(|e| panic!("round trip of a valid configuration: {e}\n{again}"));
            assert_eq!(reparsed, config, "round trip changed the configuration");
        }
        Err(error) => {
            // The message `telemetryd` prints, with its line:column.
            let _ = error.to_string();
            let _ = (error.key(), error.line_col());
        }
    }
}

/// One ring buffer record through the packet event decoder.
pub fn event(data: &[u8]) {
    if let Ok(record) = crate::sources::events::decode::decode(data) {
        assert_eq!(data.len(), telemetryd_common::events::PACKET_EVENT_SIZE);
        assert_eq!(record.src.is_some(), record.dst.is_some());
        assert_eq!(record.src_port.is_some(), record.dst_port.is_some());
    }
}

/// The HTTP request path, twice: a request built from the input's first
/// lines (method, target, then `name: value` headers) straight into the
/// router [`handle`], and the whole input as raw bytes through hyper's
/// HTTP/1 server, as the listener serves it, into the same router.
pub fn http(data: &[u8]) {
    let state = http_state();
    if let Some(request) = request_from_lines(data) {
        let response = handle(&request, &state);
        let status = response.status();
        assert!(
            [
                StatusCode::OK,
                StatusCode::NOT_FOUND,
                StatusCode::METHOD_NOT_ALLOWED,
                StatusCode::SERVICE_UNAVAILABLE,
            ]
            .contains(&status),
            "unexpected status {status}"
        );
        // The router empties the body of a HEAD it answers; its 404 and
        // 405 keep theirs, and hyper sends none on the wire (the test
        // below checks that).
        if request.method() == Method::HEAD && status == StatusCode::OK {
            let body = runtime().block_on(response.into_body().collect());
            assert!(body.expect("a full body").to_bytes().is_empty());
        }
    }
    let _ = runtime().block_on(serve_bytes(data, state));
}

/// `METHOD TARGET [VERSION]\r\nname: value\r\n...` (the version is ignored): `None` when a part is not one the
/// `http` crate accepts (hyper would have refused it before routing).
fn request_from_lines(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next()?;
    let mut parts = first.trim_ascii_end().split(|&b| b == b' ');
    let method = Method::from_bytes(parts.next()?).ok()?;
    let target = parts.next()?;
    let mut builder = Request::builder().method(method).uri(target);
    for line in lines.take(32) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = hyper::header::HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = hyper::header::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(()).ok()
}

/// Writes `data` into a hyper HTTP/1 connection served with
/// [`handle`] and returns whatever it answers until it closes.
async fn serve_bytes(data: &[u8], state: HttpState) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = handle(&request, &state);
        async move { Ok::<_, Infallible>(response) }
    });
    // Half-close on: the request bytes end with the client's shutdown,
    // which would otherwise end the connection before it answers (the
    // listener's default; what is fuzzed here is parsing and routing).
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    // Reading and writing at once: pipelined answers must not fill the
    // pipe while the request bytes still wait to be written.
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let write = async move {
        let _ = to_server.write_all(data).await;
        let _ = to_server.shutdown().await;
    };
    let read = async move {
        let mut answered = Vec::new();
        let _ = from_server.read_to_end(&mut answered).await;
        answered
    };
    tokio::join!(connection, write, read).2
}

fn http_state() -> HttpState {
    let (_, snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let (_, readiness) = watch::channel(Arc::new(crate::readiness::Readiness {
        ready: true,
        ..Default::default()
    }));
    HttpState {
        snapshot,
        readiness,
        extra_families: Arc::new(Vec::new),
        anomalies: Arc::new(|| "{\"active\":[],\"resolved\":[]}".to_owned()),
        self_metrics: Arc::new(crate::metrics::self_metrics::SelfMetrics::new(
            "fuzz".into(),
        )),
        web: crate::webconfig::WebAccess::default(),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A BTF blob through the reader: the lookups the drop tracer makes, and
/// lookups by the names the blob itself holds (so that the fuzzer reaches
/// the type chains of whatever it builds).
pub fn btf(data: &[u8]) {
    let Ok(btf) = KernelBtf::parse(data.to_vec()) else {
        return;
    };
    let _ = btf.enum_values("skb_drop_reason");
    let _ = btf.tracepoint_args("kfree_skb");
    for (name, path) in [
        ("sk_buff", &["dev"][..]),
        ("net_device", &["nd_net", "net"]),
        ("sock", &["__sk_common", "skc_net", "net"]),
        ("net", &["ns", "inum"]),
    ] {
        let _ = btf.field_offset(name, path);
    }
    let names: Vec<&str> = string_table(data)
        .filter(|s| !s.is_empty())
        .take(16)
        .collect();
    for &a in &names {
        let _ = btf.enum_values(a);
        let _ = btf.tracepoint_args(a.strip_prefix("btf_trace_").unwrap_or(a));
        for &b in &names {
            let _ = btf.field_offset(a, &[b]);
            let _ = btf.field_offset(a, &[b, a]);
        }
    }
}

/// The NUL-separated strings of the blob's string section, if its header
/// says where that is.
fn string_table(data: &[u8]) -> impl Iterator<Item = &str> {
    let word = |at: usize| {
        data.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let start = word(4).saturating_add(word(16));
    let end = start.saturating_add(word(20)).min(data.len());
    data.get(start..end)
        .unwrap_or(&[])
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/corpus/{target}"))
    }

    /// Every committed corpus file (seeds and the inputs of crashes once
    /// found) through its target, on stable, without libFuzzer.
    #[test]
    fn committed_corpora_replay() {
        for (target, run) in TARGETS {
            let dir = corpus_dir(target);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .collect();
            files.sort();
            assert!(files.len() >= 2, "{}: {} files", dir.display(), files.len());
            for file in files {
                let data = std::fs::read(&file).unwrap();
                eprintln!("replaying {}", file.display());
                run(&data);
            }
        }
    }

    /// The BTF reader's crashes found by fuzzing, by name (the handcrafted
    /// cases are in `kernel::btf`'s tests): a struct that is its own
    /// anonymous member (stack overflow), offsets past `u32::MAX` bits
    /// (arithmetic overflow).
    #[test]
    fn btf_crashes_found_by_fuzzing_stay_fixed() {
        for name in [
            "crash-anonymous-member-cycle",
            "crash-member-offset-overflow",
        ] {
            let data = std::fs::read(corpus_dir("btf").join(name)).unwrap();
            KernelBtf::parse(data.clone()).unwrap_or_else(|e| panic!("{name} indexes: {e}"));
            btf(&data);
        }
    }

    /// Found by fuzzing (`fuzz/corpus/http/crash-head-unknown-path`): the
    /// router's 404 to a HEAD keeps its body (the target expected none).
    /// On the wire hyper sends none: the answer ends with its header.
    #[test]
    fn head_answers_carry_no_body_on_the_wire() {
        let crash = std::fs::read(corpus_dir("http").join("crash-head-unknown-path")).unwrap();
        http(&crash);
        for request in [
            &b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let answer = runtime().block_on(serve_bytes(request, http_state()));
            let text = String::from_utf8(answer).unwrap();
            assert!(text.starts_with("HTTP/1.1 "), "{text:?}");
            assert!(text.ends_with("\r\n\r\n"), "{text:?}");
        }
        let answer = runtime().block_on(serve_bytes(
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            http_state(),
        ));
        assert!(String::from_utf8(answer)
            .unwrap()
            .ends_with("\r\n\r\nnot found\n"));
    }

    /// The seeds reach past the first check of each target: the shipped
    /// configuration parses, a real event decodes, a real scrape routes,
    /// a real BTF blob indexes.
    #[test]
    fn seeds_are_valid_inputs() {
        let read = |target: &str, name: &str| std::fs::read(corpus_dir(target).join(name)).unwrap();
        let shipped = read("config", "shipped-telemetryd.toml");
        Config::from_toml(std::str::from_utf8(&shipped).unwrap(), "seed").unwrap();
        crate::sources::events::decode::decode(&read("event", "tcp4-syn")).unwrap();
        let scrape = read("http", "get-metrics");
        assert_eq!(
            handle(&request_from_lines(&scrape).unwrap(), &http_state()).status(),
            StatusCode::OK
        );
        let answer = runtime().block_on(serve_bytes(
            &read("http", "prometheus-scrape"),
            http_state(),
        ));
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        KernelBtf::parse(read("btf", "ebpf-programs.btf")).unwrap();
    }
}
