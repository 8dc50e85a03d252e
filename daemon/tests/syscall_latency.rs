//! The syscall-latency tracer against real syscalls: a `telemetryd`
//! process in a throwaway namespace, a child process of this test doing an
//! exact number of syscalls, exact counts read back from `/metrics`. Runs
//! as root (`cargo xtask test`).
//!
//! The child is this test binary run again with `TELEMETRYD_TEST_CHILD`
//! set (see [`child_process_entry`]). It prepares everything, says
//! `parked`, and blocks in `open()` on a FIFO until the test opens the
//! other end: the go signal is not a `read`, so the only reads the child
//! makes after it are the ones it counts. It then says `done <ns>` (a
//! `write`) and `_exit`s.
//!
//! Each exact-count test runs in every attach mode (`fentry`, `kprobe`,
//! `tracepoint`). Where the running kernel has the mode (asked of the
//! kernel itself, [`support::kernel`]), it must attach and count exactly;
//! where the kernel lacks it, the daemon must refuse to start with the
//! kernel's reason.

mod support;

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use support::kernel::Lacks;
use support::matrix::record;
use support::metrics::{promtool_accepts, Scrape};
use support::netns::unique_name;
use support::{require_root, Daemon, NetNs, TestConfig};

const CHILD_ENV: &str = "TELEMETRYD_TEST_CHILD";
const FIFO_ENV: &str = "TELEMETRYD_TEST_FIFO";
const LATENCY: &str = "telemetryd_syscall_latency_seconds";

fn config(attach: &str, track: &[&str], pids: &[u32], cgroup: &str) -> String {
    TestConfig::new()
        .set("log.level", "info")
        .set("log.format", "json")
        .set("xdp.enabled", false)
        .set("syscalls.enabled", true)
        .set("syscalls.attach", attach)
        .set("syscalls.track", track.to_vec())
        .set(
            "syscalls.pids",
            pids.iter().map(|&p| i64::from(p)).collect::<Vec<_>>(),
        )
        .set("syscalls.cgroup", cgroup)
        .toml()
}

// ---------------------------------------------------------------- child --

/// Entry point of the child mode; an instant no-op in a normal test run.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fifo = std::env::var(FIFO_ENV).expect("fifo path");
    let parts: Vec<&str> = mode.split(':').collect();
    let total_ns = match parts.as_slice() {
        ["reads", n] => child_reads(&fifo, n.parse().unwrap()),
        ["badfd", n] => child_bad_fd(&fifo, n.parse().unwrap()),
        ["pipe", n, us] => child_pipe(&fifo, n.parse().unwrap(), us.parse().unwrap()),
        ["pingpong", pairs, n] => child_pingpong(&fifo, pairs.parse().unwrap(), n.parse().unwrap()),
        _ => panic!("unknown child mode {mode:?}"),
    };
    println!("done {total_ns}");
    // SAFETY: ends the process at once, without the harness's own syscalls.
    unsafe { libc::_exit(0) };
}

