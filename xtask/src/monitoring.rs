//! The monitoring content shipped in `monitoring/`: the Prometheus rules
//! (checked and unit-tested with promtool) and the Grafana dashboard, whose
//! panel queries the lab runs against a real Prometheus.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

/// The alerting and recording rules.
pub fn rules(root: &Path) -> PathBuf {
    root.join("monitoring/prometheus/telemetryd.rules.yml")
}

/// promtool unit tests of [`rules`].
pub fn rule_tests(root: &Path) -> PathBuf {
    root.join("monitoring/prometheus/telemetryd.rules.test.yml")
}

/// The Grafana dashboard.
pub fn dashboard(root: &Path) -> PathBuf {
    root.join("monitoring/grafana/telemetryd.json")
}

/// `promtool check rules` and `promtool test rules`; the error carries
/// promtool's output.
pub fn check_rules(root: &Path) -> Result<String> {
    let mut report = String::new();
    for (args, file) in [
        (["check", "rules"], rules(root)),
        (["test", "rules"], rule_tests(root)),
    ] {
        let out = Command::new("promtool")
            .args(args)
            .arg(&file)
            .output()
            .context("running promtool (Debian package prometheus; `cargo xtask setup`)")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "promtool {} {} failed:\n{text}",
            args.join(" "),
            file.display()
        );
        report.push_str(&text);
    }
    Ok(report)
}

/// One query of one dashboard panel.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every query of every panel (rows' nested panels too), in order.
pub fn panel_queries(dashboard: &Value) -> Result<Vec<PanelQuery>> {
    let mut queries = Vec::new();
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels array")?;
    let mut pending: Vec<&Value> = panels.iter().rev().collect();
    while let Some(panel) = pending.pop() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            if let Some(nested) = panel["panels"].as_array() {
                pending.extend(nested.iter().rev());
            }
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("panel {title:?} has no queries"))?;
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .with_context(|| format!("panel {title:?} has a target without expr"))?;
            queries.push(PanelQuery {
                panel: title.to_owned(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_owned(),
                expr: expr.to_owned(),
            });
        }
    }
    Ok(queries)
}

