//! Reconciliation against the providers' APIs: webhooks that never arrive still settle.
//!
//! Every `RECONCILE_INTERVAL` the worker holding a provider's lease (one at a time, however many
//! workers run: [`crate::store::reconcile::Lease`]) looks for what the inbox lacks:
//!
//! - [`stripe`]: Stripe's events list from a little before the watermark, every event of the
//!   types the pipeline applies; each one the inbox does not hold is published as ingest would
//!   publish it (to the work queue, see [`Reconciler::publish`]), with verification `fetched`
//!   and a MAC that proves it
//!   ([`shared::verify::fetched`]). The watermark moves only past events whose publish the
//!   broker confirmed;
//! - [`toss`]: Toss has no events list, so payments still `pending` or `waiting_for_deposit`
//!   after `RECONCILE_AFTER` are looked up, at a bounded rate; a changed one is published as an
//!   unsigned Toss payment event keyed by the payment, which the worker's fetch-back verifies.
//!
//! Either way the event goes through the same queue and the same worker code as a webhook,
//! and the inbox key makes a late webhook (or a second find) a duplicate. `hookctl reconcile`
//! runs the same code by hand, without the lease and the watermark.
//!
//! Imports [`crate::domain`], [`crate::provider_api`], [`crate::store`], [`crate::metrics`].

mod schedule;
pub mod stripe;
pub mod toss;

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use shared::backoff::Backoff;
use shared::broker::{Broker, PublishError};
use shared::envelope::{EnvelopeHeaders, IngestVerification, H_FETCHED_MAC, H_SOURCE, SOURCE_RECONCILIATION};
use shared::settings::{ReconcilePart, TossApiSettings};
use shared::verify::fetched::FetchedMacKey;
use shared::Provider;
use tokio_util::sync::CancellationToken;

use crate::metrics::ReconcileMetrics;
use crate::provider_api::stripe::StripeApi;
use crate::provider_api::toss::TossApi;
use crate::provider_api::ApiError;
use crate::store::reconcile::Lease;
use crate::store::Store;

/// Failed calls in a row (rate limits, server errors, timeouts) before a run gives up until
/// the next interval.
const MAX_API_ATTEMPTS: u32 = 6;

/// Tries of one publish before the run stops. A confirm can fail for a moment (a channel being
/// replaced, a broker busy) and, on the worker's shared publisher channels, a `basic.return`
/// for another message (an unrouted notification) can come back attributed to this one; a
/// publish made twice is one inbox key.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Found events join live webhooks in the work queue, and a catch-up of thousands published
/// at once would make every webhook that arrives meanwhile wait behind all of them (one run of
/// `bench reconcile`: live lag p99 1.3 s during a catch-up of 10,000 events, 8.6 ms without).
/// So the next chunk of found events is published only once the work queue holds fewer than
/// this many ready messages: the workers take live traffic as it comes and catch up in the
/// gaps, and a live event never waits behind more than about a chunk and this many.
const WORK_QUEUE_ROOM: u32 = 50;

/// How often a full work queue is looked at again.
const ROOM_POLL: Duration = Duration::from_millis(20);

/// The Stripe side: the events list, and the key that proves what it returned.
pub struct StripeSource {
    pub api: StripeApi,
    pub mac: FetchedMacKey,
    /// Events this process published lately (see [`stripe::Published`]).
    pub published: stripe::Published,
}

/// One event to publish.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    provider: Provider,
    event_type: &'a str,
    event_key: &'a str,
    verification: IngestVerification,
    body: &'a [u8],
    /// `x-fetched-mac`, on `fetched` events.
    mac: Option<&'a str>,
}

/// Reconciliation of the providers whose keys are configured.
pub struct Reconciler {
    pub store: Store,
    pub broker: Broker,
    pub stripe: Option<StripeSource>,
    pub toss: Option<TossApi>,
    pub settings: ReconcilePart,
    /// This process's name in the lease.
    pub holder: String,
    pub metrics: ReconcileMetrics,
}

/// How one run goes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Look back to here instead of the watermark (Stripe) or `RECONCILE_HORIZON` (Toss).
    pub since: Option<DateTime<Utc>>,
    /// Report what is missing; publish nothing, move no watermark.
    pub dry_run: bool,
}

/// An event the inbox lacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub event_key: String,
    pub event_type: String,
    /// Stripe: when the event was created. Toss: the order and its change.
    pub detail: String,
}

/// What one run found and did.
#[derive(Debug, Clone)]
pub struct Report {
    pub provider: Provider,
    /// Events listed (Stripe) or payments looked up (Toss).
    pub examined: usize,
    pub found: Vec<Found>,
    /// Found and published with a broker confirm.
    pub published: usize,
    /// The watermark after the run (Stripe).
    pub watermark: Option<DateTime<Utc>>,
    /// More were missed than a run holds (`RECONCILE_MAX_HELD`): the oldest were found, and
    /// the next run goes on from them.
    pub more: bool,
}

impl Report {
    fn new(provider: Provider) -> Self {
        Self { provider, examined: 0, found: Vec::new(), published: 0, watermark: None, more: false }
    }

    /// `next`, a later run, added to this one.
    fn add(&mut self, next: Report) {
        self.examined += next.examined;
        self.found.extend(next.found);
        self.published += next.published;
        self.watermark = self.watermark.max(next.watermark);
        self.more = next.more;
    }
}

