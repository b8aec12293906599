//! The console's own settings, layered as the pipeline's are (built-in defaults, then the TOML
//! file named by `WEBHOOKS_CONFIG`, then the environment; flat names: field `console_addr` is
//! read from `CONSOLE_ADDR`). What it shares with the other binaries (`DATABASE_URL`,
//! `AMQP_URL`, `AMQP_PREFIX`, `RETRY_DELAYS`, the webhook secrets a replay is checked with, the
//! Toss API a re-check needs, the listener's timeouts and the log format) is [`PipelineSettings`]:
//! the same parts of `shared::settings` the other binaries read, loaded from the same sources.

use std::net::SocketAddr;
use std::time::Duration;

use config::{Config, Environment, File};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use shared::settings::{
    CommonSettings, DatabaseSettings, Parts, ReconcilePart, ServiceSettings, Settings, SettingsError, TossApiSettings,
    WebhookSecretSettings,
};

use crate::auth::users::{parse_users, User};

/// The parts of the pipeline's settings the console reads: hookctl's (it runs hookctl's
/// actions) and a service's listener timeouts and log format.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
    pub database: DatabaseSettings,
    pub secrets: WebhookSecretSettings,
    pub toss_api: TossApiSettings,
    /// For `STRIPE_API_KEY` only: with it, a replay believes the events reconciliation
    /// fetched (their `x-fetched-mac` is keyed from it), as a worker does.
    pub reconcile: ReconcilePart,
}

impl Settings for PipelineSettings {
    fn read(parts: &mut Parts) -> Result<Self, SettingsError> {
        Ok(Self {
            common: parts.read()?,
            service: parts.read()?,
            database: parts.read()?,
            secrets: parts.read()?,
            toss_api: parts.read()?,
            reconcile: parts.read()?,
        })
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// Every setting of the console. `Debug` shows no password hash.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ConsoleSettings {
    /// Where the console listens. Loopback by default: put it behind your SSO proxy or an SSH
    /// tunnel rather than on a public address.
    pub console_addr: SocketAddr,
    /// Users who may log in with a password: entries `name:role:argon2-hash` separated by `;`
    /// or new lines, role `viewer` or `operator`; `console hash-password` makes the hash.
    #[serde(deserialize_with = "users")]
    pub console_users: Vec<User>,
    /// A session ends this long after its login, whatever happens.
    #[serde(deserialize_with = "duration")]
    pub console_session_ttl: Duration,
    /// A session ends after this long without a request.
    #[serde(deserialize_with = "duration")]
    pub console_session_idle: Duration,
    /// Addresses (CIDRs) of the SSO proxies whose identity headers are believed. Empty: no
    /// header is ever believed, and a request carrying one is refused.
    #[serde(deserialize_with = "networks")]
    pub console_trusted_proxies: Vec<IpNet>,
    /// The header in which a trusted proxy names the user.
    pub console_user_header: String,
    /// The header in which a trusted proxy gives the role (`viewer` or `operator`; missing
    /// means `viewer`).
    pub console_role_header: String,
    /// The workers' health listeners (`WORKER_ADDR`s) whose `/readyz` the overview shows,
    /// comma-separated `host:port`.
    #[serde(deserialize_with = "list")]
    pub console_worker_addrs: Vec<String>,
    /// `Secure` on the session cookie: `auto` (on unless the console listens on a loopback
    /// address), `true` or `false`.
    pub console_cookie_secure: CookieSecure,
}

/// Whether the session cookie carries `Secure`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CookieSecure {
    /// On unless the console listens on a loopback address (plain http on this machine).
    #[default]
    Auto,
    True,
    False,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            console_addr: ([127, 0, 0, 1], 3002).into(),
            console_users: Vec::new(),
            console_session_ttl: Duration::from_secs(8 * 3600),
            console_session_idle: Duration::from_secs(30 * 60),
            console_trusted_proxies: Vec::new(),
            console_user_header: "x-forwarded-user".into(),
            console_role_header: "x-forwarded-role".into(),
            console_worker_addrs: Vec::new(),
            console_cookie_secure: CookieSecure::Auto,
        }
    }
}

/// A console setting that is missing or malformed; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleSettingsError {
    #[error("setting {name} is invalid: {why}")]
    Invalid { name: String, why: String },
    #[error("cannot read settings: {0}")]
    Load(String),
}

