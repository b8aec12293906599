//! What the deployment lets in: no secret the repository knows, no published port beyond the
//! host itself, one RabbitMQ user per process with the permissions the tests exercise, and a
//! Postgres login role apart from the owner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use compose_spec::service::volumes::{into_long_iter, Mount};

use super::files::*;

/// Environment names whose value is a secret.
fn is_secret(name: &str) -> bool {
    ["PASSWORD", "SECRET", "TOKEN"].iter().any(|word| name.contains(word))
        || name.ends_with("_PASS")
        || name.ends_with("_KEY")
}

/// Every `environment:` value of every service, before interpolation.
fn raw_environments() -> Vec<(String, String, String)> {
    let raw = raw_compose();
    let mut values = Vec::new();
    for (service, definition) in raw["services"].as_mapping().expect("services") {
        let service = service.as_str().unwrap().to_string();
        let Some(environment) = definition["environment"].as_mapping() else { continue };
        for (key, value) in environment {
            let value = match value {
                serde_yaml_ng::Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
            };
            values.push((service.clone(), key.as_str().unwrap().to_string(), value));
        }
    }
    values
}

/// A default for any secret (`${STRIPE_WEBHOOK_SECRET:-whsec_...}`, as compose once had) or a
/// password written in the file fails this.
#[test]
fn compose_takes_every_secret_from_the_environment_and_refuses_to_start_without_one() {
    let required = required_variables();
    assert!(required.len() >= 8, "the Stripe secret and the passwords: {required:?}");
    for (name, value) in &required {
        assert!(value.is_empty(), ".env.example gives {name} no working value, only a place for one");
        assert!(is_secret(name), ".env.example lists secrets only: {name}");
    }
    let text = repo_file("docker-compose.yml");
    assert!(parse_with(&text, &BTreeMap::new()).is_err(), "nothing set: compose refuses to start");
    for (name, _) in &required {
        let mut env = operator_env();
        env.remove(name);
        let error = parse_with(&text, &env).expect_err(name);
        assert!(error.contains(name.as_str()), "without {name} compose says so: {error}");
        assert!(
            error.contains("openssl rand") || error.contains("stripe listen"),
            "the message says how to get {name}: {error}"
        );
    }

    // What the file itself says: every secret is a reference to the environment, required
    // (`:?` with a message) or off when unset (`:-` with nothing after it).
    let mut required_in_compose = BTreeSet::new();
    for (service, key, value) in raw_environments() {
        let found = references(&value);
        if is_secret(&key) {
            assert!(
                value.starts_with("${") && value.ends_with('}') && found.len() == 1,
                "{service}.{key} is exactly one variable, no value of the repository's: {value}"
            );
        }
        for (name, rest) in found.iter().filter(|(name, _)| is_secret(name)) {
            if let Some(message) = rest.strip_prefix(":?") {
                assert!(message.len() > 20, "{service}.{key}: ${{{name}:?...}} says what to set: {value}");
                required_in_compose.insert(name.clone());
            } else {
                assert_eq!(rest, ":-", "{service}.{key}: {name} is required or off, never defaulted: {value}");
            }
        }
        if value.contains("://") && value.contains('@') {
            let userinfo = &value[value.find("://").unwrap() + 3..value.rfind('@').unwrap()];
            let password = references(userinfo);
            assert!(
                password.len() == 1 && is_secret(&password[0].0) && password[0].1.starts_with(":?"),
                "{service}.{key}: the URL's password is a required variable: {value}"
            );
        }
    }
    let listed: BTreeSet<String> = required.into_iter().map(|(name, _)| name).collect();
    assert_eq!(required_in_compose, listed, ".env.example lists exactly the secrets compose requires");

    // The values the repository used to know are gone.
    let compose = compose();
    for (name, service) in &compose.services {
        for (key, value) in environment(service) {
            for known in ["whsec_local_development_only", "guest:guest", "postgres:postgres@"] {
                assert!(!value.contains(known), "{name}.{key} holds {known}");
            }
            if key.ends_with("PASSWORD") || key.ends_with("_PASS") {
                assert!(!["admin", "guest", "postgres"].contains(&value.as_str()), "{name}.{key} = {value}");
            }
        }
    }
}

