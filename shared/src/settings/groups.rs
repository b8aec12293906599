//! Groups of settings that more than one binary reads: the database (worker, hookctl), the
//! webhook secrets (ingest, worker, hookctl) and the Toss API (worker, hookctl).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::values::{duration, empty_as_none, empty_path_as_none, split_list};
use super::{at_least_one, Part, SettingsError};

/// Postgres, as the worker and hookctl open it (the same pool, TLS and session settings).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// Postgres connection string (may contain a password, hence secret).
    pub database_url: SecretString,
    /// Connections in the pool.
    pub database_pool_size: usize,
    /// PEM file with the CA certificate(s) that sign the Postgres server's certificate, checked
    /// with `sslmode=verify-ca` or `verify-full` in `DATABASE_URL` (libpq's `sslrootcert=<file>`
    /// in the URL does the same).
    #[serde(deserialize_with = "empty_path_as_none")]
    pub database_ca_file: Option<PathBuf>,
    /// How long a session may stay inside a transaction without running a statement before
    /// Postgres ends the session (`idle_in_transaction_session_timeout`) and so releases its
    /// row locks: a worker stalled mid-transaction cannot keep payments locked for good.
    #[serde(deserialize_with = "duration")]
    pub database_idle_in_transaction_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            database_url: SecretString::from("postgres://postgres@127.0.0.1:5432/webhooks"),
            database_pool_size: 16,
            database_ca_file: None,
            database_idle_in_transaction_timeout: Duration::from_secs(30),
        }
    }
}

impl Part for DatabaseSettings {
    fn validate(&self) -> Result<(), SettingsError> {
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
        at_least_one(&[("database_pool_size", self.database_pool_size)])
    }
}

/// The providers' webhook secrets: ingest verifies deliveries with them, the worker and
/// `hookctl dead replay` check every queued message again, `hookctl send` signs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebhookSecretSettings {
    /// Stripe endpoint secrets (`whsec_...`), comma-separated while a secret is being rolled.
    #[serde(deserialize_with = "empty_as_none")]
    pub stripe_webhook_secret: Option<SecretString>,
    /// Toss security key for `payout.changed` / `seller.changed` signatures.
    #[serde(deserialize_with = "empty_as_none")]
    pub toss_webhook_secret: Option<SecretString>,
}

impl Part for WebhookSecretSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if let Some(secrets) = &self.stripe_webhook_secret {
            if split_list(secrets.expose_secret()).next().is_none() {
                return Err(SettingsError::invalid("stripe_webhook_secret", "holds no secret between its commas"));
            }
        }
        Ok(())
    }
}

impl WebhookSecretSettings {
    /// The configured Stripe secrets; nothing can verify a Stripe event without at least one.
    pub fn stripe_secrets(&self) -> Result<Vec<SecretString>, SettingsError> {
        let raw = self.stripe_webhook_secret.as_ref().ok_or(SettingsError::Missing {
            name: "STRIPE_WEBHOOK_SECRET",
            why: "Stripe events are verified with it (comma-separate two during a roll)",
        })?;
        Ok(split_list(raw.expose_secret()).map(SecretString::from).collect())
    }
}

/// The Toss API, called with our key to fetch payments back (the worker), and whether that
/// happens (hookctl asks before re-checking unverified events).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TossApiSettings {
    /// Toss API secret key (`test_sk_...` / `live_sk_...`), used to fetch payments back.
    #[serde(deserialize_with = "empty_as_none")]
    pub toss_secret_key: Option<SecretString>,
    /// Base URL of the Toss API (a local fake in tests).
    pub toss_api_base: String,
    /// Connect plus response deadline for one Toss API call.
    #[serde(deserialize_with = "duration")]
    pub toss_api_timeout: Duration,
    /// Most Toss API calls a client makes at once: the worker's batches ask for the payment of
    /// each unsigned Toss event, and this keeps a large batch within what the API takes.
    pub toss_api_concurrency: usize,
    /// Fetch Toss payments back before applying them. Unset: on exactly when `TOSS_SECRET_KEY` is set.
    pub toss_fetch_back: Option<bool>,
}

impl Default for TossApiSettings {
    fn default() -> Self {
        Self {
            toss_secret_key: None,
            toss_api_base: "https://api.tosspayments.com".into(),
            toss_api_timeout: Duration::from_secs(10),
            toss_api_concurrency: 8,
            toss_fetch_back: None,
        }
    }
}

/// Most `TOSS_API_CONCURRENCY` may be.
pub const MAX_TOSS_API_CONCURRENCY: usize = 256;

impl Part for TossApiSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        url::Url::parse(&self.toss_api_base).map_err(|e| SettingsError::invalid("toss_api_base", e.to_string()))?;
        if !(1..=MAX_TOSS_API_CONCURRENCY).contains(&self.toss_api_concurrency) {
            return Err(SettingsError::invalid(
                "toss_api_concurrency",
                format!("between 1 and {MAX_TOSS_API_CONCURRENCY} calls at once"),
            ));
        }
        Ok(())
    }
}

impl TossApiSettings {
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