fn park(fifo: &str) {
    println!("parked");
    let path = CString::new(fifo).unwrap();
    // SAFETY: valid C string; blocks until the test opens the write end.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "open fifo: {}", std::io::Error::last_os_error());
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into the timespec we own (vDSO, not a syscall).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn read_one(fd: i32) -> isize {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into `byte`.
    unsafe { libc::read(fd, (&raw mut byte).cast(), 1) }
}

fn child_reads(fifo: &str, n: u64) -> u64 {
    let zero = CString::new("/dev/zero").unwrap();
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(zero.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    park(fifo);
    for _ in 0..n {
        assert_eq!(read_one(fd), 1);
    }
    0
}

fn child_bad_fd(fifo: &str, n: u64) -> u64 {
    // Far above anything open here, so `park` cannot reuse it.
    let fd = 987;
    // SAFETY: F_GETFD only queries the descriptor table.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_eq!(flags, -1, "fd {fd} is open");
    park(fifo);
    for _ in 0..n {
        assert_eq!(read_one(fd), -1);
    }
    0
}

/// `n` reads on a pipe whose writer waits `us` before each byte; returns
/// the total time spent in `read` as measured around each call.
fn child_pipe(fifo: &str, n: u64, us: u64) -> u64 {
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills the two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (reader, writer) = (fds[0], fds[1]);
    // The writer starts each sleep only once the reader says it is about to
    // read, so every read waits the whole sleep plus lags that only add. A
    // free-running writer lets the reader's own wake-up lag eat into the next
    // read's wait: on a 6.12 TCG guest over 5 of 100 reads fell below the
    // bucket although their mean was 17.4 ms. The channel blocks on a
    // futex, not a read, so the only traced reads are the pipe's.
    let (about_to_read, next_read) = std::sync::mpsc::channel::<()>();
    park(fifo);
    let writer_thread = std::thread::spawn(move || {
        for _ in 0..n {
            next_read.recv().unwrap();
            std::thread::sleep(Duration::from_micros(us));
            // SAFETY: writes one byte from a local.
            let written = unsafe { libc::write(writer, (&raw const n).cast(), 1) };
            assert_eq!(written, 1);
        }
    });
    let mut total = 0;
    for _ in 0..n {
        about_to_read.send(()).unwrap();
        let t0 = now_ns();
        assert_eq!(read_one(reader), 1);
        total += now_ns() - t0;
    }
    writer_thread.join().unwrap();
    total
}

/// `pairs` pairs of threads, each pair bouncing one byte `n` times over two
/// pipes: every thread makes `n` reads, nearly all of which block (switch
/// out, and often resume on the other CPU). The threads exist and wait on
/// a barrier before `park`, so their reads are the only ones after it.
fn child_pingpong(fifo: &str, pairs: usize, n: u64) -> u64 {
    let start = std::sync::Arc::new(std::sync::Barrier::new(2 * pairs + 1));
    let mut threads = Vec::new();
    for _ in 0..pairs {
        let mut there = [0i32; 2];
        let mut back = [0i32; 2];
        // SAFETY: pipe fills the two fds of each array.
        unsafe {
            assert_eq!(libc::pipe(there.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(back.as_mut_ptr()), 0);
        }
        for (first, input, output) in [(true, back[0], there[1]), (false, there[0], back[1])] {
            let start = start.clone();
            threads.push(std::thread::spawn(move || {
                start.wait();
                let byte = 7u8;
                for i in 0..2 * n {
                    // The first thread writes on even turns, the other on odd.
                    if (i % 2 == 0) == first {
                        // SAFETY: writes one byte from a local.
                        let written = unsafe { libc::write(output, (&raw const byte).cast(), 1) };
                        assert_eq!(written, 1);
                    } else {
                        assert_eq!(read_one(input), 1);
                    }
                }
            }));
        }
    }
    park(fifo);
    start.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    0
}

// --------------------------------------------------------------- parent --

/// A child process parked before its measured syscalls.
struct TestChild {
    child: Child,
    stdout: BufReader<ChildStdout>,
    fifo: PathBuf,
}

impl TestChild {
    fn spawn(mode: &str) -> Self {
        let fifo = std::env::temp_dir().join(unique_name("f"));
        let path = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_process_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, mode)
            .env(FIFO_ENV, &fifo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the test child");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut this = Self {
            child,
            stdout,
            fifo,
        };
        this.wait_line("parked");
        this
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_line(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the test child ended before saying {prefix:?}");
            // The harness may have written `test ... ` before it on the line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
        }
    }

    /// Releases the child and waits for `done`; returns the ns it reported.
    fn run(&mut self) -> u64 {
        let _write_end = fs::OpenOptions::new()
            .write(true)
            .open(&self.fifo)
            .expect("opening the go fifo");
        let total = self.wait_line("done").parse().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "test child: {status}");
        total
    }
}

impl Drop for TestChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.fifo);
    }
}

/// Another process reading /dev/zero as fast as it can meanwhile.
fn background_reader() -> Child {
    Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=200000"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning dd")
}

fn count(scrape: &Scrape, syscall: &str) -> f64 {
    scrape
        .get(&format!("{LATENCY}_count"), &[("syscall", syscall)])
        .unwrap_or_else(|| panic!("no {LATENCY}_count for {syscall}:\n{}", scrape.text))
}

fn errors(scrape: &Scrape, syscall: &str) -> f64 {
    scrape
        .get("telemetryd_syscall_errors_total", &[("syscall", syscall)])
        .unwrap_or_else(|| panic!("no errors series for {syscall}:\n{}", scrape.text))
}

fn sum_seconds(scrape: &Scrape, syscall: &str) -> f64 {
    scrape
        .get(&format!("{LATENCY}_sum"), &[("syscall", syscall)])
        .unwrap()
}

