//! The monitoring kit against the real thing: a Prometheus of this test's own (Debian's
//! package, port 0, 1 s scrapes, killed at the end) scrapes an ingest and a worker running here
//! under a little traffic, with the repository's Prometheus configuration and alert rules. Every
//! query of the Grafana dashboard and every alert expression must parse and return data.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Env, TestIngest, TestWorker};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::prometheus::{repo_root, series_behind, PrometheusServer};
use testkit::{Behavior, FakeEndpoint};

/// Long enough for the worker's 5 s gauge sampling, Prometheus start-up and a few scrapes
/// on a shared 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// Standard Webhooks secret for the notification endpoint (delivery on, so the notification
/// queues exist and are sampled).
const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What Grafana puts in for its built-in variables. With 1 s scrapes, 30 s holds plenty of
/// samples, and traffic keeps flowing while the queries run.
const GRAFANA_VARIABLES: &[(&str, &str)] =
    &[("$__rate_interval", "30s"), ("$__interval", "5s"), ("$__range", "5m"), ("${__rate_interval}", "30s")];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The repository's Prometheus configuration, with its service discovery replaced by the
/// addresses of the processes under test (by job name) and 1 s intervals.
fn test_config(targets: &BTreeMap<&str, String>) -> String {
    let mut config: Yaml = serde_yaml_ng::from_str(&read("deploy/prometheus/prometheus.yml")).expect("YAML");
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let jobs = config["scrape_configs"].as_sequence_mut().expect("scrape_configs");
    let mut seen = Vec::new();
    for job in jobs.iter_mut() {
        let name = job["job_name"].as_str().expect("job_name").to_string();
        let target = targets.get(name.as_str()).unwrap_or_else(|| panic!("no process under test for job {name}"));
        let job = job.as_mapping_mut().expect("scrape config mapping");
        assert!(job.remove("dns_sd_configs").is_some(), "job {name} discovers its targets by DNS in compose");
        job.insert("static_configs".into(), serde_yaml_ng::from_str(&format!("[{{targets: ['{target}']}}]")).unwrap());
        seen.push(name);
    }
    let mut expected: Vec<String> = targets.keys().map(|k| k.to_string()).collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "prometheus.yml scrapes exactly ingest and worker");
    serde_yaml_ng::to_string(&config).unwrap()
}

/// Every query of the dashboard: (panel title, expression with Grafana's variables put in).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana/dashboards/webhooks.json")).expect("JSON");
    let mut queries = Vec::new();
    let mut panels: Vec<Json> = dashboard["panels"].as_array().expect("panels").clone();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().expect("every target has an expr").to_string();
            for (name, value) in GRAFANA_VARIABLES {
                expr = expr.replace(name, value);
            }
            assert!(!expr.contains('$'), "panel {:?} uses a variable this test cannot fill in: {expr}", panel["title"]);
            queries.push((panel["title"].as_str().unwrap_or_default().to_string(), expr));
        }
    }
    assert!(queries.len() >= 20, "the dashboard has its queries ({})", queries.len());
    queries
}

/// Every alert expression and the parts of it that must have data: (alert, expression, parts).
fn alert_expressions() -> Vec<(String, String, Vec<String>)> {
    let rules: Yaml = serde_yaml_ng::from_str(&read("deploy/prometheus/alerts.yml")).expect("YAML");
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only").to_string();
            let expr = rule["expr"].as_str().expect("expr").trim().to_string();
            let parts = series_behind(&expr).unwrap_or_else(|e| panic!("{name}: {e}"));
            alerts.push((name, expr, parts));
        }
    }
    alerts
}

/// Why `expr` does not (yet) count as returning data, or `None` when it does.
async fn lacks_data(prometheus: &PrometheusServer, expr: &str) -> Option<String> {
    match prometheus.query(expr).await {
        Err(error) => Some(format!("error: {error}")),
        Ok(samples) if samples.is_empty() => Some("no series".into()),
        Ok(samples) if samples.iter().all(|s| !s.value.is_finite()) => Some(format!("only NaN: {samples:?}")),
        Ok(_) => None,
    }
}

#[tokio::test]
async fn prometheus_evaluates_every_dashboard_query_and_alert_expression_with_data() {
    let env = Env::new().await;
    let receiver = FakeEndpoint::start(vec![Behavior::Status(200, String::new())]).await;
    let notify_url = receiver.url("/notifications");
    // Reconciliation on, against a fake Stripe events list with nothing missed, so its gauges
    // (last success, interval) exist as they do in production.
    let stripe = testkit::FakeStripe::start("rk_test_monitoring").await;
    let stripe_base = stripe.base();
    let worker = TestWorker::spawn(env.settings(&[
        ("NOTIFY_WEBHOOK_URL", notify_url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET),
        ("STRIPE_API_KEY", "rk_test_monitoring"),
        ("STRIPE_API_BASE", stripe_base.as_str()),
        ("RECONCILE_INTERVAL", "1s"),
    ]))
    .await;
    let ingest = TestIngest::spawn(env.settings(&[])).await;

    let targets = BTreeMap::from([("ingest", ingest.metrics_addr.to_string()), ("worker", worker.addr.to_string())]);
    let prometheus =
        PrometheusServer::start(&test_config(&targets), &[("alerts.yml", read("deploy/prometheus/alerts.yml"))]).await;

    let queries = dashboard_queries();
    let alerts = alert_expressions();
    let mut sent = 0;
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        // A little traffic: two paid checkouts and one request with a wrong signature.
        for _ in 0..2 {
            let order = format!("mon-{sent}");
            env.seed_payment(&order, "stripe", Some(1000), Some("usd")).await;
            let body = stripe_session_event(
                &format!("evt_mon_{sent}"),
                "checkout.session.completed",
                &order,
                "paid",
                1000,
                "usd",
            );
            let signature = stripe_signature(&body, STRIPE_SECRET);
            let status = ingest.post(ingest::STRIPE_ROUTE, &body, &[("stripe-signature", signature.as_str())]).await;
            assert_eq!(status, 200, "ingest stores the event");
            sent += 1;
        }
        let status = ingest.post(ingest::STRIPE_ROUTE, b"{}", &[("stripe-signature", "t=1,v1=00")]).await;
        assert_eq!(status, 400);

        let mut missing = Vec::new();
        for (job, health, error) in prometheus.targets().await {
            if health != "up" {
                missing.push(format!("target {job}: {health} {error}"));
            }
        }
        let rules = prometheus.rules().await;
        assert_eq!(rules.len(), alerts.len(), "Prometheus loaded every rule of alerts.yml");
        for (name, health, error) in rules {
            if health != "ok" {
                missing.push(format!("rule {name}: health {health} {error}"));
            }
        }
        for (panel, expr) in &queries {
            if let Some(why) = lacks_data(&prometheus, expr).await {
                missing.push(format!("dashboard panel {panel:?}: {expr}: {why}"));
            }
        }
        for (name, expr, parts) in &alerts {
            if let Err(error) = prometheus.query(expr).await {
                missing.push(format!("alert {name}: {expr}: {error}"));
            }
            for part in parts {
                if let Some(why) = lacks_data(&prometheus, part).await {
                    missing.push(format!("alert {name}, part {part}: {why}"));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= until {
            panic!(
                "after {DEADLINE:?} and {sent} events, these still fail:\n{}\n\nPrometheus log:\n{}",
                missing.join("\n"),
                prometheus.logs()
            );
        }
        // Pace the traffic; the next round re-evaluates everything.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!receiver.requests().is_empty(), "notifications were delivered over HTTP");

    drop(prometheus);
    ingest.stop().await;
    worker.stop().await;
}