impl ConsoleSettings {
    /// Defaults, then the file named by `WEBHOOKS_CONFIG` (if set), then the environment.
    pub fn load() -> Result<Self, ConsoleSettingsError> {
        let file = std::env::var(shared::settings::CONFIG_FILE_ENV).ok().filter(|p| !p.is_empty());
        Self::load_from(file.as_deref(), None)
    }

    /// Defaults overridden by the given variables only (tests).
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, ConsoleSettingsError> {
        let map = vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::load_from(None, Some(map))
    }

    fn load_from(file: Option<&str>, vars: Option<config::Map<String, String>>) -> Result<Self, ConsoleSettingsError> {
        let mut builder = Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(File::with_name(path).required(true));
        }
        builder = builder.add_source(Environment::default().source(vars));
        let settings: Self = builder.build().and_then(Config::try_deserialize).map_err(from_config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConsoleSettingsError> {
        let invalid = |name: &str, why: &str| ConsoleSettingsError::Invalid { name: name.into(), why: why.into() };
        if self.console_session_ttl < Duration::from_secs(60) || self.console_session_idle < Duration::from_secs(60) {
            return Err(invalid("CONSOLE_SESSION_TTL", "CONSOLE_SESSION_TTL and CONSOLE_SESSION_IDLE: at least 1m"));
        }
        for (name, header) in
            [("CONSOLE_USER_HEADER", &self.console_user_header), ("CONSOLE_ROLE_HEADER", &self.console_role_header)]
        {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(invalid(name, "not a header name"));
            }
        }
        Ok(())
    }

    /// Whether the session cookie carries `Secure`, given the address actually bound.
    pub fn cookie_secure(&self, bound: SocketAddr) -> bool {
        match self.console_cookie_secure {
            CookieSecure::True => true,
            CookieSecure::False => false,
            CookieSecure::Auto => !bound.ip().is_loopback(),
        }
    }

    /// The environment name of every console setting, read from the struct's field list.
    pub fn env_names() -> Vec<String> {
        serde_aux::serde_introspection::serde_introspect::<Self>().iter().map(|f| f.to_uppercase()).collect()
    }
}

fn from_config_error(error: config::ConfigError) -> ConsoleSettingsError {
    match error {
        config::ConfigError::Type { key: Some(key), unexpected, expected, .. } => ConsoleSettingsError::Invalid {
            name: key.to_uppercase(),
            why: format!("expected {expected}, found {unexpected}"),
        },
        config::ConfigError::At { error, key: Some(key), .. } => {
            ConsoleSettingsError::Invalid { name: key.to_uppercase(), why: error.to_string() }
        }
        other => ConsoleSettingsError::Load(other.to_string()),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    shared::settings::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = String::deserialize(d)?;
    Ok(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    list(d)?.iter().map(|n| shared::settings::parse_network(n).map_err(serde::de::Error::custom)).collect()
}

fn users<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<User>, D::Error> {
    parse_users(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_port_3002_with_no_user() {
        let settings = ConsoleSettings::from_vars([]).unwrap();
        assert_eq!(settings.console_addr, "127.0.0.1:3002".parse().unwrap());
        assert!(settings.console_users.is_empty());
        assert!(!settings.cookie_secure(settings.console_addr), "plain http on loopback keeps the cookie");
        assert!(settings.cookie_secure("0.0.0.0:3002".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_variable() {
        let error = ConsoleSettings::from_vars([("CONSOLE_ADDR", "nowhere")]).unwrap_err().to_string();
        assert!(error.contains("CONSOLE_ADDR"), "{error}");
        let error = ConsoleSettings::from_vars([("CONSOLE_USERS", "ann:admin:x")]).unwrap_err().to_string();
        assert!(error.contains("CONSOLE_USERS"), "{error}");
        let error = ConsoleSettings::from_vars([("CONSOLE_TRUSTED_PROXIES", "10.0.0.0/33")]).unwrap_err().to_string();
        assert!(error.contains("CONSOLE_TRUSTED_PROXIES"), "{error}");
    }

    #[test]
    fn env_names_are_flat_and_prefixed() {
        let names = ConsoleSettings::env_names();
        assert!(names.contains(&"CONSOLE_ADDR".to_string()));
        assert!(names.iter().all(|n| n.starts_with("CONSOLE_")), "{names:?}");
    }
}
