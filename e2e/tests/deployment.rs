//! The deployment files cannot run here (no Docker engine), so real parsers check them:
//! docker-compose.yml against the Compose specification (`compose_spec`, which refuses unknown
//! keys and malformed values), prometheus.yml with `promtool`, the commands with the binaries'
//! own command-line parsers. Then what no parser knows: every command is a binary the image
//! has, every environment name is a setting, every mounted and provisioned file exists and
//! the services point at each other by the right names and ports.

use std::collections::{BTreeMap, BTreeSet};

use compose_spec::service::volumes::{into_long_iter, Mount};
use compose_spec::service::Condition;
use compose_spec::ShortOrLong;
use shared::settings::{IngestSettings, Settings, WorkerSettings};
use testkit::prometheus::promtool;

#[path = "deployment/access.rs"]
mod access;
#[path = "deployment/files.rs"]
mod files;

use self::files::*;

/// The one command the README gives for running the tests. The fail points are opt-in, so the
/// tests that crash a worker at one need the feature.
const TEST_COMMAND: &str = "cargo test --workspace --locked --features worker/failpoints";

/// Environment names our binaries read besides their settings (the OpenTelemetry
/// exporter reads its standard variables itself).
/// `INGEST_URL` is where `hookctl send` posts (a command-line default).
const NON_SETTING_ENV: &[&str] = &["RUST_LOG", "WEBHOOKS_CONFIG", "OTEL_EXPORTER_OTLP_ENDPOINT", "INGEST_URL"];

#[test]
fn the_compose_file_follows_the_compose_specification_strictly() {
    let compose = compose();
    assert_eq!(compose.name.as_ref().map(|n| n.as_str()), Some("webhooks"));
    // The same parse refuses what Docker would refuse, so passing it means something.
    let text = repo_file("docker-compose.yml");
    for (mistake, broken) in [
        ("a misspelled key", text.replacen("restart: unless-stopped", "restrat: unless-stopped", 1)),
        ("an unknown condition", text.replacen("condition: service_healthy", "condition: service_ready", 1)),
        ("a malformed duration", text.replacen("interval: 5s", "interval: 5 seconds", 1)),
        ("a port that is no port", text.replacen(":-3000}:3000", ":-3000}:30000000", 1)),
    ] {
        assert_ne!(broken, text, "the mutation for {mistake} applies");
        assert!(parse_with(&broken, &operator_env()).is_err(), "{mistake} is refused");
    }
}

#[test]
fn compose_has_every_service_with_health_checks_and_start_order() {
    let compose = compose();
    for name in [
        "postgres",
        "rabbitmq",
        "rabbitmq-setup",
        "migrate",
        "postgres-setup",
        "ingest",
        "worker",
        "hookctl",
        "prometheus",
        "grafana",
    ] {
        service(&compose, name);
    }
    for name in ["postgres", "rabbitmq", "ingest", "worker", "console", "prometheus"] {
        assert!(health_command(service(&compose, name)).is_some(), "{name} has a health check");
    }
    let migrate = service(&compose, "migrate");
    assert_eq!(command(migrate), ["worker", "migrate"]);
    assert_eq!(depends_on(migrate, "postgres"), Condition::ServiceHealthy);
    // The login role is made once the migrations made its group role; the RabbitMQ users once
    // the broker runs; the processes start once their users exist.
    let postgres_setup = service(&compose, "postgres-setup");
    assert_eq!(depends_on(postgres_setup, "migrate"), Condition::ServiceCompletedSuccessfully);
    assert_eq!(depends_on(service(&compose, "rabbitmq-setup"), "rabbitmq"), Condition::ServiceHealthy);
    let worker = service(&compose, "worker");
    assert_eq!(command(worker), ["worker"]);
    assert_eq!(depends_on(worker, "postgres-setup"), Condition::ServiceCompletedSuccessfully);
    assert_eq!(depends_on(worker, "rabbitmq-setup"), Condition::ServiceCompletedSuccessfully);
    let ingest = service(&compose, "ingest");
    assert_eq!(command(ingest), ["ingest"]);
    assert_eq!(depends_on(ingest, "rabbitmq-setup"), Condition::ServiceCompletedSuccessfully);
    let hookctl = service(&compose, "hookctl");
    assert!(!hookctl.profiles.is_empty(), "hookctl runs on demand (`docker compose run`), not with `up`");
    assert_eq!(depends_on(service(&compose, "grafana"), "prometheus"), Condition::ServiceHealthy);
    for (name, service) in services_built_here(&compose) {
        let context = match service.build.as_ref().unwrap() {
            ShortOrLong::Short(context) => context.to_string(),
            ShortOrLong::Long(build) => build.context.as_ref().map(ToString::to_string).unwrap_or_default(),
        };
        assert_eq!(context, ".", "{name} is built from the repository");
    }
    // The health checks of our own services use a binary the image has (no curl in it).
    for (name, port) in [("ingest", "3000"), ("worker", "9090")] {
        let test = health_command(service(&compose, name)).unwrap();
        assert_eq!(test, ["hookctl", "probe", &format!("http://127.0.0.1:{port}/readyz")]);
    }
}

