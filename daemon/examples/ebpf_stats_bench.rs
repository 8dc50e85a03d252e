//! What `daemon.ebpf_stats = true` costs, measured side by side in one run
//! (root): `cargo xtask bench ebpf_stats [-- CYCLES BATCH]`.
//!
//! With BPF run-time statistics on, the kernel reads the clock before and
//! after every run of every eBPF program of the node and adds to per-CPU
//! counters. Measured on telemetryd's syscall tracer (attach = tracepoint,
//! default `track`, two program runs per syscall: `sys_enter`, `sys_exit`):
//! modes (a) nothing attached, (c) the tracer, (c+s) the tracer with
//! statistics held on through `BPF_ENABLE_STATS`, as the daemon does. Each
//! cycle runs the three back to back in rotated order on a batch of 1-byte
//! `read`s (tracked) and of `getppid` (untracked; the tracepoints still
//! fire); per cycle the added ns per call and the ratio
//! ((c+s)-a)/(c-a) are taken, and the medians printed with quartiles.
//!
//! Someone else holding statistics on (another `BPF_ENABLE_STATS`, or
//! `kernel.bpf_stats_enabled = 1`) would make (c) count too: the run
//! counter of `sys_enter` is read around every (c) batch, and cycles where
//! it moved are reported and left out.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::ffi::CString;
use std::time::Instant;

use telemetryd::config::{Choice, SyscallAttach, SyscallsConfig};
use telemetryd::loader::probe;
use telemetryd::sources::events::EventsLoad;
use telemetryd::sources::syscalls::baselines::program_stats;
use telemetryd::sources::syscalls::{SyscallTracer, SyscallsLoad};
use telemetryd_common::syscalls as sc;

use bench_support::{load_bench_object, quantile, spread};

const LABELS: [&str; 3] = [
    "(a) nothing attached",
    "(c) tracer, statistics off",
    "(c+s) tracer, statistics on",
];
const NOTHING: usize = 0;
const OFF: usize = 1;
const ON: usize = 2;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cycles: usize = args.next().map_or(Ok(150), |a| a.parse())?;
    let batch: u64 = args.next().map_or(Ok(30_000), |a| a.parse())?;

    let config = SyscallsConfig {
        attach: Choice::Only(SyscallAttach::Tracepoint),
        ..SyscallsConfig::default()
    };
    // tgid 0 never makes syscalls: this process is traced.
    let settings = SyscallsLoad {
        max_in_flight: config.max_in_flight,
        self_tgid: 0,
        ..SyscallsLoad::default()
    };
    let mut object = load_bench_object(EventsLoad::default(), settings);
    let support = probe::probe();
    let zero = CString::new("/dev/zero")?;
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(zero.as_ptr(), libc::O_RDONLY) };
    anyhow::ensure!(
        fd >= 0,
        "open /dev/zero: {}",
        std::io::Error::last_os_error()
    );

    println!(
        "ebpf_stats_bench: {cycles} cycles x {} modes, batches of {batch} calls, kernel {}",
        LABELS.len(),
        support.release
    );
    let mut read_ns = vec![Vec::with_capacity(cycles); LABELS.len()];
    let mut getppid_ns = vec![Vec::with_capacity(cycles); LABELS.len()];
    let mut contaminated = 0;
    for cycle in 0..cycles {
        let mut row_read = [0.0; 3];
        let mut row_getppid = [0.0; 3];
        let mut clean = true;
        for k in 0..LABELS.len() {
            let mode = (k + cycle) % LABELS.len();
            let tracer = (mode != NOTHING)
                .then(|| SyscallTracer::start(&mut object, &config, &support))
                .transpose()?;
            let stats = (mode == ON)
                .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
                .transpose()?;
            let before = program_stats(&object, &[sc::TRACEPOINT_ENTER]);
            row_read[mode] = time_reads(fd, batch);
            row_getppid[mode] = time_getppid(batch);
            let after = program_stats(&object, &[sc::TRACEPOINT_ENTER]);
            if mode == OFF && after[0].run_count != before[0].run_count {
                clean = false;
            }
            drop(stats);
            drop(tracer);
        }
        if clean {
            for mode in 0..LABELS.len() {
                read_ns[mode].push(row_read[mode]);
                getppid_ns[mode].push(row_getppid[mode]);
            }
        } else {
            contaminated += 1;
        }
    }
    if contaminated > 0 {
        println!(
            "  {contaminated} cycles left out: statistics were on without telemetryd \
             (someone else held them)"
        );
    }
    anyhow::ensure!(
        !read_ns[NOTHING].is_empty(),
        "every cycle had statistics on from elsewhere: nothing to compare"
    );

    println!(
        "\nns per call (median over {} cycles):",
        read_ns[NOTHING].len()
    );
    println!("  {:<32} {:>9} {:>9}", "mode", "read", "getppid");
    for (i, label) in LABELS.iter().enumerate() {
        println!(
            "  {:<32} {:>9.1} {:>9.1}",
            label,
            quantile(&read_ns[i], 0.5),
            quantile(&getppid_ns[i], 0.5)
        );
    }
    let diff = |ns: &[Vec<f64>]| -> Vec<f64> {
        (0..ns[NOTHING].len())
            .map(|c| ns[ON][c] - ns[OFF][c])
            .collect()
    };
    let ratio = |ns: &[Vec<f64>]| -> Vec<f64> {
        (0..ns[NOTHING].len())
            .map(|c| (ns[ON][c] - ns[NOTHING][c]) / (ns[OFF][c] - ns[NOTHING][c]))
            .collect()
    };
    println!("\nstatistics on, paired per cycle: median [quartiles]:");
    println!("  {:<32} {:>22} {:>22}", "", "read", "getppid");
    println!(
        "  {:<32} {:>22} {:>22}",
        "added ns per call, (c+s)-(c)",
        spread(&diff(&read_ns), 1),
        spread(&diff(&getppid_ns), 1)
    );
    println!(
        "  {:<32} {:>22} {:>22}",
        "tracer cost ratio, ((c+s)-a)/(c-a)",
        spread(&ratio(&read_ns), 2),
        spread(&ratio(&getppid_ns), 2)
    );
    println!("  (two program runs per call: half the added ns is the cost per program run)");
    Ok(())
}

fn time_reads(fd: i32, calls: u64) -> f64 {
    let mut byte = 0u8;
    let start = Instant::now();
    for _ in 0..calls {
        // SAFETY: reads one byte into a local.
        unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn time_getppid(calls: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        // SAFETY: no arguments, cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}
