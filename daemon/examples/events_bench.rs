//! Packet events benchmark (`cargo xtask bench events`, root). Prints:
//!
//! 1. Events per second delivered with zero loss at `sample_rate = 1`: one
//!    and two AF_PACKET senders flat out over veth into native XDP, the
//!    daemon's own drain (`EventRing::run` on a tokio runtime) consuming;
//!    with the packet rate the senders reached.
//! 2. Delivery latency (kernel timestamp to user-space receipt) p50 / p99 /
//!    max at about 10k and 100k events/s, paced senders.
//! 3. XDP cost per packet with sampling off (rate 0), 1 in 100 and every
//!    packet, against the empty program: kernel BPF stats run_time/run_cnt,
//!    rounds interleaved and rotated.
//!
//! Traffic stays inside two throwaway namespaces joined by veth.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::programs::{Xdp, XdpMode};
use telemetryd::loader::LoadedObject;
use telemetryd::sources::events::{self, EventRing, EventsLoad, KernelEventCounts};
use telemetryd::sources::syscalls::SyscallsLoad;
use telemetryd_common::xdp::program_symbol;

use bench_support::{
    enter, ifindex, load_bench_object, median, send_frames, udp_frame, VethNamespaces,
};

const NS_RX: &str = "tdtevbrx";
const NS_TX: &str = "tdtevbtx";
const DEV_RX: &str = "tdtevrx0";
const DEV_TX: &str = "tdtevtx0";
const RING: u32 = 16 << 20;
const ROUNDS: usize = 5;
const PACKETS_PER_ROUND: u64 = 200_000;

fn main() {
    let _namespaces = VethNamespaces::create(NS_RX, NS_TX, DEV_RX, DEV_TX);
    enter(NS_RX);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let frame = udp_frame(64);
    let ifindex = ifindex(DEV_RX);

    throughput_and_latency(&frame, ifindex);
    cost_per_packet(&frame, ifindex);
}

/// What the consumer thread saw since the last reset.
#[derive(Default)]
struct Consumed {
    delivered: u64,
    latencies_ns: Vec<u64>,
}

fn throughput_and_latency(frame: &[u8], ifindex: u32) {
    let settings = EventsLoad::new(1, RING).expect("ring buffer size");
    let mut object = load_bench_object(settings, SyscallsLoad::default());
    let (ring, counts) = events::take(&mut object).expect("event maps");
    let name = program_symbol(settings.sample_rate);
    let program = xdp(&mut object, name);
    let link = program
        .attach_to_if_index(ifindex, XdpMode::Driver)
        .expect("native attach");
    let consumed = Arc::new(Mutex::new(Consumed::default()));
    let stop = spawn_consumer(ring, consumed.clone());

    println!(
        "== zero-loss delivery at sample_rate = 1 (ring buffer {} MiB, native XDP on veth, frames of {} bytes)",
        RING >> 20,
        frame.len()
    );
    for senders in [1, 2] {
        let sent = 1_000_000;
        let (lost0, _) = lost_and_sampled(&counts);
        reset(&consumed);
        let start = Instant::now();
        let send_time = send_parallel(frame, sent, senders, None);
        wait_delivered(&consumed, &counts, lost0, sent);
        let elapsed = start.elapsed();
        let delivered = consumed.lock().unwrap().delivered;
        let lost = lost_and_sampled(&counts).0 - lost0;
        println!(
            "{senders} sender(s): {sent} frames sent at {:.0} pkt/s; {delivered} events delivered, {lost} lost; \
             {:.0} events/s delivered end to end{}",
            sent as f64 / send_time.as_secs_f64(),
            delivered as f64 / elapsed.as_secs_f64(),
            if lost == 0 { " with zero loss" } else { " (LOSS)" }
        );
    }

    println!(
        "== delivery latency (kernel timestamp -> user-space receipt), paced senders, 3 s each"
    );
    for rate in [10_000u64, 100_000] {
        reset(&consumed);
        let (lost0, _) = lost_and_sampled(&counts);
        let sent = rate * 3;
        let send_time = send_parallel(frame, sent, 1, Some(rate));
        wait_delivered(&consumed, &counts, lost0, sent);
        let mut c = consumed.lock().unwrap();
        let lost = lost_and_sampled(&counts).0 - lost0;
        let achieved = sent as f64 / send_time.as_secs_f64();
        c.latencies_ns.sort_unstable();
        let q =
            |p: f64| c.latencies_ns[((c.latencies_ns.len() - 1) as f64 * p) as usize] as f64 / 1e3;
        println!(
            "~{rate} events/s (achieved {achieved:.0}/s, {} events, {lost} lost): p50 {:.1} us, p99 {:.1} us, max {:.1} us (target p99 < 5000 us)",
            c.latencies_ns.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
    stop.store(true, Ordering::Relaxed);
    program.detach(link).expect("detach");
}

fn reset(consumed: &Mutex<Consumed>) {
    let mut c = consumed.lock().unwrap();
    c.delivered = 0;
    c.latencies_ns.clear();
}

fn lost_and_sampled(counts: &KernelEventCounts) -> (u64, u64) {
    let (sampled, lost) = counts.read();
    (lost, sampled)
}

/// Waits until every sent frame was delivered or counted lost.
fn wait_delivered(consumed: &Mutex<Consumed>, counts: &KernelEventCounts, lost0: u64, sent: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = consumed.lock().unwrap().delivered;
        let lost = lost_and_sampled(counts).0 - lost0;
        if delivered + lost >= sent || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The daemon's drain on its own single-threaded tokio runtime.
fn spawn_consumer(ring: EventRing, consumed: Arc<Mutex<Consumed>>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let drain = ring.run(|batch| {
                let mut c = consumed.lock().unwrap();
                for received in batch {
                    if let Ok(event) = &received.event {
                        c.delivered += 1;
                        c.latencies_ns
                            .push(received.received_ns.saturating_sub(event.timestamp_ns));
                    }
                }
            });
            let stop = async {
                while !stopped.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                error = drain => panic!("drain failed: {error}"),
                _ = stop => {}
            }
        });
    });
    stop
}

