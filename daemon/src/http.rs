//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/api/v1/anomalies`,
//! `/api/v1/top-talkers`.
//!
//! Routing is a plain function of the request and [`HttpState`], tested
//! without a socket; [`serve`] adds the listener, whose connections
//! [`crate::http_connections`] keeps track of: a cap on open connections at
//! which those that have not sent a complete request make room for new ones,
//! header and idle deadlines, and the server's own metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::proto::MetricFamily;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::http_connections::{
    self, CloseReason, Connections, Deadlines, HttpMetrics, Room, TrackedStream,
};
use crate::metrics;
use crate::metrics::self_metrics::SelfMetrics;
use crate::readiness::Readiness;
use crate::sources::Snapshot;
use crate::webconfig::WebAccess;

/// Families owned by other parts of the daemon, rendered at scrape time.
pub type ExtraFamilies = Arc<dyn Fn() -> Vec<MetricFamily> + Send + Sync>;
/// JSON document of `/api/v1/anomalies`.
pub type AnomaliesJson = Arc<dyn Fn() -> String + Send + Sync>;

/// What the handlers read; cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Whether every required source is up, after the latest poll.
    pub readiness: watch::Receiver<Arc<Readiness>>,
    pub extra_families: ExtraFamilies,
    pub anomalies: AnomaliesJson,
    /// Where each `/metrics` render's duration goes.
    pub self_metrics: Arc<SelfMetrics>,
    /// TLS, basic auth and headers (`http.web_config`), as SIGHUP leaves them.
    pub web: WebAccess,
}

/// Limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// The header deadline while the cap is reached: a connection without a
    /// complete request for this long gives its slot to a new one.
    pub header_read_timeout_at_cap: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

type Body = Full<Bytes>;

