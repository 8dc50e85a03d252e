//! XDP benchmark (`cargo xtask bench xdp`, root). Prints, measured side by
//! side in one run:
//!
//! 1. xdp_packet_counter's cost per packet against an empty XDP_PASS
//!    program on the same veth traffic, from the kernel's BPF statistics
//!    (run_time_ns / run_cnt with kernel.bpf_stats_enabled); native and
//!    generic mode.
//! 2. The same pair through BPF_PROG_TEST_RUN (the kernel's own timed loop).
//!
//! Method: this VM's timings swing by 2x with load on the host, in phases
//! of seconds. So the programs take turns in short rounds (rotated, so none
//! always goes first), and the added cost is the difference *within* each
//! round; the median of those paired differences is the figure, printed
//! with its quartiles.
//! 3. `/metrics` render time for the default series.
//! 4. The daemon's resident memory after it has attached and served.
//!
//! Traffic stays inside two throwaway namespaces joined by veth.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aya::programs::{Xdp, XdpMode};
use telemetryd::bpf::LoadedObject;
use telemetryd::collect::snapshot::{InterfaceStats, SyscallStats};
use telemetryd::collect::Snapshot;

use bench_support::{enter, ifindex, quantile, spread, udp_frame, VethNamespaces};

const NS_RX: &str = "tdtbenchrx";
const NS_TX: &str = "tdtbenchtx";
const DEV_RX: &str = "tdtbrx0";
const DEV_TX: &str = "tdtbtx0";
/// A second pair whose receiving end has ifindex 300: beyond the low-ifindex
/// table, so the program counts it through a counter slot.
const DEV_RX_SLOT: &str = "tdtbrx1";
const DEV_TX_SLOT: &str = "tdtbtx1";
const SLOT_IFINDEX: u32 = 300;
const ROUNDS: usize = 41;
/// Ours, the empty program, and one that only reads the EtherType.
const PROGRAMS: [&str; 3] = [
    "xdp_packet_counter",
    "xdp_pass_baseline",
    "xdp_touch_baseline",
];
const PACKETS_PER_ROUND: u64 = 40_000;
const TEST_RUNS_PER_ROUND: u32 = 200_000;

fn main() {
    let namespaces = VethNamespaces::create(NS_RX, NS_TX, DEV_RX, DEV_TX);
    namespaces.add_pair(DEV_RX_SLOT, DEV_TX_SLOT, Some(SLOT_IFINDEX));
    enter(NS_RX);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut object = LoadedObject::load().expect("loading the embedded eBPF object");
    for name in PROGRAMS {
        let program: &mut Xdp = object.ebpf.program_mut(name).unwrap().try_into().unwrap();
        program.load().unwrap();
    }
    // DEV_RX (a small ifindex) and loopback, where BPF_PROG_TEST_RUN runs
    // XDP, are in the low-ifindex table. Give DEV_RX_SLOT counter slot 0,
    // as the daemon does at attach, so it takes the slot path.
    assert_eq!(ifindex(DEV_RX_SLOT), SLOT_IFINDEX);
    let mut slots: aya::maps::Array<_, u32> =
        object.take_map(telemetryd_common::xdp::SLOTS_MAP).unwrap();
    slots.set(SLOT_IFINDEX, 1, 0).unwrap();
    let frame = udp_frame(64);

    println!("== XDP cost per packet, kernel BPF stats, {ROUNDS} interleaved rounds of {PACKETS_PER_ROUND} frames of {} bytes", frame.len());
    for (mode, dev, tx, label) in [
        (XdpMode::Driver, DEV_RX, DEV_TX, "native"),
        (XdpMode::Skb, DEV_RX, DEV_TX, "generic"),
        (
            XdpMode::Driver,
            DEV_RX_SLOT,
            DEV_TX_SLOT,
            "native, ifindex 300 (slot path)",
        ),
    ] {
        let samples = interleaved(ROUNDS, |name| {
            measure_attached(&mut object, name, mode, dev, tx, &frame)
        });
        report(label, "ns/pkt", samples);
    }

    println!("== BPF_PROG_TEST_RUN, {TEST_RUNS_PER_ROUND} runs per program per round, {ROUNDS} interleaved rounds");
    let samples = interleaved(ROUNDS, |name| {
        let program: &Xdp = object.ebpf.program(name).unwrap().try_into().unwrap();
        let mut options = aya::programs::TestRunOptions::new();
        options.data_in = Some(&frame);
        options.repeat = TEST_RUNS_PER_ROUND;
        let result = aya::programs::TestRun::test_run(program, options).unwrap();
        // The kernel reports the mean duration of one run.
        result.duration.as_nanos() as f64
    });
    report("test_run", "ns/run", samples);
    drop(object);

    println!("== /metrics render time");
    let snapshot = default_series_snapshot();
    let families = telemetryd::metrics::render(&snapshot, Vec::new()).unwrap();
    let series = families.lines().filter(|l| !l.starts_with('#')).count();
    let runs = 2_000;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(telemetryd::metrics::render(&snapshot, Vec::new()).unwrap());
    }
    let per = start.elapsed() / runs;
    println!(
        "render: {:.1} us per scrape for {series} series, {} bytes (4 interfaces, 7 syscalls; target < 1 ms)",
        per.as_secs_f64() * 1e6,
        families.len()
    );

    println!("== resident memory of the daemon");
    rss_of_running_daemon(&frame);
}