/// A port without its `127.0.0.1:` (RabbitMQ's and Postgres' once were) fails this.
#[test]
fn every_published_port_listens_on_the_host_only() {
    let compose = compose();
    let mut ports = 0;
    for (name, service) in &compose.services {
        for host in published_hosts(service) {
            assert_eq!(host, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), "{name} publishes a port beyond 127.0.0.1");
            ports += 1;
        }
    }
    assert_eq!(ports, 7, "Postgres, RabbitMQ (AMQP and UI), ingest, the console, Prometheus and Grafana publish ports");
    // Each host port is still a variable.
    let raw = raw_compose();
    for (name, definition) in raw["services"].as_mapping().unwrap() {
        for port in definition["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(port.starts_with("127.0.0.1:${") && port.contains("_PORT:-"), "{name:?}: {port}");
        }
    }
}

#[test]
fn each_process_connects_to_rabbitmq_as_the_user_of_its_role() {
    let compose = compose();
    let setup = service(&compose, "rabbitmq-setup");
    let invocation = invocation(setup);
    assert_eq!(invocation[0], "bash");
    assert_eq!(
        repo_path_of(setup, &invocation[1]),
        testkit::prometheus::repo_root().join("deploy/rabbitmq/setup.sh"),
        "the setup runs the repository's script"
    );
    let permissions = repo_path_of(setup, "/etc/webhooks/rabbitmq/permissions");
    let roles: Vec<String> = std::fs::read_to_string(&permissions)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(roles, testkit::broker_users::ROLES, "the roles of {}", permissions.display());

    // rabbitmqctl reaches the node by name, with the Erlang cookie of the node's own volume.
    let setup_env = environment(setup);
    let rabbitmq = service(&compose, "rabbitmq");
    let hostname = rabbitmq.hostname.as_ref().expect("the broker has a fixed host name").to_string();
    assert_eq!(setup_env["RABBITMQ_NODE"], format!("rabbit@{hostname}"));
    let volume = |service: &compose_spec::Service| -> Option<String> {
        into_long_iter(service.volumes.clone()).find_map(|mount| match mount {
            Mount::Volume(v) if v.common.target.as_path() == std::path::Path::new("/var/lib/rabbitmq") => {
                v.source.map(|s| s.to_string())
            }
            _ => None,
        })
    };
    assert_eq!(volume(setup), volume(rabbitmq), "the setup reads the node's cookie from its volume");
    assert!(volume(setup).is_some());

    for (role, process) in [("ingest", "ingest"), ("worker", "worker"), ("operator", "hookctl")] {
        let upper = role.to_uppercase();
        let user = setup_env.get(&format!("RABBITMQ_{upper}_USER")).cloned().unwrap_or(format!("webhooks-{role}"));
        let password = &setup_env[&format!("RABBITMQ_{upper}_PASSWORD")];
        let url = reqwest::Url::parse(&environment(service(&compose, process))["AMQP_URL"]).unwrap();
        assert_eq!((url.username(), url.password()), (user.as_str(), Some(password.as_str())), "{process}'s AMQP_URL");
        assert_eq!(url.host_str(), Some(hostname.as_str()));
    }
}

#[test]
fn migrations_run_as_the_owner_and_the_worker_and_hookctl_as_the_login_role() {
    let compose = compose();
    let pg = environment(service(&compose, "postgres"));
    let owner_url =
        format!("postgres://{}:{}@postgres:5432/{}", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]);
    assert_eq!(environment(service(&compose, "migrate"))["DATABASE_URL"], owner_url);

    // postgres-setup runs the repository's script as the owner, on the same database.
    let setup = service(&compose, "postgres-setup");
    let setup_env = environment(setup);
    for (key, expected) in
        [("PGHOST", "postgres"), ("PGUSER", &pg["POSTGRES_USER"]), ("PGPASSWORD", &pg["POSTGRES_PASSWORD"])]
    {
        assert_eq!(setup_env[key], *expected, "postgres-setup's {key}");
    }
    assert_eq!(setup_env["PGDATABASE"], pg["POSTGRES_DB"]);
    let invocation = invocation(setup);
    assert_eq!(invocation[0], "psql");
    assert!(invocation.iter().any(|a| a == "ON_ERROR_STOP=1"), "a failed statement fails the setup");
    let script = invocation.last().unwrap();
    assert_eq!(
        repo_path_of(setup, script),
        testkit::prometheus::repo_root().join("deploy/postgres/create-login-role.sql")
    );

    let role = &setup_env["DATABASE_LOGIN_ROLE"];
    assert_ne!(role, &pg["POSTGRES_USER"], "the login role is not the owner");
    let login_url =
        format!("postgres://{role}:{}@postgres:5432/{}", setup_env["DATABASE_LOGIN_PASSWORD"], pg["POSTGRES_DB"]);
    for name in ["worker", "hookctl"] {
        assert_eq!(environment(service(&compose, name))["DATABASE_URL"], login_url, "{name} connects as {role}");
    }
}
