//! XDP benchmark (`cargo xtask bench xdp`, root). Prints, measured side by
//! side in one run:
//!
//! 1. xdp_packet_counter's cost per packet against an empty XDP_PASS
//!    program on the same veth traffic, from the kernel's BPF statistics
//!    (run_time_ns / run_cnt with kernel.bpf_stats_enabled); native and
//!    generic mode.
//!    Twice: frames sent one by one from a socket, so that each is received
//!    on its own, after the whole transmit path has run on the same CPU;
//!    and frames sent by the kernel's own generator (BPF_PROG_TEST_RUN in
//!    live-frames mode, XDP_TX out of the peer), so that they arrive in
//!    NAPI batches, as from a NIC under load.
//! 2. The same programs through BPF_PROG_TEST_RUN (the kernel's own timed
//!    loop, on one frame that never leaves the CPU's caches).
//!
//! Method: this VM's timings swing by 2x with load on the host, in phases
//! of seconds. So the programs take turns in short rounds (rotated, so none
//! always goes first), and the added cost is the difference *within* each
//! round; the median of those paired differences is the figure, printed
//! with its quartiles. Each program is loaded [`COPIES`] times and a
//! round's figure is the mean over copies: two loads of the very same
//! program can differ by several ns per frame, steadily, with where the
//! kernel happens to place its code (the benchmark prints how much), so a
//! single copy of each would carry that bias into the comparison.
//!
//! Besides the empty program, two references explain the figure: one
//! that reads the EtherType (the first touch of the frame), and
//! `xdp_count_floor`, which counts packets and bytes per interface the way
//! ours does on its fastest path without looking at the frame: the least
//! any per-interface counter costs.
//! 3. The three places the program counts an interface's frames (the
//!    low-ifindex table, a counter slot, the hash; chosen by the receiving
//!    end's ifindex), side by side in the same rounds: each tier's cost over
//!    the empty program on its own receiver, and the tiers paired.
//! 4. `/metrics` render time for the default series.
//! 5. The daemon's resident memory after it has attached and served.
//!
//! With `TELEMETRYD_BENCH_BASELINE=OBJECT` (another build's
//! `telemetryd-ebpf-bench`, e.g. main's), only this instead: each build of
//! xdp_packet_counter (without packet events, and with them at
//! `sample_rate = 100`) of this checkout and of OBJECT, side by side in the
//! same rounds, native, NAPI batches; each one's cost over the empty
//! program, the paired difference and the ratio.
//!
//! Traffic stays inside two throwaway namespaces joined by veth.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aya::programs::{Xdp, XdpMode};
use telemetryd::loader::LoadedObject;
use telemetryd::sources::events::EventsLoad;
use telemetryd::sources::syscalls::{SyscallStats, SyscallsLoad, TracerStats};
use telemetryd::sources::xdp::{InterfaceStats, XdpStats};
use telemetryd::sources::Snapshot;

use bench_support::{
    enter, ifindex, load_bench_object, quantile, spread, udp_frame, VethNamespaces,
};

fn bench_object() -> LoadedObject {
    load_bench_object(EventsLoad::default(), SyscallsLoad::default())
}

const NS_RX: &str = "tdtbenchrx";
const NS_TX: &str = "tdtbenchtx";
const DEV_RX: &str = "tdtbrx0";
const DEV_TX: &str = "tdtbtx0";
/// A second pair whose receiving end has ifindex 300: beyond the low-ifindex
/// table, so the program counts it through a counter slot.
const DEV_RX_SLOT: &str = "tdtbrx1";
const DEV_TX_SLOT: &str = "tdtbtx1";
const SLOT_IFINDEX: u32 = 300;
/// A third pair whose receiving end has ifindex 20000: beyond the slot
/// table too, so the program counts it in the hash.
const DEV_RX_HASH: &str = "tdtbrx2";
const DEV_TX_HASH: &str = "tdtbtx2";
const HASH_IFINDEX: u32 = 20_000;
const ROUNDS: usize = 25;
/// Loads of each program, see the method above.
const COPIES: usize = 3;
/// Ours, the empty program, one that only reads the EtherType, and the
/// per-interface counting floor.
const PROGRAMS: [&str; 4] = [
    "xdp_packet_counter",
    "xdp_pass_baseline",
    "xdp_touch_baseline",
    "xdp_count_floor",
];
const PACKETS_PER_ROUND: u64 = 40_000;
/// Frames per round from the kernel's generator, and per NAPI batch.
const LIVE_FRAMES_PER_ROUND: u32 = 200_000;
const LIVE_FRAMES_BATCH: u32 = 64;
const TEST_RUNS_PER_ROUND: u32 = 200_000;

