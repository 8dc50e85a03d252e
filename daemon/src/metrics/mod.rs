//! The Prometheus text format (0.0.4): builders over the `prometheus`
//! crate's data model ([`family`]) and the encoder. Each source builds its
//! own families from its section of the snapshot
//! (`crate::sources::snapshot::Section`); nothing here keeps state.

pub mod family;
pub mod process;
pub mod self_metrics;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One scrape: `families` sorted by name. Families without samples are
/// left out (the format has no way to say "no series yet"; the encoder
/// refuses them).
pub fn render(mut families: Vec<MetricFamily>) -> Result<String, prometheus::Error> {
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