#[test]
fn every_command_of_our_image_is_a_binary_it_has_and_accepts() {
    let compose = compose();
    let binaries = image_binaries();
    let workspace = workspace_binaries();
    for binary in &binaries {
        assert!(workspace.contains(binary), "the Dockerfile builds {binary}, a binary of the workspace {workspace:?}");
    }
    let built_here = services_built_here(&compose);
    assert_eq!(built_here.len(), 5, "migrate, ingest, worker, hookctl and console run our image");
    for (name, service) in built_here {
        let mut commands = vec![invocation(service)];
        commands.extend(health_command(service));
        for args in commands {
            assert!(
                binaries.contains(&args[0]),
                "{name} runs {:?}, which the image does not have ({binaries:?})",
                args[0]
            );
            accepts(&args).unwrap_or_else(|e| panic!("{name}: {args:?} is refused: {e}"));
        }
    }
    // The parsers are strict, so acceptance above means something.
    assert!(accepts(&["worker".into(), "migrte".into()]).is_err());
    assert!(accepts(&["hookctl".into(), "probe".into()]).is_err());
}

/// Each service sets only what its own binary reads: a setting given to the wrong process
/// (`DATABASE_URL` to ingest, `LOG_FORMAT` to hookctl) would silently do nothing.
#[test]
fn every_environment_name_of_our_services_is_a_setting_of_its_binary() {
    let compose = compose();
    for (name, service) in services_built_here(&compose) {
        let binary = binary(service);
        let names = names_read_by(&binary);
        for key in environment(service).keys() {
            assert!(
                names.contains(key) || NON_SETTING_ENV.contains(&key.as_str()),
                "{name} sets {key}, which {binary} does not read (shared/src/settings/binaries.rs)"
            );
        }
    }
}

#[test]
fn every_setting_is_documented_in_the_readme() {
    let readme = repo_file("README.md");
    for name in shared::settings::env_names() {
        assert!(readme.contains(&format!("`{name}`")), "README's configuration table documents `{name}`");
    }
    let console_doc = repo_file("docs/console.md");
    for name in console::ConsoleSettings::env_names() {
        assert!(console_doc.contains(&format!("`{name}`")), "docs/console.md documents `{name}`");
    }
}

#[test]
fn services_refer_only_to_services_and_volumes_the_file_defines() {
    let compose = compose();
    let services: BTreeSet<String> = compose.services.keys().map(ToString::to_string).collect();
    let declared: BTreeSet<String> = compose.volumes.keys().map(ToString::to_string).collect();
    let mut used = BTreeSet::new();
    for (name, service) in &compose.services {
        if let ShortOrLong::Long(map) = &service.depends_on {
            for on in map.keys() {
                assert!(services.contains(on.as_str()), "{name} depends on {on}, which is not a service");
            }
        }
        for mount in into_long_iter(service.volumes.clone()) {
            if let Mount::Volume(volume) = mount {
                let source = volume.source.expect("named volumes, no anonymous ones").to_string();
                assert!(declared.contains(&source), "{name} uses volume {source}, which volumes: does not declare");
                used.insert(source);
            }
        }
    }
    assert_eq!(used, declared, "every declared volume is used");
}

#[test]
fn workers_can_be_scaled() {
    let compose = compose();
    let worker = service(&compose, "worker");
    assert!(worker.container_name.is_none(), "a container name prevents --scale");
    assert!(worker.ports.is_empty(), "a fixed host port prevents --scale");
}

#[test]
fn ingest_publishes_port_3000_for_the_stripe_cli() {
    let compose = compose();
    let ingest = service(&compose, "ingest");
    assert!(published_ports(ingest).contains(&(3000, 3000)), "{:?}", published_ports(ingest));
    assert_eq!(environment(ingest)["INGEST_ADDR"], "0.0.0.0:3000");
}

