//! The Prometheus protobuf exposition
//! (`application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//! encoding=delimited`): each `MetricFamily` message preceded by its length
//! as a varint. The `prometheus` crate (without its `protobuf` feature) has
//! no encoder for it, and its model has no native-histogram fields, so
//! this module writes the wire format itself, only the fields telemetryd
//! uses, from the same `MetricFamily` values the text encoder takes plus
//! the native histograms kept beside them ([`NativeHistograms`]).
//!
//! Field numbers are those of Prometheus' own copy of the schema,
//! `prompb/io/prometheus/client/metrics.proto` in prometheus/prometheus
//! (the same numbers as client_model's `io/prometheus/client/metrics.proto`):
//!
//! ```text
//! MetricFamily { string name = 1; string help = 2; MetricType type = 3; repeated Metric metric = 4; }
//! Metric       { repeated LabelPair label = 1; Gauge gauge = 2; Counter counter = 3;
//!                Summary summary = 4; Untyped untyped = 5; Histogram histogram = 7;
//!                int64 timestamp_ms = 6; }
//! LabelPair    { string name = 1; string value = 2; }
//! Gauge, Counter, Untyped { double value = 1; }
//! Summary      { uint64 sample_count = 1; double sample_sum = 2; repeated Quantile quantile = 3; }
//! Quantile     { double quantile = 1; double value = 2; }
//! Histogram    { uint64 sample_count = 1; double sample_sum = 2; repeated Bucket bucket = 3;
//!                sint32 schema = 5; double zero_threshold = 6; uint64 zero_count = 7;
//!                repeated BucketSpan positive_span = 12; repeated sint64 positive_delta = 13; }
//! Bucket       { uint64 cumulative_count = 1; double upper_bound = 2; }
//! BucketSpan   { sint32 offset = 1; uint32 length = 2; }
//! ```
//!
//! Scalars are written even when zero (as proto2 `optional` fields that are
//! set); repeated scalars are packed (every protobuf parser accepts both).

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

use super::native::{NativeHistogram, NativeHistograms, SCHEMA};

pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

/// Encodes `families` (already sorted, none empty) in the delimited
/// protobuf format, each histogram with its native buckets when `native`
/// has them.
pub fn encode(families: &[MetricFamily], native: &NativeHistograms, out: &mut Vec<u8>) {
    let mut message = Vec::with_capacity(4096);
    for family in families {
        message.clear();
        encode_family(family, native, &mut message);
        put_varint(out, message.len() as u64);
        out.extend_from_slice(&message);
    }
}

fn encode_family(family: &MetricFamily, native: &NativeHistograms, out: &mut Vec<u8>) {
    put_string(out, 1, family.name());
    put_string(out, 2, family.help());
    let kind = family.get_field_type();
    put_uint(out, 3, metric_type_number(kind));
    let mut scratch = Vec::with_capacity(256);
    for metric in family.get_metric() {
        scratch.clear();
        encode_metric(
            metric,
            kind,
            native.get(family.name(), metric.get_label()),
            &mut scratch,
        );
        put_bytes(out, 4, &scratch);
    }
}

/// The `MetricType` enum's numbers.
fn metric_type_number(kind: MetricType) -> u64 {
    match kind {
        MetricType::COUNTER => 0,
        MetricType::GAUGE => 1,
        MetricType::SUMMARY => 2,
        MetricType::UNTYPED => 3,
        MetricType::HISTOGRAM => 4,
    }
}

