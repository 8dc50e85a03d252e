//! The workload of one lab node (`cargo xtask lab-agent`, started by the
//! lab inside the node's namespace): a TCP and a UDP server, steady TCP and
//! UDP streams to its peers across the mesh, and a "service": `--readers`
//! threads, each reading its own pipe one byte at a time, while a feeder
//! thread writes a byte to every pipe each `--read-period-us`.
//!
//! SIGUSR1 slows the feed to `--slow-read-period-us`, SIGUSR2 restores it:
//! each `read(2)` of the service then really blocks that long waiting for
//! its upstream, which is what the node's syscall tracer times (a process
//! whose reads got slow). The agent exits after `--max-seconds`, and with
//! the lab (which starts it with PR_SET_PDEATHSIG).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Bytes per TCP write and per UDP datagram.
const CHUNK: usize = 200;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[arg(long)]
    pub tcp_port: u16,
    #[arg(long)]
    pub udp_port: u16,
    /// A node to stream to (repeatable).
    #[arg(long = "peer")]
    pub peers: Vec<Ipv4Addr>,
    /// TCP writes per second to each peer.
    #[arg(long)]
    pub tcp_rate: u32,
    /// UDP datagrams per second to each peer.
    #[arg(long)]
    pub udp_rate: u32,
    /// Service threads, each reading its own pipe.
    #[arg(long)]
    pub readers: usize,
    #[arg(long)]
    pub read_period_us: u64,
    #[arg(long)]
    pub slow_read_period_us: u64,
    #[arg(long)]
    pub max_seconds: u64,
}

static SLOW: AtomicBool = AtomicBool::new(false);

extern "C" fn on_slow(_: libc::c_int) {
    SLOW.store(true, Ordering::SeqCst);
}

extern "C" fn on_normal(_: libc::c_int) {
    SLOW.store(false, Ordering::SeqCst);
}

fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: the handlers only store to an atomic (async-signal-safe); the
    // sigaction struct is zeroed, then filled in. SA_RESTART keeps the
    // workload's blocking calls from failing with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

pub fn run(args: AgentArgs) -> Result<()> {
    handle(libc::SIGUSR1, on_slow);
    handle(libc::SIGUSR2, on_normal);

    let tcp = TcpListener::bind(("0.0.0.0", args.tcp_port)).context("binding the TCP server")?;
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            std::thread::spawn(move || drain(conn));
        }
    });
    let udp = UdpSocket::bind(("0.0.0.0", args.udp_port)).context("binding the UDP server")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while udp.recv(&mut buf).is_ok() {}
    });

    for &peer in &args.peers {
        let to = SocketAddr::from((peer, args.tcp_port));
        let rate = args.tcp_rate;
        std::thread::spawn(move || tcp_stream(to, rate));
        let to = SocketAddr::from((peer, args.udp_port));
        let rate = args.udp_rate;
        std::thread::spawn(move || {
            let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
                return;
            };
            paced(rate, || {
                let _ = socket.send_to(&[0xa5; CHUNK], to);
            });
        });
    }

    let mut feeds = Vec::with_capacity(args.readers);
    for _ in 0..args.readers {
        let (mut upstream, feed) = std::io::pipe().context("creating the service's pipes")?;
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while matches!(upstream.read(&mut byte), Ok(1)) {}
        });
        feeds.push(feed);
    }
    let (normal, slow) = (
        Duration::from_micros(args.read_period_us),
        Duration::from_micros(args.slow_read_period_us),
    );
    std::thread::spawn(move || loop {
        for feed in &mut feeds {
            if feed.write_all(b"x").is_err() {
                return;
            }
        }
        std::thread::sleep(if SLOW.load(Ordering::SeqCst) {
            slow
        } else {
            normal
        });
    });

    std::thread::sleep(Duration::from_secs(args.max_seconds));
    std::process::exit(0);
}

/// Reads a TCP connection until it closes.
fn drain(mut conn: TcpStream) {
    let mut buf = [0u8; 65536];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

/// A TCP stream of `rate` writes a second to `to`, reconnecting when the
/// connection fails (the peer's server may not be up yet).
fn tcp_stream(to: SocketAddr, rate: u32) {
    loop {
        let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut failed = false;
        paced_until(rate, &mut failed, |failed| {
            if stream.write_all(&[0x5a; CHUNK]).is_err() {
                *failed = true;
            }
        });
    }
}

/// Calls `send` `per_sec` times a second on a fixed schedule, forever.
fn paced(per_sec: u32, mut send: impl FnMut()) {
    let mut never = false;
    paced_until(per_sec, &mut never, |_| send());
}

/// Like [`paced`], until `send` sets the flag.
fn paced_until(per_sec: u32, flag: &mut bool, mut send: impl FnMut(&mut bool)) {
    let period = Duration::from_secs(1) / per_sec.max(1);
    let mut next = Instant::now();
    while !*flag {
        send(flag);
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Fell behind (a blocked write): no burst to catch up.
            next = now;
        }
    }
}
