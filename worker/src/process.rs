//! One delivery from the work queue: decide it ([`handle`]), then ack, retry or dead-letter
//! according to the outcome ([`process_delivery`]). Every failure is logged and counted here,
//! once.

use std::sync::Arc;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use shared::envelope::{long_string, with_headers, EventEnvelope, H_ATTEMPT, H_DEAD_AT, H_DEAD_REASON, H_LAST_ERROR};
use shared::Provider;
use tracing::Instrument;

use crate::apply::{apply_event, record_failure, Confirmed};
use crate::event::IncomingEvent;
use crate::outcome::{HandleError, Outcome};
use crate::retry::{dispose, Disposition, Failure};
use crate::Deps;

/// Attempts during which a webhook claiming a later state than the Toss API shows is retried
/// (the API catching up) before the API's state is applied.
const API_CATCH_UP_ATTEMPTS: u32 = 3;

/// Decides one event: parse, confirm with the provider where configured, apply.
pub async fn handle(deps: &Deps, envelope: &EventEnvelope) -> Result<Outcome, HandleError> {
    let event = IncomingEvent::parse(envelope).map_err(|e| HandleError::Permanent(e.0))?;
    let fetch_back = envelope.provider == Provider::Toss && event.unsigned_payment_event;
    let (event, confirmed) = match &deps.toss_api {
        // A duplicate costs no API call (a forged flood must not spend the merchant's quota).
        Some(api) if fetch_back && !already_final(deps, envelope).await? => api.confirm(event).await?,
        _ => (event, Confirmed::default()),
    };
    if let Some(disagreement) = &confirmed.api_behind {
        if envelope.attempt + 1 < API_CATCH_UP_ATTEMPTS {
            return Err(HandleError::Transient(format!("{disagreement}; waiting for the API to catch up")));
        }
    }
    let outcome = apply_event(&deps.pool, envelope, &event, &confirmed).await?;
    if matches!(outcome, Outcome::Applied { .. } | Outcome::Ignored { .. }) {
        deps.outbox_wakeup.notify_one();
    }
    Ok(outcome)
}

/// Whether the inbox already holds this event as applied or ignored.
async fn already_final(deps: &Deps, envelope: &EventEnvelope) -> Result<bool, HandleError> {
    let client = deps.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT status FROM webhook_events WHERE provider = $1 AND event_key = $2",
            &[&envelope.provider.as_str(), &envelope.event_key],
        )
        .await?;
    Ok(row.is_some_and(|r| matches!(r.get::<_, &str>(0), "applied" | "ignored")))
}

/// The guide's log prefix for a provider.
pub fn log_prefix(provider: Provider) -> &'static str {
    match provider {
        Provider::Stripe => "[Stripe Webhook]",
        Provider::Toss => "[Toss Webhook]",
    }
}

/// Event types known to the pipeline keep their name in metric labels; anything else (an
/// unsigned Toss body can say anything) is counted as `other`, so labels stay bounded.
pub fn metric_event_type(event_type: &str) -> &str {
    const KNOWN: &[&str] = &[
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
        "payment_intent.payment_failed",
        "PAYMENT_STATUS_CHANGED",
        "DEPOSIT_CALLBACK",
        "CANCEL_STATUS_CHANGED",
        "payout.changed",
        "seller.changed",
    ];
    if KNOWN.contains(&event_type) {
        event_type
    } else {
        "other"
    }
}