/// Cumulative count at `le = 2^exp` s. The layout is fixed: every bound
/// of it is written from the first scrape on.
fn cumulative(scrape: &Scrape, syscall: &str, exp: i32) -> f64 {
    bucket(scrape, syscall, &prometheus_float(2f64.powi(exp)))
}

/// The bucket `le` of `syscall`, as written (the encoder puts `le` after
/// the series' own labels).
fn bucket(scrape: &Scrape, syscall: &str, le: &str) -> f64 {
    let key = format!("{LATENCY}_bucket{{syscall=\"{syscall}\",le=\"{le}\"}}");
    *scrape
        .samples
        .get(&key)
        .unwrap_or_else(|| panic!("no {key}:\n{}", scrape.text))
}

/// A bound as the text encoder writes it (Go's shortest `%g`-like form:
/// Rust's shortest round-trip `Display` agrees for these powers of two).
fn prometheus_float(v: f64) -> String {
    format!("{v}")
}

/// Waits until `value(scrape)` reaches `want`, then two more polls, and
/// returns that later scrape: a value that overshoots shows up in it.
fn settled(daemon: &Daemon, want: f64, value: impl Fn(&Scrape) -> f64) -> Scrape {
    daemon.scrape_until(Duration::from_secs(10), |s| value(s) >= want);
    std::thread::sleep(Duration::from_millis(300));
    daemon.scrape()
}

fn attach_label(scrape: &Scrape) -> Option<String> {
    let prefix = "telemetryd_ebpf_program_attached{attach=\"";
    scrape
        .samples
        .keys()
        .find(|k| k.starts_with(prefix) && k.contains("program=\"syscall_latency\""))
        .and_then(|k| k[prefix.len()..].split('"').next().map(str::to_owned))
}

fn wait_attached(daemon: &Daemon) -> String {
    let scrape = daemon.scrape_until(Duration::from_secs(5), |s| attach_label(s).is_some());
    attach_label(&scrape).unwrap_or_else(|| panic!("tracer not attached:\n{}", scrape.text))
}

const N_READS: u64 = 10_000;

/// Held by the timing-sensitive bucket test and the CPU-hungry ping-pong
/// test, so the harness never runs them at the same time: on 2 CPUs the
/// ping-pong's wakeups delay the bucket test's sleeps.
static CPU_HUNGRY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpu_hungry() -> std::sync::MutexGuard<'static, ()> {
    CPU_HUNGRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The attach modes, cheapest first: the order `auto` tries them in.
const MODES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// What the running kernel says of `mode`, asked of the kernel itself.
fn kernel_has(mode: &str) -> Result<(), Lacks> {
    match mode {
        "fentry" => support::kernel::fentry(),
        "kprobe" => support::kernel::kprobes(),
        // Raw tracepoints (4.17) predate every kernel telemetryd supports.
        "tracepoint" => Ok(()),
        _ => panic!("unknown attach mode {mode}"),
    }
}

/// The entry function of a syscall, as fentry and kprobes attach to it.
fn entry_function(syscall: &str) -> String {
    let prefix = if cfg!(target_arch = "aarch64") {
        "__arm64_sys_"
    } else {
        "__x64_sys_"
    };
    format!("{prefix}{syscall}")
}

/// Starts the daemon on `config` (with `attach = mode`). Where the kernel
/// has `mode` it must attach with it; where the kernel lacks it the daemon
/// must refuse to start with the kernel's reason, and `None` is returned.
fn start_in_mode(ns: &NetNs, mode: &str, config: &str) -> Option<Daemon> {
    let feature = format!("syscall latency, attach = {mode}");
    match kernel_has(mode) {
        Ok(()) => {
            let daemon = Daemon::start(ns, config);
            assert_eq!(wait_attached(&daemon), mode, "{}", daemon.log_text());
            record(&feature, &attach_path(&daemon, mode));
            Some(daemon)
        }
        Err(lacks) => {
            refuses_with_the_kernels_reason(ns, mode, config, &lacks);
            record(
                &feature,
                &format!("refused: the kernel lacks it ({})", lacks.why),
            );
            None
        }
    }
}

/// How `mode` attached, in the table's words.
fn attach_path(daemon: &Daemon, mode: &str) -> String {
    match mode {
        "fentry" => "fentry + fexit on the tracked syscalls' entry functions".into(),
        "kprobe" => "kprobe + kretprobe on the tracked syscalls' entry functions".into(),
        _ if daemon
            .log_text()
            .contains("BTF tracepoint sys_exit unavailable") =>
        {
            "raw tracepoints sys_enter, sys_exit, sched_switch".into()
        }
        _ => "raw tracepoints sys_enter, sched_switch; BTF tracepoint sys_exit".into(),
    }
}