fn main() {
    if let Some(baseline) = std::env::var_os("TELEMETRYD_BENCH_BASELINE") {
        let _namespaces = VethNamespaces::create(NS_RX, NS_TX, DEV_RX, DEV_TX);
        enter(NS_RX);
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        compare_with_baseline(std::path::Path::new(&baseline));
        return;
    }
    let namespaces = VethNamespaces::create(NS_RX, NS_TX, DEV_RX, DEV_TX);
    namespaces.add_pair(DEV_RX_SLOT, DEV_TX_SLOT, Some(SLOT_IFINDEX));
    namespaces.add_pair(DEV_RX_HASH, DEV_TX_HASH, Some(HASH_IFINDEX));
    enter(NS_RX);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut objects: Vec<LoadedObject> = (0..COPIES).map(|_| bench_object()).collect();
    for object in &mut objects {
        for name in PROGRAMS {
            let program: &mut Xdp = object.ebpf.program_mut(name).unwrap().try_into().unwrap();
            program.load().unwrap();
        }
        // DEV_RX (a small ifindex) and loopback, where BPF_PROG_TEST_RUN
        // runs XDP, are in the low-ifindex table. Give DEV_RX_SLOT counter
        // slot 0, as the daemon does at attach, so it takes the slot path.
        let mut slots: aya::maps::Array<_, u32> =
            object.take_map(telemetryd_common::xdp::SLOTS_MAP).unwrap();
        slots.set(SLOT_IFINDEX, 1, 0).unwrap();
    }
    assert_eq!(ifindex(DEV_RX_SLOT), SLOT_IFINDEX);
    assert_eq!(ifindex(DEV_RX_HASH), HASH_IFINDEX);
    let frame = udp_frame(64);

    println!("== XDP cost per packet, kernel BPF stats, {ROUNDS} interleaved rounds of {PACKETS_PER_ROUND} frames of {} bytes, {COPIES} loads of each program", frame.len());
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
        let samples = interleaved(ROUNDS, |copy, name| {
            measure_attached(
                &mut objects[copy],
                name,
                mode,
                dev,
                tx,
                &frame,
                Source::Socket,
            )
        });
        report(label, "ns/pkt", &samples, dev != DEV_RX_SLOT);
    }

    println!("== The same, frames in NAPI batches of {LIVE_FRAMES_BATCH} from the kernel's generator, {LIVE_FRAMES_PER_ROUND} frames per round");
    // Generic XDP sees these frames only if the receiving veth runs NAPI,
    // which it does with GRO on (native XDP turns it on by itself).
    bench_support::enable_gro(DEV_RX);
    let transmit = load_transmitter();
    for (mode, label) in [
        (XdpMode::Driver, "native, batched"),
        (XdpMode::Skb, "generic, batched"),
    ] {
        let samples = interleaved(ROUNDS, |copy, name| {
            measure_attached(
                &mut objects[copy],
                name,
                mode,
                DEV_RX,
                DEV_TX,
                &frame,
                Source::Generator(&transmit),
            )
        });
        report(label, "ns/pkt", &samples, true);
    }
    counter_tiers(&mut objects, &transmit, &frame);

    println!("== BPF_PROG_TEST_RUN, {TEST_RUNS_PER_ROUND} runs per program per round, {ROUNDS} interleaved rounds");
    let samples = interleaved(ROUNDS, |copy, name| {
        let program: &Xdp = objects[copy]
            .ebpf
            .program(name)
            .unwrap()
            .try_into()
            .unwrap();
        let mut options = aya::programs::TestRunOptions::new();
        options.data_in = Some(&frame);
        options.repeat = TEST_RUNS_PER_ROUND;
        let result = aya::programs::TestRun::test_run(program, options).unwrap();
        // The kernel reports the mean duration of one run.
        result.duration.as_nanos() as f64
    });
    report("test_run", "ns/run", &samples, true);
    drop(objects);

    println!("== /metrics render time");
    let snapshot = default_series_snapshot();
    let families = snapshot.render(Vec::new()).unwrap();
    let series = families.lines().filter(|l| !l.starts_with('#')).count();
    let runs = 2_000;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(snapshot.render(Vec::new()).unwrap());
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

