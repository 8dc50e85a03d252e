//! Benchmark of basic auth's check (`cargo xtask bench basic_auth`, or
//! `cargo run --release --example basic_auth_bench`; needs no root).
//!
//! Times `BasicAuth::verify` for a wrong password, an unknown user, the
//! right password the first time (bcrypt) and again (remembered), side by
//! side in interleaved rounds at bcrypt cost 10, and prints each median and
//! its ratio to the wrong password's: a 401 for an unknown user should take
//! as long as one for a known user (ratio ~1.0).
//!
//! `BENCH_ROUNDS` overrides the number of rounds (default 15).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use telemetryd::webconfig::basic_auth::BasicAuth;

const COST: u32 = 10;

fn header(user: &str, password: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}").into_bytes()
}

fn timed(auth: &BasicAuth, header: &[u8], expect: bool) -> Duration {
    let started = Instant::now();
    let ok = auth.verify(Some(header));
    let took = started.elapsed();
    assert_eq!(ok, expect);
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(15);
    let users = BTreeMap::from([(
        "prometheus".to_owned(),
        bcrypt::hash("scrape-me", COST).expect("bcrypt"),
    )]);
    let right = header("prometheus", "scrape-me");
    let wrong = header("prometheus", "scrape-you");
    let unknown = header("mallory", "scrape-me");
    let mut cases: [(&str, Vec<Duration>); 4] = [
        ("wrong password (401)", Vec::new()),
        ("unknown user (401)", Vec::new()),
        ("right password, first time", Vec::new()),
        ("right password, remembered", Vec::new()),
    ];
    for _ in 0..rounds {
        // A fresh set of users each round: nothing remembered yet.
        let auth = BasicAuth::new(&users).expect("valid").expect("users");
        cases[0].1.push(timed(&auth, &wrong, false));
        cases[1].1.push(timed(&auth, &unknown, false));
        cases[2].1.push(timed(&auth, &right, true));
        cases[3].1.push(timed(&auth, &right, true));
    }
    let medians: Vec<(&str, Duration)> = cases
        .into_iter()
        .map(|(name, samples)| (name, median(samples)))
        .collect();
    let base = medians[0].1.as_secs_f64();
    println!("basic auth check, bcrypt cost {COST}, median of {rounds} interleaved rounds:");
    for (name, took) in &medians {
        println!(
            "  {name:<28} {:>10.3} ms   {:>6.3}x the wrong password",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() / base
        );
    }
}
