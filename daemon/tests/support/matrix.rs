//! Observations for the kernel matrix table (`cargo xtask test` and
//! `cargo xtask vm-test` write it): on the running kernel, `feature` took
//! attach path `path`. Appended to `$TELEMETRYD_MATRIX_OUT` when set. The
//! table's result column is the recording test's own outcome, so a record
//! says what was seen, never that it passed.

use std::io::Write as _;

pub fn record(feature: &str, path: &str) {
    let Some(out) = std::env::var_os("TELEMETRYD_MATRIX_OUT") else {
        return;
    };
    // `syscall_latency-0123abcd` -> `syscall_latency`
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(b, _)| b.to_owned()))
        .unwrap_or_default();
    // libtest runs each test on a thread named after it.
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let line = format!(
        "{binary}\t{test}\t{feature}\t{}\n",
        path.replace(['\t', '\n'], " ")
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .unwrap_or_else(|e| panic!("opening {}: {e}", out.to_string_lossy()));
    file.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.to_string_lossy()));
}
