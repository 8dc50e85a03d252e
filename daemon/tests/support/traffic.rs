//! Steady test traffic between two namespaces and an nftables rule that
//! drops a share of it, both cleaned up by `Drop`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{run, unique_name, NetNs};

pub const TCP_PORT: u16 = 5001;
pub const UDP_PORT: u16 = 5002;
/// Bytes per TCP write and per UDP datagram.
pub const CHUNK: usize = 200;

/// A TCP stream of small writes and a UDP datagram stream, from a sender
/// namespace to a receiver namespace, each at a steady rate. Every loop is
/// bounded by `max` and stops when the value is dropped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub tcp_writes: Arc<AtomicU64>,
    pub udp_sent: Arc<AtomicU64>,
    pub received_bytes: Arc<AtomicU64>,
}

impl Traffic {
    /// `tcp_per_sec` writes of [`CHUNK`] bytes and `udp_per_sec` datagrams.
    pub fn start(
        sender: &NetNs,
        receiver: &NetNs,
        receiver_ip: &str,
        tcp_per_sec: u32,
        udp_per_sec: u32,
        max: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + max;
        let received_bytes = Arc::new(AtomicU64::new(0));
        let tcp_writes = Arc::new(AtomicU64::new(0));
        let udp_sent = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();

        let (ns, flag, got, ready) = (
            receiver.name.clone(),
            stop.clone(),
            received_bytes.clone(),
            ready_tx.clone(),
        );
        threads.push(std::thread::spawn(move || {
            super::netns::in_namespace(&ns, move || {
                let listener = TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("tcp bind");
                listener.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                let mut conn = loop {
                    match listener.accept() {
                        Ok((c, _)) => break c,
                        Err(_) if !stopped(&flag, deadline) => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => return,
                    }
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = [0u8; 65536];
                while !stopped(&flag, deadline) {
                    match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            got.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            })
        }));

        let (ns, flag, got, ready) = (
            receiver.name.clone(),
            stop.clone(),
            received_bytes.clone(),
            ready_tx,
        );
        threads.push(std::thread::spawn(move || {
            super::netns::in_namespace(&ns, move || {
                let socket = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("udp bind");
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                ready.send(()).unwrap();
                let mut buf = [0u8; 2048];
                while !stopped(&flag, deadline) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        got.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })
        }));
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("receivers bound");
        }

        let tcp_to: SocketAddr = format!("{receiver_ip}:{TCP_PORT}").parse().unwrap();
        let (ns, flag, count) = (sender.name.clone(), stop.clone(), tcp_writes.clone());
        threads.push(std::thread::spawn(move || {
            super::netns::in_namespace(&ns, move || {
                let mut stream = TcpStream::connect_timeout(&tcp_to, Duration::from_secs(5))
                    .expect("tcp connect");
                stream.set_nodelay(true).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                paced(tcp_per_sec, &flag, deadline, || {
                    if stream.write_all(&[0x5a; CHUNK]).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            })
        }));

        let udp_to: SocketAddr = format!("{receiver_ip}:{UDP_PORT}").parse().unwrap();
        let (ns, flag, count) = (sender.name.clone(), stop.clone(), udp_sent.clone());
        threads.push(std::thread::spawn(move || {
            super::netns::in_namespace(&ns, move || {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                paced(udp_per_sec, &flag, deadline, || {
                    if socket.send_to(&[0xa5; CHUNK], udp_to).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            })
        }));

        Self {
            stop,
            threads,
            tcp_writes,
            udp_sent,
            received_bytes,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn stopped(flag: &AtomicBool, deadline: Instant) -> bool {
    flag.load(Ordering::Relaxed) || Instant::now() >= deadline
}

/// Calls `send` `per_sec` times a second on a fixed schedule (no drift).
fn paced(per_sec: u32, flag: &AtomicBool, deadline: Instant, mut send: impl FnMut()) {
    let period = Duration::from_secs(1) / per_sec.max(1);
    let mut next = Instant::now();
    while !stopped(flag, deadline) {
        send();
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Fell behind (a blocked write): do not burst to catch up.
            next = now;
        }
    }
}

/// An nftables table in a namespace whose input chain drops `percent`% of
/// the packets arriving on one device, at random (`numgen random`).
/// Deleted on drop (or by [`RandomDrop::remove`]).
pub struct RandomDrop {
    ns: String,
    table: String,
    removed: bool,
}

impl RandomDrop {
    pub fn add(ns: &NetNs, device: &str, percent: u32) -> Self {
        let table = unique_name("t");
        let guard = Self {
            ns: ns.name.clone(),
            table: table.clone(),
            removed: false,
        };
        let nft = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.name.as_str(), "nft"];
            full.extend_from_slice(args);
            run("ip", &full);
        };
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "input",
            "{ type filter hook input priority 0 ; }",
        ]);
        nft(&[
            "add",
            "rule",
            "inet",
            &table,
            "input",
            "iifname",
            device,
            "numgen",
            "random",
            "mod",
            "100",
            "lt",
            &percent.to_string(),
            "drop",
        ]);
        guard
    }

    pub fn remove(mut self) {
        self.delete();
        self.removed = true;
    }

    fn delete(&self) {
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "nft",
                "delete",
                "table",
                "inet",
                &self.table,
            ])
            .status();
    }
}

impl Drop for RandomDrop {
    fn drop(&mut self) {
        if !self.removed {
            self.delete();
        }
    }
}
