//! The vocabulary shared by Plan and Execute: kinds, severities, states and
//! the state change an anomaly goes through.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What kind of condition an anomaly describes (the `kind` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    PacketLoss,
    Latency,
    TrafficDrop,
    TrafficSpike,
    SyscallErrors,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 5] = [
        AnomalyKind::PacketLoss,
        AnomalyKind::Latency,
        AnomalyKind::TrafficDrop,
        AnomalyKind::TrafficSpike,
        AnomalyKind::SyscallErrors,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::PacketLoss => "packet_loss",
            AnomalyKind::Latency => "latency",
            AnomalyKind::TrafficDrop => "traffic_drop",
            AnomalyKind::TrafficSpike => "traffic_spike",
            AnomalyKind::SyscallErrors => "syscall_errors",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far past its threshold an anomaly is (the `severity` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 2] = [Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `firing` or `resolved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyState {
    Firing,
    Resolved,
}

impl AnomalyState {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyState::Firing => "firing",
            AnomalyState::Resolved => "resolved",
        }
    }
}

impl fmt::Display for AnomalyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One anomaly starting or ending. `value`, `baseline` and `threshold` are
/// in the detector's unit: a ratio (0..1) for packet_loss by retransmits and
/// syscall_errors, events per second for drop and traffic rates, seconds for
/// latency.
#[derive(Clone, Debug, PartialEq)]
pub struct StateChange {
    pub kind: AnomalyKind,
    pub subject: String,
    pub state: AnomalyState,
    pub severity: Severity,
    pub value: f64,
    pub baseline: f64,
    pub threshold: f64,
    pub explanation: String,
    pub started_at: SystemTime,
    pub resolved_at: Option<SystemTime>,
    /// For packet_loss on a device: its peers' loss when it fired.
    pub peers: Vec<super::analyze::PeerLoss>,
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds,
/// `2024-05-01T12:34:56.789Z`. Times before 1970 clamp to the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789);
        assert_eq!(rfc3339(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }
}
