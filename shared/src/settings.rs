//! One typed settings struct for every binary, layered with the `config` crate:
//! built-in defaults, then an optional TOML file named by `WEBHOOKS_CONFIG`, then the
//! environment. Environment names are the flat upper-case field names (`DATABASE_URL`,
//! `AMQP_PREFIX`, `STRIPE_WEBHOOK_SECRET`, ...), exactly as the original guide uses them.
//!
//! Secrets are [`SecretString`]s: `Debug` prints `[REDACTED]` and nothing here logs them.

use std::net::SocketAddr;
use std::time::Duration;

use config::{Config, Environment, File};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub mod amqp_nodes;
mod values;

use values::{duration, duration_list, empty_as_none, empty_path_as_none, networks, split_list};
pub use values::{parse_duration, parse_network};

/// Toss Payments' published webhook source addresses. `TOSS_ALLOWED_IPS=toss` expands to these.
pub const TOSS_SOURCE_ADDRESSES: [&str; 4] = ["13.124.18.147", "13.124.108.35", "3.36.173.151", "3.38.81.32"];

/// The environment variable that names an optional TOML settings file.
pub const CONFIG_FILE_ENV: &str = "WEBHOOKS_CONFIG";

/// Output format of log lines.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, the default on a developer machine.
    #[default]
    Text,
    /// One JSON object per line, for log shippers in production.
    Json,
}

