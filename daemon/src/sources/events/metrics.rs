//! Families of the packet events and top talkers, from the snapshot.

use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

use super::stats::{DeliveryLatency, EventStats, DELIVERY_BUCKETS};
use crate::metrics::family::{counter, gauge, Series};
use crate::metrics::{NativeHistogram, NativeHistograms};
use crate::sources::cardinality::OTHER;
use crate::sources::snapshot::{ProgramAttachment, ProgramErrorCount, Section};

/// Every family, at zero before the first event. Its program is the XDP
/// counter's, whose section reports it.
impl Section for EventStats {
    fn families(&self) -> Vec<MetricFamily> {
        families(self)
    }

    fn attachments(&self) -> Vec<ProgramAttachment> {
        Vec::new()
    }

    fn program_errors(&self) -> Vec<ProgramErrorCount> {
        Vec::new()
    }

    fn folded_series(&self) -> Vec<(&'static str, u64)> {
        let peers = self.top_talkers.folded_peers;
        vec![
            ("telemetryd_top_talker_packets", peers),
            ("telemetryd_top_talker_bytes", peers),
        ]
    }

    fn native_histograms(&self, into: &mut NativeHistograms) {
        into.insert(
            DELIVERY_FAMILY,
            &[("source", self.source.as_str())],
            NativeHistogram::from_seconds_buckets(&self.delivery.native),
        );
    }
}

const DELIVERY_FAMILY: &str = "telemetryd_event_delivery_seconds";

fn families(events: &EventStats) -> Vec<MetricFamily> {
    let source = events.source.as_str();
    let mut families = vec![
        counter(
            "telemetryd_events_total",
            "Events delivered to user space, by ring buffer.",
            vec![Series::new(&[("source", source)], events.delivered as f64)],
        ),
        counter(
            "telemetryd_events_lost_total",
            "Events lost: side=kernel when the ring buffer was full, side=user when user space received but could not decode them.",
            vec![
                Series::new(&[("source", source), ("side", "kernel")], events.lost_kernel as f64),
                Series::new(&[("source", source), ("side", "user")], events.lost_user as f64),
            ],
        ),
        counter(
            "telemetryd_events_sampled_total",
            "Frames the XDP sampler picked for an event (delivered + lost + still queued).",
            vec![Series::new(&[("source", source)], events.sampled as f64)],
        ),
        delivery_histogram(
            DELIVERY_FAMILY,
            "Time from the kernel timestamp of an event to its receipt in user space.",
            &[("source", source)],
            &events.delivery,
        ),
        gauge(
            "telemetryd_top_talkers_tracked",
            "Peers the top-talkers structure tracks now; never above telemetryd_top_talkers_capacity.",
            vec![Series::new(&[("source", source)], events.top_talkers_tracked as f64)],
        ),
        gauge(
            "telemetryd_top_talkers_capacity",
            "Most peers the top-talkers structure can track (its memory bound).",
            vec![Series::new(&[("source", source)], events.top_talkers_bound as f64)],
        ),
    ];
    let top = &events.top_talkers;
    families.push(gauge(
        "telemetryd_top_talkers_samples",
        "Sampled packets in the top-talkers window, over all peers (the summary's samples).",
        vec![Series::new(
            &[("source", source)],
            top.sampled_packets as f64,
        )],
    ));
    families.push(gauge(
        "telemetryd_top_talkers_error_bound_packets",
        "The top-talkers summary's error bound (x sample rate): no count is off by more, no peer left out sent more.",
        vec![Series::new(&[("source", source)], top.error_bound)],
    ));
    let (mut packets, mut packets_min, mut packets_max) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = Vec::new();
    for peer in &top.peers {
        let labels = [("peer", peer.peer.as_str()), ("direction", peer.direction)];
        packets.push(Series::new(&labels, peer.packets));
        packets_min.push(Series::new(&labels, peer.packets_min));
        packets_max.push(Series::new(&labels, peer.packets_max));
        bytes.push(Series::new(&labels, peer.bytes));
    }
    // Everyone outside the top K, from the start (0 before any event).
    let other = [("peer", OTHER), ("direction", "rx")];
    packets.push(Series::new(&other, events.top_talkers.other_packets));
    bytes.push(Series::new(&other, events.top_talkers.other_bytes));
    families.push(gauge(
        "telemetryd_top_talker_packets",
        "Estimated packets from each of the top K heavy hitters over the top-talkers window (sampled count x sample rate); peer=\"other\": every other peer.",
        packets,
    ));
    families.push(gauge(
        "telemetryd_top_talker_packets_min",
        "Packets each top-K heavy hitter sent at least (guaranteed: count - error, x sample rate); above telemetryd_top_talkers_error_bound_packets.",
        packets_min,
    ));
    families.push(gauge(
        "telemetryd_top_talker_packets_max",
        "Packets each top-K heavy hitter sent at most (its count plus the error of the sub-windows that do not track it, x sample rate).",
        packets_max,
    ));
    families.push(gauge(
        "telemetryd_top_talker_bytes",
        "Estimated bytes (L2 frame length) from each of the top K peers over the top-talkers window; peer=\"other\": every other peer.",
        bytes,
    ));
    families
}

