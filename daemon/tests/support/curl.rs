//! Requests made by the real `curl` (Debian package curl) inside a test
//! namespace: TLS, client certificates and basic auth as a client other
//! than our own sees them.

use std::process::Command;

/// What curl got: its exit code (0, or why the request failed: 35 and 56
/// for a refused handshake, 60 for an untrusted server certificate), and
/// the response when there was one.
#[derive(Debug)]
pub struct Reply {
    pub exit: i32,
    /// 0 when no response came.
    pub status: u16,
    /// The response header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stderr: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -sS -i ARGS URL` inside `ns`, with a 10 s limit.
pub fn curl(ns: &str, url: &str, args: &[&str]) -> Reply {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-i", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed by `cargo xtask setup` (Debian package curl)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = stdout
        .split_once("\r\n\r\n")
        .unwrap_or((stdout.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        exit: output.status.code().unwrap_or(-1),
        status,
        headers,
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