/// Every setting of the pipeline. Field `foo_bar` is read from `FOO_BAR`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Postgres connection string (may contain a password, hence secret).
    pub database_url: SecretString,
    /// Connections in the worker's pool.
    pub database_pool_size: usize,
    /// PEM file with the CA certificate(s) that sign the Postgres server's certificate, checked
    /// with `sslmode=verify-ca` or `verify-full` in `DATABASE_URL` (libpq's `sslrootcert=<file>`
    /// in the URL does the same).
    #[serde(deserialize_with = "empty_path_as_none")]
    pub database_ca_file: Option<std::path::PathBuf>,
    /// How long a worker's session may stay inside a transaction without running a statement
    /// before Postgres ends the session (`idle_in_transaction_session_timeout`) and so releases
    /// its row locks: a worker stalled mid-transaction cannot keep payments locked for good.
    #[serde(deserialize_with = "duration")]
    pub database_idle_in_transaction_timeout: Duration,
    /// RabbitMQ URL (`amqp://user:pass@host:port/vhost`), or the URLs of a cluster's nodes,
    /// comma-separated: processes connect to the first that answers and move on to the next
    /// when their node goes away.
    pub amqp_url: SecretString,
    /// Every exchange and queue name starts with this prefix.
    pub amqp_prefix: String,
    /// Where ingest listens. Port 3000 keeps `stripe listen --forward-to localhost:3000/...` working.
    pub ingest_addr: SocketAddr,
    /// Where ingest serves `/metrics`: a listener of its own, off the public webhook port.
    /// Loopback by default, so only a scraper on the same host (or network namespace) reads
    /// it; port 0 picks a free port.
    pub ingest_metrics_addr: SocketAddr,
    /// Where a worker serves `/healthz`, `/readyz` and `/metrics`. Port 0 picks a free port.
    pub worker_addr: SocketAddr,

    /// Stripe endpoint secrets (`whsec_...`), comma-separated while a secret is being rolled.
    #[serde(deserialize_with = "empty_as_none")]
    pub stripe_webhook_secret: Option<SecretString>,
    /// How far a `Stripe-Signature` timestamp may be from now, either way. 300 s is what every
    /// official Stripe SDK uses.
    #[serde(deserialize_with = "duration")]
    pub stripe_tolerance: Duration,
    /// Toss security key for `payout.changed` / `seller.changed` signatures.
    #[serde(deserialize_with = "empty_as_none")]
    pub toss_webhook_secret: Option<SecretString>,
    /// How far a signed Toss delivery's `tosspayments-webhook-transmission-time` may be from
    /// now, either way: a captured delivery cannot be replayed after it. 300 s, as Stripe's.
    #[serde(deserialize_with = "duration")]
    pub toss_tolerance: Duration,
    /// Largest accepted Toss body. Toss payment objects are a few KiB, and anyone can post an
    /// unsigned payment event, so Toss gets a much smaller cap than `MAX_BODY_BYTES`.
    pub toss_max_body_bytes: usize,
    /// Toss API secret key (`test_sk_...` / `live_sk_...`), used to fetch payments back.
    #[serde(deserialize_with = "empty_as_none")]
    pub toss_secret_key: Option<SecretString>,
    /// Base URL of the Toss API (a local fake in tests).
    pub toss_api_base: String,
    /// Connect plus response deadline for one Toss API call.
    #[serde(deserialize_with = "duration")]
    pub toss_api_timeout: Duration,
    /// Fetch Toss payments back before applying them. Unset: on exactly when `TOSS_SECRET_KEY` is set.
    pub toss_fetch_back: Option<bool>,
    /// Development only: apply unsigned Toss payment events that nothing verified (the original
    /// guide's "the order exists" check). Off by default; the worker warns loudly when it is on.
    pub toss_allow_unverified: bool,
    /// Source networks allowed to post Toss webhooks (comma-separated CIDRs or addresses; the
    /// word `toss` stands for Toss's published addresses). Empty: no source check.
    #[serde(deserialize_with = "networks")]
    pub toss_allowed_ips: Vec<IpNet>,
    /// How many reverse proxies in front of ingest append to `X-Forwarded-For`. 0 trusts no header.
    pub trusted_proxy_hops: usize,
    /// Addresses of those proxies (CIDRs); `X-Forwarded-For` is read only when the hop that
    /// added it is one of them. Required when `TRUSTED_PROXY_HOPS` is above 0.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,

    /// Largest accepted webhook body. Providers send a few KiB; 1 MiB leaves room and bounds memory.
    pub max_body_bytes: usize,
    /// A client must finish sending its request headers within this time.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A client must finish sending its body within this time.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Longest wait for a publisher confirm before answering 503.
    #[serde(deserialize_with = "duration")]
    pub publish_timeout: Duration,
    /// Requests handled at once by ingest; beyond it answers 503 with `Retry-After`. Bodies
    /// are read only within this bound, so bodies take at most this × `MAX_BODY_BYTES`.
    pub max_inflight_requests: usize,
    /// Open connections ingest holds at once (idle keep-alive ones included). At the cap, the
    /// oldest connection that has not sent a byte is closed; if all are busy, accepting waits.
    /// Keep it below the process's file-descriptor limit.
    pub max_connections: usize,
    /// Time allowed to finish in-flight work after SIGTERM / Ctrl-C.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,

    /// Unacknowledged deliveries the broker may push to one worker. Unset: the batch size times
    /// the concurrency, so every batch slot can fill while the others commit, without hoarding
    /// more than one round of batches that other workers could take.
    pub worker_prefetch: Option<u16>,
    /// Batches one worker processes at the same time (each holds one pooled connection for one
    /// transaction).
    pub worker_concurrency: usize,
    /// Most deliveries applied in one transaction. A batch is whatever is already buffered when
    /// the first delivery arrives, so a lone event is never held back to fill one.
    pub worker_batch_size: usize,
    /// How long a batch may wait for more deliveries after its first one. 0 (the default): not
    /// at all; under load the buffer fills batches by itself.
    #[serde(deserialize_with = "duration")]
    pub worker_batch_linger: Duration,
    /// Delay tiers for retries (comma-separated durations); the last one repeats.
    #[serde(deserialize_with = "duration_list")]
    pub retry_delays: Vec<Duration>,
    /// Attempts before a message goes to the dead letters (the first delivery counts as one).
    pub retry_max_attempts: u32,
    /// Redeliveries after which the work queue parks a message that crashes every worker.
    /// Every return counts (a worker's restart returns its prefetched deliveries too), so this
    /// is well above what restarts and reconnects produce.
    pub delivery_limit: u32,

    /// Outbox rows the relay publishes per batch.
    pub outbox_batch_size: i64,
    /// How often the relay looks for outbox rows nobody is publishing (their worker died, or
    /// the broker refused them).
    #[serde(deserialize_with = "duration")]
    pub outbox_poll_interval: Duration,
    /// How long the worker that committed a notification owns its outbox row before the relay
    /// of any worker may publish it instead. Longer than a publisher confirm can take
    /// (`PUBLISH_TIMEOUT`); shorter only means an occasional duplicate message (same id).
    #[serde(deserialize_with = "duration")]
    pub outbox_lease: Duration,
    /// Publishes the broker refused (nack, no confirm in time) before an outbox row is set
    /// aside as dead (`hookctl dead list --notifications`). Time without a broker connection
    /// does not count.
    pub outbox_max_attempts: i32,
    /// Where to POST notifications. Unset: delivery is off.
    #[serde(deserialize_with = "empty_as_none")]
    pub notify_webhook_url: Option<SecretString>,
    /// Allows a plain `http://` `NOTIFY_WEBHOOK_URL` to a host other than a loopback address.
    /// Off: notifications (and their signatures) go only over TLS, except to this machine.
    pub notify_allow_http: bool,
    /// Standard Webhooks signing secret (`whsec_<base64>`) for delivered notifications.
    #[serde(deserialize_with = "empty_as_none")]
    pub notify_webhook_secret: Option<SecretString>,
    /// TCP connect deadline for a notification POST.
    #[serde(deserialize_with = "duration")]
    pub notify_connect_timeout: Duration,
    /// Whole-request deadline for a notification POST.
    #[serde(deserialize_with = "duration")]
    pub notify_timeout: Duration,
    /// Notification POSTs in flight at once per worker.
    pub notify_concurrency: usize,

    /// How long a final `webhook_events` row (`applied`, `ignored`, `dead`) is kept after it was
    /// processed; the worker prunes older ones. `0` keeps everything. At least
    /// [`MIN_EVENT_RETENTION`] otherwise.
    #[serde(deserialize_with = "duration")]
    pub event_retention: Duration,

    /// `text` (default) or `json`.
    pub log_format: LogFormat,
}

