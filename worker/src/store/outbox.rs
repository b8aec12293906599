//! Publishing notifications committed with payment changes, with publisher confirms.
//!
//! The worker that committed a batch owns its outbox rows for a lease (`OUTBOX_LEASE`) and
//! publishes them right after the commit: every message at once, then the confirms, then one
//! statement deletes the confirmed rows. No transaction or row lock is held while the broker
//! confirms. The relay in every worker sweeps up rows whose lease ran out (their worker died
//! before publishing, or the broker refused them), claiming each for a new lease first.
//!
//! Every claim, the committing worker's and each sweep's, writes a fresh token ([`Claim`]), and
//! leases are measured on the database's clock as it runs (`clock_timestamp()`). Right before
//! publishing, a worker reads which of its rows still carry its token with the lease not run
//! out, and publishes only those ([`OWNED`]); its deletes and marks also name its token. So a
//! worker slower than its lease (a long commit, a pause between commit and publish) leaves the
//! rows to the relay that claimed them meanwhile instead of publishing them a second time, and
//! never deletes a row another claim holds.
//!
//! A crash between a confirm and the delete leaves the row, so it is published again with the
//! same message id (= `notification_id`): a duplicate consumers can drop, never a loss. A row
//! the broker keeps refusing (nack, no confirm) backs off and, after `OUTBOX_MAX_ATTEMPTS`
//! refusals, is set aside as dead (`dead_at`), listed by `hookctl dead list --notifications`.
//! Time without a broker connection counts as no attempt.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use shared::backoff::Backoff;
use shared::broker::{Broker, PublishError};
use shared::envelope::long_string;
use shared::traces::TRACEPARENT;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Store;
use crate::domain::decide::NewNotification;
use crate::domain::notification::{NotificationStage, MESSAGE_VERSION};
use crate::domain::outcome::HandleError;
use crate::metrics::NotificationMetrics;

/// Longest back-off between two refused publishes of one row.
const MAX_BACKOFF_SECS: f64 = 300.0;

/// Longest wait between two sweeps while the database does not answer. The waits start at
/// `OUTBOX_POLL_INTERVAL` and grow, jittered, so the relays of all workers neither hammer nor
/// hit in step a database that is coming back.
const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(30);

/// Claims up to `$1` rows whose lease ran out for a new lease of `$2` seconds under the token
/// `$3`. Expiry is judged at the statement's start (`statement_timestamp()`, which an index
/// condition can use, unlike `clock_timestamp()`); the new lease starts when it is written.
pub const CLAIM_EXPIRED: &str = "
    UPDATE outbox o SET claimed_until = clock_timestamp() + make_interval(secs => $2::float8),
           claim_token = $3::uuid
      FROM (SELECT notification_id FROM outbox
             WHERE claimed_until <= statement_timestamp() AND dead_at IS NULL
             ORDER BY claimed_until
             LIMIT $1
               FOR UPDATE SKIP LOCKED) c
     WHERE o.notification_id = c.notification_id
    RETURNING o.notification_id, o.routing_key, o.payload, o.traceparent";

/// Which of the rows `$1` the claim `$2` still holds, with its lease not run out: read right
/// before publishing. A row missing here was claimed by a relay after the lease ran out (or
/// published and deleted by it already); publishing it too would send a second message.
pub const OWNED: &str = "
    SELECT notification_id FROM outbox
     WHERE notification_id = ANY($1::uuid[]) AND claim_token = $2::uuid AND claimed_until > clock_timestamp()";

/// Deletes the confirmed rows that still carry the claim's token. The lease is not checked
/// here: a row with the token is one nobody claimed since, and its message is confirmed, so
/// keeping it would only have the relay publish it again.
pub const DELETE_CONFIRMED: &str =
    "DELETE FROM outbox WHERE notification_id = ANY($1::uuid[]) AND claim_token = $2::uuid";

/// A refused row waits 2^attempts seconds (at most five minutes) before the next try. The
/// `ANY($1)` lets a cached generic plan use the primary key however large the outbox grew.
/// Only rows the claim `$5` still holds are marked: another claim's attempt is its own.
pub const RECORD_REFUSED: &str = "
    UPDATE outbox o SET attempts = o.attempts + 1,
           last_error = f.error,
           claimed_until = clock_timestamp() + make_interval(secs => least($4::float8, power(2, o.attempts))),
           dead_at = CASE WHEN o.attempts + 1 >= $3 THEN clock_timestamp() END
      FROM unnest($1::uuid[], $2::text[]) AS f(id, error)
     WHERE o.notification_id = f.id AND o.notification_id = ANY($1::uuid[]) AND o.claim_token = $5::uuid
    RETURNING o.dead_at IS NOT NULL";

