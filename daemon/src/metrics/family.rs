//! Small builders over the `prometheus` crate's data model.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// One sample: its labels and value.
pub struct Sample {
    labels: Vec<LabelPair>,
    value: f64,
}

impl Sample {
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

pub fn counter(name: &str, help: &str, samples: Vec<Sample>) -> MetricFamily {
    family(name, help, MetricType::COUNTER, samples, |metric, value| {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    })
}

pub fn gauge(name: &str, help: &str, samples: Vec<Sample>) -> MetricFamily {
    family(name, help, MetricType::GAUGE, samples, |metric, value| {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    })
}

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<Sample>,
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