fn encode_metric(
    metric: &Metric,
    kind: MetricType,
    native: Option<&NativeHistogram>,
    out: &mut Vec<u8>,
) {
    let mut nested = Vec::with_capacity(64);
    for label in metric.get_label() {
        nested.clear();
        encode_label(label, &mut nested);
        put_bytes(out, 1, &nested);
    }
    nested.clear();
    match kind {
        MetricType::COUNTER => {
            put_double(&mut nested, 1, metric.get_counter().get_value());
            put_bytes(out, 3, &nested);
        }
        MetricType::GAUGE => {
            put_double(&mut nested, 1, metric.get_gauge().get_value());
            put_bytes(out, 2, &nested);
        }
        MetricType::UNTYPED => {
            #[allow(
                deprecated,
                reason = "the crate keeps `Untyped` for protobuf, which this is"
            )]
            put_double(&mut nested, 1, metric.get_untyped().get_value());
            put_bytes(out, 5, &nested);
        }
        MetricType::SUMMARY => {
            let summary = metric.get_summary();
            put_uint(&mut nested, 1, summary.sample_count());
            put_double(&mut nested, 2, summary.sample_sum());
            let mut quantile = Vec::with_capacity(18);
            for q in summary.get_quantile() {
                quantile.clear();
                put_double(&mut quantile, 1, q.quantile());
                put_double(&mut quantile, 2, q.value());
                put_bytes(&mut nested, 3, &quantile);
            }
            put_bytes(out, 4, &nested);
        }
        MetricType::HISTOGRAM => {
            encode_histogram(metric, native, &mut nested);
            put_bytes(out, 7, &nested);
        }
    }
    if metric.timestamp_ms() != 0 {
        put_uint(out, 6, metric.timestamp_ms() as u64);
    }
}

fn encode_label(label: &LabelPair, out: &mut Vec<u8>) {
    put_string(out, 1, label.name());
    put_string(out, 2, label.value());
}

fn encode_histogram(metric: &Metric, native: Option<&NativeHistogram>, out: &mut Vec<u8>) {
    let histogram = metric.get_histogram();
    put_uint(out, 1, histogram.get_sample_count());
    put_double(out, 2, histogram.get_sample_sum());
    let mut bucket = Vec::with_capacity(16);
    for b in histogram.get_bucket() {
        bucket.clear();
        put_uint(&mut bucket, 1, b.cumulative_count());
        put_double(&mut bucket, 2, b.upper_bound());
        put_bytes(out, 3, &bucket);
    }
    let Some(native) = native else {
        return;
    };
    put_uint(out, 5, zigzag(i64::from(SCHEMA)));
    put_double(out, 6, native.zero_threshold);
    put_uint(out, 7, native.zero_count);
    let (mut spans, deltas) = native.spans_and_deltas();
    if spans.is_empty() {
        // What metrics.proto asks of a native histogram with no buckets
        // yet: a no-op span, so that it is never taken for a classic one.
        spans.push(super::native::Span {
            offset: 0,
            length: 0,
        });
    }
    let mut span = Vec::with_capacity(12);
    for s in &spans {
        span.clear();
        put_uint(&mut span, 1, zigzag(i64::from(s.offset)));
        put_uint(&mut span, 2, u64::from(s.length));
        put_bytes(out, 12, &span);
    }
    if !deltas.is_empty() {
        let mut packed = Vec::with_capacity(deltas.len() * 2);
        for d in deltas {
            put_varint(&mut packed, zigzag(d));
        }
        put_bytes(out, 13, &packed);
    }
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// sint32/sint64: zigzag, so that small negative numbers stay short.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn put_uint(out: &mut Vec<u8>, field: u32, value: u64) {
    put_key(out, field, VARINT);
    put_varint(out, value);
}

