//! Deciding a batch: every event, in delivery order, against the payments the transaction
//! locked and the inbox as it stood. Pure: [`crate::store::write`] reads the rows, this decides what
//! each event does, and the transaction writes exactly that.
//!
//! Two events for one payment in one batch go through the state machine one after the other,
//! the second seeing the status (and the date of the last applied event) the first left,
//! exactly as two transactions in a row would. Which event may change a status is decided by
//! [`crate::domain::ordering`]: the provider's dates first, then the state machine.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use shared::envelope::EventEnvelope;
use shared::status::PaymentStatus;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::event::{webhook_metadata, Confirmed, IncomingEvent, Intent, PaymentRef};
use crate::domain::notification::{booking_link, wording, NotificationMessage, PaymentSummary, MESSAGE_VERSION};
use crate::domain::ordering::{believed_time, decide_in_order};
use crate::domain::outcome::{HandleError, Notified, Outcome, Verification};
use crate::domain::state_machine::Transition;

/// An event the transaction decides.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub envelope: &'a EventEnvelope,
    pub event: &'a IncomingEvent,
    pub confirmed: &'a Confirmed,
    /// The event's trace, carried on to its notification.
    pub traceparent: Option<&'a str>,
}

impl Candidate<'_> {
    /// The inbox key.
    pub fn key(&self) -> (&str, &str) {
        (self.envelope.provider.as_str(), self.envelope.event_key.as_str())
    }
}

/// A payment row as the transaction locked it (with its booking's trainer).
#[derive(Debug, Clone, PartialEq)]
pub struct LockedPayment {
    pub id: Uuid,
    pub order_id: String,
    pub status: PaymentStatus,
    pub booking_id: Option<Uuid>,
    /// `None` when the payment has no booking or the booking is gone.
    pub trainer_id: Option<Uuid>,
    pub provider: Option<String>,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    pub deposit_secret: Option<String>,
    pub provider_payment_id: Option<String>,
    /// The provider's date of the last event applied to it (`payments.last_event_at`).
    pub last_event_at: Option<DateTime<Utc>>,
}

/// The final state of a payment the batch changed; one `UPDATE` row.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentUpdate {
    pub id: Uuid,
    pub status: PaymentStatus,
    /// An event of the batch made it `paid` (sets `paid_at` if it is not set yet).
    pub paid: bool,
    /// The last applied webhook, for `payment_metadata->'webhook'` (JSON text).
    pub metadata: String,
    pub provider: Option<String>,
    pub provider_payment_id: Option<String>,
    pub deposit_secret: Option<String>,
    /// The provider's date of the last applied event, kept when the event had none.
    pub last_event_at: Option<DateTime<Utc>>,
}

/// A trainer's notification and its outbox message.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub message: String,
    /// `payment.<status>`: the notification type and the routing key.
    pub kind: String,
    pub link: String,
    pub payment_id: Uuid,
    /// The published message, exactly the bytes the outbox row keeps.
    pub payload: String,
    /// The trace of the event that caused it.
    pub traceparent: Option<String>,
}

/// What the batch does.
#[derive(Debug)]
pub struct Plan {
    /// One per candidate, in order.
    pub results: Vec<Result<Outcome, HandleError>>,
    pub payments: Vec<PaymentUpdate>,
    pub notifications: Vec<NewNotification>,
}

/// A locked payment while the batch changes it.
struct Working {
    row: LockedPayment,
    paid: bool,
    metadata: Option<String>,
}

/// What may change a payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trust {
    /// Development only (`TOSS_ALLOW_UNVERIFIED`): an event nothing verified is applied anyway,
    /// as the original guide did, with verification `none`.
    pub allow_unverified: bool,
}

