//! Reading docker-compose.yml, the Dockerfile and the workspace: the services, their commands,
//! environments, mounts and ports, and the binaries the image has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use compose_spec::service::healthcheck::Test;
use compose_spec::service::volumes::{into_long_iter, Mount};
use compose_spec::service::{Command, Condition, Healthcheck};
use compose_spec::{Compose, ListOrMap, Service, ShortOrLong};
use shared::settings::{HookctlSettings, IngestSettings, Settings, SettingsError, WorkerSettings};
use testkit::compose::parse_compose;
use testkit::prometheus::repo_root;

pub(super) fn repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The variables .env.example lists (`NAME=` lines): what compose requires to start.
pub(super) fn required_variables() -> Vec<(String, String)> {
    repo_file(".env.example")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.to_string()))
        .collect()
}

/// A value for each required variable, as an operator's .env gives them.
pub(super) fn operator_env() -> BTreeMap<String, String> {
    required_variables().into_iter().map(|(name, _)| (name.clone(), format!("{}-value", name.to_lowercase()))).collect()
}

/// docker-compose.yml as it runs with `env` set.
pub(super) fn parse_with(text: &str, env: &BTreeMap<String, String>) -> Result<Compose, String> {
    let env: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    parse_compose(text, &env)
}

/// docker-compose.yml as it runs with every required variable set and nothing else.
pub(super) fn compose() -> Compose {
    parse_with(&repo_file("docker-compose.yml"), &operator_env())
        .unwrap_or_else(|e| panic!("docker-compose.yml does not follow the Compose specification: {e}"))
}

/// docker-compose.yml as YAML, before interpolation: what the file itself says.
pub(super) fn raw_compose() -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml is YAML")
}

pub(super) fn service<'a>(compose: &'a Compose, name: &str) -> &'a Service {
    compose
        .services
        .iter()
        .find(|(id, _)| id.as_str() == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("service {name} is missing"))
}

pub(super) fn services_built_here(compose: &Compose) -> Vec<(String, &Service)> {
    compose.services.iter().filter(|(_, s)| s.build.is_some()).map(|(id, s)| (id.to_string(), s)).collect()
}

pub(super) fn command(service: &Service) -> Vec<String> {
    list(&service.command)
}

/// What the container runs: its entrypoint, if the service sets one, then its command.
pub(super) fn invocation(service: &Service) -> Vec<String> {
    let mut args = list(&service.entrypoint);
    args.extend(command(service));
    args
}

fn list(command: &Option<Command>) -> Vec<String> {
    match command {
        Some(Command::List(list)) => list.clone(),
        Some(Command::String(s)) => panic!("command {s:?} should be a list (no shell in the image)"),
        None => Vec::new(),
    }
}

/// The health check's command (`CMD` form), or the shell running it (`CMD-SHELL` form).
pub(super) fn health_command(service: &Service) -> Option<Vec<String>> {
    match &service.healthcheck {
        Some(Healthcheck::Command(check)) => match &check.test {
            Some(Test::Command(list)) => Some(list.clone()),
            Some(Test::ShellCommand(s)) => Some(vec!["/bin/sh".into(), "-c".into(), s.clone()]),
            None => None,
        },
        _ => None,
    }
}

pub(super) fn environment(service: &Service) -> BTreeMap<String, String> {
    match &service.environment {
        ListOrMap::Map(map) => {
            map.iter().map(|(k, v)| (k.to_string(), v.as_ref().map(ToString::to_string).unwrap_or_default())).collect()
        }
        ListOrMap::List(list) => list
            .iter()
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    }
}

pub(super) fn depends_on(service: &Service, on: &str) -> Condition {
    match &service.depends_on {
        ShortOrLong::Long(map) => map
            .iter()
            .find(|(id, _)| id.as_str() == on)
            .map(|(_, d)| d.condition)
            .unwrap_or_else(|| panic!("no depends_on.{on}")),
        ShortOrLong::Short(_) => panic!("depends_on should say which condition it waits for"),
    }
}

/// Bind mounts of a service: (path in the repository, path in the container).
pub(super) fn bind_mounts(service: &Service) -> Vec<(PathBuf, PathBuf)> {
    into_long_iter(service.volumes.clone())
        .filter_map(|mount| match mount {
            Mount::Bind(bind) => {
                let source = bind.source.as_path();
                assert!(source.is_relative(), "bind mounts come from the repository, not {}", source.display());
                Some((repo_root().join(source), bind.common.target.as_path().to_path_buf()))
            }
            _ => None,
        })
        .collect()
}

/// Where a container path of `service` comes from in the repository (through a bind mount).
pub(super) fn repo_path_of(service: &Service, container_path: &str) -> PathBuf {
    let container_path = Path::new(container_path);
    bind_mounts(service)
        .into_iter()
        .filter_map(|(source, target)| container_path.strip_prefix(&target).ok().map(|rest| source.join(rest)))
        .next()
        .unwrap_or_else(|| panic!("{} is not mounted from the repository", container_path.display()))
}