fn put_double(out: &mut Vec<u8>, field: u32, value: f64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LENGTH_DELIMITED);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_string(out: &mut Vec<u8>, field: u32, text: &str) {
    put_bytes(out, field, text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::family::{counter, gauge, histogram, HistogramSeries, Series};

    /// A small protobuf reader for the tests: (field, value) pairs of one
    /// message, checked against the encoder independently of it.
    #[derive(Debug, PartialEq)]
    enum Value<'a> {
        Varint(u64),
        Fixed64(u64),
        Bytes(&'a [u8]),
    }

    fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let b = bytes[*at];
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return value;
            }
            shift += 7;
            assert!(shift < 64, "varint too long");
        }
    }

    fn fields(bytes: &[u8]) -> Vec<(u32, Value<'_>)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let key = read_varint(bytes, &mut at);
            let field = (key >> 3) as u32;
            let value = match key & 7 {
                0 => Value::Varint(read_varint(bytes, &mut at)),
                1 => {
                    let v = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
                    at += 8;
                    Value::Fixed64(v)
                }
                2 => {
                    let len = read_varint(bytes, &mut at) as usize;
                    let v = &bytes[at..at + len];
                    at += len;
                    Value::Bytes(v)
                }
                other => panic!("wire type {other}"),
            };
            out.push((field, value));
        }
        out
    }

    fn delimited(bytes: &[u8]) -> Vec<&[u8]> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let len = read_varint(bytes, &mut at) as usize;
            out.push(&bytes[at..at + len]);
            at += len;
        }
        out
    }

    fn bytes_of<'a>(fields: &[(u32, Value<'a>)], field: u32) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| match v {
                Value::Bytes(b) => *b,
                other => panic!("field {field} is {other:?}"),
            })
            .collect()
    }

    fn unzigzag(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    #[test]
    fn varints_and_zigzag_match_the_protobuf_spec() {
        let mut out = Vec::new();
        put_varint(&mut out, 1);
        put_varint(&mut out, 150);
        put_varint(&mut out, u64::MAX);
        assert_eq!(out[..3], [0x01, 0x96, 0x01], "150 is 96 01 (protobuf docs)");
        assert_eq!(out.len(), 3 + 10);
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(-2), 3);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
        for v in [-30i64, -1, 0, 5, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn counters_and_gauges_are_delimited_messages_with_labels() {
        let families = vec![
            counter(
                "a_total",
                "help a",
                vec![
                    Series::new(&[("x", "1")], 3.0),
                    Series::new(&[("x", "2")], 0.0),
                ],
            ),
            gauge("b", "help b", vec![Series::new::<&str, &str>(&[], 1.5)]),
        ];
        let mut out = Vec::new();
        encode(&families, &NativeHistograms::default(), &mut out);
        let messages = delimited(&out);
        assert_eq!(messages.len(), 2);

        let a = fields(messages[0]);
        assert_eq!(a[0], (1, Value::Bytes(b"a_total")));
        assert_eq!(a[1], (2, Value::Bytes(b"help a")));
        assert_eq!(a[2], (3, Value::Varint(0)), "COUNTER");
        let metrics = bytes_of(&a, 4);
        assert_eq!(metrics.len(), 2);
        let m = fields(metrics[0]);
        let label = fields(bytes_of(&m, 1)[0]);
        assert_eq!(label, [(1, Value::Bytes(b"x")), (2, Value::Bytes(b"1"))]);
        let c = fields(bytes_of(&m, 3)[0]);
        assert_eq!(c, [(1, Value::Fixed64(3.0f64.to_bits()))]);
        let c = fields(bytes_of(&fields(metrics[1]), 3)[0]);
        assert_eq!(c, [(1, Value::Fixed64(0))], "a zero value is still written");

        let b = fields(messages[1]);
        assert_eq!(b[2], (3, Value::Varint(1)), "GAUGE");
        let m = fields(bytes_of(&b, 4)[0]);
        assert!(bytes_of(&m, 1).is_empty(), "no labels");
        let g = fields(bytes_of(&m, 2)[0]);
        assert_eq!(g, [(1, Value::Fixed64(1.5f64.to_bits()))]);
    }

    #[test]
    fn histograms_carry_classic_and_native_buckets() {
        let families = vec![histogram(
            "h_seconds",
            "h",
            vec![
                HistogramSeries::new(
                    &[("syscall", "read")],
                    vec![(0.25, 2), (0.5, 2), (1.0, 5)],
                    3.5,
                    6,
                ),
                HistogramSeries::new(&[("syscall", "write")], vec![(0.25, 0)], 0.0, 0),
            ],
        )];
        let mut native = NativeHistograms::default();
        native.insert(
            "h_seconds",
            &[("syscall", "read")],
            NativeHistogram {
                zero_threshold: 2f64.powi(-30),
                zero_count: 1,
                buckets: vec![(-3, 1), (-2, 1), (0, 3)],
            },
        );
        native.insert(
            "h_seconds",
            &[("syscall", "write")],
            NativeHistogram {
                zero_threshold: 2f64.powi(-30),
                ..Default::default()
            },
        );
        let mut out = Vec::new();
        encode(&families, &native, &mut out);
        let family = fields(delimited(&out)[0]);
        assert_eq!(family[2], (3, Value::Varint(4)), "HISTOGRAM");
        let metrics = bytes_of(&family, 4);
        let read = fields(metrics[0]);
        let h = fields(bytes_of(&read, 7)[0]);
        assert_eq!(h[0], (1, Value::Varint(6)), "sample_count");
        assert_eq!(h[1], (2, Value::Fixed64(3.5f64.to_bits())), "sample_sum");
        let buckets: Vec<_> = bytes_of(&h, 3).into_iter().map(fields).collect();
        assert_eq!(
            buckets,
            [
                vec![
                    (1, Value::Varint(2)),
                    (2, Value::Fixed64(0.25f64.to_bits()))
                ],
                vec![(1, Value::Varint(2)), (2, Value::Fixed64(0.5f64.to_bits()))],
                vec![(1, Value::Varint(5)), (2, Value::Fixed64(1f64.to_bits()))],
            ]
        );
        let scalar = |field| {
            h.iter()
                .find(|(f, _)| *f == field)
                .map(|(_, v)| match v {
                    Value::Varint(v) | Value::Fixed64(v) => *v,
                    Value::Bytes(_) => panic!("field {field}"),
                })
                .unwrap()
        };
        assert_eq!(unzigzag(scalar(5)), 0, "schema 0");
        assert_eq!(f64::from_bits(scalar(6)), 2f64.powi(-30), "zero_threshold");
        assert_eq!(scalar(7), 1, "zero_count");
        let spans: Vec<(i64, u64)> = bytes_of(&h, 12)
            .into_iter()
            .map(|s| match fields(s)[..] {
                [(1, Value::Varint(o)), (2, Value::Varint(l))] => (unzigzag(o), l),
                ref other => panic!("span {other:?}"),
            })
            .collect();
        assert_eq!(spans, [(-3, 2), (1, 1)]);
        let packed = bytes_of(&h, 13);
        assert_eq!(packed.len(), 1, "one packed run of deltas");
        let mut at = 0;
        let mut deltas = Vec::new();
        while at < packed[0].len() {
            deltas.push(unzigzag(read_varint(packed[0], &mut at)));
        }
        assert_eq!(deltas, [1, 0, 2]);

        let write = fields(metrics[1]);
        let h = fields(bytes_of(&write, 7)[0]);
        let spans = bytes_of(&h, 12);
        assert_eq!(spans.len(), 1);
        assert_eq!(
            fields(spans[0]),
            [(1, Value::Varint(0)), (2, Value::Varint(0))],
            "a no-op span for a native histogram with no buckets yet"
        );
        assert!(bytes_of(&h, 13).is_empty());
    }

    #[test]
    fn histograms_without_native_buckets_are_classic_only() {
        let families = vec![histogram(
            "h",
            "h",
            vec![HistogramSeries::new::<&str, &str>(
                &[],
                vec![(1.0, 1)],
                0.5,
                1,
            )],
        )];
        let mut out = Vec::new();
        encode(&families, &NativeHistograms::default(), &mut out);
        let family = fields(delimited(&out)[0]);
        let h = fields(bytes_of(&fields(bytes_of(&family, 4)[0]), 7)[0]);
        let numbers: Vec<u32> = h.iter().map(|(f, _)| *f).collect();
        assert_eq!(numbers, [1, 2, 3]);
    }
}