fn refuses_with_the_kernels_reason(ns: &NetNs, mode: &str, config: &str, lacks: &Lacks) {
    let started = Instant::now();
    let mut daemon = Daemon::spawn(ns, config, &[]);
    let status = daemon
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
            "the kernel lacks {mode} ({}), yet telemetryd with attach = {mode:?} kept running:\n{}",
            lacks.why,
            daemon.log_text()
        )
        });
    assert!(!status.success(), "exit status {status}");
    let log = daemon.log_text();
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.contains(mode) && last.contains(&lacks.needle),
        "the kernel lacks {mode} ({}); telemetryd's last words must name the mode and \
         {:?}:\n{log}",
        lacks.why,
        lacks.needle
    );
    println!(
        "attach = {mode:?}: the kernel lacks it ({}); telemetryd exited in {:?}: {last}",
        lacks.why,
        started.elapsed()
    );
}

/// One `#[test]` per attach mode, each calling `case(mode)`.
macro_rules! in_every_mode {
    ($case:ident) => {
        mod $case {
            #[test]
            fn fentry() {
                super::$case("fentry")
            }
            #[test]
            fn kprobe() {
                super::$case("kprobe")
            }
            #[test]
            fn tracepoint() {
                super::$case("tracepoint")
            }
        }
    };
}

in_every_mode!(counts_exactly_the_reads_of_the_traced_process);
fn counts_exactly_the_reads_of_the_traced_process(mode: &str) {
    require_root();
    let mut child = TestChild::spawn(&format!("reads:{N_READS}"));
    let ns = NetNs::new();
    let Some(daemon) = start_in_mode(&ns, mode, &config(mode, &["read"], &[child.pid()], ""))
    else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.scrape();
    let base = count(&before, "read");

    let mut other = background_reader();
    child.run();
    assert!(other.wait().unwrap().success());
    let after = settled(&daemon, base + N_READS as f64, |s| count(s, "read"));
    assert_eq!(
        count(&after, "read") - base,
        N_READS as f64,
        "exactly the child's reads, none of dd's (baseline {base})\n{}",
        after.text
    );
    assert_eq!(errors(&after, "read"), 0.0);
    assert_eq!(
        bucket(&after, "read", "+Inf"),
        count(&after, "read"),
        "the buckets add up to the count"
    );
    promtool_accepts(&after);
}

in_every_mode!(reads_with_known_latency_land_in_their_bucket);
fn reads_with_known_latency_land_in_their_bucket(mode: &str) {
    require_root();
    let _alone = cpu_hungry();
    const N: u64 = 100;
    // (2^-6, 2^-5] s is (15.6, 31.25] ms. A read waits the writer's sleep,
    // which starts only after the reader announces the read (`child_pipe`),
    // plus wake-up lags, which only ever add: 17 ms leaves 14.25 ms for them,
    // on a busy 2-core VM and in an emulated (TCG) guest alike.
    const WAIT_US: u64 = 17_000;
    let mut child = TestChild::spawn(&format!("pipe:{N}:{WAIT_US}"));
    let ns = NetNs::new();
    let Some(daemon) = start_in_mode(&ns, mode, &config(mode, &["read"], &[child.pid()], ""))
    else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.scrape();
    let measured_ns = child.run();
    let after = settled(&daemon, count(&before, "read") + N as f64, |s| {
        count(s, "read")
    });

    assert_eq!(count(&after, "read") - count(&before, "read"), N as f64);
    let in_bucket = (cumulative(&after, "read", -5) - cumulative(&after, "read", -6))
        - (cumulative(&before, "read", -5) - cumulative(&before, "read", -6));
    assert!(
        in_bucket >= 0.95 * N as f64,
        "{in_bucket} of {N} reads of ~{WAIT_US} us in (2^-6, 2^-5] s\n{}",
        after.text
    );
    let traced = (sum_seconds(&after, "read") - sum_seconds(&before, "read")) * 1e9;
    let measured = measured_ns as f64;
    assert!(
        (traced - measured).abs() <= 0.10 * measured,
        "_sum {traced} ns vs {measured} ns measured by the caller"
    );
    println!("bucket (2^-6,2^-5] s: {in_bucket}/{N}; sum traced {traced:.0} ns, measured {measured:.0} ns");
    promtool_accepts(&after);
}

