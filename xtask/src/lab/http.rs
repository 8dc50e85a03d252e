//! A small HTTP/1.0 client for the lab's own queries (Prometheus,
//! Alertmanager, VictoriaMetrics, the nodes' APIs), made from a thread that
//! has entered the monitoring namespace: the host's network is never used.
//! HTTP/1.0 keeps the servers from chunking the answer.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

/// GET `path` (with its query string) from `addr` inside `namespace`;
/// returns the status and the body.
pub fn get(namespace: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    let ns_path = format!("/run/netns/{namespace}");
    let answer = std::thread::spawn(move || -> Result<Vec<u8>> {
        let ns = File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
        // SAFETY: setns on a valid namespace fd moves only this fresh,
        // single-purpose thread into the network namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({ns_path}): {}", std::io::Error::last_os_error());
        }
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer)
    })
    .join()
    .map_err(|_| anyhow!("the HTTP thread panicked"))?
    .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET http://{addr}{path}: no HTTP header in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// GET a JSON document; anything but 200 is an error.
pub fn get_json(namespace: &str, addr: SocketAddr, path: &str) -> Result<Value> {
    let (status, body) = get(namespace, addr, path)?;
    if status != 200 {
        bail!("GET http://{addr}{path}: {status}: {body}");
    }
    serde_json::from_str(&body)
        .with_context(|| format!("GET http://{addr}{path}: not JSON: {body}"))
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_promql() {
        assert_eq!(
            super::encode("sum(rate(x{a=\"b c\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
    }
}
