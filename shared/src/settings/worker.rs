//! What only the worker reads: consuming and batching, retries, the outbox relay, inbox
//! retention and Toss trust ([`WorkerPart`]), and the optional HTTP delivery of notifications
//! ([`NotifySettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::values::{duration, empty_as_none};
use super::{at_least_one, Part, SettingsError};

/// The shortest `EVENT_RETENTION` accepted (other than `0`). Providers retry an event for days
/// (Stripe up to 3, Toss almost 4); an event pruned before its last retry would no longer be
/// recognised as a duplicate when that retry arrives.
pub const MIN_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The worker's own settings. Field `foo_bar` is read from `FOO_BAR`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct WorkerPart {
    /// Where a worker serves `/healthz`, `/readyz` and `/metrics`. Port 0 picks a free port.
    pub worker_addr: SocketAddr,
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
    /// Attempts before a message goes to the dead letters (the first delivery counts as one).
    pub retry_max_attempts: u32,
    /// Development only: apply unsigned Toss payment events that nothing verified (the original
    /// guide's "the order exists" check). Off by default; the worker warns loudly when it is on.
    pub toss_allow_unverified: bool,

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

    /// How long a final `webhook_events` row (`applied`, `ignored`, `dead`) is kept after it was
    /// processed; the worker prunes older ones. `0` keeps everything. At least
    /// [`MIN_EVENT_RETENTION`] otherwise.
    #[serde(deserialize_with = "duration")]
    pub event_retention: Duration,

    /// How long a batch's transaction may wait on the database (its statements and its
    /// commit) before the worker gives up on it: the session is closed and the batch retried
    /// later. Postgres bounds its own side (`statement_timeout`, `lock_timeout`), but an answer
    /// lost in a network partition is only ever noticed by the client; without this a commit
    /// whose answer never comes would hold its batch (and its deliveries) for good. Whether
    /// such a commit landed is unknown; the retry is safe either way, the inbox counting a
    /// committed event's copy as a duplicate.
    #[serde(deserialize_with = "duration")]
    pub database_transaction_timeout: Duration,
}

impl Default for WorkerPart {
    fn default() -> Self {
        Self {
            worker_addr: ([0, 0, 0, 0], 9090).into(),
            worker_prefetch: None,
            worker_concurrency: 2,
            worker_batch_size: 100,
            worker_batch_linger: Duration::ZERO,
            retry_max_attempts: 8,
            toss_allow_unverified: false,
            outbox_batch_size: 100,
            outbox_poll_interval: Duration::from_secs(1),
            outbox_lease: Duration::from_secs(30),
            outbox_max_attempts: 20,
            event_retention: Duration::from_secs(30 * 24 * 3600),
            database_transaction_timeout: Duration::from_secs(30),
        }
    }
}

impl Part for WorkerPart {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.retry_max_attempts == 0 {
            return Err(SettingsError::invalid("retry_max_attempts", "must be at least 1"));
        }
        at_least_one(&[
            ("worker_concurrency", self.worker_concurrency),
            ("worker_prefetch", self.worker_prefetch.map_or(1, usize::from)),
            ("worker_batch_size", self.worker_batch_size),
            ("outbox_max_attempts", self.outbox_max_attempts.max(0) as usize),
        ])?;
        if self.outbox_batch_size < 1 {
            return Err(SettingsError::invalid("outbox_batch_size", "must be at least 1"));
        }
        if self.database_transaction_timeout < Duration::from_secs(1) {
            return Err(SettingsError::invalid(
                "database_transaction_timeout",
                "at least 1s: a healthy batch's transaction must not be cut",
            ));
        }
        if !self.event_retention.is_zero() && self.event_retention < MIN_EVENT_RETENTION {
            return Err(SettingsError::invalid(
                "event_retention",
                "0 keeps every event; otherwise at least 7d, longer than providers retry an event",
            ));
        }
        Ok(())
    }
}

impl WorkerPart {
    /// Deliveries the broker may push to one worker: `WORKER_PREFETCH`, else enough for every
    /// batch slot.
    pub fn worker_prefetch(&self) -> u16 {
        self.worker_prefetch.unwrap_or_else(|| {
            u16::try_from(self.worker_batch_size.saturating_mul(self.worker_concurrency)).unwrap_or(u16::MAX)
        })
    }
}

/// The optional HTTP delivery of notifications: on when `NOTIFY_WEBHOOK_URL` is set. Only the
/// worker knows, so only the worker declares the delivery's queues.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct NotifySettings {
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
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            notify_webhook_url: None,
            notify_allow_http: false,
            notify_webhook_secret: None,
            notify_connect_timeout: Duration::from_secs(5),
            notify_timeout: Duration::from_secs(10),
            notify_concurrency: 4,
        }
    }
}

impl NotifySettings {
    /// Whether notifications are delivered over HTTP (and so whether their queues exist).
    pub fn delivery_on(&self) -> bool {
        self.notify_webhook_url.is_some()
    }
}

impl Part for NotifySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        at_least_one(&[("notify_concurrency", self.notify_concurrency)])?;
        let Some(url) = &self.notify_webhook_url else { return Ok(()) };
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
        Ok(())
    }
}