/// The shortest `EVENT_RETENTION` accepted (other than `0`). Providers retry an event for days
/// (Stripe up to 3, Toss almost 4); an event pruned before its last retry would no longer be
/// recognised as a duplicate when that retry arrives.
pub const MIN_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretString::from("postgres://postgres@127.0.0.1:5432/webhooks"),
            database_pool_size: 16,
            database_ca_file: None,
            database_idle_in_transaction_timeout: Duration::from_secs(30),
            amqp_url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_prefix: "webhooks".into(),
            ingest_addr: ([0, 0, 0, 0], 3000).into(),
            ingest_metrics_addr: ([127, 0, 0, 1], 9091).into(),
            worker_addr: ([0, 0, 0, 0], 9090).into(),
            stripe_webhook_secret: None,
            stripe_tolerance: Duration::from_secs(300),
            toss_webhook_secret: None,
            toss_tolerance: Duration::from_secs(300),
            toss_max_body_bytes: 64 * 1024,
            toss_secret_key: None,
            toss_api_base: "https://api.tosspayments.com".into(),
            toss_api_timeout: Duration::from_secs(10),
            toss_fetch_back: None,
            toss_allow_unverified: false,
            toss_allowed_ips: Vec::new(),
            trusted_proxy_hops: 0,
            trusted_proxies: Vec::new(),
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(5),
            max_inflight_requests: 1024,
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(25),
            worker_prefetch: None,
            worker_concurrency: 2,
            worker_batch_size: 100,
            worker_batch_linger: Duration::ZERO,
            retry_delays: [1, 10, 60, 600, 3600].map(Duration::from_secs).to_vec(),
            retry_max_attempts: 8,
            delivery_limit: 20,
            outbox_batch_size: 100,
            outbox_poll_interval: Duration::from_secs(1),
            outbox_lease: Duration::from_secs(30),
            outbox_max_attempts: 20,
            notify_webhook_url: None,
            notify_allow_http: false,
            notify_webhook_secret: None,
            notify_connect_timeout: Duration::from_secs(5),
            notify_timeout: Duration::from_secs(10),
            notify_concurrency: 4,
            event_retention: Duration::from_secs(30 * 24 * 3600),
            log_format: LogFormat::Text,
        }
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
    fn invalid(name: &str, why: impl Into<String>) -> Self {
        Self::Invalid { name: name.to_uppercase(), why: why.into() }
    }
}

