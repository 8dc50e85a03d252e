//! The XDP parser frame by frame through BPF_PROG_TEST_RUN: the program is
//! loaded through the kernel verifier (which proves its bounds checks), then
//! each crafted frame, and every truncation of the deepest ones, is run
//! once and must be counted exactly once, in the right slot, and passed.
//! Runs as root (`cargo xtask test`); touches no interface.

mod support;

use telemetryd::loader::LoadedObject;
use telemetryd::sources::load_default_object;
use telemetryd::sources::xdp::PacketCounter;
use telemetryd_common::xdp::{FAMILY_LABELS, PROTOCOL_LABELS};

use support::frames::*;
use support::require_root;

const XDP_PASS: u32 = 2;
/// BPF_PROG_TEST_RUN runs XDP as if the frame arrived on loopback, whose
/// ifindex puts it in the low-ifindex table.
const TEST_RUN_IFINDEX: u32 = 1;

/// (family label, protocol label, malformed) -> how many, summed over CPUs.
fn read(xdp: &PacketCounter) -> (Vec<u64>, Vec<u64>, u64) {
    let mut packets = vec![0; 12];
    let mut bytes = vec![0; 12];
    let mut malformed = 0;
    let counters = xdp
        .maps()
        .low_ifindex_counters(TEST_RUN_IFINDEX)
        .expect("reading the low-ifindex table");
    for f in 0..3 {
        for p in 0..4 {
            packets[f * 4 + p] += counters.packets[f][p];
            bytes[f * 4 + p] += counters.bytes[f][p];
        }
    }
    malformed += counters.malformed;
    (packets, bytes, malformed)
}

/// Runs one frame and returns (family, protocol, malformed, bytes) of the
/// single slot that moved; panics unless exactly one packet was counted.
fn classify(
    object: &LoadedObject,
    xdp: &PacketCounter,
    frame: &[u8],
) -> (&'static str, &'static str, bool, u64) {
    let (p0, b0, m0) = read(xdp);
    let (action, _) = xdp.test_run(object, frame, 1).expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        action,
        XDP_PASS,
        "frame of {} bytes was not passed",
        frame.len()
    );
    let (p1, b1, m1) = read(xdp);
    let moved: Vec<usize> = (0..12).filter(|&i| p1[i] != p0[i]).collect();
    assert_eq!(
        moved.len(),
        1,
        "frame of {} bytes moved slots {moved:?}",
        frame.len()
    );
    let i = moved[0];
    assert_eq!(p1[i] - p0[i], 1, "counted more than once");
    assert!(m1 - m0 <= 1);
    (
        FAMILY_LABELS[i / 4],
        PROTOCOL_LABELS[i % 4],
        m1 > m0,
        b1[i] - b0[i],
    )
}

/// The low-ifindex table has a row per CPU, indexed by the CPU id the
/// program reads: frames run on CPU k land in row k alone, and the sum is
/// what the collector reports.
#[test]
fn each_cpu_counts_in_its_own_row() {
    let mut object = load();
    let xdp =
        PacketCounter::load(&mut object, 0, None).expect("the verifier accepts xdp_packet_counter");
    let frame = ethernet(ETH_P_IP, &[], &ipv4(IPPROTO_UDP, &[], 0, &udp(8)));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let before = xdp
        .maps()
        .low_ifindex_counters_by_cpu(TEST_RUN_IFINDEX)
        .unwrap();
    assert!(
        before.len() >= cpus,
        "{} rows for {cpus} CPUs",
        before.len()
    );
    // CPU k runs k + 1 frames, so a row that took another's frames shows.
    let mut online = Vec::new();
    for cpu in 0..before.len() {
        if !pin_this_thread_to(cpu) {
            continue; // possible but not online
        }
        let repeat = cpu as u32 + 1;
        xdp.test_run(&object, &frame, repeat)
            .expect("BPF_PROG_TEST_RUN");
        online.push(cpu);
    }
    let after = xdp
        .maps()
        .low_ifindex_counters_by_cpu(TEST_RUN_IFINDEX)
        .unwrap();
    assert!(online.len() >= 2 || cpus == 1, "ran on CPUs {online:?}");
    for (cpu, (a, b)) in after.iter().zip(&before).enumerate() {
        let gained = a.since(b);
        let expected = if online.contains(&cpu) {
            cpu as u64 + 1
        } else {
            0
        };
        assert_eq!(gained.packets[0][1], expected, "CPU {cpu}: ipv4/udp frames");
        assert_eq!(
            gained.bytes[0][1],
            expected * frame.len() as u64,
            "CPU {cpu}: bytes"
        );
    }
    let total: u64 = online.iter().map(|&cpu| cpu as u64 + 1).sum();
    let sum = xdp.maps().low_ifindex_counters(TEST_RUN_IFINDEX).unwrap();
    let sum_before = before.iter().map(|c| c.packets[0][1]).sum::<u64>();
    assert_eq!(sum.packets[0][1] - sum_before, total);
}