/// The tracepoint mode's per-CPU fast path hands every entry whose thread
/// switches out over to the in-flight hash (`sched_switch`); losing or
/// double-counting one there would break this exact count. Eight threads
/// ping-pong over pipes, so nearly every read blocks and many resume on
/// the other CPU. (Only tracepoint mode has that hand-off.)
#[test]
fn blocking_reads_of_many_threads_are_counted_exactly() {
    require_root();
    let _alone = cpu_hungry();
    const PAIRS: u64 = 4;
    const TRIPS: u64 = 5_000;
    let mut child = TestChild::spawn(&format!("pingpong:{PAIRS}:{TRIPS}"));
    let ns = NetNs::new();
    let daemon = Daemon::start(&ns, &config("tracepoint", &["read"], &[child.pid()], ""));
    assert_eq!(wait_attached(&daemon), "tracepoint");
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.scrape();
    assert!(
        before
            .samples
            .keys()
            .any(|k| k.starts_with("telemetryd_ebpf_program_attached{")
                && k.contains("attach=\"tracepoint\"")
                && k.contains("program=\"syscall_latency_sched_switch\"")),
        "the sched_switch hand-off is listed as attached\n{}",
        before.text
    );
    let base = count(&before, "read");

    let mut other = background_reader();
    child.run();
    assert!(other.wait().unwrap().success());
    let want = (2 * PAIRS * TRIPS) as f64;
    let after = settled(&daemon, base + want, |s| count(s, "read"));
    assert_eq!(
        count(&after, "read") - base,
        want,
        "every read of the ping-pong threads, exactly\n{}",
        after.text
    );
    assert_eq!(errors(&after, "read"), 0.0);
    assert_eq!(
        after
            .samples
            .get("telemetryd_syscall_inflight_overflows_total")
            .copied(),
        Some(0.0)
    );
    promtool_accepts(&after);
}

in_every_mode!(reads_on_a_closed_fd_are_counted_as_errors);
fn reads_on_a_closed_fd_are_counted_as_errors(mode: &str) {
    require_root();
    const N: u64 = 1000;
    let mut child = TestChild::spawn(&format!("badfd:{N}"));
    let ns = NetNs::new();
    let Some(daemon) = start_in_mode(&ns, mode, &config(mode, &["read"], &[child.pid()], ""))
    else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.scrape();
    child.run();
    let after = settled(&daemon, errors(&before, "read") + N as f64, |s| {
        errors(s, "read")
    });
    assert_eq!(errors(&after, "read") - errors(&before, "read"), N as f64);
    assert_eq!(count(&after, "read") - count(&before, "read"), N as f64);
}

/// A cgroup v2 directory, removed on drop (its processes moved back).
///
/// The hierarchy is mounted again under /tmp for the test: `ip netns exec`
/// mounts a fresh sysfs for the daemon, hiding /sys/fs/cgroup from it.
struct TestCgroup {
    mount: PathBuf,
    path: PathBuf,
}