/// Decides every candidate in order. `already_final` holds the inbox keys that were applied
/// or ignored before (read after the payment locks were taken, so a concurrent copy of an
/// event that changed one of these payments is seen); `payments` are the locked rows.
pub fn decide_batch(
    candidates: &[Candidate<'_>],
    already_final: &HashSet<(String, String)>,
    payments: Vec<LockedPayment>,
    trust: Trust,
    now: DateTime<Utc>,
) -> Plan {
    let mut working: Vec<Working> =
        payments.into_iter().map(|row| Working { row, paid: false, metadata: None }).collect();
    let mut notifications = Vec::new();
    let results = candidates
        .iter()
        .map(|c| {
            let (provider, key) = c.key();
            if already_final.contains(&(provider.to_string(), key.to_string())) {
                return Ok(Outcome::Duplicate);
            }
            decide_one(c, &mut working, &mut notifications, trust, now)
        })
        .collect();
    let payments = working
        .into_iter()
        .filter_map(|w| {
            let metadata = w.metadata?;
            Some(PaymentUpdate {
                id: w.row.id,
                status: w.row.status,
                paid: w.paid,
                metadata,
                provider: w.row.provider,
                provider_payment_id: w.row.provider_payment_id,
                deposit_secret: w.row.deposit_secret,
                last_event_at: w.row.last_event_at,
            })
        })
        .collect();
    Plan { results, payments, notifications }
}

fn decide_one(
    candidate: &Candidate<'_>,
    working: &mut [Working],
    notifications: &mut Vec<NewNotification>,
    trust: Trust,
    now: DateTime<Utc>,
) -> Result<Outcome, HandleError> {
    let Candidate { envelope, event, confirmed, traceparent } = *candidate;
    let (payment_ref, target) = match &event.intent {
        Intent::Ignore(reason) => {
            let verification = if confirmed.signature {
                Verification::Signature
            } else if confirmed.fetched {
                Verification::Fetched
            } else {
                Verification::None
            };
            return Ok(Outcome::Ignored { reason: reason.clone(), order_id: None, verification });
        }
        Intent::SetStatus { payment, target } => (payment, *target),
    };
    // Only a deposit callback can still be verified by the payment it names; anything else
    // unverified is recorded at once, whether or not its order exists (no retries for junk).
    if !(confirmed.signature || confirmed.fetched || event.is_deposit_callback || trust.allow_unverified) {
        let order_id = event.order_id().map(str::to_string);
        return Ok(Outcome::Unverified { reason: NOTHING_VERIFIES.into(), order_id });
    }
    let payment = find(working, payment_ref)
        .ok_or_else(|| HandleError::NotFoundYet(format!("no payment for {payment_ref} yet")))?;
    let deposit_secret_matched = check_deposit_secret(&payment.row, event, confirmed)?;
    // Nothing about an event is acted on before it is verified, not even its consistency with
    // the payment: an unverified event is recorded and changes nothing.
    let verification = match verify(&payment.row, confirmed, deposit_secret_matched) {
        Ok(verification) => verification,
        Err(_) if trust.allow_unverified => Verification::None,
        Err(reason) => {
            return Ok(Outcome::Unverified { reason: reason.to_string(), order_id: Some(payment.row.order_id.clone()) })
        }
    };
    check_consistency(&payment.row, envelope, event)?;
    let from = payment.row.status;
    let order_id = payment.row.order_id.clone();
    let event_at = believed_time(event.provider_time, envelope.received_at);
    if let Transition::Ignore(reason) = decide_in_order(from, payment.row.last_event_at, target, event_at) {
        let detail = format!("{} ({from} -> {target})", reason.as_str());
        return Ok(Outcome::Ignored { reason: detail, order_id: Some(order_id), verification });
    }

    let learned_secret =
        confirmed.fetched_secret.clone().or_else(|| event.deposit_secret.clone().filter(|_| deposit_secret_matched));
    let row = &mut payment.row;
    row.status = target;
    row.last_event_at = row.last_event_at.max(event_at);
    row.provider.get_or_insert_with(|| envelope.provider.as_str().to_string());
    if row.provider_payment_id.is_none() {
        row.provider_payment_id.clone_from(&event.provider_payment_id);
    }
    if row.deposit_secret.is_none() {
        row.deposit_secret = learned_secret;
    }
    payment.paid |= target == PaymentStatus::Paid;
    payment.metadata = Some(webhook_metadata(envelope, event, verification.as_str()));

    let notified = match notification_for(&payment.row, from, event, now, traceparent) {
        Ok(n) => {
            let notified = Notified::Trainer { notification_id: n.id, trainer_id: n.user_id };
            notifications.push(n);
            notified
        }
        Err(nobody) => nobody,
    };
    Ok(Outcome::Applied { payment_id: payment.row.id, order_id, from, to: target, notified, verification })
}

/// The payment an event names, as the batch left it so far (a payment intent learned from an
/// earlier event of the batch counts).
fn find<'w>(working: &'w mut [Working], payment: &PaymentRef) -> Option<&'w mut Working> {
    working.iter_mut().find(|w| match payment {
        PaymentRef::OrderId(id) => w.row.order_id == *id,
        PaymentRef::ProviderPaymentId(id) => w.row.provider_payment_id.as_deref() == Some(id.as_str()),
    })
}

