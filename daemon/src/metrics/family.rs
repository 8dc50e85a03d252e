//! Small builders over the `prometheus` crate's data model.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// One series of a family: its labels and value.
pub struct Series {
    labels: Vec<LabelPair>,
    value: f64,
}

impl Series {
    pub fn new<K: AsRef<str>, V: AsRef<str>>(labels: &[(K, V)], value: f64) -> Self {
        let mut labels: Vec<LabelPair> = labels
            .iter()
            .map(|(k, v)| {
                let mut pair = LabelPair::default();
                pair.set_name(k.as_ref().to_owned());
                pair.set_value(v.as_ref().to_owned());
                pair
            })
            .collect();
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        Self { labels, value }
    }

    /// The sorted label pairs, for metric types built by hand.
    pub fn into_labels(self) -> Vec<LabelPair> {
        self.labels
    }
}

pub fn counter(name: &str, help: &str, samples: Vec<Series>) -> MetricFamily {
    family(name, help, MetricType::COUNTER, samples, |metric, value| {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    })
}

pub fn gauge(name: &str, help: &str, samples: Vec<Series>) -> MetricFamily {
    family(name, help, MetricType::GAUGE, samples, |metric, value| {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    })
}

/// One histogram series: its labels, finite buckets as (upper bound,
/// cumulative count) in increasing order, sum and count. The encoder adds
/// the `+Inf` bucket (= count).
pub struct HistogramSeries {
    labels: Vec<LabelPair>,
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl HistogramSeries {
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        labels: &[(K, V)],
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    ) -> Self {
        Self {
            labels: Series::new(labels, 0.0).labels,
            buckets,
            sum,
            count,
        }
    }
}

pub fn histogram(name: &str, help: &str, samples: Vec<HistogramSeries>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    let metrics = samples
        .into_iter()
        .map(|sample| {
            let mut metric = Metric::from_label(sample.labels);
            let mut h = Histogram::default();
            h.set_sample_count(sample.count);
            h.set_sample_sum(sample.sum);
            h.set_bucket(
                sample
                    .buckets
                    .into_iter()
                    .map(|(upper, cumulative)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(upper);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect(),
            );
            metric.set_histogram(h);
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
}

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<Series>,
    set_value: impl Fn(&mut Metric, f64),
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    let metrics = samples
        .into_iter()
        .map(|sample| {
            let mut metric = Metric::from_label(sample.labels);
            set_value(&mut metric, sample.value);
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
}
