//! From a queued envelope to what the worker will do with it: which payment, which target
//! status, which facts to check. Pure: no I/O, so every mapping is unit-tested.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::Value;
use shared::envelope::EventEnvelope;
use shared::providers::stripe::{parse_stripe_event, StripeEvent};
use shared::providers::toss::{parse_toss_event, without_secrets, TossEvent, TossEventKind};
use shared::providers::StripeEventType;
use shared::status::PaymentStatus;
use shared::Provider;

use crate::domain::notification::outside_text;

/// How to find the payment an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentRef {
    /// `payments.order_id`.
    OrderId(String),
    /// `payments.provider_payment_id` (a Stripe payment intent or a Toss paymentKey).
    ProviderPaymentId(String),
}

impl PaymentRef {
    pub fn order_id(&self) -> Option<&str> {
        match self {
            Self::OrderId(id) => Some(id),
            Self::ProviderPaymentId(_) => None,
        }
    }
}

impl std::fmt::Display for PaymentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OrderId(id) => write!(f, "order {id}"),
            Self::ProviderPaymentId(id) => write!(f, "provider payment {id}"),
        }
    }
}

/// What the event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Move the payment to this status (if the state machine allows).
    SetStatus { payment: PaymentRef, target: PaymentStatus },
    /// A valid delivery the pipeline does not apply to payments; recorded as ignored.
    Ignore(String),
}

/// A parsed event with everything the worker checks and stores.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub provider: Provider,
    pub event_type: String,
    pub intent: Intent,
    /// The provider's own word for the status (`paid`, `DONE`, ...).
    pub provider_status: Option<String>,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    /// Stripe payment intent / Toss paymentKey, stored on the payment when first seen.
    pub provider_payment_id: Option<String>,
    /// `DEPOSIT_CALLBACK.secret`, compared in constant time with the stored one.
    pub deposit_secret: Option<String>,
    pub is_deposit_callback: bool,
    /// True for Toss payment events, which Toss does not sign.
    pub unsigned_payment_event: bool,
    pub failure_reason: Option<String>,
    /// When the provider says the change happened: Stripe's `created`, Toss's `createdAt`
    /// (read as KST) or its payment's latest time; `None` when the body carries none. Orders
    /// events that arrive out of order ([`crate::domain::ordering`]).
    pub provider_time: Option<DateTime<Utc>>,
    /// The provider object, without secrets, stored under `payment_metadata->'webhook'->'data'`.
    pub data: EventData,
}

/// Facts this worker established before the transaction (nothing a message header claims).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// A provider signature over the body held, checked by this worker
    /// ([`shared::verify::message::check_message`]).
    pub signature: bool,
    /// The status and amount come from the provider's API, not from the webhook.
    pub fetched: bool,
    /// The payment's `secret` as the provider's API reported it.
    pub fetched_secret: Option<String>,
    /// Set when the API shows an earlier state than the webhook claims (the API lagging, or
    /// a forged webhook); says what disagrees.
    pub api_behind: Option<String>,
}

/// Why a message can never be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unprocessable(pub String);

impl IncomingEvent {
    pub fn parse(envelope: &EventEnvelope) -> Result<Self, Unprocessable> {
        match envelope.provider {
            Provider::Stripe => parse_stripe_event(&envelope.body)
                .map(from_stripe)
                .map_err(|e| Unprocessable(format!("unparseable Stripe payload: {e}"))),
            Provider::Toss => {
                let event = parse_toss_event(&envelope.body)
                    .map_err(|e| Unprocessable(format!("unparseable Toss payload: {e}")))?;
                from_toss(&event)
            }
        }
    }

    /// The order id, when the event names one.
    pub fn order_id(&self) -> Option<&str> {
        match &self.intent {
            Intent::SetStatus { payment, .. } => payment.order_id(),
            Intent::Ignore(_) => None,
        }
    }
}

fn from_stripe(event: StripeEvent) -> IncomingEvent {
    use PaymentStatus::*;
    use StripeEventType::*;
    let known = event.event_type.parse::<StripeEventType>().ok();
    let target = match known {
        Some(CheckoutSessionCompleted) => match event.session_payment_status() {
            Some("paid") | Some("no_payment_required") => Some(Paid),
            // Async methods (bank transfers, vouchers): the money has not arrived yet.
            Some("unpaid") => Some(WaitingForDeposit),
            _ => None,
        },
        Some(CheckoutSessionAsyncPaymentSucceeded) => Some(Paid),
        Some(CheckoutSessionAsyncPaymentFailed) => Some(Failed),
        Some(CheckoutSessionExpired) => Some(Expired),
        Some(PaymentIntentPaymentFailed) => Some(Failed),
        None => None,
    };
    let payment = match (event.order_id(), event.payment_intent_id()) {
        (Some(order), _) => Some(PaymentRef::OrderId(order.to_string())),
        (None, Some(pi)) if event.object_kind() == Some("payment_intent") => {
            Some(PaymentRef::ProviderPaymentId(pi.to_string()))
        }
        _ => None,
    };
    let intent = match (target, payment) {
        (Some(target), Some(payment)) => Intent::SetStatus { payment, target },
        (Some(_), None) => {
            Intent::Ignore("event names no order (client_reference_id, metadata.order_id) or payment intent".into())
        }
        // The only type whose target depends on more than its name.
        (None, _) if known == Some(CheckoutSessionCompleted) => {
            Intent::Ignore(format!("session payment_status {:?} is not handled", event.session_payment_status()))
        }
        (None, _) => Intent::Ignore(format!("event type {} is not applied to payments", event.event_type)),
    };
    IncomingEvent {
        provider: Provider::Stripe,
        intent,
        provider_status: event.session_payment_status().or(event.object.status.as_deref()).map(str::to_string),
        amount: event.amount(),
        currency: event.currency().map(str::to_string),
        provider_payment_id: event.payment_intent_id().map(str::to_string),
        deposit_secret: None,
        is_deposit_callback: false,
        unsigned_payment_event: false,
        failure_reason: event.failure_reason().map(|reason| outside_text(&reason)),
        provider_time: event.created.and_then(|seconds| DateTime::from_timestamp(seconds, 0)),
        event_type: event.event_type,
        // Stripe objects carry no secret: stored as sent, without being parsed and rebuilt.
        data: EventData::Raw(event.raw_object),
    }
}