/// How an event that would change `payment` was verified; `Err` says why it was not. Amount
/// and currency agreeing is no verification (a price can be guessed).
fn verify(
    payment: &LockedPayment,
    confirmed: &Confirmed,
    deposit_secret_matched: bool,
) -> Result<Verification, &'static str> {
    if confirmed.signature {
        Ok(Verification::Signature)
    } else if confirmed.fetched {
        Ok(Verification::Fetched)
    } else if deposit_secret_matched && payment.provider.is_some() {
        Ok(Verification::DepositSecret)
    } else if deposit_secret_matched {
        Err("the payment names no provider, so only a provider signature or the provider's API may change it")
    } else {
        Err("DEPOSIT_CALLBACK for a payment whose secret is not known: store it in payments.deposit_secret, or \
             set TOSS_SECRET_KEY (fetch-back from the Toss API)")
    }
}

/// Why an unsigned Toss payment event without fetch-back changes nothing.
const NOTHING_VERIFIES: &str = "unsigned Toss payment event and nothing to verify it with: set TOSS_SECRET_KEY \
     (fetch-back from the Toss API), then `hookctl unverified recheck`";

/// Whether a `DEPOSIT_CALLBACK` carries the payment's secret (stored, or as the Toss API reported
/// it). A wrong secret is a failed verification: permanent. No known secret: `false`.
fn check_deposit_secret(
    payment: &LockedPayment,
    event: &IncomingEvent,
    confirmed: &Confirmed,
) -> Result<bool, HandleError> {
    let known_secret = payment.deposit_secret.as_deref().or(confirmed.fetched_secret.as_deref());
    match (event.is_deposit_callback, known_secret) {
        (true, Some(known)) => {
            let sent = event.deposit_secret.as_deref().unwrap_or("");
            if !bool::from(known.as_bytes().ct_eq(sent.as_bytes())) {
                return Err(HandleError::Permanent(
                    "DEPOSIT_CALLBACK secret does not match the payment's secret".into(),
                ));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Facts of a verified event that must agree with the payment before anything is applied; a
/// disagreement is permanent.
fn check_consistency(
    payment: &LockedPayment,
    envelope: &EventEnvelope,
    event: &IncomingEvent,
) -> Result<(), HandleError> {
    if let Some(stored) = &payment.provider {
        if stored != envelope.provider.as_str() {
            return Err(HandleError::Permanent(format!(
                "payment {} is a {stored} payment; a {} event cannot change it",
                payment.order_id, envelope.provider
            )));
        }
    }
    if let (Some(stored), Some(sent)) = (payment.amount, event.amount) {
        if stored != sent {
            return Err(HandleError::Permanent(format!("amount mismatch: event says {sent}, payment is {stored}")));
        }
    }
    if let (Some(stored), Some(sent)) = (&payment.currency, &event.currency) {
        if !stored.eq_ignore_ascii_case(sent) {
            return Err(HandleError::Permanent(format!("currency mismatch: event says {sent}, payment is {stored}")));
        }
    }
    Ok(())
}

/// The trainer's notification for a change from `from` to the payment's new status; `Err` says
/// why there is nobody to tell (no booking, or its booking is gone).
fn notification_for(
    payment: &LockedPayment,
    from: PaymentStatus,
    event: &IncomingEvent,
    now: DateTime<Utc>,
    traceparent: Option<&str>,
) -> Result<NewNotification, Notified> {
    let booking_id = payment.booking_id.ok_or(Notified::NoBooking)?;
    let trainer_id = payment.trainer_id.ok_or(Notified::BookingGone { booking_id })?;
    let amount = payment.amount.or(event.amount);
    let currency = payment.currency.as_deref().or(event.currency.as_deref());
    let words = wording(payment.status, amount, currency, event.failure_reason.as_deref());
    let id = Uuid::now_v7();
    let link = booking_link(booking_id);
    let message = NotificationMessage {
        kind: words.kind.clone(),
        version: MESSAGE_VERSION,
        notification_id: id,
        user_id: trainer_id,
        title: words.title.clone(),
        message: words.message.clone(),
        link: link.clone(),
        payment: PaymentSummary {
            id: payment.id,
            order_id: payment.order_id.clone(),
            booking_id,
            provider: event.provider.as_str().to_string(),
            status: payment.status,
            previous_status: from,
            amount: amount.map(|a| a.normalize().to_string()),
            currency: currency.map(str::to_string),
        },
        occurred_at: now,
    };
    let payload = serde_json::to_string(&message).expect("a notification serialises");
    Ok(NewNotification {
        id,
        user_id: trainer_id,
        title: words.title,
        message: words.message,
        kind: words.kind,
        link,
        payment_id: payment.id,
        payload,
        traceparent: traceparent.map(str::to_string),
    })
}

#[cfg(test)]
mod permutations;
#[cfg(test)]
mod tests;