/// The receivers of the tier comparison: (tier, receiving end, sending end).
const TIERS: [(&str, &str, &str); 3] = [
    ("low-ifindex table", DEV_RX, DEV_TX),
    ("slot", DEV_RX_SLOT, DEV_TX_SLOT),
    ("hash", DEV_RX_HASH, DEV_TX_HASH),
];

/// xdp_packet_counter and the empty program on each tier's receiver, every
/// (load, tier) in every round (rotated), frames in NAPI batches in native
/// mode. A tier's figure for a round is ours minus empty on its receiver,
/// averaged over the loads; tiers are then compared round by round.
fn counter_tiers(objects: &mut [LoadedObject], transmit: &LoadedObject, frame: &[u8]) {
    println!(
        "== Counter tiers side by side: receivers of ifindex {}, {SLOT_IFINDEX} and {HASH_IFINDEX}, native, NAPI batches of {LIVE_FRAMES_BATCH}, {ROUNDS} interleaved rounds",
        ifindex(DEV_RX)
    );
    for (_, rx, _) in TIERS {
        bench_support::enable_gro(rx);
    }
    let runs = COPIES * TIERS.len();
    let mut added: [Vec<f64>; TIERS.len()] = Default::default();
    for round in 0..ROUNDS {
        let mut sum = [0.0; TIERS.len()];
        for i in 0..runs {
            let which = (round + i) % runs;
            let (copy, tier) = (which / TIERS.len(), which % TIERS.len());
            let (_, rx, tx) = TIERS[tier];
            let mut run = |name| {
                let source = Source::Generator(transmit);
                measure_attached(
                    &mut objects[copy],
                    name,
                    XdpMode::Driver,
                    rx,
                    tx,
                    frame,
                    source,
                )
            };
            // Alternate which goes first, so neither always finds the caches warm.
            let (ours, empty) = if round % 2 == 0 {
                let ours = run("xdp_packet_counter");
                (ours, run("xdp_pass_baseline"))
            } else {
                let empty = run("xdp_pass_baseline");
                (run("xdp_packet_counter"), empty)
            };
            sum[tier] += ours - empty;
        }
        for (tier, total) in sum.iter().enumerate() {
            added[tier].push(total / COPIES as f64);
        }
    }
    for (tier, (label, _, _)) in TIERS.iter().enumerate() {
        println!(
            "{label}: added over empty, median [quartiles] {} ns/pkt",
            spread(&added[tier], 1)
        );
    }
    let over = |a: usize, b: usize| -> Vec<f64> {
        added[a].iter().zip(&added[b]).map(|(x, y)| x - y).collect()
    };
    println!(
        "paired per round: slot over low-ifindex table {}, hash over low-ifindex table {}, hash over slot {} ns/pkt",
        spread(&over(1, 0), 1),
        spread(&over(2, 0), 1),
        spread(&over(2, 1), 1),
    );
}

/// The sample rate of the events build in [`compare_with_baseline`]: one
/// frame in 100 goes through the ring buffer, the rest pay the draw.
const COMPARED_SAMPLE_RATE: u32 = 100;