/// XDP cost per packet: sampling off, 1 in 100, every packet, empty program.
fn cost_per_packet(frame: &[u8], ifindex: u32) {
    const LABELS: [&str; 4] = ["rate 0 (off)", "rate 100", "rate 1", "empty program"];
    type Loaded = (LoadedObject, EventRing, KernelEventCounts);
    const RATES: [u32; 4] = [0, 100, 1, 0];
    let mut objects: Vec<Loaded> = RATES
        .iter()
        .map(|&rate| {
            let settings = EventsLoad::new(rate, 64 << 20).expect("ring buffer size");
            let mut object = load_bench_object(settings, SyscallsLoad::default());
            // Both maps stay open: the program refers to them.
            let (ring, counts) = events::take(&mut object).expect("event maps");
            (object, ring, counts)
        })
        .collect();
    for (i, (object, _, _)) in objects.iter_mut().enumerate() {
        let name = if i == 3 {
            "xdp_pass_baseline"
        } else {
            program_symbol(RATES[i])
        };
        xdp(object, name);
    }
    println!(
        "== XDP cost per packet, native, kernel BPF stats, {ROUNDS} interleaved rounds of {PACKETS_PER_ROUND} frames of {} bytes",
        frame.len()
    );
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); LABELS.len()];
    for round in 0..ROUNDS {
        for k in 0..LABELS.len() {
            let which = (round + k) % LABELS.len();
            let (object, ring, _) = &mut objects[which];
            let name = if which == 3 {
                "xdp_pass_baseline"
            } else {
                program_symbol(RATES[which])
            };
            let program: &mut Xdp = object.ebpf.program_mut(name).unwrap().try_into().unwrap();
            let link = program
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .expect("attach");
            let before = program.info().unwrap();
            send_parallel(frame, PACKETS_PER_ROUND, 1, None);
            let after = program.info().unwrap();
            program.detach(link).unwrap();
            let runs = after.run_count() - before.run_count();
            samples[which]
                .push((after.run_time() - before.run_time()).as_nanos() as f64 / runs as f64);
            // Empty the ring buffer so the next round never finds it full.
            let mut sink = Vec::new();
            while ring.drain(1 << 16, &mut sink) > 0 {
                sink.clear();
            }
        }
    }
    // With sampling off the daemon loads the build without event code:
    // compare the translated sizes.
    for (i, (object, _, _)) in objects.iter_mut().enumerate().take(3) {
        let name = program_symbol(RATES[i]);
        let info = xdp(object, name).info().unwrap();
        println!(
            "{:>14}: {} bytes of translated BPF, {} bytes jitted",
            LABELS[i],
            info.size_translated().unwrap_or(0),
            info.size_jitted()
        );
    }
    let (sampled, lost) = objects[2].2.read();
    println!(
        "rate 1: {sampled} events over all rounds, {lost} lost (the cost is of delivered events)"
    );
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    for (i, label) in LABELS.iter().enumerate() {
        println!(
            "{label:>14}: {:.1} ns/pkt (rounds {:?})",
            medians[i],
            samples[i]
                .iter()
                .map(|v| (v * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
    }
    println!(
        "sampling off costs {:.1} ns over the empty program; 1-in-100 adds {:.1} ns, every packet adds {:.1} ns over off",
        medians[0] - medians[3],
        medians[1] - medians[0],
        medians[2] - medians[0]
    );
}

fn xdp<'a>(object: &'a mut LoadedObject, name: &str) -> &'a mut Xdp {
    let program: &mut Xdp = object.ebpf.program_mut(name).unwrap().try_into().unwrap();
    if program.fd().is_err() {
        program.load().expect("verifier");
    }
    program
}

/// Sends `count` frames from `senders` threads in the sender namespace,
/// flat out or paced at `rate` frames/s in total; returns the time taken.
fn send_parallel(frame: &[u8], count: u64, senders: u64, rate: Option<u64>) -> Duration {
    let start = Instant::now();
    let threads: Vec<_> = (0..senders)
        .map(|_| {
            let frame = frame.to_vec();
            let per = count / senders;
            let rate = rate.map(|r| r / senders);
            std::thread::spawn(move || send_frames(NS_TX, DEV_TX, &frame, per, rate))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed()
}