pub fn handle<B>(request: &Request<B>, state: &HttpState) -> Response<Body> {
    let path = request.uri().path();
    let allowed = matches!(*request.method(), Method::GET | Method::HEAD);
    let known = matches!(
        path,
        "/metrics" | "/healthz" | "/readyz" | "/api/v1/anomalies" | "/api/v1/top-talkers"
    );
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !allowed {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = match path {
        "/metrics" => {
            let started = std::time::Instant::now();
            let snapshot = state.snapshot.borrow().clone();
            let accept = request
                .headers()
                .get(ACCEPT)
                .and_then(|value| value.to_str().ok());
            let rendered = match metrics::Format::negotiate(accept) {
                metrics::Format::Protobuf => Ok((
                    Bytes::from(snapshot.render_protobuf((state.extra_families)())),
                    metrics::protobuf::CONTENT_TYPE,
                )),
                metrics::Format::Text => snapshot
                    .render((state.extra_families)())
                    .map(|body| (Bytes::from(body), metrics::CONTENT_TYPE)),
            };
            state.self_metrics.scrapes.observe(started.elapsed());
            match rendered {
                Ok((body, content_type)) => with_type(StatusCode::OK, body, content_type),
                Err(error) => {
                    warn!(%error, "rendering /metrics");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "rendering metrics failed; see the log\n",
                    )
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let readiness = state.readiness.borrow().clone();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            with_type(status, readiness.to_json(), "application/json")
        }
        "/api/v1/top-talkers" => {
            let snapshot = state.snapshot.borrow().clone();
            with_type(
                StatusCode::OK,
                top_talkers_json(&snapshot),
                "application/json",
            )
        }
        _ => with_type(StatusCode::OK, (state.anomalies)(), "application/json"),
    };
    if request.method() == Method::HEAD {
        *response.body_mut() = Body::default();
    }
    response
}

/// The latest poll's top talkers; an empty report while packet events
/// are off or XDP is not loaded.
fn top_talkers_json(snapshot: &Snapshot) -> String {
    let report = snapshot
        .events
        .as_ref()
        .map(|events| events.top_talkers.clone())
        .unwrap_or_default();
    serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned())
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(status, body.to_owned(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(Body::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds the listener, with a listen backlog sized for `max_connections`
/// ([`http_connections::backlog`]); errors here are fatal at startup (an
/// address not on this host, a port in use).
pub async fn bind(addr: SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(http_connections::backlog(max_connections))
    };
    listen()
}

/// Accepts connections until `shutdown` turns true; `metrics` counts
/// requests and connections (render its families with `/metrics`).
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    limits: HttpLimits,
    metrics: HttpMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Connections::new(
        Deadlines {
            max_connections: limits.max_connections,
            header_read_timeout: limits.header_read_timeout,
            header_read_timeout_at_cap: limits.header_read_timeout_at_cap,
            idle_timeout: limits.idle_timeout,
        },
        metrics,
    );
    loop {
        // At the cap, make room first: displace a connection that has sent
        // no complete request, or leave the new one in the kernel's backlog
        // until one may be displaced or one closes.
        match connections.make_room(tokio::time::Instant::now()) {
            Room::Free | Room::Displaced(_) => {}
            Room::WaitUntil(at) => {
                let until = async {
                    match at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = until => {}
                    () = connections.freed() => {}
                    _ = stopped(&mut shutdown) => return,
                }
                continue;
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let ticket = connections.register(tokio::time::Instant::now());
        let state = state.clone();
        let metrics = connections.metrics().clone();
        tokio::spawn(async move {
            let marks = ticket.requests();
            let served = marks.clone();
            // Tracked under TLS: a client that sends no handshake is as
            // silent as one that sends no request, and may be displaced.
            let tracked = TrackedStream::new(stream, served.clone());
            let timeout = limits.header_read_timeout;
            let session = async move {
                let Some(stream) = state.web.accept(tracked, peer, timeout).await else {
                    return CloseReason::Error;
                };
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    marks.started();
                    let state = state.clone();
                    let metrics = metrics.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let response = state.web.respond(request, |r| handle(r, &state)).await;
                        metrics.request(&path, response.status().as_u16());
                        Ok::<_, Infallible>(response)
                    }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                match connection.await {
                    Ok(()) if served.served() > 0 => CloseReason::Completed,
                    Ok(()) => CloseReason::Error,
                    Err(error) if error.is_timeout() => CloseReason::HeaderTimeout,
                    Err(error) => {
                        debug!(%peer, %error, "HTTP connection ended with an error");
                        CloseReason::Error
                    }
                }
            };
            let reason = tokio::select! {
                reason = session => reason,
                reason = ticket.closing() => reason,
            };
            ticket.closed(reason);
        });
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: bool) -> HttpState {
        let (_, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let (_, readiness) = watch::channel(Arc::new(Readiness {
            ready,
            ..Readiness::default()
        }));
        HttpState {
            snapshot,
            readiness,
            extra_families: Arc::new(Vec::new),
            anomalies: Arc::new(|| "{\"active\":[],\"resolved\":[]}".to_owned()),
            self_metrics: Arc::new(SelfMetrics::new("test".into())),
            web: WebAccess::default(),
        }
    }

    fn get(method: Method, path: &str, state: &HttpState) -> Response<Body> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        handle(&request, state)
    }

    #[test]
    fn routes_and_status_codes() {
        let s = state(true);
        assert_eq!(get(Method::GET, "/metrics", &s).status(), StatusCode::OK);
        assert_eq!(get(Method::GET, "/healthz", &s).status(), StatusCode::OK);
        assert_eq!(get(Method::GET, "/readyz", &s).status(), StatusCode::OK);
        assert_eq!(
            get(Method::GET, "/api/v1/anomalies", &s).status(),
            StatusCode::OK
        );
        assert_eq!(
            get(Method::GET, "/nope", &s).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(Method::GET, "/metrics/", &s).status(),
            StatusCode::NOT_FOUND
        );
        let post = get(Method::POST, "/metrics", &s);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert_eq!(
            get(Method::DELETE, "/nope", &s).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn top_talkers_are_served_as_json() {
        use crate::sources::events::{EventStats, TopTalkers};
        let mut top = TopTalkers::new(2, Duration::from_secs(60), 100);
        for _ in 0..3 {
            top.record(1, "10.0.0.7".parse().unwrap(), 100);
        }
        top.record(1, "fd00::1".parse().unwrap(), 1000);
        let snapshot = Snapshot {
            events: Some(EventStats {
                top_talkers: top.report(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (_, snapshot) = watch::channel(Arc::new(snapshot));
        let s = HttpState {
            snapshot,
            ..state(true)
        };
        let response = get(Method::GET, "/api/v1/top-talkers", &s);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = futures_body(response);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["window_seconds"], 60.0);
        assert_eq!(json["sample_rate"], 100);
        assert_eq!(json["sampled_packets"], 4);
        assert_eq!(json["peers"][0]["peer"], "10.0.0.7");
        assert_eq!(json["peers"][0]["direction"], "rx");
        assert_eq!(json["peers"][0]["packets"], 300.0);
        assert_eq!(json["peers"][0]["bytes"], 30000.0);
        assert_eq!(json["peers"][0]["share"], 0.75);
        assert_eq!(json["peers"][1]["peer"], "fd00::1");

        // Without packet events: an empty report, still valid JSON.
        let body = futures_body(get(Method::GET, "/api/v1/top-talkers", &state(true)));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["peers"].as_array().unwrap().len(), 0);
    }

    fn futures_body(response: Response<Body>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn readiness_is_json_with_200_only_when_ready() {
        let response = get(Method::GET, "/readyz", &state(false));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(futures_body(response), r#"{"ready":false,"sources":{}}"#);
        let response = get(Method::GET, "/readyz", &state(true));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(futures_body(response), r#"{"ready":true,"sources":{}}"#);
    }

    #[test]
    fn metrics_have_the_text_format_content_type() {
        let response = get(Method::GET, "/metrics", &state(true));
        assert_eq!(response.headers()[CONTENT_TYPE], metrics::CONTENT_TYPE);
    }

    #[test]
    fn metrics_in_protobuf_when_the_scraper_asks_for_it() {
        let request = Request::builder()
            .uri("/metrics")
            .header(
                ACCEPT,
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
            )
            .body(())
            .unwrap();
        let response = handle(&request, &state(true));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            metrics::protobuf::CONTENT_TYPE
        );
        let snapshot = state(true).snapshot.borrow().clone();
        let expected = snapshot.render_protobuf(Vec::new());
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        assert!(!expected.is_empty());
        assert_eq!(body.as_ref(), expected.as_slice());
    }

    /// A server on a loopback port with `max_connections` and the given
    /// deadlines (50 ms header deadline at the cap).
    async fn start_server(
        max_connections: usize,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
        HttpMetrics,
    ) {
        let listener = bind("127.0.0.1:0".parse().unwrap(), max_connections)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = HttpLimits {
            max_connections,
            header_read_timeout,
            header_read_timeout_at_cap: Duration::from_millis(50),
            idle_timeout,
        };
        let metrics = HttpMetrics::new();
        let server = tokio::spawn(serve(
            listener,
            state(true),
            limits,
            metrics.clone(),
            stop_rx,
        ));
        (addr, stop_tx, server, metrics)
    }

    #[tokio::test]
    async fn serves_over_a_real_socket_and_times_out_silent_clients() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, stop_tx, server, _metrics) =
            start_server(4, Duration::from_millis(200), Duration::from_secs(1)).await;

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("ok\n"), "{reply}");

        // A client that never finishes its headers is cut off.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        silent
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "server kept a client with incomplete headers for 5 s"
        );

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn at_the_cap_silent_clients_make_room_for_a_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, stop_tx, server, metrics) =
            start_server(2, Duration::from_secs(30), Duration::from_secs(30)).await;
        let mut silent = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTT").await.unwrap();
            silent.push(s);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The oldest silent client was closed for it; the younger one stays.
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), silent[0].read_to_end(&mut buf))
            .await
            .expect("the oldest silent client is closed");
        assert!(
            n.is_err() || buf.is_empty(),
            "closed without a reply: {buf:?}"
        );
        let text = crate::metrics::render(metrics.families()).unwrap();
        for line in [
            "telemetryd_http_connections_closed_total{reason=\"displaced\"} 1",
            "telemetryd_http_requests_total{code=\"200\",handler=\"/healthz\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
