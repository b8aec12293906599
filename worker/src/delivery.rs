//! Optional HTTP delivery of notifications (`NOTIFY_WEBHOOK_URL`, https unless to a loopback
//! address or `NOTIFY_ALLOW_HTTP`), signed in the Standard Webhooks format with the
//! `standardwebhooks` crate, so any Standard Webhooks library can verify them. Only a message
//! that is the notification the database holds is signed; any other goes to the dead letters
//! as `unverifiable` (the broker is not a trust boundary).
//!
//! 2xx: delivered. 3xx (redirects are never followed) and 4xx other than 408/429: permanent,
//! to the dead letters at once. 5xx, 408, 429, timeouts and connection errors: retried through
//! the delay tiers (a `Retry-After` picks the first tier at least that long), then dead letters.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use shared::broker::Broker;
use shared::envelope::{header_int, header_str, H_ATTEMPT};
use shared::settings::WorkerSettings;
use shared::traces;
use standardwebhooks::Webhook;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::domain::notification::{check_delivery, notification_id, NotificationStage};
use crate::domain::retry::{dispose, Disposition, Failure};
use crate::metrics::NotificationMetrics;
use crate::pipeline::consumer::{consume, Batch, ConsumerOptions};
use crate::pipeline::settle::{Settlement, Settler};
use crate::store::Store;

/// What one POST produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Worth retrying; `retry_after` from the endpoint, when it said.
    Retryable {
        error: String,
        retry_after: Option<Duration>,
    },
    Permanent(String),
    /// Not signed: the message is not the notification the database holds.
    Unverifiable(String),
}

/// Classifies an HTTP answer. Pure.
///
/// A redirect (3xx) is a failed delivery, and a permanent one. It is not followed: that would
/// send signed notifications to an address nobody configured, wherever the endpoint (or
/// whoever took it over) points, inside our network included. Retrying cannot help either: the
/// same URL answers the same redirect until `NOTIFY_WEBHOOK_URL` changes, so the tiers would
/// only hold the notification back for hours before the dead letters. It goes there at once
/// instead, and `hookctl dead replay --notifications` sends it again once the URL is corrected.
pub fn classify_status(status: u16, retry_after: Option<&str>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        300..=399 => Attempt::Permanent(format!(
            "endpoint answered {status}, a redirect, which is not followed: set NOTIFY_WEBHOOK_URL to the final address"
        )),
        408 | 429 | 500..=599 => Attempt::Retryable {
            error: format!("endpoint answered {status}"),
            retry_after: retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs),
        },
        _ => Attempt::Permanent(format!("endpoint answered {status}")),
    }
}

/// The first tier whose delay is at least `wanted`, else the last tier.
pub fn tier_for(delays: &[Duration], wanted: Duration, at_least: usize) -> usize {
    let last = delays.len().saturating_sub(1);
    (at_least..delays.len()).find(|&t| delays[t] >= wanted).unwrap_or(last)
}

struct Sender {
    /// `NOTIFY_WEBHOOK_URL`.
    url: SecretString,
    client: reqwest::Client,
    /// The signing key. Signing with the `standardwebhooks` crate rather than with this
    /// workspace's HMAC costs more CPU (measured on a 700-byte notification: 3.5 µs against
    /// 0.7 µs per signature, its HMAC-SHA256 does not use the CPU's SHA instructions), which
    /// is small beside the HTTP request each signature goes with.
    signer: Webhook,
}

/// What delivering a notification needs besides its sender.
struct Stage {
    settler: Settler,
    /// Where each notification is checked before it is signed ([`check_delivery`]).
    store: Store,
    metrics: NotificationMetrics,
    /// `RETRY_MAX_ATTEMPTS`.
    max_attempts: u32,
}

/// Starts the delivery consumer when `NOTIFY_WEBHOOK_URL` is set.
pub fn start(
    settings: &WorkerSettings,
    broker: &Broker,
    store: Store,
    metrics: NotificationMetrics,
    tasks: &TaskTracker,
    tag: &str,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let notify = &settings.notify;
    let (Some(url), Some(secret)) = (&notify.notify_webhook_url, &notify.notify_webhook_secret) else {
        return None;
    };
    let signer = Webhook::new(secret.expose_secret()).expect("validated with the settings");
    let client = reqwest::Client::builder()
        // A redirect is answered as a failed delivery (see `classify_status`), never followed.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(notify.notify_connect_timeout)
        .timeout(notify.notify_timeout)
        .user_agent("webhooks-worker")
        .build()
        .expect("HTTP client builds");
    let sender = Arc::new(Sender { url: url.clone(), client, signer });
    let stage = Arc::new(Stage {
        settler: Settler::new(broker.clone(), shutdown.clone()),
        store,
        metrics,
        max_attempts: settings.worker.retry_max_attempts,
    });
    let options = ConsumerOptions {
        queue: broker.topology().notify_queue(),
        tag: format!("{tag}-notify"),
        prefetch: (notify.notify_concurrency * 2).min(u16::MAX as usize) as u16,
        concurrency: notify.notify_concurrency,
        // One POST per delivery: each has its own fate and its own timeout.
        batch_size: 1,
        batch_linger: Duration::ZERO,
        drain_deadline: settings.service.shutdown_timeout,
    };
    tracing::info!("notification delivery on");
    Some(tasks.spawn(consume(broker.clone(), options, shutdown, None, move |batch| {
        deliver(stage.clone(), sender.clone(), batch)
    })))
}

