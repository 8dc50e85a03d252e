//! The HTTP server's open connections: which have sent a complete request,
//! which are waiting for one, and which to close so that clients that
//! never finish a request cannot starve those that do.
//!
//! Policy, at `max_connections` open connections:
//! - a new connection is accepted anyway, and the oldest connection that
//!   is waiting for a request (one that has never sent a complete request
//!   first, then an idle keep-alive one) is closed to make room:
//!   *displaced*;
//! - only a connection that has waited at least `header_read_timeout_at_cap`
//!   (the shorter header deadline while at the cap) is displaced, so every
//!   connection has that long to send its request, however fast others
//!   reconnect; while none has, new connections wait in the kernel's accept
//!   queue (sized for the cap: [`backlog`]);
//! - connections busy with a request are never displaced, and nobody is
//!   displaced unless more than half the connections have been silent that
//!   long (at the cap with slow but honest clients, new ones wait for a
//!   close instead).
//!
//! Every connection also has deadlines of its own: `header_read_timeout` until
//! its first complete request, `idle_timeout` between requests.
//!
//! [`HttpMetrics`] counts what happened: requests by handler and status
//! code, open connections, closed connections by [`CloseReason`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

/// The listen backlog for `max_connections`: room for the connections that
/// wait while the cap is reached (at least 1,024, the usual default; the
/// kernel clamps it to `net.core.somaxconn`).
pub fn backlog(max_connections: usize) -> u32 {
    u32::try_from(max_connections.saturating_mul(16))
        .unwrap_or(u32::MAX)
        .clamp(1024, 65_535)
}

/// Why a connection was closed: the `reason` label of
/// `telemetryd_http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseReason {
    /// The client closed it, or asked to, after at least one request.
    Completed,
    /// Closed at the cap to make room for a new connection.
    Displaced,
    /// No complete request within `header_read_timeout`.
    HeaderTimeout,
    /// No new request within `idle_timeout` after the last one.
    IdleTimeout,
    /// A protocol or I/O error, or closed by the client before any request.
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Completed,
        CloseReason::Displaced,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::Displaced => "displaced",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Error => "error",
        }
    }
}

/// The `handler` label values of `telemetryd_http_requests_total`: every
/// path served, and `other` for any other path.
pub const HANDLERS: [&str; 6] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/api/v1/anomalies",
    "/api/v1/top-talkers",
    "other",
];

/// The `handler` label of a request for `path`.
pub fn handler_label(path: &str) -> &'static str {
    HANDLERS
        .iter()
        .copied()
        .find(|h| *h == path)
        .unwrap_or("other")
}

/// The server's own metric families.
#[derive(Clone)]
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    open: IntGauge,
    closed: IntCounterVec,
}

impl HttpMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "telemetryd_http_requests_total",
                "HTTP requests answered, by handler and status code.",
            ),
            &["handler", "code"],
        )
        .expect("valid metric");
        let open = IntGauge::new(
            "telemetryd_http_connections_open",
            "HTTP connections open now.",
        )
        .expect("valid metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "telemetryd_http_connections_closed_total",
                "HTTP connections closed, by reason: completed, displaced (at the \
                 connection cap, to make room), header_timeout, idle_timeout, error.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for handler in HANDLERS {
            requests.with_label_values(&[handler, "200"]);
        }
        for reason in CloseReason::ALL {
            closed.with_label_values(&[reason.as_str()]);
        }
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(open.clone()))
            .expect("registered once");
        registry
            .register(Box::new(closed.clone()))
            .expect("registered once");
        Self {
            registry,
            requests,
            open,
            closed,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, path: &str, code: u16) {
        self.requests
            .with_label_values(&[handler_label(path), &code.to_string()])
            .inc();
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    #[cfg(test)]
    fn closed(&self, reason: CloseReason) -> u64 {
        self.closed.with_label_values(&[reason.as_str()]).get()
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The deadlines of the policy above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub header_read_timeout_at_cap: Duration,
    pub idle_timeout: Duration,
}

/// What one connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a complete request since `since` (accepted then, or its
    /// last request was answered then); `served` requests so far.
    Waiting { since: Instant, served: u64 },
    /// A request is being answered; `written`: its answer is being written
    /// (the connection waits for the next request once that is flushed).
    Busy { served: u64, written: bool },
    /// Told to close (displaced); no longer counts against the cap.
    Closing,
}

struct Entry {
    state: State,
    /// Since when the server has found nothing more to read from the client
    /// (its last read was `Pending`); `None` while bytes keep coming or before
    /// the server first looked. Grace at the cap counts from here, so a
    /// connection whose request sits unread because the server is busy is
    /// never taken for a silent one.
    silent_since: Option<Instant>,
    close: Arc<Notify>,
}

