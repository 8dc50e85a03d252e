//! The `/metrics` exposition, shared by all signals: builders over the
//! `prometheus` crate's data model ([`family`]), native histograms kept
//! beside it ([`native`]), the text format 0.0.4 (the `prometheus` crate's
//! encoder) and the protobuf format ([`protobuf`]), chosen by the scrape's
//! `Accept` header ([`Format::negotiate`]). Each source builds its own
//! families from its section of the snapshot
//! (`crate::sources::snapshot::Section`); nothing here keeps state.

pub mod family;
pub mod native;
pub mod process;
pub mod protobuf;
pub mod self_metrics;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

pub use native::{NativeHistogram, NativeHistograms};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One scrape: `families` sorted by name. Families without samples are
/// left out (the format has no way to say "no series yet"; the encoder
/// refuses them).
pub fn render(families: Vec<MetricFamily>) -> Result<String, prometheus::Error> {
    let families = prepare(families);
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The same scrape in the protobuf format, histograms with their native
/// buckets from `native`.
pub fn render_protobuf(families: Vec<MetricFamily>, native: &NativeHistograms) -> Vec<u8> {
    let families = prepare(families);
    let mut out = Vec::with_capacity(16 * 1024);
    protobuf::encode(&families, native, &mut out);
    out
}

fn prepare(mut families: Vec<MetricFamily>) -> Vec<MetricFamily> {
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    families
}

/// The two expositions `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Protobuf,
}

impl Format {
    /// The format a scrape asks for: protobuf when its `Accept` header
    /// lists `application/vnd.google.protobuf` with
    /// `proto=io.prometheus.client.MetricFamily` and
    /// `encoding=delimited`, at a quality (`q`, default 1) above 0 and no
    /// lower than that of any text type it accepts (`text/plain`,
    /// `text/*`, `*/*`); text otherwise, also without a header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut protobuf_q: f64 = 0.0;
        let mut text_q: f64 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0;
            let mut proto = None;
            let mut encoding = None;
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "proto" => proto = Some(value.to_owned()),
                    "encoding" => encoding = Some(value.to_ascii_lowercase()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/vnd.google.protobuf"
                    if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                        && encoding.as_deref() == Some("delimited") =>
                {
                    protobuf_q = protobuf_q.max(q);
                }
                "text/plain" | "text/*" | "*/*" => text_q = text_q.max(q),
                _ => {}
            }
        }
        if protobuf_q > 0.0 && protobuf_q >= text_q {
            Format::Protobuf
        } else {
            Format::Text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_protobuf_only_when_asked_for() {
        // What Prometheus 2.42 sends with --enable-feature=native-histograms,
        // and without it.
        let prometheus_native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        let prometheus_text = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus_native)), Format::Protobuf);
        assert_eq!(Format::negotiate(Some(prometheus_text)), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some(
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            )),
            Format::Protobuf
        );
        // The wrong message, the wrong encoding, q=0, or text preferred.
        for accept in [
            "application/vnd.google.protobuf;proto=io.prometheus.client.Other;encoding=delimited",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.2,text/plain;q=0.9",
        ] {
            assert_eq!(Format::negotiate(Some(accept)), Format::Text, "{accept}");
        }
    }
}
