//! What processing one message produced, and how it failed. The consumer turns these into
//! an ack, a retry or a dead letter; nothing else decides that.

use shared::status::PaymentStatus;
use uuid::Uuid;

use crate::domain::retry::Failure;

/// A message that was handled (the caller acks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payment changed; `notified` is `(notification id, trainer id)` when it has a booking.
    Applied {
        payment_id: Uuid,
        order_id: String,
        from: PaymentStatus,
        to: PaymentStatus,
        notified: Option<(Uuid, Uuid)>,
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

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Ignored { .. } => "ignored",
            Self::Unverified { .. } => "unverified",
            Self::Duplicate => "duplicate",
        }
    }
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

/// How an applied or ignored event was verified, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        match self {
            Self::Signature => "signature",
            Self::Fetched => "fetched",
            Self::DepositSecret => "deposit_secret",
            Self::None => "none",
        }
    }
}