struct Inner {
    next_id: u64,
    /// Ordered by id, that is by age: the first match is the oldest.
    entries: BTreeMap<u64, Entry>,
    last_cap_warning: Option<Instant>,
    displaced_since_warning: u64,
}

impl Inner {
    fn counted(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.state != State::Closing)
            .count()
    }
}

/// What the accept loop must do before accepting the next connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Below the cap: accept.
    Free,
    /// At the cap: connection `id` was told to close; accept.
    Displaced(u64),
    /// At the cap, and no connection may be displaced before `at`; or
    /// `None`: none may yet (busy, or not silent), wait for a close or for
    /// one to fall silent.
    WaitUntil(Option<Instant>),
}

/// How often the "cap reached" warning is logged at most.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The open connections. Cheap to share (`Arc`).
pub struct Connections {
    deadlines: Deadlines,
    metrics: HttpMetrics,
    inner: Mutex<Inner>,
    /// Signalled when a connection closes or a slot may have come free.
    freed: Notify,
}

impl Connections {
    pub fn new(deadlines: Deadlines, metrics: HttpMetrics) -> Arc<Self> {
        Arc::new(Self {
            deadlines,
            metrics,
            inner: Mutex::new(Inner {
                next_id: 0,
                entries: BTreeMap::new(),
                last_cap_warning: None,
                displaced_since_warning: 0,
            }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }

    /// Connections counted against the cap.
    pub fn open(&self) -> usize {
        self.lock().counted()
    }

    /// Makes room for one more connection at `now` (see [`Room`]).
    pub fn make_room(&self, now: Instant) -> Room {
        let mut inner = self.lock();
        if inner.counted() < self.deadlines.max_connections {
            return Room::Free;
        }
        // Displace only while most connections are silent: at the cap with
        // clients that are merely slow (a CPU-starved scraper that connected
        // but has not written yet), closing one to let in another helps no
        // one; new connections wait for a close instead, as below the cap.
        let grace = self.deadlines.header_read_timeout_at_cap;
        let long_silent = inner
            .entries
            .values()
            .filter(|e| {
                matches!(e.state, State::Waiting { .. })
                    && e.silent_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= grace)
            })
            .count();
        if long_silent * 2 <= self.deadlines.max_connections {
            self.warn_at_cap(&mut inner, now);
            // The next connection to fall silent wakes the accept loop; then
            // it waits until that one has been silent for the grace.
            let first_silent = inner
                .entries
                .values()
                .filter(|e| matches!(e.state, State::Waiting { .. }))
                .filter_map(|e| e.silent_since)
                .filter(|t| now.saturating_duration_since(*t) < grace)
                .min();
            return Room::WaitUntil(first_silent.map(|t| t + grace));
        }
        // Oldest first, never-served before idle keep-alive ones.
        let mut candidate: Option<(u64, bool, Instant)> = None;
        let mut earliest: Option<Instant> = None;
        for (&id, entry) in &inner.entries {
            let State::Waiting { served, .. } = entry.state else {
                continue;
            };
            let Some(since) = entry.silent_since else {
                continue;
            };
            if now.saturating_duration_since(since) < grace {
                let at = since + grace;
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                continue;
            }
            let keep_alive = served > 0;
            match candidate {
                None => candidate = Some((id, keep_alive, since)),
                Some((_, true, _)) if !keep_alive => candidate = Some((id, keep_alive, since)),
                _ => {}
            }
        }
        let room = match candidate {
            Some((id, _, _)) => {
                let entry = inner.entries.get_mut(&id).expect("just found");
                entry.state = State::Closing;
                entry.close.notify_one();
                inner.displaced_since_warning += 1;
                Room::Displaced(id)
            }
            None => Room::WaitUntil(earliest),
        };
        self.warn_at_cap(&mut inner, now);
        room
    }

    /// The cap is reached: says so, at most every [`CAP_WARNING_EVERY`].
    fn warn_at_cap(&self, inner: &mut Inner, now: Instant) {
        let due = inner
            .last_cap_warning
            .is_none_or(|t| now.saturating_duration_since(t) >= CAP_WARNING_EVERY);
        if due {
            inner.last_cap_warning = Some(now);
            let displaced = std::mem::take(&mut inner.displaced_since_warning);
            warn!(
                event = "http_connection_cap",
                max_connections = self.deadlines.max_connections,
                displaced,
                "HTTP connection cap reached: connections that have not sent a complete request \
                 are closed first (see telemetryd_http_connections_closed_total); logged at most \
                 every 10 s"
            );
        }
    }

    /// Waits until a connection closes (or a slot may have come free).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Registers a new connection, accepted at `now`.
    pub fn register(self: &Arc<Self>, now: Instant) -> Ticket {
        let close = Arc::new(Notify::new());
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.entries.insert(
            id,
            Entry {
                state: State::Waiting {
                    since: now,
                    served: 0,
                },
                silent_since: None,
                close: close.clone(),
            },
        );
        self.metrics.open.set(inner.entries.len() as i64);
        Ticket {
            connections: self.clone(),
            id,
            close,
            reason: None,
        }
    }

    /// A read on connection `id` at `now` returned data (`true`) or found
    /// none (`false`).
    fn read(&self, id: u64, data: bool, now: Instant) {
        let fell_silent = {
            let mut inner = self.lock();
            let Some(entry) = inner.entries.get_mut(&id) else {
                return;
            };
            match (data, entry.silent_since) {
                (true, _) => {
                    entry.silent_since = None;
                    false
                }
                (false, None) => {
                    entry.silent_since = Some(now);
                    true
                }
                (false, Some(_)) => false,
            }
        };
        if fell_silent {
            // The accept loop may be waiting for a connection to displace.
            self.freed.notify_one();
        }
    }

    /// Changes the state of `id`; a change of state ends a silence (the
    /// next empty read starts the next one).
    fn set_state(&self, id: u64, change: impl FnOnce(State) -> State) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            let new = change(entry.state);
            if new != entry.state {
                entry.state = new;
                entry.silent_since = None;
            }
        }
    }

