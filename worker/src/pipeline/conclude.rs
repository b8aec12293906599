//! How one event of a batch ends: its log line (the guide's lines among them), its metrics,
//! and its settlement (ack, delay tier or dead letter) as [`dispose`] decides.

use chrono::Utc;
use shared::envelope::EventEnvelope;
use shared::providers::EventType;
use shared::Provider;

use super::item::Item;
use super::process::Processor;
use super::settle::Settlement;
use crate::domain::outcome::{EventOutcome, HandleError, Notified, Outcome};
use crate::domain::retry::{dispose, Disposition, Failure};
use crate::metrics::EventMetrics;

/// The `worker_events_total` outcome an event is counted under once its delivery is settled.
pub type Counted = EventOutcome;

impl Item {
    /// Logs the event's outcome, counts what is known now and decides its settlement; keeps
    /// the label to count once the settlement is done.
    pub fn conclude(&mut self, processor: &Processor, elapsed: std::time::Duration) {
        let (settlement, counted) = self.decide_settlement(processor, elapsed);
        self.settlement = Some(settlement);
        self.counted = counted;
    }

    /// Counts the event under its label, once its delivery was settled as asked.
    pub fn count_settled(&self, metrics: &EventMetrics) {
        if let (Some(label), Ok(envelope)) = (self.counted, &self.envelope) {
            count_event_label(metrics, envelope, label);
        }
    }

    fn decide_settlement(&self, processor: &Processor, elapsed: std::time::Duration) -> (Settlement, Option<Counted>) {
        let item = self;
        let metrics = &processor.metrics;
        let topology = processor.settler.topology();
        let attempt = item.attempt();
        let envelope = match &item.envelope {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(%error, "message is not a webhook envelope; dead-lettering it");
                let reason = format!("permanent: {error}");
                return (Settlement::dead(&item.delivery, topology.dead_queue(), 1, &reason), None);
            }
        };
        let provider = envelope.provider.as_str();
        metrics.processing.with_label_values(&[provider]).observe(elapsed.as_secs_f64());
        let prefix = log_prefix(envelope.provider);
        let duration_ms = elapsed.as_millis() as u64;
        let result = item.outcome.clone().unwrap_or_else(|| Err(HandleError::Transient("not processed".into())));
        let failure = result.as_ref().err().map(|e| (e.failure(), e.to_string()));
        let disposition =
            dispose(failure.as_ref().map(|(k, e)| (*k, e.as_str())), attempt, processor.rules.max_attempts);
        let (label, order_id) = match &result {
            Ok(Outcome::Applied { order_id, .. }) => ("applied", Some(order_id.as_str())),
            Ok(Outcome::Ignored { order_id: Some(order_id), .. }) => ("ignored", Some(order_id.as_str())),
            Ok(outcome) => (outcome.label().into(), item.order_id.as_deref()),
            Err(_) => ("failed", item.order_id.as_deref()),
        };
        let _entered = item.span.enter();
        match &result {
            Ok(outcome) => {
                log_outcome(prefix, outcome, order_id, duration_ms);
                count_event_label(metrics, envelope, outcome.label());
                if matches!(outcome, Outcome::Applied { .. }) {
                    let lag = (Utc::now() - envelope.received_at).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics.lag.with_label_values(&[provider]).observe(lag);
                }
            }
            Err(error) => {
                if let Disposition::Retry { tier } = &disposition {
                    tracing::warn!(outcome = label, order_id, %error, retry_in = ?topology.delay(*tier), duration_ms, "{prefix} Processing failed; will retry");
                }
            }
        }
        match disposition {
            Disposition::Ack => (Settlement::Ack, None),
            Disposition::Retry { tier } => {
                let error = failure.map(|(_, e)| e).unwrap_or_default();
                (
                    Settlement::retry(&item.delivery, topology.retry_queue(tier), attempt, &error),
                    Some(EventOutcome::Retried),
                )
            }
            Disposition::DeadLetter { reason } if matches!(failure, Some((Failure::Unverifiable, _))) => {
                // Its headers are unproven: the event id in the span is only what it claimed.
                tracing::error!(outcome = "unverifiable", %reason, duration_ms, "{prefix} Message does not prove what it claims; dead-lettered");
                (
                    Settlement::dead(&item.delivery, topology.dead_queue(), attempt, &reason),
                    Some(EventOutcome::Unverifiable),
                )
            }
            Disposition::DeadLetter { reason } => {
                tracing::error!(outcome = label, order_id, %reason, duration_ms, "{prefix} Event dead-lettered");
                (
                    Settlement::dead(&item.delivery, topology.dead_queue(), attempt, &reason),
                    Some(EventOutcome::DeadLettered),
                )
            }
        }
    }
}

fn count_event_label(metrics: &EventMetrics, envelope: &EventEnvelope, outcome: EventOutcome) {
    let event_type = EventType::of(envelope.provider, &envelope.event_type);
    metrics.events.with_label_values(&[envelope.provider.as_str(), event_type.label(), outcome.into()]).inc();
}

fn log_outcome(prefix: &str, outcome: &Outcome, order_id: Option<&str>, duration_ms: u64) {
    let label: &str = outcome.label().into();
    match outcome {
        Outcome::Applied { payment_id, to, from, notified, verification, .. } => {
            tracing::info!(outcome = label, order_id, %payment_id, status = %to, from = %from, verification = verification.as_str(), duration_ms, "{prefix} Payment updated");
            match notified {
                Notified::Trainer { notification_id, trainer_id } => {
                    tracing::info!(order_id, %trainer_id, %notification_id, "{prefix} Notification sent to trainer");
                }
                Notified::NoBooking => tracing::warn!(order_id, "payment has no booking; no notification"),
                Notified::BookingGone { booking_id } => {
                    tracing::warn!(order_id, %booking_id, "booking not found; no notification")
                }
            }
        }
        Outcome::Ignored { reason, verification, .. } => {
            tracing::info!(outcome = label, order_id, %reason, verification = verification.as_str(), duration_ms, "{prefix} Event recorded and ignored");
        }
        Outcome::Unverified { reason, .. } => {
            tracing::warn!(outcome = label, order_id, %reason, duration_ms, "{prefix} Event not verified; recorded as unverified, payment unchanged");
        }
        Outcome::Duplicate => {
            tracing::info!(outcome = label, order_id, duration_ms, "{prefix} Duplicate event; already processed")
        }
    }
}

/// The guide's log prefix for a provider.
pub fn log_prefix(provider: Provider) -> &'static str {
    match provider {
        Provider::Stripe => "[Stripe Webhook]",
        Provider::Toss => "[Toss Webhook]",
    }
}
