//! Durations in the configuration: a number and a unit, `"500ms"`, `"1.5s"`,
//! `"2m"`, exact to the nanosecond (no floating point), and [`text`], the
//! serde adapter every duration key uses.

use std::time::Duration;

/// Parses a duration written as a number and a unit: `"500ms"`, `"1s"`, `"1.5s"`, `"2m"`,
/// `"1h"` (units ns, us, ms, s, m, h).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("expected a number followed by a unit".to_owned());
    }
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err("missing unit (ns, us, ms, s, m, h)".to_owned()),
        _ => return Err(format!("unknown unit {unit:?} (ns, us, ms, s, m, h)")),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("{number:?} is not a number"));
    }
    if frac.len() > 9 {
        return Err("more than 9 decimal places".to_owned());
    }
    let too_large = || "too large".to_owned();
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_large())?
    };
    let nanos = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(frac_value * unit_ns / 10u128.pow(frac.len() as u32)))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration the way the config file does (`"1s"`, `"500ms"`, `"2m"`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (n, unit) = UNITS
        .iter()
        .find(|(n, _)| nanos.is_multiple_of(*n))
        .copied()
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / n)
}

/// Serde adapter for `Duration` as a string with a unit.
pub(crate) mod text {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    use super::{format_duration, parse_duration};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    const EXPECTED: &str = "a duration string such as \"500ms\", \"1s\", \"1.5s\", \"2m\", \"1h\"";

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(|why| {
                E::custom(format!(
                    "invalid duration {v:?}: {why}; expected {EXPECTED}"
                ))
            })
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {v}: write it as a string with a unit; expected {EXPECTED}"
            )))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_i64(v as i64)
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {v}: write it as a string with a unit; expected {EXPECTED}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("1s", Duration::from_secs(1)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0.5h", Duration::from_secs(1800)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            ("0s", Duration::ZERO),
            ("1.000000001s", Duration::new(1, 1)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(&format_duration(want)), Ok(want), "{text}");
        }
        for text in [
            "",
            "-1s",
            "-0s",
            "1",
            "s",
            "1.s",
            ".5s",
            "1..5s",
            "1.2.3s",
            "1 s",
            " 1s",
            "1s ",
            "1S",
            "1e3s",
            "1sec",
            "abc",
            "1.0000000001s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