/// Attaches `name` in `mode`, sends one round of frames from the other
/// namespace, detaches; returns run_time / run_count over the round.
fn measure_attached(
    object: &mut LoadedObject,
    name: &str,
    mode: XdpMode,
    dev: &str,
    tx: &'static str,
    frame: &[u8],
) -> f64 {
    let program: &mut Xdp = object.ebpf.program_mut(name).unwrap().try_into().unwrap();
    let ifindex = ifindex(dev);
    let link = program.attach_to_if_index(ifindex, mode).expect("attach");
    let before = program.info().unwrap();
    send_frames_on(tx, frame, PACKETS_PER_ROUND);
    let after = program.info().unwrap();
    program.detach(link).unwrap();
    let runs = after.run_count() - before.run_count();
    assert!(
        runs >= PACKETS_PER_ROUND,
        "{name}: {runs} runs for {PACKETS_PER_ROUND} frames"
    );
    (after.run_time() - before.run_time()).as_nanos() as f64 / runs as f64
}

fn send_frames(frame: &[u8], count: u64) {
    send_frames_on(DEV_TX, frame, count);
}

fn send_frames_on(tx: &'static str, frame: &[u8], count: u64) {
    let frame = frame.to_vec();
    std::thread::spawn(move || bench_support::send_frames(NS_TX, tx, &frame, count, None))
        .join()
        .unwrap();
}

fn default_series_snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (i, name) in ["eth0", "eth1", "wg0", "br0"].iter().enumerate() {
        let mut stats = InterfaceStats {
            ifindex: i as u32 + 2,
            ..Default::default()
        };
        for f in 0..3 {
            for p in 0..4 {
                stats.packets[f][p] = 1_000_000 * (f * 4 + p) as u64;
                stats.bytes[f][p] = 1_500_000_000 * (f * 4 + p) as u64;
            }
        }
        snapshot.interfaces.insert((*name).into(), stats);
    }
    for name in [
        "read", "write", "sendto", "recvfrom", "connect", "accept", "accept4",
    ] {
        let mut stats = SyscallStats::default();
        for (i, b) in stats.buckets.iter_mut().enumerate().take(30) {
            *b = (i as u64 + 1) * 1000;
        }
        stats.count = stats.buckets.iter().sum();
        stats.sum_ns = stats.count * 2000;
        snapshot.syscalls.insert(name.into(), stats);
    }
    snapshot
}

fn rss_of_running_daemon(frame: &[u8]) {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/telemetryd");
    let config = std::env::temp_dir().join("tdtbench.toml");
    std::fs::write(
        &config,
        format!("[daemon]\npoll_interval = \"100ms\"\n[http]\nlisten = \"127.0.0.1:19469\"\n[xdp]\ninterfaces = [\"{DEV_RX}\"]\n"),
    )
    .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", NS_RX, bin, "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting telemetryd (cargo build --release first)");
    std::thread::sleep(Duration::from_secs(2));
    send_frames(frame, 100_000);
    // A few scrapes, as Prometheus would.
    for _ in 0..5 {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                NS_RX,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "http://127.0.0.1:19469/metrics",
            ])
            .status();
    }
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: unknown");
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: unknown");
    println!("daemon (release, attached, after 100,000 packets and 5 scrapes): {rss}, peak {hwm} (target < 20 MiB)");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(config);
}

/// Runs `measure` for every program in each round, programs interleaved
/// (and rotated) so that all see the same machine load.
fn interleaved(rounds: usize, mut measure: impl FnMut(&str) -> f64) -> [Vec<f64>; 3] {
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Rotate who goes first, so no program always runs on a cold start.
        for i in 0..PROGRAMS.len() {
            let which = (round + i) % PROGRAMS.len();
            samples[which].push(measure(PROGRAMS[which]));
        }
    }
    samples
}

fn report(label: &str, unit: &str, samples: [Vec<f64>; 3]) {
    let [ours, empty, touch] = &samples;
    // Paired within each round: both programs ran within the same second.
    let paired =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
    let over_empty = paired(ours, empty);
    let over_touch = paired(ours, touch);
    let q = |v: &[f64], q: f64| quantile(v, q);
    println!(
        "{label}: xdp_packet_counter {:.1} {unit}, empty {:.1}, header-touch {:.1} (medians of rounds)",
        q(ours, 0.5),
        q(empty, 0.5),
        q(touch, 0.5),
    );
    println!(
        "          added over empty, paired per round: median [quartiles] {} (target <= 15 ns); \
         over header-touch: {}",
        spread(&over_empty, 1),
        spread(&over_touch, 1),
    );
}