#[test]
fn every_service_environment_is_a_valid_settings_set_pointing_at_compose_services() {
    let compose = compose();
    for name in ["migrate", "ingest", "worker", "hookctl", "console"] {
        let env = environment(service(&compose, name));
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        load_as(&binary(service(&compose, name)), vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (key, host) in [("DATABASE_URL", "@postgres:5432/"), ("AMQP_URL", "@rabbitmq:5672/")] {
            if let Some(url) = env.get(key) {
                assert!(url.contains(host), "{name}.{key} points at the {host} service: {url}");
            }
        }
        if name == "ingest" {
            let vars = env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let settings = IngestSettings::from_vars(vars).unwrap();
            settings.secrets.stripe_secrets().expect("ingest has a Stripe secret by default");
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
    let prefix = environment(service(&compose, "ingest"))["AMQP_PREFIX"].clone();
    for name in ["worker", "hookctl", "console", "rabbitmq-setup"] {
        assert_eq!(environment(service(&compose, name))["AMQP_PREFIX"], prefix, "{name}'s AMQP_PREFIX");
    }
}

#[test]
fn the_worker_runs_with_the_benchmarked_defaults() {
    // Compose once set WORKER_CONCURRENCY=8 and WORKER_PREFETCH=16, from before batching: a
    // prefetch of 16 caps every batch at 16 events.
    let compose = compose();
    let env = environment(service(&compose, "worker"));
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let worker = WorkerSettings::from_vars(vars).unwrap();
    let defaults = WorkerSettings::from_vars([]).unwrap();
    assert_eq!(worker.worker.worker_concurrency, defaults.worker.worker_concurrency);
    assert_eq!(worker.worker.worker_batch_size, defaults.worker.worker_batch_size);
    assert_eq!(worker.worker.worker_batch_linger, defaults.worker.worker_batch_linger);
    assert_eq!(worker.worker.worker_prefetch(), defaults.worker.worker_prefetch());
    assert_eq!(worker.database.database_pool_size, defaults.database.database_pool_size);
}

#[test]
fn every_mounted_path_exists_in_the_repository() {
    let compose = compose();
    let mut mounts = 0;
    for (name, service) in &compose.services {
        for (source, target) in bind_mounts(service) {
            assert!(
                source.exists(),
                "{name} mounts {} at {}, which does not exist",
                source.display(),
                target.display()
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 3, "Prometheus and Grafana get their files by bind mounts");
}

#[test]
fn prometheus_loads_the_repositorys_config_and_rules_and_scrapes_the_pipeline() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    let flag = command(prometheus)
        .into_iter()
        .find_map(|arg| arg.strip_prefix("--config.file=").map(str::to_string))
        .expect("--config.file");
    let config_path = repo_path_of(prometheus, &flag);
    assert!(config_path.is_file(), "{} exists", config_path.display());
    // promtool also loads the rule files the configuration names.
    let dir = config_path.parent().unwrap();
    let out = promtool(dir, &["check", "config", config_path.file_name().unwrap().to_str().unwrap()]);
    assert!(out.contains("alerts.yml") && out.contains("SUCCESS"), "{out}");

    let config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let listen_port = |service_name: &str, var: &str| -> u16 {
        let addr = &environment(service(&compose, service_name))[var];
        addr.rsplit(':').next().unwrap().parse().unwrap()
    };
    let expected = BTreeMap::from([
        ("ingest".to_string(), ("ingest".to_string(), listen_port("ingest", "INGEST_METRICS_ADDR"))),
        ("worker".to_string(), ("worker".to_string(), listen_port("worker", "WORKER_ADDR"))),
    ]);
    let mut jobs = BTreeMap::new();
    for job in config["scrape_configs"].as_sequence().unwrap() {
        let sd = &job["dns_sd_configs"][0];
        jobs.insert(
            job["job_name"].as_str().unwrap().to_string(),
            (sd["names"][0].as_str().unwrap().to_string(), sd["port"].as_u64().unwrap() as u16),
        );
    }
    assert_eq!(jobs, expected, "each job scrapes its compose service on the port it listens on");
}

#[test]
fn grafana_is_provisioned_with_the_prometheus_data_source_and_the_dashboard() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    let provisioning = repo_path_of(grafana, "/etc/grafana/provisioning");

    // Data source: the compose Prometheus, by service name and container port.
    let datasources: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(provisioning.join("datasources/prometheus.yml")).unwrap())
            .unwrap();
    let source = &datasources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let prometheus_port = published_ports(service(&compose, "prometheus"))[0].1;
    assert_eq!(source["url"].as_str(), Some(format!("http://prometheus:{prometheus_port}").as_str()));
    let uid = source["uid"].as_str().expect("a fixed uid the dashboard refers to");

    // Dashboards: the provider's folder is mounted from the repository and holds the dashboard.
    let providers: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(provisioning.join("dashboards/webhooks.yml")).unwrap())
            .unwrap();
    let folder = providers["providers"][0]["options"]["path"].as_str().expect("provider path");
    let dashboards = repo_path_of(grafana, folder);
    let dashboard_file = dashboards.join("webhooks.json");
    assert!(dashboard_file.is_file(), "{} exists", dashboard_file.display());
    let home = &environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    assert_eq!(repo_path_of(grafana, home), dashboard_file, "the home page is the pipeline's dashboard");

    // The dashboard's panels use that data source and fit Grafana's 24-column grid.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_file).unwrap()).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let mut ids = BTreeSet::new();
    let mut panels: Vec<serde_json::Value> = dashboard["panels"].as_array().unwrap().clone();
    let mut queries = 0;
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "panel ids are unique ({title})");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{title} fits the grid");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid), "{title} uses the provisioned data source");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"].as_str(), Some(uid), "{title}");
            assert!(target["refId"].is_string() && target["expr"].is_string(), "{title}");
            queries += 1;
        }
    }
    assert!(queries > 0);
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
    let binaries = image_binaries();
    for bin in ["ingest", "worker", "hookctl", "console"] {
        assert!(binaries.contains(bin), "the image has {bin}");
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
fn ci_runs_the_readmes_commands_with_the_prometheus_tools_installed() {
    let readme = repo_file("README.md");
    let ci = repo_file(".ci/run");
    assert!(readme.lines().any(|l| l.trim() == TEST_COMMAND), "README gives `{TEST_COMMAND}` on a line of its own");
    assert!(ci.lines().any(|l| l.trim() == TEST_COMMAND), ".ci/run runs `{TEST_COMMAND}`");
    assert!(
        readme.lines().any(|l| l.trim() == "scripts/run-local.sh"),
        "README gives the one command that runs the stack"
    );
    assert!(readme.lines().any(|l| l.trim() == "docker compose up --build"), "README gives the compose command");
    assert!(
        ci.lines().any(|l| l.contains("apt-get install") && l.contains("prometheus")),
        ".ci/run installs promtool and prometheus"
    );
    assert!(
        ci.lines().any(|l| l.contains("apt-get install") && l.contains("chromium-driver")),
        ".ci/run installs Chromium and chromedriver for the console's browser tests"
    );
    for step in ["scripts/check-release-has-no-failpoints.sh", "scripts/fuzz.sh"] {
        assert!(ci.lines().any(|l| l.trim().starts_with(step)), ".ci/run runs {step}");
        assert!(readme.contains(step), "README explains {step}");
    }
}

/// The original guide's Toss test works on a developer machine because `config/local.toml`
/// opts in to applying unverified Toss events; the stack people deploy never does. Remove
/// `toss_allow_unverified` from config/local.toml, or add `TOSS_ALLOW_UNVERIFIED` to the
/// worker's environment in docker-compose.yml, to see this fail.
#[test]
fn only_the_developer_settings_apply_unverified_toss_events() {
    let local = testkit::prometheus::repo_root().join("config/local.toml");
    let local = local.to_str().unwrap();
    let worker = WorkerSettings::from_file(local, []).expect("config/local.toml loads as the worker's settings");
    assert!(worker.worker.toss_allow_unverified, "config/local.toml opts in, so the guide's curl test works");
    IngestSettings::from_file(local, []).expect("config/local.toml loads as ingest's settings");
    assert!(!WorkerSettings::from_vars([]).unwrap().worker.toss_allow_unverified, "off by default");
    let compose = compose();
    for (name, service) in services_built_here(&compose) {
        assert!(
            !environment(service).contains_key("TOSS_ALLOW_UNVERIFIED"),
            "{name} in docker-compose.yml must not opt in to unverified Toss events"
        );
    }
}
