//! The alert rules (`deploy/prometheus/alerts.yml`) checked and unit-tested by Prometheus's
//! own `promtool`, plus what promtool cannot know: every alert has a test that fires it and
//! one that does not, a severity, and a runbook naming the `hookctl` command to start with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml_ng::Value;
use testkit::prometheus::{promtool, repo_root};

fn rules_dir() -> PathBuf {
    repo_root().join("deploy/prometheus")
}

fn yaml(name: &str) -> Value {
    let path = rules_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"))
}

/// Every alerting rule of alerts.yml, by name.
fn alerts() -> BTreeMap<String, Value> {
    let file = yaml("alerts.yml");
    let mut alerts = BTreeMap::new();
    for group in file["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                assert!(alerts.insert(name.to_string(), rule.clone()).is_none(), "alert {name} is defined twice");
            }
        }
    }
    alerts
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = promtool(&rules_dir(), &["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_unit_tests_of_the_alert_rules_pass() {
    let out = promtool(&rules_dir(), &["test", "rules", "alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() {
    let tests = yaml("alerts.test.yml");
    assert_eq!(tests["rule_files"][0].as_str(), Some("alerts.yml"), "the tests load the real rule file");
    let mut fired = BTreeMap::<String, usize>::new();
    let mut quiet = BTreeMap::<String, usize>::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            *if expected > 0 { &mut fired } else { &mut quiet }.entry(name).or_default() += 1;
        }
    }
    let alerts = alerts();
    for name in alerts.keys() {
        assert!(fired.contains_key(name), "no unit test fires {name}");
        assert!(quiet.contains_key(name), "no unit test shows {name} staying quiet");
    }
    for name in fired.keys().chain(quiet.keys()) {
        assert!(alerts.contains_key(name), "alerts.test.yml tests {name}, which alerts.yml does not define");
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_with_a_hookctl_command() {
    for (name, rule) in alerts() {
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        for annotation in ["summary", "description", "runbook"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            assert!(text.len() > 10, "{name} has a {annotation}");
        }
        let runbook = rule["annotations"]["runbook"].as_str().unwrap();
        assert!(runbook.contains("`hookctl "), "{name}'s runbook says which hookctl command to run: {runbook}");
    }
}

#[test]
fn the_operations_page_lists_every_alert() {
    let page = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("docs/operations.md");
    for name in alerts().keys() {
        assert!(page.contains(&format!("`{name}`")), "docs/operations.md's alert table has `{name}`");
    }
}

/// `hookctl …` spans between backticks, with `<placeholders>` filled in.
fn hookctl_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for (i, span) in text.split('`').enumerate() {
        if i % 2 == 1 && span.starts_with("hookctl ") {
            let mut filled = String::new();
            let mut in_placeholder = false;
            for c in span.chars() {
                match c {
                    '<' => in_placeholder = true,
                    '>' if in_placeholder => {
                        in_placeholder = false;
                        filled.push_str("x1");
                    }
                    _ if in_placeholder => {}
                    _ => filled.push(c),
                }
            }
            commands.push(filled.split_whitespace().map(str::to_string).collect());
        }
    }
    commands
}

#[test]
fn every_hookctl_command_in_a_runbook_is_one_hookctl_accepts() {
    use clap::Parser;
    let mut checked = 0;
    for (name, rule) in alerts() {
        for command in hookctl_commands(rule["annotations"]["runbook"].as_str().unwrap()) {
            hookctl::cli::Cli::try_parse_from(&command).unwrap_or_else(|e| {
                panic!("{name}'s runbook gives `{}`, which hookctl refuses: {e}", command.join(" "))
            });
            checked += 1;
        }
    }
    assert!(checked >= alerts().len());
    // The parser is strict, so acceptance above means something.
    assert!(hookctl::cli::Cli::try_parse_from(["hookctl", "dead", "lst"]).is_err());
}
