//! Typed settings, a part per binary over a common part, layered with the `config` crate:
//! built-in defaults, then an optional TOML file named by `WEBHOOKS_CONFIG`, then the
//! environment. Environment names are the flat upper-case field names (`DATABASE_URL`,
//! `AMQP_PREFIX`, `STRIPE_WEBHOOK_SECRET`, ...), exactly as the original guide uses them, and
//! the TOML keys the same names in lower case, whichever part a setting belongs to.
//!
//! A [`Part`] is a group of settings with its own defaults and its own checks: [`CommonSettings`]
//! (every process: the broker and the topology's shape), [`ServiceSettings`] (ingest and the
//! worker: deadlines, log format), the groups two binaries share ([`DatabaseSettings`],
//! [`WebhookSecretSettings`], [`TossApiSettings`]) and each binary's own ([`IngestPart`],
//! [`WorkerPart`], [`NotifySettings`]). A binary's [`Settings`] ([`IngestSettings`],
//! [`WorkerSettings`], [`HookctlSettings`]) is the parts it uses, each read from the same flat
//! keys, so a process reads, checks and refuses only what it uses.
//!
//! Each part is deserialized on its own, straight from the `config` tree, rather than through
//! `#[serde(flatten)]`: a flattened struct buffers every value through serde's untyped
//! `Content`, which does not turn the environment's strings into numbers or booleans
//! (`WORKER_CONCURRENCY=3` fails as "invalid type: string") and whose errors no longer name the
//! key (`Environment::try_parsing`, which would make those numbers, makes a numeric value of
//! a text setting, `AMQP_PREFIX=123`, fail there instead). Read part by part, `config` converts
//! as it always has and names the variable of every malformed value.
//!
//! Secrets are [`SecretString`]s: `Debug` prints `[REDACTED]` and nothing here logs them.

use config::{Config, Environment, File};
use secrecy::SecretString;
use serde::de::DeserializeOwned;

pub mod amqp_nodes;
mod binaries;
mod common;
mod groups;
mod ingest;
mod reconcile;
mod values;
mod worker;

pub use binaries::{env_names, HookctlSettings, IngestSettings, WorkerSettings};
pub use common::{CommonSettings, LogFormat, ServiceSettings};
pub use groups::{DatabaseSettings, TossApiSettings, WebhookSecretSettings};
pub use ingest::{IngestPart, TOSS_SOURCE_ADDRESSES};
pub use reconcile::{ReconcilePart, STRIPE_API_VERSION};
pub use values::{parse_duration, parse_network};
pub use worker::{NotifySettings, WorkerPart, MIN_EVENT_RETENTION};

/// The environment variable that names an optional TOML settings file.
pub const CONFIG_FILE_ENV: &str = "WEBHOOKS_CONFIG";

/// A group of settings read from the flat names of its fields (`foo_bar` from `FOO_BAR`),
/// with its defaults (`Default`, and `#[serde(default)]` on the struct) and its checks.
pub trait Part: DeserializeOwned + Default {
    /// Checks that need more than the field's type, naming the variable of a bad value.
    fn validate(&self) -> Result<(), SettingsError> {
        Ok(())
    }

    /// The environment name of every field, read from the struct's own field list.
    fn env_names() -> Vec<String> {
        serde_aux::serde_introspection::serde_introspect::<Self>().iter().map(|f| f.to_uppercase()).collect()
    }
}

/// The settings of one binary: the parts it uses.
pub trait Settings: Sized {
    /// Reads every part this binary uses from `parts`, each with [`Parts::read`]. The one list
    /// of a binary's parts: loading and [`Settings::env_names`] both go through it.
    fn read(parts: &mut Parts) -> Result<Self, SettingsError>;

    /// The part every binary has: the broker and the topology's shape.
    fn common(&self) -> &CommonSettings;

    /// Defaults, then the file named by `WEBHOOKS_CONFIG` (if set), then the process environment.
    fn load() -> Result<Self, SettingsError> {
        let file = std::env::var(CONFIG_FILE_ENV).ok().filter(|p| !p.is_empty());
        Self::read(&mut Parts::from_sources(file.as_deref(), None)?)
    }

    /// Defaults overridden by the given variables only (tests, tools).
    fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SettingsError> {
        let map = vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::read(&mut Parts::from_sources(None, Some(map))?)
    }

    /// Defaults, then the TOML file at `path`, then the given variables (tests, tools).
    fn from_file<'a>(path: &str, vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SettingsError> {
        let map = vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::read(&mut Parts::from_sources(Some(path), Some(map))?)
    }

    /// The environment name of every setting this binary reads (`DATABASE_URL`,
    /// `AMQP_PREFIX`, ...), so deployment files and documentation can be checked against it.
    fn env_names() -> Vec<String> {
        let mut parts = Parts { config: None, names: Vec::new() };
        Self::read(&mut parts).expect("reading the names of the parts reads no value");
        parts.names
    }
}

/// Where a binary's parts are read from: the layered sources, once built. (Or nothing, when
/// only the names of the parts are wanted: every part is then its defaults.)
pub struct Parts {
    config: Option<Config>,
    names: Vec<String>,
}

impl Parts {
    /// Defaults, then `file` (required when named), then `vars` if given, else the process
    /// environment.
    pub(crate) fn from_sources(
        file: Option<&str>,
        vars: Option<config::Map<String, String>>,
    ) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(File::with_name(path).required(true));
        }
        builder = builder.add_source(Environment::default().source(vars));
        let config = builder.build().map_err(from_config_error)?;
        Ok(Self { config: Some(config), names: Vec::new() })
    }

    /// Reads and checks one part. Keys of other parts are left alone, so each part sees only
    /// its own fields, with their flat names.
    pub fn read<P: Part>(&mut self) -> Result<P, SettingsError> {
        self.names.extend(P::env_names());
        let Some(config) = &self.config else { return Ok(P::default()) };
        let part: P = config.clone().try_deserialize().map_err(from_config_error)?;
        part.validate()?;
        Ok(part)
    }
}

/// A setting that is missing or malformed. The message names the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("setting {name} is required: {why}")]
    Missing { name: &'static str, why: &'static str },
    #[error("setting {name} is invalid: {why}")]
    Invalid { name: String, why: String },
    #[error("cannot read settings: {0}")]
    Load(String),
}

impl SettingsError {
    pub(crate) fn invalid(name: &str, why: impl Into<String>) -> Self {
        Self::Invalid { name: name.to_uppercase(), why: why.into() }
    }
}

/// Refuses 0 for each `(field, value)`, naming the first variable that is 0.
pub(crate) fn at_least_one(values: &[(&str, usize)]) -> Result<(), SettingsError> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(SettingsError::invalid(name, "must be at least 1")),
        None => Ok(()),
    }
}

/// A URL with its password replaced, safe for log lines; for a comma-separated list
/// (`AMQP_URL` naming several nodes), every password in it.
pub fn redacted_url(url: &SecretString) -> String {
    amqp_nodes::redacted_urls(url)
}

fn from_config_error(error: config::ConfigError) -> SettingsError {
    match error {
        config::ConfigError::Type { key: Some(key), unexpected, expected, .. } => {
            SettingsError::invalid(&key, format!("expected {expected}, found {unexpected}"))
        }
        config::ConfigError::At { error, key: Some(key), .. } => SettingsError::invalid(&key, error.to_string()),
        other => SettingsError::Load(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
