//! Readiness: what `/readyz` answers and what systemd's `READY=1` waits
//! for. The daemon is ready when every source the configuration enables is
//! up, by the same truth as `telemetryd_source_up` (its program attached
//! somewhere), except the sources `daemon.optional_sources` names. A source
//! that could not start (a missing capability, a missing kernel feature)
//! keeps it unready, and the answer names the source and why.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::sources::Snapshot;

/// The `/readyz` document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Every source by its `telemetryd_source_up` label; empty before the
    /// sources have started.
    pub sources: BTreeMap<&'static str, SourceReadiness>,
}

/// One source's part of [`Readiness`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceReadiness {
    pub up: bool,
    /// Readiness waits for it: enabled, and not in `daemon.optional_sources`.
    pub required: bool,
    /// Why it is not up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Readiness {
    /// Readiness after the poll that took `snapshot`, under `config`.
    pub fn of(snapshot: &Snapshot, config: &Config) -> Self {
        let mut sources = BTreeMap::new();
        for (source, up) in snapshot.sources_up() {
            let enabled = match source {
                "xdp" => config.xdp.enabled,
                "syscalls" => config.syscalls.enabled,
                telemetryd_common::events::EVENTS_SOURCE => {
                    config.xdp.enabled && config.xdp.sample_rate > 0
                }
                _ => true,
            };
            let optional = config.daemon.optional_sources.iter().any(|s| s == source);
            let reason = if up {
                None
            } else if !enabled {
                Some("disabled by configuration".to_owned())
            } else if let Some(reason) = snapshot.unavailable_reason(source) {
                Some(reason.to_owned())
            } else {
                Some("not attached".to_owned())
            };
            sources.insert(
                source,
                SourceReadiness {
                    up,
                    required: enabled && !optional,
                    reason,
                },
            );
        }
        let ready = !sources.is_empty() && sources.values().all(|s| s.up || !s.required);
        Self { ready, sources }
    }

    /// The JSON body of `/readyz`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"ready\":false}".to_owned())
    }

    /// One line for systemd's `STATUS=` and the log: what is up, or what
    /// keeps the daemon unready and why.
    pub fn summary(&self) -> String {
        if self.sources.is_empty() {
            return "starting".to_owned();
        }
        let down: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| s.required && !s.up)
            .map(|(name, s)| format!("{name} ({})", s.reason.as_deref().unwrap_or("down")))
            .collect();
        if !down.is_empty() {
            return format!("not ready: {} down", down.join(", "));
        }
        let up: Vec<&str> = self
            .sources
            .iter()
            .filter(|(_, s)| s.up)
            .map(|(name, _)| *name)
            .collect();
        let optional_down: Vec<&str> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.up && !s.required && s.reason.as_deref() != Some(DISABLED))
            .map(|(name, _)| *name)
            .collect();
        let mut line = format!("ready: {} up", up.join(", "));
        if !optional_down.is_empty() {
            line.push_str(&format!(
                "; optional and down: {}",
                optional_down.join(", ")
            ));
        }
        line
    }
}

const DISABLED: &str = "disabled by configuration";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{XdpMode, SOURCE_NAMES};
    use crate::sources::snapshot::SOURCES;
    use crate::sources::xdp::XdpStats;
    use crate::sources::ProgramAttachment;

    #[test]
    fn the_config_names_every_source_of_source_up() {
        assert_eq!(SOURCES, SOURCE_NAMES);
    }

    fn xdp_attached() -> XdpStats {
        let mut xdp = XdpStats::default();
        xdp.attachments.push(("veth0".into(), XdpMode::Generic));
        xdp
    }

    /// A snapshot with xdp as given and both drop tracers attached.
    fn snapshot(xdp: Option<XdpStats>, unavailable: &[(&'static str, &str)]) -> Snapshot {
        use crate::sources::drops::DropStats;
        let drops = DropStats {
            attached: vec![
                telemetryd_common::drops::DROPS_PROGRAM,
                telemetryd_common::drops::RETRANSMITS_PROGRAM,
            ],
            ..Default::default()
        };
        Snapshot {
            xdp,
            drops: Some(drops),
            unavailable: unavailable
                .iter()
                .map(|(s, r)| (*s, (*r).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    fn config(optional: &[&str]) -> Config {
        let mut config = Config::default();
        config.syscalls.enabled = false;
        config.daemon.optional_sources = optional.iter().map(|s| s.to_string()).collect();
        config
    }

    #[test]
    fn ready_when_every_enabled_source_is_up() {
        let snapshot = snapshot(Some(xdp_attached()), &[]);
        assert!(snapshot.attachments().contains(&ProgramAttachment {
            program: "xdp_packet_counter".into(),
            attach: "xdp-generic".into(),
            device: "veth0".into(),
        }));
        let readiness = Readiness::of(&snapshot, &config(&[]));
        assert!(readiness.ready, "{readiness:?}");
        assert_eq!(
            readiness.sources["syscalls"],
            SourceReadiness {
                up: false,
                required: false,
                reason: Some(DISABLED.into())
            }
        );
        assert_eq!(
            readiness.summary(),
            "ready: kernel_drops, tcp_retransmits, xdp up"
        );
    }

    #[test]
    fn a_source_that_could_not_start_is_named_with_its_reason() {
        let snapshot = snapshot(None, &[("xdp", "no CAP_NET_ADMIN")]);
        let readiness = Readiness::of(&snapshot, &config(&[]));
        assert!(!readiness.ready);
        let json: serde_json::Value = serde_json::from_str(&readiness.to_json()).unwrap();
        assert_eq!(json["ready"], false);
        assert_eq!(json["sources"]["xdp"]["up"], false);
        assert_eq!(json["sources"]["xdp"]["required"], true);
        assert_eq!(json["sources"]["xdp"]["reason"], "no CAP_NET_ADMIN");
        assert_eq!(json["sources"]["kernel_drops"]["up"], true);
        assert!(json["sources"]["kernel_drops"].get("reason").is_none());
        assert_eq!(
            readiness.summary(),
            "not ready: xdp (no CAP_NET_ADMIN) down"
        );

        // Optional: ready, and the summary still says it is down.
        let readiness = Readiness::of(&snapshot, &config(&["xdp"]));
        assert!(readiness.ready);
        assert!(!readiness.sources["xdp"].required);
        assert_eq!(
            readiness.summary(),
            "ready: kernel_drops, tcp_retransmits up; optional and down: xdp"
        );
    }

    #[test]
    fn xdp_attached_nowhere_is_not_up() {
        let reason = "attached to no interface: interface eth9 does not exist";
        let snapshot = snapshot(Some(XdpStats::default()), &[("xdp", reason)]);
        let readiness = Readiness::of(&snapshot, &config(&[]));
        assert!(!readiness.ready);
        assert_eq!(readiness.sources["xdp"].reason.as_deref(), Some(reason));
    }

    #[test]
    fn nothing_is_ready_before_the_sources_start() {
        assert!(!Readiness::default().ready);
        assert_eq!(Readiness::default().summary(), "starting");
    }
}