/// This checkout's builds of the packet counter against `baseline`'s
/// (another build of the benchmark object), native, NAPI batches, every
/// load of both in every round (rotated), with the empty program of this
/// checkout as the reference. Rings of the events builds are emptied after
/// every measurement, outside the timed window (the kernel's statistics
/// time the program alone), so each round publishes for real.
fn compare_with_baseline(baseline: &std::path::Path) {
    use telemetryd::sources::events::{self, EventRing};
    use telemetryd_common::xdp::program_symbol;

    println!(
        "== This build against {} side by side: native, NAPI batches of {LIVE_FRAMES_BATCH}, {LIVE_FRAMES_PER_ROUND} frames per measurement, {ROUNDS} interleaved rounds, {COPIES} loads of each",
        baseline.display()
    );
    bench_support::enable_gro(DEV_RX);
    let transmit = load_transmitter();
    let frame = udp_frame(64);
    for rate in [0, COMPARED_SAMPLE_RATE] {
        let name = program_symbol(rate);
        let settings = EventsLoad::new(rate, 1 << 20).expect("ring buffer size");
        let load = |ours: bool| {
            let mut object = if ours {
                load_bench_object(settings, SyscallsLoad::default())
            } else {
                bench_support::load_bench_object_file(baseline, settings, SyscallsLoad::default())
            };
            for program in [name, "xdp_pass_baseline"] {
                let program: &mut Xdp = object
                    .ebpf
                    .program_mut(program)
                    .unwrap()
                    .try_into()
                    .unwrap();
                program.load().unwrap();
            }
            let ring = (rate != 0).then(|| events::take(&mut object).expect("event maps").0);
            (object, ring)
        };
        // [ours..., baseline...]
        let mut builds: Vec<(LoadedObject, Option<EventRing>)> = (0..COPIES)
            .map(|_| load(true))
            .chain((0..COPIES).map(|_| load(false)))
            .collect();
        let loads = builds.len();
        let runs = loads + COPIES;
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runs];
        let mut scratch = Vec::new();
        for round in 0..ROUNDS {
            for i in 0..runs {
                let which = (round + i) % runs;
                // The last COPIES runs are the empty program of our loads.
                let (object, ring, program) = if which < loads {
                    let (object, ring) = &mut builds[which];
                    (object, ring, name)
                } else {
                    let (object, ring) = &mut builds[which - loads];
                    (object, ring, "xdp_pass_baseline")
                };
                let ns = measure_attached(
                    object,
                    program,
                    XdpMode::Driver,
                    DEV_RX,
                    DEV_TX,
                    &frame,
                    Source::Generator(&transmit),
                );
                if let Some(ring) = ring {
                    while ring.drain(usize::MAX, &mut scratch) > 0 {
                        scratch.clear();
                    }
                }
                samples[which].push(ns);
            }
        }
        let mean_of = |range: std::ops::Range<usize>| -> Vec<f64> {
            (0..ROUNDS)
                .map(|r| range.clone().map(|i| samples[i][r]).sum::<f64>() / COPIES as f64)
                .collect()
        };
        let ours = mean_of(0..COPIES);
        let base = mean_of(COPIES..2 * COPIES);
        let empty = mean_of(2 * COPIES..3 * COPIES);
        let over =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
        let ours_added = over(&ours, &empty);
        let base_added = over(&base, &empty);
        let ratios: Vec<f64> = ours_added
            .iter()
            .zip(&base_added)
            .map(|(o, b)| o / b)
            .collect();
        let label = if rate == 0 {
            format!("{name} (sample_rate = 0)")
        } else {
            format!("{name} (sample_rate = {rate})")
        };
        println!(
            "{label}: this build {:.1} ns/pkt, baseline {:.1}, empty {:.1} (medians of rounds)",
            quantile(&ours, 0.5),
            quantile(&base, 0.5),
            quantile(&empty, 0.5),
        );
        println!(
            "          added over empty, median [quartiles]: this build {}, baseline {} ns/pkt",
            spread(&ours_added, 1),
            spread(&base_added, 1),
        );
        println!(
            "          paired per round: this build minus baseline {} ns/pkt; ratio of added costs {} (this build / baseline)",
            spread(&over(&ours, &base), 1),
            spread(&ratios, 2),
        );
    }
}

/// Where a round's frames come from.
enum Source<'a> {
    /// An AF_PACKET socket, one `sendto` per frame.
    Socket,
    /// `xdp_bench_transmit` in live-frames mode, loaded in its own object.
    Generator(&'a LoadedObject),
}

/// A separate object for the generator, so that it never shares a round
/// with the measured programs' maps.
fn load_transmitter() -> LoadedObject {
    let mut object = bench_object();
    let program: &mut Xdp = object
        .ebpf
        .program_mut("xdp_bench_transmit")
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    object
}