    /// When connection `id` times out, and as what; `None` once closing.
    fn deadline(&self, id: u64) -> Option<(Instant, CloseReason)> {
        match self.lock().entries.get(&id)?.state {
            State::Waiting { since, served: 0 } => Some((
                since + self.deadlines.header_read_timeout,
                CloseReason::HeaderTimeout,
            )),
            State::Waiting { since, .. } => Some((
                since + self.deadlines.idle_timeout,
                CloseReason::IdleTimeout,
            )),
            State::Busy { .. } | State::Closing => None,
        }
    }

    fn remove(&self, id: u64, reason: CloseReason) {
        let mut inner = self.lock();
        inner.entries.remove(&id);
        self.metrics.open.set(inner.entries.len() as i64);
        drop(inner);
        self.metrics
            .closed
            .with_label_values(&[reason.as_str()])
            .inc();
        self.freed.notify_one();
    }
}

/// One registered connection; dropping it unregisters it and counts its
/// close reason.
pub struct Ticket {
    connections: Arc<Connections>,
    id: u64,
    close: Arc<Notify>,
    reason: Option<CloseReason>,
}

impl Ticket {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A handle for the request handler to report requests with.
    pub fn requests(&self) -> RequestMarks {
        RequestMarks {
            connections: self.connections.clone(),
            id: self.id,
        }
    }

    /// Resolves when this connection must close, with the reason: displaced
    /// at the cap, or its header or idle deadline passed.
    pub async fn closing(&self) -> CloseReason {
        loop {
            let Some((at, reason)) = self.connections.deadline(self.id) else {
                // Busy (a deadline comes back when it is answered) or closing.
                tokio::select! {
                    () = self.close.notified() => return CloseReason::Displaced,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            };
            tokio::select! {
                () = self.close.notified() => return CloseReason::Displaced,
                () = tokio::time::sleep_until(at) => {
                    if self.connections.deadline(self.id).is_some_and(|(a, _)| a <= Instant::now()) {
                        return reason;
                    }
                }
            }
        }
    }

    /// Sets the reason counted when the ticket is dropped.
    pub fn closed(mut self, reason: CloseReason) {
        self.reason = Some(reason);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.connections
            .remove(self.id, self.reason.unwrap_or(CloseReason::Error));
    }
}

/// Marks the requests of one connection (cheap to clone into a service).
#[derive(Clone)]
pub struct RequestMarks {
    connections: Arc<Connections>,
    id: u64,
}

impl RequestMarks {
    /// A complete request arrived: the connection is busy, not displaceable.
    pub fn started(&self) {
        self.connections.set_state(self.id, |s| match s {
            State::Waiting { served, .. } => State::Busy {
                served,
                written: false,
            },
            other => other,
        });
    }

    /// A read returned data (`true`) or found none (`false`).
    fn read(&self, data: bool) {
        self.connections.read(self.id, data, Instant::now());
    }

