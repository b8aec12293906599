//! The deployment files cannot be run here (no Docker engine), so their structure is checked:
//! docker-compose.yml has the services, health checks, dependencies and settings the stack
//! needs; the Dockerfile builds every workspace member; CI runs the README's test command.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml_ng::Value;

/// The one command the README gives for running the tests. The fail points are opt-in, so the
/// tests that crash a worker at one need the feature.
const TEST_COMMAND: &str = "cargo test --workspace --locked --features worker/failpoints";

fn repo_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"].get(name).unwrap_or_else(|| panic!("service {name} is missing"))
}

/// `${NAME:-default}` → default, `${NAME}` → "": what compose uses when nothing is set.
fn with_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .expect("environment is a mapping")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("unexpected env value {other:?}"),
            };
            (k.as_str().unwrap().to_string(), with_defaults(&value))
        })
        .collect()
}

fn depends_on(service: &Value, on: &str) -> String {
    service["depends_on"][on]["condition"]
        .as_str()
        .unwrap_or_else(|| panic!("no depends_on.{on}.condition"))
        .to_string()
}

fn command(service: &Value) -> Vec<String> {
    service["command"].as_sequence().expect("command list").iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn compose_has_every_service_with_health_checks_and_start_order() {
    let compose = compose();
    for name in ["postgres", "rabbitmq", "migrate", "ingest", "worker"] {
        service(&compose, name);
    }
    for name in ["postgres", "rabbitmq", "ingest", "worker"] {
        assert!(service(&compose, name)["healthcheck"]["test"].is_sequence(), "{name} has a health check");
    }
    let migrate = service(&compose, "migrate");
    assert_eq!(command(migrate), ["worker", "migrate"]);
    assert_eq!(depends_on(migrate, "postgres"), "service_healthy");
    let worker = service(&compose, "worker");
    assert_eq!(command(worker), ["worker"]);
    assert_eq!(depends_on(worker, "migrate"), "service_completed_successfully");
    assert_eq!(depends_on(worker, "rabbitmq"), "service_healthy");
    let ingest = service(&compose, "ingest");
    assert_eq!(command(ingest), ["ingest"]);
    assert_eq!(depends_on(ingest, "rabbitmq"), "service_healthy");
    for name in ["migrate", "ingest", "worker"] {
        assert_eq!(service(&compose, name)["build"].as_str(), Some("."), "{name} is built from the repository");
    }
    // The health checks of our own services use a binary the image has (no curl in it).
    for (name, port) in [("ingest", "3000"), ("worker", "9090")] {
        let test: Vec<&str> = service(&compose, name)["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(test, ["CMD", "hookctl", "probe", &format!("http://127.0.0.1:{port}/readyz")]);
    }
}

#[test]
fn workers_can_be_scaled() {
    let compose = compose();
    let worker = service(&compose, "worker");
    assert!(worker.get("container_name").is_none(), "a container name prevents --scale");
    assert!(worker.get("ports").is_none(), "a fixed host port prevents --scale");
}

#[test]
fn ingest_publishes_port_3000_for_the_stripe_cli() {
    let compose = compose();
    let ports: Vec<String> = service(&compose, "ingest")["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| with_defaults(p.as_str().unwrap()))
        .collect();
    assert!(ports.contains(&"3000:3000".to_string()), "{ports:?}");
    assert_eq!(environment(service(&compose, "ingest"))["INGEST_ADDR"], "0.0.0.0:3000");
}

#[test]
fn every_service_environment_is_a_valid_settings_set_pointing_at_compose_services() {
    let compose = compose();
    for name in ["migrate", "ingest", "worker"] {
        let env = environment(service(&compose, name));
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let settings = shared::Settings::from_vars(vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (key, host) in [("DATABASE_URL", "@postgres:5432/"), ("AMQP_URL", "@rabbitmq:5672/")] {
            if let Some(url) = env.get(key) {
                assert!(url.contains(host), "{name}.{key} points at the {host} service: {url}");
            }
        }
        if name == "ingest" {
            settings.stripe_secrets().expect("ingest has a Stripe secret by default");
            for key in ["AMQP_URL", "AMQP_PREFIX", "STRIPE_WEBHOOK_SECRET", "TOSS_WEBHOOK_SECRET"] {
                assert!(env.contains_key(key), "ingest sets {key}");
            }
        }
        if name == "worker" {
            for key in ["DATABASE_URL", "AMQP_URL", "AMQP_PREFIX", "WORKER_ADDR"] {
                assert!(env.contains_key(key), "worker sets {key}");
            }
        }
    }
    // The services agree on the names they share.
    let ingest = environment(service(&compose, "ingest"));
    let worker = environment(service(&compose, "worker"));
    assert_eq!(ingest["AMQP_PREFIX"], worker["AMQP_PREFIX"]);
    assert_eq!(ingest["AMQP_URL"], worker["AMQP_URL"]);
    assert_eq!(environment(service(&compose, "migrate"))["DATABASE_URL"], worker["DATABASE_URL"]);
}

#[test]
fn postgres_credentials_match_the_database_url() {
    let compose = compose();
    let pg = environment(service(&compose, "postgres"));
    let url = &environment(service(&compose, "worker"))["DATABASE_URL"];
    let expected =
        format!("postgres://{}:{}@postgres:5432/{}", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]);
    assert_eq!(url, &expected);
}

#[test]
fn the_dockerfile_copies_every_workspace_member_and_builds_every_binary() {
    let dockerfile = repo_file("Dockerfile");
    let manifest: toml::Value = toml::from_str(&repo_file("Cargo.toml")).unwrap();
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        assert!(dockerfile.contains(&format!("COPY {member} {member}")), "Dockerfile copies {member}");
    }
    assert!(dockerfile.contains("COPY migrations migrations"), "migrations are embedded at build time");
    for bin in ["ingest", "worker", "hookctl"] {
        assert!(dockerfile.contains(&format!("--bin {bin}")), "builds {bin}");
    }
    assert!(!dockerfile.contains("failpoints"), "the image is built without test fail points");
    let worker: toml::Value = toml::from_str(&repo_file("worker/Cargo.toml")).unwrap();
    let default = worker["features"].get("default").and_then(|d| d.as_array()).cloned().unwrap_or_default();
    assert!(
        !default.iter().any(|f| f.as_str() == Some("failpoints")),
        "fail points are opt-in, never a default feature"
    );
}

#[test]
fn ci_runs_the_readmes_commands() {
    let readme = repo_file("README.md");
    let ci = repo_file(".ci/run");
    assert!(readme.lines().any(|l| l.trim() == TEST_COMMAND), "README gives `{TEST_COMMAND}` on a line of its own");
    assert!(ci.lines().any(|l| l.trim() == TEST_COMMAND), ".ci/run runs `{TEST_COMMAND}`");
    assert!(
        readme.lines().any(|l| l.trim() == "scripts/run-local.sh"),
        "README gives the one command that runs the stack"
    );
    assert!(readme.lines().any(|l| l.trim() == "docker compose up --build"), "README gives the compose command");
    for step in ["scripts/check-release-has-no-failpoints.sh", "scripts/fuzz.sh"] {
        assert!(ci.lines().any(|l| l.trim().starts_with(step)), ".ci/run runs {step}");
        assert!(readme.contains(step), "README explains {step}");
    }
}