/// Sends `count` frames out of `tx` in NS_TX through the kernel's
/// generator, in batches of LIVE_FRAMES_BATCH.
fn generate_frames(transmit: &LoadedObject, tx: &'static str, frame: &[u8], count: u32) {
    let program: &Xdp = transmit
        .ebpf
        .program("xdp_bench_transmit")
        .unwrap()
        .try_into()
        .unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(NS_TX);
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex (u32 each); the kernel
                // wants data_end to be the frame's length.
                let mut context = [0u8; 24];
                context[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                context[12..16].copy_from_slice(&ifindex(tx).to_ne_bytes());
                let mut options = aya::programs::TestRunOptions::new();
                options.data_in = Some(frame);
                options.ctx_in = Some(&context);
                options.repeat = count;
                options.attrs =
                    aya::programs::TestRunAttrs::new().xdp_live_frames(LIVE_FRAMES_BATCH);
                aya::programs::TestRun::test_run(program, options).expect("live frames");
            })
            .join()
            .unwrap();
    });
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
    source: Source<'_>,
) -> f64 {
    let program: &mut Xdp = object.ebpf.program_mut(name).unwrap().try_into().unwrap();
    let ifindex = ifindex(dev);
    let link = program.attach_to_if_index(ifindex, mode).expect("attach");
    let before = program.info().unwrap();
    let sent = match source {
        Source::Socket => {
            send_frames_on(tx, frame, PACKETS_PER_ROUND);
            PACKETS_PER_ROUND
        }
        Source::Generator(transmit) => {
            generate_frames(transmit, tx, frame, LIVE_FRAMES_PER_ROUND);
            u64::from(LIVE_FRAMES_PER_ROUND)
        }
    };
    let after = program.info().unwrap();
    program.detach(link).unwrap();
    let runs = after.run_count() - before.run_count();
    assert!(runs >= sent, "{name}: {runs} runs for {sent} frames");
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
    let mut xdp = XdpStats::default();
    let mut tracer = TracerStats {
        attach: telemetryd::config::SyscallAttach::Tracepoint,
        sched_switch: true,
        syscalls: Default::default(),
        errors: Default::default(),
        classic_buckets: telemetryd::sources::syscalls::DEFAULT_CLASSIC_BUCKETS,
    };
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
        xdp.interfaces.insert((*name).into(), stats);
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
        tracer.syscalls.insert(name.into(), stats);
    }
    Snapshot {
        xdp: Some(xdp),
        syscalls: Some(tracer),
        ..Default::default()
    }
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

/// `samples[copy][program][round]`.
type Samples = Vec<[Vec<f64>; PROGRAMS.len()]>;

/// Runs `measure(copy, program)` for every load of every program in each
/// round, interleaved (and rotated, so none always goes first) so that all
/// see the same machine load.
fn interleaved(rounds: usize, mut measure: impl FnMut(usize, &str) -> f64) -> Samples {
    let mut samples: Samples = (0..COPIES).map(|_| Default::default()).collect();
    let runs = COPIES * PROGRAMS.len();
    for round in 0..rounds {
        for i in 0..runs {
            let which = (round + i) % runs;
            let (copy, program) = (which / PROGRAMS.len(), which % PROGRAMS.len());
            samples[copy][program].push(measure(copy, PROGRAMS[program]));
        }
    }
    samples
}

/// `floor_applies`: false where `xdp_count_floor` does not count (an
/// ifindex beyond its table), so the comparison with it means nothing.
fn report(label: &str, unit: &str, samples: &Samples, floor_applies: bool) {
    let rounds = samples[0][0].len();
    // Per round, the mean over the loads of a program.
    let mean = |program: usize| -> Vec<f64> {
        (0..rounds)
            .map(|r| samples.iter().map(|copy| copy[program][r]).sum::<f64>() / COPIES as f64)
            .collect()
    };
    let [ours, empty, touch, floor] = [0, 1, 2, 3].map(mean);
    // Paired within each round: all programs ran within a few seconds.
    let over = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
    let q = |v: &[f64]| quantile(v, 0.5);
    println!(
        "{label}: xdp_packet_counter {:.1} {unit}, empty {:.1}, header-touch {:.1}, count floor {:.1} (medians of rounds)",
        q(&ours),
        q(&empty),
        q(&touch),
        q(&floor),
    );
    println!(
        "          added over empty, paired per round: median [quartiles] {} (target <= 15 ns)",
        spread(&over(&ours, &empty), 1),
    );
    if floor_applies {
        println!(
            "          the references over empty: header-touch {}, count floor {}; ours over the count floor {}",
            spread(&over(&touch, &empty), 1),
            spread(&over(&floor, &empty), 1),
            spread(&over(&ours, &floor), 1),
        );
    } else {
        println!(
            "          the references over empty: header-touch {}; count floor n/a (it counts ifindexes below 128 only)",
            spread(&over(&touch, &empty), 1),
        );
    }
    // How far loads of the same program sit apart: the placement effect.
    let copies = |program: usize| -> String {
        let medians: Vec<String> = samples
            .iter()
            .map(|copy| format!("{:.1}", quantile(&copy[program], 0.5)))
            .collect();
        medians.join(" / ")
    };
    println!(
        "          per load (medians): xdp_packet_counter {}; empty {}",
        copies(0),
        copies(1),
    );
}