/// Moves the calling thread to `cpu`; false when the kernel refuses (the
/// CPU is not online). BPF_PROG_TEST_RUN runs on the caller's CPU.
fn pin_this_thread_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by reference for
    // this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn load() -> LoadedObject {
    require_root();
    load_default_object().expect("loading the embedded eBPF object")
}

#[test]
fn every_frame_kind_lands_in_its_slot() {
    let mut object = load();
    let xdp =
        PacketCounter::load(&mut object, 0, None).expect("the verifier accepts xdp_packet_counter");
    for case in cases() {
        let got = classify(&object, &xdp, &case.frame);
        assert_eq!(
            got,
            (
                case.family,
                case.protocol,
                case.malformed,
                case.frame.len() as u64
            ),
            "{}: (family, protocol, malformed, bytes)",
            case.what
        );
    }
}

/// Every prefix of a deep frame: malformed exactly while some header it
/// needs is cut, and classified like the whole frame once they are all in.
#[test]
fn every_truncation_is_passed_and_counted_once() {
    let mut object = load();
    let xdp =
        PacketCounter::load(&mut object, 0, None).expect("the verifier accepts xdp_packet_counter");
    let deep = [
        (
            "QinQ ipv4 with options, tcp",
            ethernet(ETH_P_IP, &[1, 2], &ipv4(IPPROTO_TCP, &[1; 8], 0, &tcp(16))),
            14 + 8 + 28 + 20,
            ("ipv4", "tcp"),
        ),
        (
            "ipv6 hop-by-hop, fragment, destination options, udp",
            ethernet(
                ETH_P_IPV6,
                &[7],
                &ipv6(
                    IPPROTO_UDP,
                    &[
                        (IPPROTO_HOPOPTS, ipv6_options_header(1)),
                        (IPPROTO_FRAGMENT, ipv6_fragment_header(0, true)),
                        (IPPROTO_DSTOPTS, ipv6_options_header(0)),
                    ],
                    &udp(12),
                ),
            ),
            14 + 4 + 40 + 16 + 8 + 8 + 8,
            ("ipv6", "udp"),
        ),
        (
            "ipv6 icmpv6",
            ethernet(
                ETH_P_IPV6,
                &[],
                &ipv6(IPPROTO_ICMPV6, &[], &icmp_echo(128, 8)),
            ),
            14 + 40 + 4,
            ("ipv6", "icmp"),
        ),
    ];
    for (what, frame, headers_len, (family, protocol)) in deep {
        // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
        for len in 14..=frame.len() {
            let (f, p, malformed, bytes) = classify(&object, &xdp, &frame[..len]);
            assert_eq!(bytes, len as u64, "{what} cut at {len}");
            assert_eq!(
                malformed,
                len < headers_len,
                "{what} cut at {len}: malformed"
            );
            if len >= headers_len {
                assert_eq!((f, p), (family, protocol), "{what} cut at {len}");
            }
        }
    }
}