/// Ends the claim `$2` on rows it could not try (no broker connection), for the relay.
pub const RELEASE: &str = "
    UPDATE outbox SET claimed_until = clock_timestamp()
     WHERE notification_id = ANY($1::uuid[]) AND claim_token = $2::uuid";

/// A claim on outbox rows: the token written with it, and how long it lasts. A fresh one for
/// every claim, so a worker can tell its rows from rows claimed again after its lease ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub token: Uuid,
    pub lease: Duration,
}

impl Claim {
    /// A new claim with a random token.
    pub fn new(lease: Duration) -> Self {
        Self { token: Uuid::new_v4(), lease }
    }
}

/// One outbox row to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Uuid,
    pub routing_key: String,
    /// Exactly the bytes the row keeps, so a republished message is identical.
    pub payload: String,
    /// The trace of the event that caused it, carried in the message's headers.
    pub traceparent: Option<String>,
}

impl From<NewNotification> for Message {
    fn from(n: NewNotification) -> Self {
        Self { id: n.id, routing_key: n.kind, payload: n.payload, traceparent: n.traceparent }
    }
}

/// What publishing some rows did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Not published: the claim no longer held them (its lease ran out; a relay claimed them).
    pub lost: usize,
    /// Confirmed and deleted (unrouted ones included).
    pub published: usize,
    /// Confirmed but routed to no queue: nobody subscribes.
    pub unrouted: usize,
    /// Refused by the broker; retried later.
    pub refused: usize,
    /// Set aside as dead after their last refused attempt.
    pub dead: usize,
    /// Not tried for want of a broker connection; released for the relay.
    pub unavailable: usize,
}

/// The outbox as the worker's stages use it: the batch publishes what it committed, the relay
/// sweeps up what nobody holds.
#[derive(Clone)]
pub struct Outbox {
    pub store: Store,
    pub broker: Broker,
    pub metrics: NotificationMetrics,
    pub options: OutboxOptions,
    /// The "nobody subscribes to notifications" warning is logged once per process.
    unrouted_warned: Arc<AtomicBool>,
}

/// The outbox settings (`OUTBOX_*`).
#[derive(Debug, Clone, Copy)]
pub struct OutboxOptions {
    /// How long a claim holds its rows.
    pub lease: Duration,
    /// Rows the relay claims at once.
    pub batch_size: i64,
    /// Refused publishes before a row is set aside as dead.
    pub max_attempts: i32,
    /// How often the relay looks for rows nobody holds.
    pub poll_interval: Duration,
}

impl Outbox {
    pub fn new(store: Store, broker: Broker, metrics: NotificationMetrics, options: OutboxOptions) -> Self {
        Self { store, broker, metrics, options, unrouted_warned: Arc::default() }
    }

    /// A fresh claim for the lease.
    pub fn claim(&self) -> Claim {
        Claim::new(self.options.lease)
    }

    /// Publishes those of `messages` whose rows `claim` still holds, and does their bookkeeping.
    pub async fn publish(&self, claim: &Claim, messages: &[Message]) -> Result<Report, HandleError> {
        if messages.is_empty() {
            return Ok(Report::default());
        }
        let owned: HashSet<Uuid> = {
            let client = self.store.client().await?;
            let owned = client.prepare_cached(OWNED).await?;
            let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
            client.query(&owned, &[&ids, &claim.token]).await?.iter().map(|r| r.get(0)).collect()
        };
        // Rows this claim lost (its lease ran out, a relay claimed them) are the relay's to publish.
        let held: Vec<&Message> = messages.iter().filter(|m| owned.contains(&m.id)).collect();
        let lost = messages.len() - held.len();
        if lost > 0 {
            tracing::warn!(
                lost,
                "outbox rows whose lease ran out before they were published (a slow commit or a pause); the relay that claimed them publishes them"
            );
        }
        let mut report = self.publish_held(claim, &held).await?;
        report.lost = lost;
        Ok(report)
    }