/// Why a run stopped before it was done. Nothing is lost: the next run starts from the
/// watermark, which only confirmed publishes moved.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("publish not confirmed: {0}")]
    Publish(#[from] PublishError),
    #[error("{0:#}")]
    Database(#[from] anyhow::Error),
    #[error("the lease was lost to another worker")]
    LeaseLost,
    #[error("stopped")]
    Stopped,
    #[error("{0} is not configured for reconciliation")]
    NotConfigured(&'static str),
}

impl RunError {
    /// The `reconcile_errors_total` kind of a failed run (API calls count their own).
    fn kind(&self) -> Option<&'static str> {
        match self {
            Self::Api(_) | Self::LeaseLost | Self::Stopped | Self::NotConfigured(_) => None,
            Self::Publish(_) => Some("publish"),
            Self::Database(_) => Some("database"),
        }
    }
}

impl Reconciler {
    /// The reconciler for the configured keys: Stripe with `STRIPE_API_KEY`, Toss with
    /// `TOSS_SECRET_KEY` (and fetch-back on, which verifies what it finds).
    pub fn from_settings(
        settings: &ReconcilePart,
        toss_api: &TossApiSettings,
        store: Store,
        broker: Broker,
        metrics: ReconcileMetrics,
        holder: String,
    ) -> anyhow::Result<Self> {
        let stripe = match &settings.stripe_api_key {
            Some(key) => Some(StripeSource {
                api: StripeApi::new(
                    &settings.stripe_api_base,
                    key,
                    &settings.stripe_api_version,
                    settings.reconcile_api_timeout,
                )?,
                mac: FetchedMacKey::derive(key),
                published: Default::default(),
            }),
            None => None,
        };
        let toss = TossApi::from_settings(toss_api)?;
        Ok(Self { store, broker, stripe, toss, settings: settings.clone(), holder, metrics })
    }

    /// The providers this reconciler can reconcile.
    pub fn providers(&self) -> Vec<Provider> {
        let mut providers = Vec::new();
        if self.stripe.is_some() {
            providers.push(Provider::Stripe);
        }
        if self.toss.is_some() {
            providers.push(Provider::Toss);
        }
        providers
    }

    /// Calls a provider API until it answers, a failure is not transient, or
    /// [`MAX_API_ATTEMPTS`] failed: `429` waits its `Retry-After`, other transient failures back
    /// off. Every failure is counted.
    async fn call<T, F, Fut>(
        &self,
        provider: Provider,
        shutdown: &CancellationToken,
        mut call: F,
    ) -> Result<T, RunError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut failures = 0;
        loop {
            let error = match call().await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            self.metrics.error(provider, error.kind());
            failures += 1;
            if !error.is_transient() || failures >= MAX_API_ATTEMPTS {
                return Err(error.into());
            }
            let wait = match error {
                ApiError::RateLimited(Some(wait)) => wait,
                _ => backoff.next_delay(),
            };
            tracing::warn!(provider = provider.as_str(), %error, wait_ms = wait.as_millis() as u64, "provider API call failed; trying again");
            tokio::select! {
                _ = shutdown.cancelled() => return Err(RunError::Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits until the work queue has room for another chunk of found events
    /// ([`WORK_QUEUE_ROOM`]), renewing `lease` meanwhile. When the broker cannot say how full
    /// the queue is, it does not wait: the publish that follows finds out what is wrong.
    async fn wait_for_room(&self, lease: Option<&Lease>, shutdown: &CancellationToken) -> Result<(), RunError> {
        let Some(link) = self.broker.current() else { return Ok(()) };
        let Ok(channel) = link.connection().create_channel().await else { return Ok(()) };
        let queue = self.broker.topology().work_queue();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let mut renewed = Instant::now();
        let result = loop {
            match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
                Ok(declared) if declared.message_count() >= WORK_QUEUE_ROOM => {}
                _ => break Ok(()),
            }
            if let Some(lease) = lease {
                if renewed.elapsed() >= lease.ttl / 3 {
                    if !self.store.advance_watermark(lease, None).await? {
                        break Err(RunError::LeaseLost);
                    }
                    renewed = Instant::now();
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Err(RunError::Stopped),
                _ = tokio::time::sleep(ROOM_POLL) => {}
            }
        };
        let _ = channel.close(200, "".into()).await;
        result
    }

    /// [`Reconciler::publish`], tried again after a short pause when it fails
    /// ([`PUBLISH_ATTEMPTS`]).
    async fn publish_with_retries(&self, event: Outgoing<'_>, request_id: &str) -> Result<(), PublishError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut attempt = 1;
        loop {
            match self.publish(event, request_id).await {
                Ok(()) => return Ok(()),
                Err(error @ PublishError::InvalidName) => return Err(error),
                Err(error) if attempt >= PUBLISH_ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::debug!(event_id = event.event_key, %error, attempt, "publish of a found event not confirmed; trying again");
                    tokio::time::sleep(backoff.next_delay()).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Publishes a found event as ingest publishes a webhook, marked as found by
    /// reconciliation (with the proof of a `fetched` one), and waits for the confirm.
    async fn publish(&self, event: Outgoing<'_>, request_id: &str) -> Result<(), PublishError> {
        let Outgoing { provider, event_type, event_key, verification, body, mac } = event;
        let mut headers = vec![(H_SOURCE, SOURCE_RECONCILIATION)];
        headers.extend(mac.map(|mac| (H_FETCHED_MAC, mac)));
        let properties = EnvelopeHeaders {
            provider,
            event_type,
            event_key,
            verification,
            received_at: Utc::now(),
            request_id,
            attempt: 0,
        }
        .properties(headers);
        // To the work queue through the default exchange, where the events exchange would route
        // it: the worker's broker user may publish there (as it does retries), not to the events
        // exchange, which only ingest may write to (deploy/rabbitmq/permissions); hookctl's
        // operator user likewise.
        self.broker.publish("", &self.broker.topology().work_queue(), body, properties).await
    }
}