/// Replaces the dashboard's variables (`$name` or `${name}`) in `expr` with
/// `values`; a variable without a value is an error, so no query is run
/// with a variable left in it.
pub fn expand(expr: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .with_context(|| format!("unclosed ${{ in {expr:?}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let Some((_, value)) = values.iter().find(|(n, _)| *n == name) else {
            bail!("no value for the variable ${name} in {expr:?}");
        };
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_dashboard() -> Value {
        let path = dashboard(&crate::workspace_root());
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn rules_pass_promtool_check_and_unit_tests() {
        let report = check_rules(&crate::workspace_root()).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(report.contains("SUCCESS"), "{report}");
    }

    #[test]
    fn every_alert_has_a_unit_test_that_fires_it_and_one_where_it_must_not() {
        let root = crate::workspace_root();
        let rules = std::fs::read_to_string(rules(&root)).unwrap();
        let tests = std::fs::read_to_string(rule_tests(&root)).unwrap();
        let alerts: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .collect();
        assert!(alerts.len() >= 7, "{alerts:?}");
        for alert in alerts {
            // Each `alertname:` line is followed by its exp_alerts.
            let cases: Vec<&str> = tests
                .split("alertname: ")
                .skip(1)
                .filter(|case| case.starts_with(&format!("{alert}\n")))
                .collect();
            assert!(
                cases.iter().any(|c| c.contains("exp_alerts:\n")),
                "no case where {alert} fires"
            );
            assert!(
                cases.iter().any(|c| c.contains("exp_alerts: []")),
                "no case where {alert} must not fire"
            );
        }
    }

    #[test]
    fn the_dashboard_queries_use_only_its_variables() {
        let dashboard = load_dashboard();
        let variables: Vec<String> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(variables, ["datasource", "job", "instance", "syscall"]);
        let queries = panel_queries(&dashboard).unwrap();
        assert!(queries.len() >= 20, "{queries:#?}");
        let values = [
            ("job", "telemetryd"),
            ("instance", ".*"),
            ("syscall", ".*"),
            ("__rate_interval", "1m"),
        ];
        for q in &queries {
            let expanded = expand(&q.expr, &values).unwrap();
            assert!(!expanded.contains('$'), "{expanded}");
        }
        // Every panel uses the data source variable, so the dashboard
        // imports into any Grafana.
        let mut ids = std::collections::HashSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
            if panel["type"] != "row" {
                assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
            }
        }
    }

    #[test]
    fn the_dashboard_covers_what_issue_14_asks() {
        let queries = panel_queries(&load_dashboard()).unwrap();
        let uses = |needle: &str| queries.iter().any(|q| q.expr.contains(needle));
        for metric in [
            "telemetryd_xdp_packets",
            "telemetryd_xdp_bytes",
            "telemetryd_syscall_latency_seconds_bucket",
            "telemetryd_kernel_drops",
            "telemetryd_kernel_device_drops_total",
            "telemetryd_tcp_retransmits_total",
            "telemetryd_anomaly_active",
            "telemetryd_anomalies_total",
            "scrape_duration_seconds",
        ] {
            assert!(uses(metric), "no panel queries {metric}");
        }
    }

    /// The configurations README's "Running on a fleet" shows are valid for
    /// the Prometheus and Alertmanager versions the lab runs.
    #[test]
    fn the_readme_fleet_configurations_pass_promtool_and_amtool() {
        let root = crate::workspace_root();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let section = &readme[readme.find("## Running on a fleet").expect("the section")..];
        let blocks: Vec<&str> = section
            .split("```yaml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .collect();
        let dir = std::env::temp_dir().join(format!("xtask-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut prometheus, mut alertmanager) = (0, 0);
        for (i, block) in blocks.iter().enumerate() {
            // telemetryd's own web configuration (placeholders for the hash
            // and the paths): daemon/tests/web_config.rs runs real ones.
            if block.starts_with("tls_server_config:") || block.starts_with("basic_auth_users:") {
                continue;
            }
            let file = dir.join(format!("{i}.yml"));
            let (program, args) = if block.contains("route:") {
                alertmanager += 1;
                std::fs::write(&file, block).unwrap();
                ("amtool", vec!["check-config"])
            } else {
                prometheus += 1;
                let rules = rules(&root).display().to_string();
                let mut text = block.replace("/etc/prometheus/rules/telemetryd.rules.yml", &rules);
                // Certificates, keys and password files the block names:
                // promtool checks that they exist.
                for word in block.split_whitespace() {
                    if let Some(name) = word.strip_prefix("/etc/prometheus/") {
                        if !name.contains('/') {
                            let stand_in = dir.join(name);
                            std::fs::write(&stand_in, "").unwrap();
                            text = text.replace(word, &stand_in.display().to_string());
                        }
                    }
                }
                std::fs::write(&file, text).unwrap();
                ("promtool", vec!["check", "config"])
            };
            let out = Command::new(program)
                .args(args)
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "README block {i} fails {program}:\n{block}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((prometheus, alertmanager), (3, 1), "{blocks:#?}");
    }

    #[test]
    fn expand_replaces_variables_and_refuses_unknown_ones() {
        let values = [("job", "telemetryd"), ("__rate_interval", "30s")];
        assert_eq!(
            expand("rate(x{job=~\"$job\"}[$__rate_interval])", &values).unwrap(),
            "rate(x{job=~\"telemetryd\"}[30s])"
        );
        assert_eq!(
            expand("x{job=\"${job}\"}", &values).unwrap(),
            "x{job=\"telemetryd\"}"
        );
        let err = expand("x{instance=~\"$instance\"}", &values).unwrap_err();
        assert!(err.to_string().contains("$instance"), "{err}");
    }
}