impl Settings {
    /// Defaults, then the file named by `WEBHOOKS_CONFIG` (if set), then the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        let file = std::env::var(CONFIG_FILE_ENV).ok().filter(|p| !p.is_empty());
        Self::load_from(file.as_deref(), None)
    }

    /// Defaults overridden by the given variables only (tests, tools).
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SettingsError> {
        let map = vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::load_from(None, Some(map))
    }

    fn load_from(file: Option<&str>, vars: Option<config::Map<String, String>>) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(File::with_name(path).required(true));
        }
        builder = builder.add_source(Environment::default().source(vars));
        let settings: Settings = builder.build().and_then(Config::try_deserialize).map_err(from_config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that hold for every binary. Role-specific requirements are separate methods.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let prefix_ok = !self.amqp_prefix.is_empty()
            && self.amqp_prefix.len() <= 100
            && self.amqp_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !prefix_ok {
            return Err(SettingsError::invalid("amqp_prefix", "use 1 to 100 of A-Z a-z 0-9 . - _"));
        }
        let nodes = amqp_nodes::node_urls(&self.amqp_url);
        if nodes.is_empty() {
            return Err(SettingsError::invalid("amqp_url", "names no broker"));
        }
        for (i, node) in nodes.iter().enumerate() {
            let node = node.expose_secret();
            if !(node.starts_with("amqp://") || node.starts_with("amqps://")) {
                // The value is not echoed: it may hold a password.
                let which = if nodes.len() == 1 { String::new() } else { format!("entry {} ", i + 1) };
                return Err(SettingsError::invalid("amqp_url", format!("{which}must start with amqp:// or amqps://")));
            }
        }
        let db = self.database_url.expose_secret();
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return Err(SettingsError::invalid("database_url", "must start with postgres:// or postgresql://"));
        }
        if self.database_idle_in_transaction_timeout < Duration::from_secs(1) {
            return Err(SettingsError::invalid(
                "database_idle_in_transaction_timeout",
                "at least 1s: a busy worker's transactions must not be cut",
            ));
        }
        if self.retry_delays.is_empty() {
            return Err(SettingsError::invalid("retry_delays", "needs at least one delay"));
        }
        if self.retry_max_attempts == 0 {
            return Err(SettingsError::invalid("retry_max_attempts", "must be at least 1"));
        }
        for (name, value) in [
            ("worker_concurrency", self.worker_concurrency),
            ("worker_prefetch", self.worker_prefetch.map_or(1, usize::from)),
            ("worker_batch_size", self.worker_batch_size),
            ("outbox_max_attempts", self.outbox_max_attempts.max(0) as usize),
            ("max_inflight_requests", self.max_inflight_requests),
            ("max_connections", self.max_connections),
            ("max_body_bytes", self.max_body_bytes),
            ("toss_max_body_bytes", self.toss_max_body_bytes),
            ("database_pool_size", self.database_pool_size),
            ("notify_concurrency", self.notify_concurrency),
            ("delivery_limit", self.delivery_limit as usize),
        ] {
            if value == 0 {
                return Err(SettingsError::invalid(name, "must be at least 1"));
            }
        }
        if self.outbox_batch_size < 1 {
            return Err(SettingsError::invalid("outbox_batch_size", "must be at least 1"));
        }
        if let Some(secrets) = &self.stripe_webhook_secret {
            if split_list(secrets.expose_secret()).next().is_none() {
                return Err(SettingsError::invalid("stripe_webhook_secret", "holds no secret between its commas"));
            }
        }
        if let Some(url) = &self.notify_webhook_url {
            let parsed = url::Url::parse(url.expose_secret())
                .map_err(|e| SettingsError::invalid("notify_webhook_url", e.to_string()))?;
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            match parsed.scheme() {
                "https" => {}
                "http" if loopback || self.notify_allow_http => {}
                "http" => {
                    return Err(SettingsError::invalid(
                        "notify_webhook_url",
                        "must be https (http only to a loopback address, or with NOTIFY_ALLOW_HTTP=true)",
                    ))
                }
                _ => return Err(SettingsError::invalid("notify_webhook_url", "must be https (or http)")),
            }
            let secret = self.notify_webhook_secret.as_ref().ok_or(SettingsError::Missing {
                name: "NOTIFY_WEBHOOK_SECRET",
                why: "notifications posted to NOTIFY_WEBHOOK_URL are signed with it",
            })?;
            // Parsed as the signer parses it, so a secret accepted here signs.
            let key = secret.expose_secret();
            standardwebhooks::Webhook::new(key)
                .map_err(|_| SettingsError::invalid("notify_webhook_secret", "expected whsec_ followed by base64"))?;
            if key.strip_prefix("whsec_").unwrap_or(key).is_empty() {
                return Err(SettingsError::invalid("notify_webhook_secret", "the key is empty"));
            }
        }
        if self.trusted_proxy_hops > 0 && self.trusted_proxies.is_empty() {
            return Err(SettingsError::Missing {
                name: "TRUSTED_PROXIES",
                why: "with TRUSTED_PROXY_HOPS above 0, X-Forwarded-For is read only from these proxies",
            });
        }
        url::Url::parse(&self.toss_api_base).map_err(|e| SettingsError::invalid("toss_api_base", e.to_string()))?;
        if !self.event_retention.is_zero() && self.event_retention < MIN_EVENT_RETENTION {
            return Err(SettingsError::invalid(
                "event_retention",
                "0 keeps every event; otherwise at least 7d, longer than providers retry an event",
            ));
        }
        Ok(())
    }

    /// The environment name of every setting (`DATABASE_URL`, `AMQP_PREFIX`, ...), read from the
    /// struct's own field list, so deployment files and documentation can be checked against it.
    pub fn env_names() -> Vec<String> {
        serde_aux::serde_introspection::serde_introspect::<Settings>().iter().map(|f| f.to_uppercase()).collect()
    }

    /// The configured Stripe secrets; ingest cannot verify Stripe events without at least one.
    pub fn stripe_secrets(&self) -> Result<Vec<SecretString>, SettingsError> {
        let raw = self.stripe_webhook_secret.as_ref().ok_or(SettingsError::Missing {
            name: "STRIPE_WEBHOOK_SECRET",
            why: "Stripe events are verified with it (comma-separate two during a roll)",
        })?;
        Ok(split_list(raw.expose_secret()).map(SecretString::from).collect())
    }

    /// Deliveries the broker may push to one worker: `WORKER_PREFETCH`, else enough for every
    /// batch slot.
    pub fn worker_prefetch(&self) -> u16 {
        self.worker_prefetch.unwrap_or_else(|| {
            u16::try_from(self.worker_batch_size.saturating_mul(self.worker_concurrency)).unwrap_or(u16::MAX)
        })
    }

    /// Whether Toss payment events are fetched back from the Toss API before they are applied.
    pub fn toss_fetch_back_enabled(&self) -> bool {
        self.toss_fetch_back.unwrap_or(self.toss_secret_key.is_some())
    }

    /// `toss_fetch_back = true` is meaningless without a key to call the API with.
    pub fn toss_secret_key_for_fetch(&self) -> Result<Option<&SecretString>, SettingsError> {
        match (self.toss_fetch_back_enabled(), &self.toss_secret_key) {
            (false, _) => Ok(None),
            (true, Some(key)) => Ok(Some(key)),
            (true, None) => Err(SettingsError::Missing {
                name: "TOSS_SECRET_KEY",
                why: "TOSS_FETCH_BACK=true fetches payments from the Toss API with it",
            }),
        }
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