/// Maps a Toss status to a payment status; `Ok(None)` for states that are not an outcome.
pub fn toss_status(status: &str) -> Result<Option<PaymentStatus>, Unprocessable> {
    use PaymentStatus::*;
    Ok(Some(match status {
        "DONE" => Paid,
        "WAITING_FOR_DEPOSIT" => WaitingForDeposit,
        "CANCELED" => Canceled,
        "PARTIAL_CANCELED" => PartiallyCanceled,
        // The original guide says FAILED; Toss itself says ABORTED.
        "ABORTED" | "FAILED" => Failed,
        "EXPIRED" => Expired,
        "READY" | "IN_PROGRESS" => return Ok(None),
        other => return Err(Unprocessable(format!("unknown Toss status {other:?}"))),
    }))
}

fn from_toss(event: &TossEvent) -> Result<IncomingEvent, Unprocessable> {
    let applies = matches!(event.kind, TossEventKind::PaymentStatusChanged | TossEventKind::DepositCallback);
    let intent = if !applies {
        Intent::Ignore(format!("event type {} is not applied to payments", event.event_type))
    } else {
        let status =
            event.status.as_deref().ok_or_else(|| Unprocessable(format!("{} without a status", event.event_type)))?;
        let payment = match (&event.order_id, &event.payment_key) {
            (Some(order), _) => PaymentRef::OrderId(order.clone()),
            (None, Some(key)) => PaymentRef::ProviderPaymentId(key.clone()),
            (None, None) => {
                return Err(Unprocessable(format!("{} names neither orderId nor paymentKey", event.event_type)))
            }
        };
        match toss_status(status)? {
            Some(target) => Intent::SetStatus { payment, target },
            None => Intent::Ignore(format!("status {status} is not an outcome")),
        }
    };
    Ok(IncomingEvent {
        provider: Provider::Toss,
        event_type: event.event_type.clone(),
        intent,
        provider_status: event.status.clone(),
        amount: event.total_amount,
        currency: event.currency.clone(),
        provider_payment_id: event.payment_key.clone(),
        deposit_secret: event.secret.clone(),
        is_deposit_callback: event.kind == TossEventKind::DepositCallback,
        unsigned_payment_event: applies,
        failure_reason: toss_failure_reason(&event.payment),
        provider_time: event.event_time(),
        data: EventData::Json(without_secrets(&event.payment)),
    })
}

/// `failure.message` of a Toss Payment, as notification text may carry it.
pub fn toss_failure_reason(payment: &Value) -> Option<String> {
    payment.get("failure").and_then(|f| f.get("message")).and_then(Value::as_str).map(outside_text)
}

/// The provider's object as stored with the payment.
#[derive(Debug, Clone)]
pub enum EventData {
    /// The JSON text exactly as the provider sent it.
    Raw(Box<RawValue>),
    /// A document the worker built (a Toss object without its secrets).
    Json(Value),
}

impl EventData {
    /// The object's JSON text.
    pub fn to_json(&self) -> String {
        match self {
            Self::Raw(raw) => raw.get().to_string(),
            Self::Json(value) => value.to_string(),
        }
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.to_json() == other.to_json()
    }
}

impl serde::Serialize for EventData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Raw(raw) => raw.serialize(serializer),
            Self::Json(value) => value.serialize(serializer),
        }
    }
}

/// What is stored under `payment_metadata->'webhook'`, as JSON text.
pub fn webhook_metadata(envelope: &EventEnvelope, event: &IncomingEvent, verification: &str) -> String {
    #[derive(serde::Serialize)]
    struct Metadata<'a> {
        provider: &'a str,
        event_id: &'a str,
        event_type: &'a str,
        provider_status: Option<&'a str>,
        amount: Option<String>,
        currency: Option<&'a str>,
        failure_reason: Option<&'a str>,
        verification: &'a str,
        received_at: String,
        applied_at: String,
        data: &'a EventData,
    }
    let metadata = Metadata {
        provider: envelope.provider.as_str(),
        event_id: &envelope.event_key,
        event_type: &event.event_type,
        provider_status: event.provider_status.as_deref(),
        amount: event.amount.map(|a| a.to_string()),
        currency: event.currency.as_deref(),
        failure_reason: event.failure_reason.as_deref(),
        verification,
        received_at: envelope.received_at.to_rfc3339(),
        applied_at: chrono::Utc::now().to_rfc3339(),
        data: &event.data,
    };
    serde_json::to_string(&metadata).expect("metadata serialises")
}

#[cfg(test)]
mod tests;