    /// Publishes rows `claim` holds and does their bookkeeping.
    async fn publish_held(&self, claim: &Claim, messages: &[&Message]) -> Result<Report, HandleError> {
        if messages.is_empty() {
            return Ok(Report::default());
        }
        let exchange = self.broker.topology().notifications_exchange();
        let results =
            join_all(messages.iter().map(|m| {
                self.broker.publish_broadcast(&exchange, &m.routing_key, m.payload.as_bytes(), properties(m))
            }))
            .await;

        let mut report = Report::default();
        let mut done = Vec::new();
        let (mut refused, mut errors) = (Vec::new(), Vec::new());
        let mut unavailable = Vec::new();
        for (message, result) in messages.iter().zip(results) {
            match result {
                Ok(()) => done.push(message.id),
                // Stored nowhere because nobody subscribed: there is no one to deliver to.
                Err(PublishError::Unroutable(_)) => {
                    report.unrouted += 1;
                    done.push(message.id);
                }
                // Not tried: no connection, or the broker blocks publishers (a resource alarm).
                Err(PublishError::Unavailable | PublishError::Blocked) => unavailable.push(message.id),
                Err(error) => {
                    refused.push(message.id);
                    errors.push(error.to_string());
                }
            }
        }
        // Test hook: the process dies after the broker confirmed and before the rows are deleted.
        fail::fail_point!("outbox-after-publish", |_| { std::process::abort() });

        let client = self.store.client().await?;
        if !done.is_empty() {
            let delete = client.prepare_cached(DELETE_CONFIRMED).await?;
            client.execute(&delete, &[&done, &claim.token]).await?;
        }
        if !refused.is_empty() {
            let record = client.prepare_cached(RECORD_REFUSED).await?;
            let rows = client
                .query(&record, &[&refused, &errors, &self.options.max_attempts, &MAX_BACKOFF_SECS, &claim.token])
                .await?;
            report.dead = rows.iter().filter(|r| r.get::<_, bool>(0)).count();
        }
        if !unavailable.is_empty() {
            client.execute(RELEASE, &[&unavailable, &claim.token]).await?;
        }
        report.published = done.len();
        report.refused = refused.len();
        report.unavailable = unavailable.len();

        self.metrics.count(NotificationStage::Published, (report.published - report.unrouted) as u64);
        self.metrics.count(NotificationStage::Unrouted, report.unrouted as u64);
        self.metrics.count(NotificationStage::OutboxDead, report.dead as u64);
        if report.unrouted > 0 && !self.unrouted_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(exchange = %exchange, "no queue is bound to the notifications exchange: notifications are kept in the notifications table only (counted as notifications_total{{stage=\"unrouted\"}})");
        }
        if !errors.is_empty() {
            tracing::warn!(refused = report.refused, first_error = %errors[0], "notifications not confirmed; they stay in the outbox");
        }
        if report.dead > 0 {
            tracing::error!(
                dead = report.dead,
                "notifications refused too often; set aside (hookctl dead list --notifications)"
            );
        }
        Ok(report)
    }

    /// Sweeps up expired leases every `OUTBOX_POLL_INTERVAL` until `stop` fires, then once more.
    pub async fn run_relay(self, stop: CancellationToken) {
        let poll = self.options.poll_interval;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(poll, MAX_RELAY_BACKOFF);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.sweep().await {
                backoff.reset();
            } else {
                tick.reset_after(backoff.next_delay());
            }
        }
        self.sweep().await;
        tracing::info!("outbox relay stopped");
    }

    /// Claims and publishes rows nobody holds, batch after batch, while there are full batches.
    /// False when the relay could not run (database unavailable?); it is logged here.
    pub async fn sweep(&self) -> bool {
        loop {
            if self.broker.current().is_none() {
                return true;
            }
            match self.relay_batch().await {
                Ok((claimed, report)) if claimed as i64 == self.options.batch_size && report.refused == 0 => continue,
                Ok(_) => return true,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay could not run (database unavailable?)");
                    return false;
                }
            }
        }
    }

    /// Claims one batch of expired rows and publishes it; returns how many were claimed.
    pub async fn relay_batch(&self) -> Result<(usize, Report), HandleError> {
        let claim = self.claim();
        let messages: Vec<Message> = {
            let client = self.store.client().await?;
            let claiming = client.prepare_cached(CLAIM_EXPIRED).await?;
            let lease = claim.lease.as_secs_f64();
            client
                .query(&claiming, &[&self.options.batch_size, &lease, &claim.token])
                .await?
                .iter()
                .map(|r| Message { id: r.get(0), routing_key: r.get(1), payload: r.get(2), traceparent: r.get(3) })
                .collect()
        };
        let report = self.publish(&claim, &messages).await?;
        if report.published > report.unrouted {
            tracing::info!(published = report.published - report.unrouted, "notifications published by the relay");
        }
        Ok((messages.len(), report))
    }
}

fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-notification-version".into(), AMQPValue::LongLongInt(i64::from(MESSAGE_VERSION)));
    if let Some(traceparent) = &message.traceparent {
        headers.insert(TRACEPARENT.into(), long_string(traceparent));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.id.to_string().into())
        .with_type(message.routing_key.as_str().into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("worker".into())
        .with_headers(headers)
}
