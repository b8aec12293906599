//! Reconciliation against the providers' APIs ([`ReconcilePart`]): the worker's reconciler and
//! `hookctl reconcile` read it. Webhooks that never arrive (an endpoint down longer than the
//! provider retries, a wrong secret) are found in Stripe's events list and by looking stuck Toss
//! payments up, then queued like any webhook.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::values::{duration, empty_as_none};
use super::{Part, SettingsError};

/// The Stripe API version reconciliation pins (`Stripe-Version`). Each event's `data.object`
/// is rendered in the version current when the event was created whatever this says; the pin
/// keeps the list's own shape stable.
pub const STRIPE_API_VERSION: &str = "2024-06-20";

/// The reconciler's settings. Field `foo_bar` is read from `FOO_BAR`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ReconcilePart {
    /// Stripe restricted key with read access to Events only (`rk_...`). Empty: no Stripe
    /// reconciliation. Also keys the MAC that proves an event was fetched (the worker checks it).
    #[serde(deserialize_with = "empty_as_none")]
    pub stripe_api_key: Option<SecretString>,
    /// Base URL of the Stripe API (a local fake in tests).
    pub stripe_api_base: String,
    /// The `Stripe-Version` header of every call.
    pub stripe_api_version: String,
    /// How often the worker reconciles; `0` turns it off.
    #[serde(deserialize_with = "duration")]
    pub reconcile_interval: Duration,
    /// Toss payments still `pending` or `waiting_for_deposit` this long after checkout are
    /// looked up (younger ones are probably still in progress).
    #[serde(deserialize_with = "duration")]
    pub reconcile_after: Duration,
    /// How far back reconciliation looks: Toss payments older than this are left alone, and a
    /// first Stripe run (no watermark yet) lists events this far back (Stripe keeps 30 days).
    #[serde(deserialize_with = "duration")]
    pub reconcile_horizon: Duration,
    /// Toss lookups per second, at most (Toss rate-limits its API per merchant).
    pub reconcile_toss_rate: u32,
    /// Most missed Stripe events one run holds (their bodies, in memory) and publishes. A run
    /// that finds more publishes the oldest this many and the next run, started at once,
    /// goes on from there: a long outage's catch-up takes several runs, never all its bodies
    /// at once.
    pub reconcile_max_held: usize,
    /// How long one worker holds the reconciliation lease without renewing it; another worker
    /// takes over within this (plus an interval) after the holder dies.
    #[serde(deserialize_with = "duration")]
    pub reconcile_lease: Duration,
    /// Connect plus response deadline for one provider API call made by reconciliation.
    #[serde(deserialize_with = "duration")]
    pub reconcile_api_timeout: Duration,
}

impl Default for ReconcilePart {
    fn default() -> Self {
        Self {
            stripe_api_key: None,
            stripe_api_base: "https://api.stripe.com".into(),
            stripe_api_version: STRIPE_API_VERSION.into(),
            reconcile_interval: Duration::from_secs(300),
            reconcile_after: Duration::from_secs(600),
            reconcile_horizon: Duration::from_secs(7 * 24 * 3600),
            reconcile_toss_rate: 5,
            reconcile_max_held: 10_000,
            reconcile_lease: Duration::from_secs(60),
            reconcile_api_timeout: Duration::from_secs(10),
        }
    }
}

impl Part for ReconcilePart {
    fn validate(&self) -> Result<(), SettingsError> {
        url::Url::parse(&self.stripe_api_base).map_err(|e| SettingsError::invalid("stripe_api_base", e.to_string()))?;
        if self.stripe_api_version.trim().is_empty() {
            return Err(SettingsError::invalid("stripe_api_version", "must name a Stripe API version"));
        }
        if self.reconcile_toss_rate == 0 {
            return Err(SettingsError::invalid("reconcile_toss_rate", "must be at least 1 lookup per second"));
        }
        if self.reconcile_max_held == 0 {
            return Err(SettingsError::invalid("reconcile_max_held", "must be at least 1 event"));
        }
        if self.reconcile_lease < Duration::from_secs(1) {
            return Err(SettingsError::invalid("reconcile_lease", "at least 1s"));
        }
        if self.reconcile_api_timeout < Duration::from_millis(100) {
            return Err(SettingsError::invalid("reconcile_api_timeout", "at least 100ms"));
        }
        if self.reconcile_horizon <= self.reconcile_after {
            return Err(SettingsError::invalid("reconcile_horizon", "must be longer than RECONCILE_AFTER"));
        }
        Ok(())
    }
}

impl ReconcilePart {
    /// Whether the worker reconciles at all (`RECONCILE_INTERVAL` not `0`).
    pub fn enabled(&self) -> bool {
        !self.reconcile_interval.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::{Settings, WorkerSettings};

    #[test]
    fn the_stripe_api_key_is_never_shown() {
        let settings = WorkerSettings::from_vars([
            ("STRIPE_WEBHOOK_SECRET", "whsec_x"),
            ("STRIPE_API_KEY", "rk_live_secret_value"),
            ("RECONCILE_INTERVAL", "0"),
        ])
        .unwrap();
        assert!(!format!("{settings:?}").contains("rk_live_secret_value"));
        assert!(!settings.reconcile.enabled());
        assert!(WorkerSettings::from_vars([("RECONCILE_TOSS_RATE", "0")]).is_err());
        let defaults = WorkerSettings::from_vars([("STRIPE_API_KEY", "")]).unwrap();
        assert!(defaults.reconcile.stripe_api_key.is_none() && defaults.reconcile.enabled());
    }
}