/// Handles a delivery and settles it with the broker.
pub async fn process_delivery(deps: Arc<Deps>, delivery: Delivery) {
    let envelope = match EventEnvelope::from_amqp(&delivery.properties, &delivery.data) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::error!(%error, "message is not a webhook envelope; dead-lettering it");
            let reason = format!("permanent: {error}");
            settle_dead(&deps, &delivery, 1, &reason).await;
            return;
        }
    };
    let attempt = envelope.attempt + 1;
    // Test hook: a message that crashes the process before it is acknowledged (a poison message).
    fail::fail_point!("process-delivery", |_| std::process::abort());
    let span = tracing::info_span!(
        "delivery",
        provider = %envelope.provider,
        event_id = %envelope.event_key,
        event_type = %envelope.event_type,
        request_id = %envelope.request_id,
        attempt,
        order_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    async {
        let started = Instant::now();
        let result = handle(&deps, &envelope).await;
        let provider = envelope.provider.as_str();
        deps.metrics.processing.with_label_values(&[provider]).observe(started.elapsed().as_secs_f64());
        let failure = result.as_ref().err().map(|e| {
            let kind = if e.is_permanent() { Failure::Permanent } else { Failure::Transient };
            (kind, e.to_string())
        });
        let disposition =
            dispose(failure.as_ref().map(|(k, e)| (*k, e.as_str())), attempt, deps.settings.retry_max_attempts);
        let prefix = log_prefix(envelope.provider);
        let duration_ms = started.elapsed().as_millis() as u64;
        let count = |outcome: &str| {
            deps.metrics
                .events
                .with_label_values(&[provider, metric_event_type(&envelope.event_type), outcome])
                .inc();
        };
        match &result {
            Ok(outcome) => {
                log_outcome(prefix, outcome, duration_ms);
                count(outcome.label());
                if matches!(outcome, Outcome::Applied { .. }) {
                    let lag = (Utc::now() - envelope.received_at).num_milliseconds().max(0) as f64 / 1000.0;
                    deps.metrics.lag.with_label_values(&[provider]).observe(lag);
                }
            }
            Err(error) => {
                tracing::Span::current().record("outcome", "failed");
                if let Disposition::Retry { tier } = &disposition {
                    tracing::warn!(%error, retry_in = ?deps.broker.topology().delay(*tier), duration_ms, "{prefix} Processing failed; will retry");
                }
            }
        }
        match disposition {
            Disposition::Ack => ack(&delivery).await,
            Disposition::Retry { tier } => {
                let error = failure.map(|(_, e)| e).unwrap_or_default();
                let order_id = order_id_of(&envelope);
                if let Err(e) = record_failure(&deps.pool, &envelope, &envelope.event_type, order_id.as_deref(), "retrying", &error).await {
                    tracing::debug!(error = %e, "could not record the failed attempt (database unavailable?)");
                }
                let queue = deps.broker.topology().retry_queue(tier);
                let properties = with_headers(
                    &delivery.properties,
                    [(H_ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))), (H_LAST_ERROR, long_string(&truncate(&error, 1000)))],
                );
                match deps.broker.publish("", &queue, &delivery.data, properties).await {
                    Ok(()) => {
                        count("retried");
                        ack(&delivery).await;
                    }
                    Err(e) => requeue_later(&delivery, &e.to_string()).await,
                }
            }
            Disposition::DeadLetter { reason } => {
                tracing::error!(%reason, duration_ms, "{prefix} Event dead-lettered");
                let order_id = order_id_of(&envelope);
                if let Err(e) = record_failure(&deps.pool, &envelope, &envelope.event_type, order_id.as_deref(), "dead", &reason).await {
                    tracing::warn!(error = %e, "could not record the dead-lettered event in webhook_events");
                }
                if settle_dead(&deps, &delivery, attempt, &reason).await {
                    count("dead_lettered");
                }
            }
        }
    }
    .instrument(span)
    .await
}

fn log_outcome(prefix: &str, outcome: &Outcome, duration_ms: u64) {
    let span = tracing::Span::current();
    span.record("outcome", outcome.label());
    match outcome {
        Outcome::Applied { payment_id, order_id, from, to, notified, verification } => {
            span.record("order_id", order_id.as_str());
            tracing::info!(%payment_id, status = %to, from = %from, verification = verification.as_str(), duration_ms, "{prefix} Payment updated");
            if let Some((notification_id, trainer_id)) = notified {
                tracing::info!(%trainer_id, %notification_id, "{prefix} Notification sent to trainer");
            }
        }
        Outcome::Ignored { reason, order_id, verification } => {
            if let Some(order_id) = order_id {
                span.record("order_id", order_id.as_str());
            }
            tracing::info!(%reason, verification = verification.as_str(), duration_ms, "{prefix} Event recorded and ignored");
        }
        Outcome::Duplicate => tracing::info!(duration_ms, "{prefix} Duplicate event; already processed"),
    }
}

fn order_id_of(envelope: &EventEnvelope) -> Option<String> {
    IncomingEvent::parse(envelope).ok().and_then(|e| e.order_id().map(str::to_string))
}

/// Publishes the delivery to the dead-letter queue with its reason, then acks it. Returns
/// whether it was parked.
async fn settle_dead(deps: &Deps, delivery: &Delivery, attempt: u32, reason: &str) -> bool {
    let properties = with_headers(
        &delivery.properties,
        [
            (H_DEAD_REASON, long_string(&truncate(reason, 2000))),
            (H_DEAD_AT, long_string(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true))),
            (H_ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))),
        ],
    );
    let queue = deps.broker.topology().dead_queue();
    match deps.broker.publish("", &queue, &delivery.data, properties).await {
        Ok(()) => {
            ack(delivery).await;
            true
        }
        Err(e) => {
            requeue_later(delivery, &e.to_string()).await;
            false
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers and the inbox recognises the duplicate.
        tracing::warn!(%error, "ack failed; the message will be redelivered");
    }
}

/// The broker could not take the retry or dead-letter copy: return the message to the queue
/// after a pause, so a broker in trouble is not hammered.
async fn requeue_later(delivery: &Delivery, error: &str) {
    tracing::warn!(%error, "could not republish; returning the message to the queue");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let _ = delivery.nack(BasicNackOptions { multiple: false, requeue: true }).await;
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
