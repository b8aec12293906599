//! What processing one message produced, and how it failed. The consumer turns these into
//! an ack, a retry or a dead letter; nothing else decides that.

use shared::status::PaymentStatus;
use uuid::Uuid;

use crate::domain::retry::Failure;

/// A message that was handled (the caller acks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payment changed; `notified` says whom the change was told to, or why nobody.
    Applied {
        payment_id: Uuid,
        order_id: String,
        from: PaymentStatus,
        to: PaymentStatus,
        notified: Notified,
        verification: Verification,
    },
    /// Recorded, nothing changed (repeated or stale status, or an event type not applied).
    Ignored { reason: String, order_id: Option<String>, verification: Verification },
    /// Recorded as `unverified`, nothing changed: nothing could verify the event (an unsigned
    /// Toss payment event without fetch-back or a matching deposit secret). Not final: a re-check
    /// or a later copy decides it again.
    Unverified { reason: String, order_id: Option<String> },
    /// The same event was already applied or ignored.
    Duplicate,
}

/// Whom an applied change was told to. Logged when the event concludes, after the commit,
/// never while the transaction holds the payment's row lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// A notification for the booking's trainer.
    Trainer { notification_id: Uuid, trainer_id: Uuid },
    /// The payment has no booking: nobody to tell.
    NoBooking,
    /// The payment names a booking that does not exist (any more).
    BookingGone { booking_id: Uuid },
}

impl Notified {
    /// `(notification id, trainer id)` when a notification was made.
    pub fn ids(&self) -> Option<(Uuid, Uuid)> {
        match self {
            Self::Trainer { notification_id, trainer_id } => Some((*notification_id, *trainer_id)),
            Self::NoBooking | Self::BookingGone { .. } => None,
        }
    }
}

impl Outcome {
    /// What the event is counted as.
    pub fn label(&self) -> EventOutcome {
        match self {
            Self::Applied { .. } => EventOutcome::Applied,
            Self::Ignored { .. } => EventOutcome::Ignored,
            Self::Unverified { .. } => EventOutcome::Unverified,
            Self::Duplicate => EventOutcome::Duplicate,
        }
    }
}

/// Every `outcome` of `worker_events_total`: the handled outcomes, and what became of a failed
/// attempt. `unverified`: recorded, changed nothing, nothing could verify it; `unverifiable`: the
/// message did not prove what it claimed (dead-lettered).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, strum::Display, strum::IntoStaticStr, strum::EnumIter, strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum EventOutcome {
    Applied,
    Duplicate,
    Ignored,
    Unverified,
    Retried,
    DeadLettered,
    Unverifiable,
}

/// Why a message was not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Worth retrying later: database unavailable, lock or serialization conflict, provider
    /// API unavailable.
    #[error("{0}")]
    Transient(String),
    /// The payment row does not exist yet (the webhook beat the app's insert): retried.
    #[error("{0}")]
    NotFoundYet(String),
    /// Retrying cannot help: unparseable, amount mismatch, failed verification.
    #[error("{0}")]
    Permanent(String),
    /// The message's own bytes do not prove what its headers claim (no signature that holds,
    /// a key or type the body does not have): dead-lettered as `unverifiable`, never recorded
    /// in the inbox under a key it did not prove.
    #[error("{0}")]
    Unverifiable(String),
}

impl HandleError {
    /// Retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_) | Self::Unverifiable(_))
    }

    /// How the retry schedule treats it.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Transient(_) | Self::NotFoundYet(_) => Failure::Transient,
            Self::Permanent(_) => Failure::Permanent,
            Self::Unverifiable(_) => Failure::Unverifiable,
        }
    }
}

/// How an applied or ignored event was verified, strongest first. The names are
/// `webhook_events.verification`'s and the metadata's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Verification {
    /// A provider signature, checked by ingest and again by the worker.
    Signature,
    /// Status, amount and currency fetched from the provider's API (Toss fetch-back).
    Fetched,
    /// `DEPOSIT_CALLBACK.secret` matched the payment's stored secret.
    DepositSecret,
    /// Nothing: applied only under the development opt-in `TOSS_ALLOW_UNVERIFIED`, or an event
    /// that changed nothing (an event type that is not applied).
    None,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn stored_and_counted_names_stay_as_they_are() {
        let verifications: Vec<&str> = Verification::iter().map(Verification::as_str).collect();
        assert_eq!(verifications, ["signature", "fetched", "deposit_secret", "none"]);
        let outcomes: Vec<&str> = EventOutcome::iter().map(<&str>::from).collect();
        assert_eq!(
            outcomes,
            ["applied", "duplicate", "ignored", "unverified", "retried", "dead_lettered", "unverifiable"]
        );
    }
}