/// One histogram series with cumulative buckets over [`DELIVERY_BUCKETS`].
fn delivery_histogram(
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    latency: &DeliveryLatency,
) -> MetricFamily {
    let mut histogram = Histogram::default();
    let mut cumulative = 0;
    let buckets = DELIVERY_BUCKETS
        .iter()
        .zip(latency.counts.iter())
        .map(|(bound, n)| {
            cumulative += n;
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(latency.count);
    histogram.set_sample_sum(latency.sum_seconds);
    let mut metric = Metric::from_label(Series::new(labels, 0.0).into_labels());
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(vec![metric]);
    family
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::events::TopTalkers;
    use crate::sources::snapshot::Snapshot;

    #[test]
    fn event_series_exist_from_the_start_and_render_exactly() {
        let mut snapshot = Snapshot {
            events: Some(EventStats {
                source: "packet_events".into(),
                top_talkers_bound: 384,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = snapshot.render(Vec::new()).unwrap();
        for line in [
            r#"telemetryd_events_total{source="packet_events"} 0"#,
            r#"telemetryd_events_lost_total{side="kernel",source="packet_events"} 0"#,
            r#"telemetryd_events_lost_total{side="user",source="packet_events"} 0"#,
            r#"telemetryd_event_delivery_seconds_count{source="packet_events"} 0"#,
            r#"telemetryd_event_delivery_seconds_bucket{source="packet_events",le="+Inf"} 0"#,
            r#"telemetryd_top_talkers_capacity{source="packet_events"} 384"#,
            r#"telemetryd_top_talker_packets{direction="rx",peer="other"} 0"#,
            r#"telemetryd_series_folded{family="telemetryd_top_talker_packets"} 0"#,
            "# TYPE telemetryd_event_delivery_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }

        let events = snapshot.events.as_mut().unwrap();
        events.delivered = 3;
        events.delivery.record(0.0003);
        events.delivery.record(0.002);
        events.delivery.record(7.0);
        let mut top = TopTalkers::new(1, std::time::Duration::from_secs(60), 10);
        top.record(1, "10.0.0.2".parse().unwrap(), 100);
        top.record(1, "10.0.0.2".parse().unwrap(), 100);
        top.record(1, "10.0.0.3".parse().unwrap(), 60);
        events.top_talkers = top.report(1);
        let text = snapshot.render(Vec::new()).unwrap();
        for line in [
            r#"telemetryd_events_total{source="packet_events"} 3"#,
            r#"telemetryd_event_delivery_seconds_bucket{source="packet_events",le="0.00025"} 0"#,
            r#"telemetryd_event_delivery_seconds_bucket{source="packet_events",le="0.0005"} 1"#,
            r#"telemetryd_event_delivery_seconds_bucket{source="packet_events",le="0.0025"} 2"#,
            r#"telemetryd_event_delivery_seconds_bucket{source="packet_events",le="1"} 2"#,
            r#"telemetryd_event_delivery_seconds_bucket{source="packet_events",le="+Inf"} 3"#,
            r#"telemetryd_top_talker_packets{direction="rx",peer="10.0.0.2"} 20"#,
            r#"telemetryd_top_talker_bytes{direction="rx",peer="10.0.0.2"} 2000"#,
            r#"telemetryd_top_talker_packets_min{direction="rx",peer="10.0.0.2"} 20"#,
            r#"telemetryd_top_talker_packets_max{direction="rx",peer="10.0.0.2"} 20"#,
            r#"telemetryd_top_talker_packets{direction="rx",peer="other"} 10"#,
            r#"telemetryd_top_talker_bytes{direction="rx",peer="other"} 600"#,
            r#"telemetryd_series_folded{family="telemetryd_top_talker_packets"} 1"#,
            r#"telemetryd_top_talkers_samples{source="packet_events"} 3"#,
            r#"telemetryd_top_talkers_error_bound_packets{source="packet_events"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // The native histogram: 0.3 ms in (2^-12, 2^-11] s, 2 ms in
        // (2^-9, 2^-8] s, 7 s in (4, 8] s.
        let native = snapshot.native_histograms();
        let labels = Series::new(&[("source", "packet_events")], 0.0).into_labels();
        let h = native.get(DELIVERY_FAMILY, &labels).unwrap();
        assert_eq!(h.buckets, [(-11, 1), (-8, 1), (3, 1)]);
        assert_eq!(h.zero_count, 0);
    }
}
