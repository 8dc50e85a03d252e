//! Native (sparse, exponential) histograms of schema 0, which the
//! `prometheus` crate's data model cannot hold: kept beside the families,
//! keyed by family name and labels, and written by the protobuf encoder
//! ([`super::protobuf`]) into the same `Histogram` message as the classic
//! buckets. The text format has no native histograms; it ignores them.

use std::collections::HashMap;

use prometheus::proto::LabelPair;

/// One native histogram of schema 0: bucket `k` holds the observations in
/// `(2^(k-1), 2^k]` (in the metric's unit), the zero bucket those in
/// `[0, zero_threshold]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeHistogram {
    pub zero_threshold: f64,
    pub zero_count: u64,
    /// (index `k`, count) of the non-empty buckets, `k` increasing.
    pub buckets: Vec<(i32, u64)>,
}

/// The schema of every native histogram telemetryd writes: base 2.
pub const SCHEMA: i32 = 0;

/// One run of consecutive buckets: `offset` empty buckets after the
/// previous span (for the first span: the index of its first bucket), then
/// `length` buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: i32,
    pub length: u32,
}

impl NativeHistogram {
    /// The native histogram of counts in the kernel's layout
    /// (`telemetryd_common::syscalls::bucket_index`: bucket `i` holds
    /// `(2^(i-31), 2^(i-30)]` s): bucket `i >= 1` is native bucket `i - 30`
    /// count for count, bucket 0 (`[0, 2^-30]` s) the zero bucket.
    pub fn from_seconds_buckets(buckets: &[u64]) -> Self {
        use telemetryd_common::syscalls as sc;
        Self {
            zero_threshold: sc::ZERO_THRESHOLD_SECONDS,
            zero_count: buckets.first().copied().unwrap_or(0),
            buckets: buckets
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, &n)| n != 0)
                .map(|(i, &n)| (sc::native_bucket_index(i), n))
                .collect(),
        }
    }

    /// The buckets as the exposition carries them: spans of consecutive
    /// indexes, and each bucket's count as the difference from the bucket
    /// before it (the first one's from 0).
    pub fn spans_and_deltas(&self) -> (Vec<Span>, Vec<i64>) {
        let mut spans: Vec<Span> = Vec::new();
        let mut deltas = Vec::with_capacity(self.buckets.len());
        let mut previous: Option<i32> = None;
        let mut previous_count = 0i64;
        for &(index, count) in &self.buckets {
            match previous {
                Some(p) if index == p + 1 => {
                    if let Some(span) = spans.last_mut() {
                        span.length += 1;
                    }
                }
                Some(p) => spans.push(Span {
                    offset: index - p - 1,
                    length: 1,
                }),
                None => spans.push(Span {
                    offset: index,
                    length: 1,
                }),
            }
            let count = count as i64;
            deltas.push(count - previous_count);
            previous_count = count;
            previous = Some(index);
        }
        (spans, deltas)
    }
}

/// The native histograms of one scrape, by family name and labels (sorted
/// by name, as `family::Series` sorts them).
#[derive(Clone, Debug, Default)]
pub struct NativeHistograms {
    by_series: HashMap<String, HashMap<Vec<(String, String)>, NativeHistogram>>,
}

impl NativeHistograms {
    pub fn insert<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        family: &str,
        labels: &[(K, V)],
        histogram: NativeHistogram,
    ) {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        key.sort();
        self.by_series
            .entry(family.to_owned())
            .or_default()
            .insert(key, histogram);
    }

    /// The native histogram of the series of `family` with `labels`.
    pub fn get(&self, family: &str, labels: &[LabelPair]) -> Option<&NativeHistogram> {
        let series = self.by_series.get(family)?;
        let key: Vec<(String, String)> = labels
            .iter()
            .map(|l| (l.name().to_owned(), l.value().to_owned()))
            .collect();
        series.get(&key)
    }

    pub fn len(&self) -> usize {
        self.by_series.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_group_consecutive_buckets_and_deltas_chain() {
        let h = NativeHistogram {
            zero_threshold: 0.0,
            zero_count: 0,
            buckets: vec![(-22, 5), (-21, 3), (-20, 3), (-5, 20), (2, 1)],
        };
        let (spans, deltas) = h.spans_and_deltas();
        assert_eq!(
            spans,
            [
                Span {
                    offset: -22,
                    length: 3
                },
                Span {
                    offset: 14,
                    length: 1
                },
                Span {
                    offset: 6,
                    length: 1
                },
            ]
        );
        assert_eq!(deltas, [5, -2, 0, 17, -19]);
        assert_eq!(
            NativeHistogram::default().spans_and_deltas(),
            (vec![], vec![])
        );
    }

    #[test]
    fn lookup_by_family_and_sorted_labels() {
        let mut all = NativeHistograms::default();
        let h = NativeHistogram {
            zero_threshold: 1.0,
            zero_count: 2,
            buckets: vec![(0, 1)],
        };
        all.insert("f", &[("syscall", "read"), ("a", "b")], h.clone());
        let labels = crate::metrics::family::Series::new(&[("a", "b"), ("syscall", "read")], 0.0)
            .into_labels();
        assert_eq!(all.get("f", &labels), Some(&h));
        assert_eq!(all.get("g", &labels), None);
        assert_eq!(all.get("f", &labels[..1]), None);
        assert_eq!(all.len(), 1);
    }
}