impl TestCgroup {
    fn new() -> Self {
        let mount = std::env::temp_dir().join(unique_name("m"));
        fs::create_dir(&mount).unwrap();
        support::netns::run("mount", &["-t", "cgroup2", "none", mount.to_str().unwrap()]);
        let path = mount.join(unique_name("c"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { mount, path }
    }

    fn add(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            if fs::remove_dir(&self.path).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = fs::remove_dir(&self.mount);
    }
}

in_every_mode!(cgroup_filter_counts_members_and_never_the_daemon_itself);
/// The daemon and a child share a cgroup that is the filter; the daemon
/// answers scrapes (recvfrom, sendto) and must not count itself, the child's
/// reads are counted exactly, dd outside the cgroup not at all.
fn cgroup_filter_counts_members_and_never_the_daemon_itself(mode: &str) {
    require_root();
    const N: u64 = 1000;
    let cgroup = TestCgroup::new();
    let mut child = TestChild::spawn(&format!("reads:{N}"));
    let ns = NetNs::new();
    let config = config(
        mode,
        &["read", "recvfrom", "sendto"],
        &[],
        cgroup.path.to_str().unwrap(),
    );
    let Some(daemon) = start_in_mode(&ns, mode, &config) else {
        return;
    };
    cgroup.add(daemon.pid());
    cgroup.add(child.pid());
    // Scrapes: the daemon receives and sends over TCP, inside the cgroup.
    for _ in 0..10 {
        daemon.scrape();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.scrape();
    let mut other = background_reader();
    child.run();
    assert!(other.wait().unwrap().success());
    let after = settled(&daemon, count(&before, "read") + N as f64, |s| {
        count(s, "read")
    });
    assert_eq!(
        count(&after, "read") - count(&before, "read"),
        N as f64,
        "{}",
        after.text
    );
    assert_eq!(count(&after, "recvfrom"), 0.0, "the daemon's own recvfrom");
    assert_eq!(count(&after, "sendto"), 0.0, "the daemon's own sendto");
}

/// Functions the kernel has ftrace hooks on (fentry trampolines and kprobes
/// on a function's entry alike), from tracefs' `enabled_functions`.
fn hooked_functions() -> std::collections::BTreeSet<String> {
    let path = "/sys/kernel/tracing/enabled_functions";
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("reading {path} (tracefs must be mounted on /sys/kernel/tracing): {e}")
    });
    // A hooked function's line starts with its name; indented lines under
    // it describe the hook (`direct-->bpf_trampoline_...`).
    text.lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// In fentry and kprobe mode an untracked syscall runs no eBPF at all: only
/// the tracked syscalls' entry functions get programs. The kernel's own list
/// of hooked functions must be exactly those while the daemon runs, and
/// empty again once it stopped.
fn only_the_tracked_syscalls_entry_functions_get_programs(mode: &str) {
    require_root();
    let ns = NetNs::new();
    let track = ["read", "openat", "sendto"];
    let Some(mut daemon) = start_in_mode(&ns, mode, &config(mode, &track, &[], "")) else {
        return;
    };
    let want: std::collections::BTreeSet<String> =
        track.iter().map(|t| entry_function(t)).collect();
    assert_eq!(hooked_functions(), want, "{}", daemon.log_text());
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("exit on SIGTERM");
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hooked_functions().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        hooked_functions().is_empty(),
        "left hooked after SIGTERM: {:?}",
        hooked_functions()
    );
}

mod only_the_tracked_syscalls_entry_functions_get_programs {
    #[test]
    fn fentry() {
        super::only_the_tracked_syscalls_entry_functions_get_programs("fentry")
    }
    #[test]
    fn kprobe() {
        super::only_the_tracked_syscalls_entry_functions_get_programs("kprobe")
    }
}

#[test]
fn a_missing_cgroup_is_a_startup_error() {
    require_root();
    let ns = NetNs::new();
    let mut daemon = Daemon::spawn(
        &ns,
        &config(
            "tracepoint",
            &["read"],
            &[],
            "/sys/fs/cgroup/tdt-no-such-cgroup",
        ),
        &[],
    );
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("telemetryd kept running with a missing cgroup");
    assert!(!status.success());
    let log = daemon.log_text();
    assert!(log.contains("tdt-no-such-cgroup"), "{log}");
}

/// `auto` takes the cheapest mode the kernel has (fentry on the kernels
/// operators run), says so, and for every cheaper mode logs the kernel's
/// reason for passing it over.
#[test]
fn auto_takes_the_cheapest_mode_the_kernel_has_and_says_why() {
    require_root();
    let expected = MODES
        .iter()
        .copied()
        .find(|m| kernel_has(m).is_ok())
        .expect("tracepoints always work");
    let ns = NetNs::new();
    let daemon = Daemon::start(&ns, &config("auto", &["read"], &[], ""));
    let mode = wait_attached(&daemon);
    let log = daemon.log_text();
    assert_eq!(mode, expected, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("syscall latency tracer attached")
                && l.contains(&format!("\"mode\":\"{mode}\""))),
        "the log says which mode attached:\n{log}"
    );
    for skipped in MODES.iter().take_while(|m| **m != mode) {
        let lacks = kernel_has(skipped).expect_err("a cheaper mode the kernel has");
        let line = log
            .lines()
            .find(|l| l.contains(&format!("\"mode\":\"{skipped}\"")) && l.contains("\"reason\""))
            .unwrap_or_else(|| panic!("no reason logged for skipping {skipped}:\n{log}"));
        assert!(
            line.contains(&lacks.needle),
            "skipping {skipped}: the reason must name {:?} ({}):\n{line}",
            lacks.needle,
            lacks.why
        );
        println!("{skipped} skipped: {line}");
    }
    record("syscall latency, attach = auto", &format!("chose {mode}"));
    println!("auto attached with {mode}");
}