    /// Bytes of the answer went out.
    fn wrote(&self) {
        self.connections.set_state(self.id, |s| match s {
            State::Busy { served, .. } => State::Busy {
                served,
                written: true,
            },
            other => other,
        });
    }

    /// The answer is flushed: the connection waits for the next request.
    fn flushed(&self) {
        self.connections.set_state(self.id, |s| match s {
            State::Busy {
                served,
                written: true,
            } => State::Waiting {
                since: Instant::now(),
                served: served + 1,
            },
            other => other,
        });
    }

    /// Requests answered on this connection so far.
    pub fn served(&self) -> u64 {
        match self
            .connections
            .lock()
            .entries
            .get(&self.id)
            .map(|e| e.state)
        {
            Some(State::Waiting { served, .. } | State::Busy { served, .. }) => served,
            _ => 0,
        }
    }
}

/// A connection's stream that tells its [`RequestMarks`] when the client
/// has fallen silent (a read found nothing) and when an answer has been
/// written and flushed: until then the connection is busy (never
/// displaced), afterwards it waits for its next request.
pub struct TrackedStream<S> {
    inner: S,
    marks: RequestMarks,
}

impl<S> TrackedStream<S> {
    pub fn new(inner: S, marks: RequestMarks) -> Self {
        Self { inner, marks }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        // Through a waker that ends the silence as soon as the socket
        // becomes readable, not only once the task gets to read it.
        let waker = Waker::from(Arc::new(ReadableWaker {
            marks: self.marks.clone(),
            inner: cx.waker().clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        let read = Pin::new(&mut self.inner).poll_read(&mut cx, buf);
        match read {
            Poll::Pending => self.marks.read(false),
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.marks.read(true),
            Poll::Ready(_) => {}
        }
        read
    }
}

/// Wakes the connection's task, first marking that its client sent
/// something (or closed).
struct ReadableWaker {
    marks: RequestMarks,
    inner: Waker,
}

impl Wake for ReadableWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.marks.read(true);
        self.inner.wake_by_ref();
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.marks.wrote();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.marks.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.marks.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max: usize) -> Arc<Connections> {
        Connections::new(
            Deadlines {
                max_connections: max,
                header_read_timeout: Duration::from_secs(5),
                header_read_timeout_at_cap: Duration::from_millis(100),
                idle_timeout: Duration::from_secs(30),
            },
            HttpMetrics::new(),
        )
    }

    fn closed(c: &Connections, reason: CloseReason) -> u64 {
        c.metrics().closed(reason)
    }

    #[test]
    fn backlog_is_sized_for_the_cap() {
        assert_eq!(backlog(1), 1024);
        assert_eq!(backlog(64), 1024);
        assert_eq!(backlog(1000), 16_000);
        assert_eq!(backlog(10_000), 65_535);
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_cap_there_is_room() {
        let c = connections(2);
        let now = Instant::now();
        assert_eq!(c.make_room(now), Room::Free);
        let _a = c.register(now);
        assert_eq!(c.make_room(now), Room::Free);
        let _b = c.register(now);
        assert_eq!(c.open(), 2);
        assert_ne!(c.make_room(now), Room::Free);
    }

    /// The server read from `t`'s client at `at` and found nothing more.
    fn silent(c: &Connections, t: &Ticket, at: Instant) {
        c.read(t.id(), false, at);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_silent_connection_is_displaced_after_the_grace() {
        let c = connections(3);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let a = c.register(t0);
        let b = c.register(ms(10));
        let busy = c.register(ms(20));
        busy.requests().started();
        // Not read from yet (its request may sit unread): never displaced.
        assert_eq!(c.make_room(ms(500)), Room::WaitUntil(None));
        silent(&c, &a, ms(500));
        silent(&c, &b, ms(510));
        // A later empty read keeps the first silence; data ends it.
        silent(&c, &a, ms(540));
        // Nobody has been silent 100 ms yet: wait until the first has.
        assert_eq!(c.make_room(ms(550)), Room::WaitUntil(Some(ms(600))));
        assert_eq!(c.make_room(ms(700)), Room::Displaced(a.id()));
        // `a` no longer counts; the new connection takes its slot.
        assert_eq!(c.open(), 2);
        let d = c.register(ms(700));
        silent(&c, &d, ms(700));
        // One of three long silent is no attack: wait for `d`'s grace.
        assert_eq!(c.make_room(ms(750)), Room::WaitUntil(Some(ms(800))));
        assert_eq!(c.make_room(ms(800)), Room::Displaced(b.id()));
        // Data from `d` ends its silence.
        let e = c.register(ms(800));
        silent(&c, &e, ms(800));
        c.read(d.id(), true, ms(810));
        assert_eq!(c.make_room(ms(950)), Room::WaitUntil(None));
        // `a` learns it must close, and its close is counted once dropped.
        assert_eq!(a.closing().await, CloseReason::Displaced);
        a.closed(CloseReason::Displaced);
        assert_eq!(closed(&c, CloseReason::Displaced), 1);
        drop(busy);
        assert_eq!(closed(&c, CloseReason::Error), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_served_connections_go_before_idle_keep_alive_ones() {
        let c = connections(2);
        let t0 = Instant::now();
        let keep_alive = c.register(t0);
        let marks = keep_alive.requests();
        marks.started();
        marks.wrote();
        marks.flushed();
        assert_eq!(marks.served(), 1);
        silent(&c, &keep_alive, t0);
        let never = c.register(t0 + Duration::from_millis(1));
        silent(&c, &never, t0 + Duration::from_millis(1));
        let now = t0 + Duration::from_secs(1);
        assert_eq!(c.make_room(now), Room::Displaced(never.id()));
        let other = c.register(now);
        silent(&c, &other, now);
        let later = now + Duration::from_secs(1);
        assert_eq!(c.make_room(later), Room::Displaced(other.id()));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_is_displaced_unless_most_connections_are_silent() {
        let c = connections(4);
        let t0 = Instant::now();
        let tickets: Vec<Ticket> = (0..4).map(|_| c.register(t0)).collect();
        tickets[0].requests().started();
        tickets[1].requests().started();
        silent(&c, &tickets[2], t0);
        silent(&c, &tickets[3], t0);
        // Two of four silent: slow clients, not an attack; wait for a close.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(c.make_room(later), Room::WaitUntil(None));
        let mut tickets = tickets;
        drop(tickets.remove(0));
        let t = c.register(later);
        silent(&c, &t, later);
        assert_eq!(
            c.make_room(later),
            Room::WaitUntil(Some(later + Duration::from_millis(100)))
        );
        // Three of four silent for 100 ms: the oldest one goes.
        assert_eq!(
            c.make_room(later + Duration::from_millis(100)),
            Room::Displaced(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_connection_busy_waits_for_a_close() {
        let c = connections(1);
        let busy = c.register(Instant::now());
        busy.requests().started();
        assert_eq!(c.make_room(Instant::now()), Room::WaitUntil(None));
        busy.closed(CloseReason::Completed);
        tokio::time::timeout(Duration::from_secs(1), c.freed())
            .await
            .expect("a close wakes the accept loop");
        assert_eq!(c.make_room(Instant::now()), Room::Free);
        assert_eq!(closed(&c, CloseReason::Completed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn header_and_idle_deadlines() {
        let c = connections(10);
        let t0 = Instant::now();
        let silent = c.register(t0);
        assert_eq!(silent.closing().await, CloseReason::HeaderTimeout);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));

        let t1 = Instant::now();
        let served = c.register(t1);
        let marks = served.requests();
        marks.started();
        tokio::time::sleep(Duration::from_secs(10)).await;
        marks.wrote();
        // Written but not yet flushed: still busy, no deadline.
        assert_eq!(c.deadline(served.id()), None);
        marks.flushed();
        assert_eq!(served.closing().await, CloseReason::IdleTimeout);
        assert_eq!(t1.elapsed(), Duration::from_secs(40));
    }

    #[test]
    fn metrics_exist_before_any_connection() {
        let m = HttpMetrics::new();
        let families = m.families();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "telemetryd_http_connections_closed_total",
                "telemetryd_http_connections_open",
                "telemetryd_http_requests_total"
            ]
        );
        let text = crate::metrics::render(families).unwrap();
        for reason in CloseReason::ALL {
            let line = format!(
                "telemetryd_http_connections_closed_total{{reason=\"{}\"}} 0",
                reason.as_str()
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            text.contains("telemetryd_http_connections_open 0"),
            "{text}"
        );
        assert!(
            text.contains("telemetryd_http_requests_total{code=\"200\",handler=\"/metrics\"} 0"),
            "{text}"
        );
        m.request("/metrics", 200);
        m.request("/nope", 404);
        let text = crate::metrics::render(m.families()).unwrap();
        assert!(
            text.contains("telemetryd_http_requests_total{code=\"200\",handler=\"/metrics\"} 1")
        );
        assert!(text.contains("telemetryd_http_requests_total{code=\"404\",handler=\"other\"} 1"));
    }
}