/// Host and container port pairs of a service.
pub(super) fn published_ports(service: &Service) -> Vec<(u16, u16)> {
    compose_spec::service::ports::into_long_iter(service.ports.clone())
        .map(|port| (port.published.expect("published port").start(), port.target))
        .collect()
}

/// The host address each published port of a service listens on (`None`: every address).
pub(super) fn published_hosts(service: &Service) -> Vec<Option<std::net::IpAddr>> {
    compose_spec::service::ports::into_long_iter(service.ports.clone()).map(|port| port.host_ip).collect()
}

/// The `${NAME...}` references in `text`: the name and what follows it (`:?message`, `:-`, ...).
pub(super) fn references(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let inner = &rest[start + 2..];
        let end = inner.find('}').expect("a closed ${");
        let body = &inner[..end];
        let name_end = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
        found.push((body[..name_end].to_string(), body[name_end..].to_string()));
        rest = &inner[end + 1..];
    }
    found
}

/// Binaries the image has: built with `--bin` and copied to /usr/local/bin by the Dockerfile.
pub(super) fn image_binaries() -> BTreeSet<String> {
    let dockerfile = repo_file("Dockerfile");
    let words: Vec<&str> = dockerfile.split_whitespace().collect();
    let built: BTreeSet<String> = words.windows(2).filter(|w| w[0] == "--bin").map(|w| w[1].to_string()).collect();
    let copied: BTreeSet<String> =
        words.iter().filter_map(|w| w.strip_prefix("target/release/")).map(str::to_string).collect();
    assert!(dockerfile.contains("COPY --from=build /out/ /usr/local/bin/"), "binaries land on the PATH");
    assert_eq!(built, copied, "the Dockerfile copies what it builds");
    built
}

/// Binary targets of the workspace (`[[bin]]` entries, or a package's `src/main.rs`).
pub(super) fn workspace_binaries() -> BTreeSet<String> {
    let manifest: toml::Value = toml::from_str(&repo_file("Cargo.toml")).unwrap();
    let mut binaries = BTreeSet::new();
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        let package: toml::Value = toml::from_str(&repo_file(&format!("{member}/Cargo.toml"))).unwrap();
        for bin in package.get("bin").and_then(|b| b.as_array()).into_iter().flatten() {
            binaries.insert(bin["name"].as_str().unwrap().to_string());
        }
        if repo_root().join(member).join("src/main.rs").exists() {
            binaries.insert(package["package"]["name"].as_str().unwrap().to_string());
        }
    }
    binaries
}

/// Whether the binary accepts `args` (its own command-line parser decides).
pub(super) fn accepts(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("worker") => worker::cli::WorkerCli::try_parse_from(args).map(drop).map_err(|e| e.to_string()),
        Some("hookctl") => hookctl::cli::Cli::try_parse_from(args).map(drop).map_err(|e| e.to_string()),
        Some("console") => console::cli::Cli::try_parse_from(args).map(drop).map_err(|e| e.to_string()),
        // ingest reads only its environment.
        Some("ingest") if args.len() == 1 => Ok(()),
        other => Err(format!("no parser known for {other:?} {args:?}")),
    }
}

/// The binary a service of our image runs: the first word of its command.
pub(super) fn binary(service: &Service) -> String {
    invocation(service).first().cloned().expect("a service of our image names its binary")
}

/// The settings names `binary` reads.
pub(super) fn names_read_by(binary: &str) -> Vec<String> {
    match binary {
        "ingest" => IngestSettings::env_names(),
        "worker" => WorkerSettings::env_names(),
        "hookctl" => HookctlSettings::env_names(),
        "console" => {
            let mut names = console::PipelineSettings::env_names();
            names.extend(console::ConsoleSettings::env_names());
            names
        }
        other => panic!("{other} is not a binary with settings"),
    }
}

/// Loads `vars` as `binary`'s settings, with its checks.
pub(super) fn load_as(binary: &str, vars: Vec<(&str, &str)>) -> Result<(), SettingsError> {
    match binary {
        "ingest" => IngestSettings::from_vars(vars).map(drop),
        "worker" => WorkerSettings::from_vars(vars).map(drop),
        "hookctl" => HookctlSettings::from_vars(vars).map(drop),
        "console" => {
            let own: Vec<(&str, &str)> = vars.iter().copied().filter(|(k, _)| k.starts_with("CONSOLE_")).collect();
            console::ConsoleSettings::from_vars(own).map_err(|e| SettingsError::Load(e.to_string()))?;
            console::PipelineSettings::from_vars(vars).map(drop)
        }
        other => panic!("{other} is not a binary with settings"),
    }
}
