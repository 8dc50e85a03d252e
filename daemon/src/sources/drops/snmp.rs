//! The node's TCP MIB (`/proc/net/snmp`): segments sent and retransmitted.

use super::stats::TcpStats;

/// `Tcp: OutSegs` and `RetransSegs` of `/proc/net/snmp` (a header line of
/// names, then a line of values). The TCP MIB counts both IPv4 and IPv6.
pub fn fill_snmp(text: &str, tcp: &mut TcpStats) {
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return;
    };
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match name {
            "OutSegs" => tcp.segments_out = value,
            "RetransSegs" => tcp.retrans_segs = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcp_mib() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin ActiveOpens InSegs OutSegs RetransSegs InErrs\n\
                    Tcp: 1 200 7 1000 2345 67 0\n\
                    Udp: InDatagrams\nUdp: 5\n";
        let mut tcp = TcpStats::default();
        fill_snmp(text, &mut tcp);
        assert_eq!(tcp.segments_out, 2345);
        assert_eq!(tcp.retrans_segs, 67);
        let mut untouched = TcpStats::default();
        fill_snmp("Tcp: OutSegs\n", &mut untouched);
        assert_eq!(untouched, TcpStats::default());
    }

    #[test]
    fn reads_this_namespace() {
        let mut tcp = TcpStats::default();
        fill_snmp(
            &std::fs::read_to_string("/proc/net/snmp").unwrap(),
            &mut tcp,
        );
        // Any Linux host has sent some TCP segment by the time tests run
        // (this process's own namespace; 0 in a fresh one is possible but
        // not where cargo test runs).
        assert!(tcp.segments_out >= tcp.retrans_segs);
    }
}