async fn deliver(stage: Arc<Stage>, sender: Arc<Sender>, batch: Batch) {
    let Batch { deliveries, acks } = batch;
    let decided = join_all(deliveries.iter().map(|delivery| {
        // Read in place: a copy of a hostile table would recurse as deep as it nests.
        let empty = FieldTable::default();
        let headers = delivery.properties.headers().as_ref().unwrap_or(&empty);
        let attempt = header_int(headers, H_ATTEMPT).unwrap_or(0).clamp(0, u32::MAX as i64) as u32 + 1;
        let id = delivery.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_else(|| "unknown".into());
        let span = tracing::info_span!("notification", notification_id = %id, attempt);
        if let Some(parent) = header_str(headers, traces::TRACEPARENT) {
            traces::continue_trace(&span, &parent);
        }
        attempt_delivery(&stage, &sender, delivery, id, attempt).instrument(span)
    }))
    .await;
    let work = deliveries.iter().zip(decided).collect();
    stage.settler.settle(&acks, work).await;
}

/// POSTs one notification and decides its settlement.
async fn attempt_delivery(stage: &Stage, sender: &Sender, delivery: &Delivery, id: String, attempt: u32) -> Settlement {
    let result = match check(stage, &id, &delivery.data).await {
        Ok(()) => post(sender, &id, &delivery.data).await,
        Err(failed) => failed,
    };
    let metrics = &stage.metrics;
    let (failure, retry_after) = match &result {
        Attempt::Delivered => (None, None),
        Attempt::Retryable { error, retry_after } => (Some((Failure::Transient, error.as_str())), *retry_after),
        Attempt::Permanent(error) => (Some((Failure::Permanent, error.as_str())), None),
        Attempt::Unverifiable(error) => (Some((Failure::Unverifiable, error.as_str())), None),
    };
    let topology = stage.settler.topology();
    match dispose(failure, attempt, stage.max_attempts) {
        Disposition::Ack => {
            tracing::info!("notification delivered");
            metrics.count(NotificationStage::Delivered, 1);
            Settlement::Ack
        }
        Disposition::Retry { tier } => {
            let tier = retry_after.map_or(tier, |wanted| tier_for(topology.retry_delays(), wanted, tier));
            let error = failure.map(|(_, e)| e).unwrap_or_default();
            tracing::warn!(%error, retry_in = ?topology.delay(tier), "notification not delivered; will retry");
            metrics.count(NotificationStage::Retried, 1);
            Settlement::retry(delivery, topology.notify_retry_queue(tier), attempt, error)
        }
        Disposition::DeadLetter { reason } => {
            tracing::error!(%reason, "notification dead-lettered");
            // A refused message has its own count (and alert): it is no endpoint's failure.
            let counted = match failure {
                Some((Failure::Unverifiable, _)) => NotificationStage::Unverifiable,
                _ => NotificationStage::DeadLettered,
            };
            metrics.count(counted, 1);
            Settlement::dead(delivery, topology.notify_dead_queue(), attempt, &reason)
        }
    }
}

/// Whether the message is the notification the database holds (the broker is not a trust
/// boundary: nothing is signed for the endpoint that the worker did not write); the answer
/// as an attempt when it is not, or when the database could not say.
async fn check(stage: &Stage, id: &str, body: &[u8]) -> Result<(), Attempt> {
    let id = notification_id(id).map_err(Attempt::Unverifiable)?;
    let stored = stage.store.notification(id).await.map_err(|error| Attempt::Retryable {
        error: format!("could not check the notification against the database: {error}"),
        retry_after: None,
    })?;
    check_delivery(id, body, stored.as_ref()).map_err(Attempt::Unverifiable)
}

async fn post(sender: &Sender, id: &str, body: &[u8]) -> Attempt {
    let url = &sender.url;
    let timestamp = Utc::now().timestamp();
    let Ok(signature) = sender.signer.sign(id, timestamp, body) else {
        // Only a message that did not come from the outbox (which holds JSON text) can be so.
        return Attempt::Permanent("the notification is not UTF-8 text; it cannot be signed".into());
    };
    let mut request = sender
        .client
        .post(url.expose_secret())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    // The receiver may continue the trace of the event that caused the notification.
    if let Some(traceparent) = traces::traceparent(&tracing::Span::current()) {
        request = request.header(traces::TRACEPARENT, traceparent);
    }
    let response = request.body(body.to_vec()).send().await;
    match response {
        Ok(r) => {
            let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
            classify_status(r.status().as_u16(), retry_after.as_deref())
        }
        Err(e) if e.is_timeout() => Attempt::Retryable { error: "endpoint timed out".into(), retry_after: None },
        Err(e) if e.is_connect() => Attempt::Retryable { error: "endpoint unreachable".into(), retry_after: None },
        Err(_) => Attempt::Retryable { error: "request to endpoint failed".into(), retry_after: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        assert_eq!(classify_status(200, None), Attempt::Delivered);
        assert_eq!(classify_status(204, None), Attempt::Delivered);
        for code in [300, 301, 302, 303, 307, 308, 400, 401, 403, 404, 410, 422] {
            assert!(matches!(classify_status(code, None), Attempt::Permanent(_)), "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(classify_status(code, None), Attempt::Retryable { .. }), "{code}");
        }
        assert_eq!(
            classify_status(429, Some("30")),
            Attempt::Retryable { error: "endpoint answered 429".into(), retry_after: Some(Duration::from_secs(30)) }
        );
    }

    #[test]
    fn retry_after_picks_the_first_tier_long_enough() {
        let tiers = [1, 10, 60, 600].map(Duration::from_secs);
        assert_eq!(tier_for(&tiers, Duration::from_secs(5), 0), 1);
        assert_eq!(tier_for(&tiers, Duration::from_secs(60), 0), 2);
        assert_eq!(tier_for(&tiers, Duration::from_secs(7200), 0), 3);
        assert_eq!(tier_for(&tiers, Duration::from_secs(1), 2), 2, "never shorter than the schedule");
    }
}
