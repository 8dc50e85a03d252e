//! Hostile HTTP clients, over real sockets inside a namespace: many
//! connections that send half a request line, nothing, or a byte a second,
//! each reopened as soon as the server closes it; concurrent scrapers; and
//! a timed probe scrape.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a hostile connection does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Sends `GET /metrics HTT` and nothing more.
    PartialRequestLine,
    /// Sends nothing.
    Idle,
    /// Sends a request one byte a second, never finishing it.
    Slowloris,
    /// Scrapes `/metrics` (Connection: close) in a loop; counts errors.
    Scraper,
}

/// Counters of a running crowd.
#[derive(Debug, Default)]
pub struct CrowdCounts {
    /// Connections opened (including reopened ones).
    pub connects: AtomicU64,
    /// Connections the server closed.
    pub closed_by_server: AtomicU64,
    /// Scrapers only: complete 200 answers, and anything else.
    pub answers: AtomicU64,
    pub errors: AtomicU64,
}

/// `n` clients behaving as `behaviour`, each on its own connection,
/// reopened as soon as it is closed, until dropped.
pub struct Crowd {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub counts: Arc<CrowdCounts>,
}

/// Raises this process' open-file limit to its hard limit (a crowd of
/// 1,000 needs more than the usual 1,024 soft limit).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

impl Crowd {
    /// Starts the crowd inside network namespace `ns` against `addr`.
    pub fn start(ns: &str, addr: SocketAddr, n: usize, behaviour: Behaviour) -> Self {
        raise_fd_limit();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(CrowdCounts::default());
        let path = format!("/var/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).expect("opening the namespace");
                // SAFETY: setns on a valid namespace fd changes only this
                // thread's network namespace; sockets made here live there.
                let ret = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let mut tasks = Vec::with_capacity(n);
                    for _ in 0..n {
                        let (stop, counts) = (stop.clone(), counts.clone());
                        tasks.push(tokio::spawn(client(addr, behaviour, stop, counts)));
                    }
                    let _ = ready_tx.send(());
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the crowd started");
        Self {
            stop,
            thread: Some(thread),
            counts,
        }
    }

    pub fn get(&self, counter: fn(&CrowdCounts) -> &AtomicU64) -> u64 {
        counter(&self.counts).load(Ordering::Relaxed)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn client(
    addr: SocketAddr,
    behaviour: Behaviour,
    stop: Arc<AtomicBool>,
    counts: Arc<CrowdCounts>,
) {
    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let tick = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            if behaviour == Behaviour::Scraper {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(tick).await;
            continue;
        };
        counts.connects.fetch_add(1, Ordering::Relaxed);
        match behaviour {
            Behaviour::Scraper => {
                let mut reply = Vec::new();
                let done = async {
                    stream.write_all(SCRAPE).await?;
                    stream.read_to_end(&mut reply).await
                };
                match tokio::time::timeout(Duration::from_secs(10), done).await {
                    Ok(Ok(_)) if reply.starts_with(b"HTTP/1.1 200 ") => {
                        counts.answers.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => counts.errors.fetch_add(1, Ordering::Relaxed),
                };
                continue;
            }
            Behaviour::PartialRequestLine => {
                let _ = stream.write_all(b"GET /metrics HTT").await;
            }
            Behaviour::Idle => {}
            Behaviour::Slowloris => {}
        }
        // Hold the connection until the server closes it (or we stop);
        // slowloris trickles its request meanwhile.
        let mut buf = [0u8; 256];
        let mut sent = 0;
        let mut next_byte = tokio::time::Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                read = stream.read(&mut buf) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                () = tokio::time::sleep_until(next_byte), if behaviour == Behaviour::Slowloris => {
                    let byte = SCRAPE[sent % (SCRAPE.len() - 4)];
                    sent += 1;
                    next_byte += Duration::from_secs(1);
                    if stream.write_all(&[byte]).await.is_err() {
                        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                () = tokio::time::sleep(tick) => {}
            }
        }
    }
}

/// One scrape of `/metrics` from the calling thread's namespace, as a
/// client with a 30 s patience: the status (0 without an answer) and how
/// long it took.
pub fn timed_scrape(addr: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let attempt = || -> std::io::Result<u16> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        let head = String::from_utf8_lossy(&reply[..reply.len().min(16)]).into_owned();
        Ok(head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    };
    let status = attempt().unwrap_or(0);
    (status, started.elapsed())
}

/// `n` pipelined GET requests on one keep-alive connection (the last
/// asks to close): how many `200` answers came back.
pub fn pipelined(addr: SocketAddr, n: usize) -> usize {
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut requests = Vec::new();
    for i in 0..n {
        let close = if i + 1 == n { "close" } else { "keep-alive" };
        requests.extend_from_slice(
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: {close}\r\n\r\n").as_bytes(),
        );
    }
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&requests));
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    sender.join().unwrap().expect("sending the requests");
    String::from_utf8_lossy(&reply)
        .matches("HTTP/1.1 200 OK")
        .count()
}

/// p50, p99 and max of `samples`.
pub fn percentiles(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    };
    (at(0.50), at(0.99), *sorted.last().expect("samples"))
}
