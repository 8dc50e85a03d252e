//! RFC 3339 time stamps as telemetryd, Prometheus and Alertmanager write
//! them (`2026-12-01T20:30:00.123Z`, any number of fraction digits, `Z` or
//! a numeric offset).

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};

pub fn parse_rfc3339(s: &str) -> Result<SystemTime> {
    let bad = || format!("not an RFC 3339 time stamp: {s:?}");
    let (date, rest) = s.split_once('T').with_context(bad)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day)), None) =
        (d.next(), d.next(), d.next(), d.next())
    else {
        bail!(bad());
    };
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-']).with_context(bad)?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').with_context(bad)?;
        (
            c,
            sign * (h.parse::<i64>()? * 3600 + m.parse::<i64>()? * 60),
        )
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (Some(Ok(h)), Some(Ok(m)), Some(Ok(sec)), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        bail!(bad());
    };
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        digits.parse::<u32>().with_context(bad)? * 10u32.pow(9 - digits.len() as u32)
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + sec - offset_secs;
    if secs < 0 {
        bail!("{s:?} is before 1970");
    }
    Ok(SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds from `from` to `to`, negative when `to` is earlier.
pub fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_formats_of_the_lab_components() {
        let t = |s| {
            parse_rfc3339(s)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
        };
        assert_eq!(
            t("2023-11-14T22:13:20.000Z"),
            Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            t("2023-11-14T22:13:20Z"),
            Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            t("2023-11-14T22:13:20.123456789Z"),
            Duration::new(1_700_000_000, 123_456_789)
        );
        assert_eq!(
            t("2023-11-14T23:13:20.5+01:00"),
            Duration::new(1_700_000_000, 500_000_000)
        );
        assert_eq!(t("2024-02-29T00:00:00Z").as_secs(), 1_709_164_800);
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2023-11-14 22:13:20Z").is_err());
    }
}
