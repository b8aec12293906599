//! What processing one message produced, and how it failed. The consumer turns these into
//! an ack, a retry or a dead letter; nothing else decides that.

use shared::envelope::{EventEnvelope, IngestVerification};
use shared::status::PaymentStatus;
use uuid::Uuid;

use crate::db::{classify, describe_pool_error, DbErrorClass};
use crate::event::{Confirmed, IncomingEvent};

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
    /// The same event was already applied or ignored.
    Duplicate,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Ignored { .. } => "ignored",
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
}

impl HandleError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

impl From<tokio_postgres::Error> for HandleError {
    fn from(error: tokio_postgres::Error) -> Self {
        let text = match error.as_db_error() {
            Some(db) => format!("database error {}: {}", db.code().code(), db.message()),
            None => format!("database unavailable: {error}"),
        };
        match classify(&error) {
            // A broken schema halts the batch before it reaches an event; anywhere else it is
            // no fault of the event, so it is retried.
            DbErrorClass::Transient | DbErrorClass::Broken => Self::Transient(text),
            DbErrorClass::Permanent => Self::Permanent(text),
        }
    }
}

impl From<deadpool_postgres::PoolError> for HandleError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Transient(describe_pool_error(&other)),
        }
    }
}

/// How much of an event was verified before it was applied, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// A provider signature checked at ingest.
    Signature,
    /// Status and amount fetched from the provider's API (Toss fetch-back).
    Fetched,
    /// `DEPOSIT_CALLBACK.secret` matched the payment's secret.
    DepositSecret,
    /// Only the amount matched the stored payment.
    AmountOnly,
    /// Nothing beyond the order existing (the original guide's level).
    None,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Fetched => "fetched",
            Self::DepositSecret => "deposit_secret",
            Self::AmountOnly => "amount_only",
            Self::None => "none",
        }
    }

    pub fn for_event(
        envelope: &EventEnvelope,
        event: &IncomingEvent,
        confirmed: &Confirmed,
        deposit_secret_matched: bool,
        amount_matched: bool,
    ) -> Self {
        if envelope.verification == IngestVerification::Signature {
            Self::Signature
        } else if confirmed.fetched {
            Self::Fetched
        } else if deposit_secret_matched {
            Self::DepositSecret
        } else if amount_matched && event.unsigned_payment_event {
            Self::AmountOnly
        } else {
            Self::None
        }
    }
}
