//! The event sequences Stripe and Toss really send for one payment, and their bodies, dated
//! the way each provider dates them.

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::providers::toss::parse_toss_event;
use shared::samples::{stripe_payment_failed, stripe_session_event};
use shared::status::PaymentStatus::{self, *};
use shared::Provider;

/// One event a provider sends about the payment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Stripe `checkout.session.completed` with this `payment_status`.
    Completed(&'static str),
    /// Stripe `checkout.session.async_payment_succeeded`.
    AsyncSucceeded,
    /// Stripe `checkout.session.async_payment_failed`.
    AsyncFailed,
    /// Stripe `checkout.session.expired`.
    SessionExpired,
    /// Stripe `payment_intent.payment_failed` with the order in the intent's metadata.
    Declined,
    /// The same without metadata: it names only the payment intent, which the payment learns
    /// from the session event, so until that is applied it is retried (not found yet).
    DeclinedIntentOnly,
    /// Toss `PAYMENT_STATUS_CHANGED` with this status.
    Changed(&'static str),
    /// Toss `DEPOSIT_CALLBACK` (the documented flat body) with this status.
    Deposit(&'static str),
}

use Step::*;

/// A payment's events as one provider sends them, in the order they happen.
pub struct Lifecycle {
    pub name: &'static str,
    pub provider: Provider,
    pub steps: &'static [Step],
    /// The status the in-order delivery ends in.
    pub ends: PaymentStatus,
    /// Where the sequence comes from (`PROVIDERS.md` unless said otherwise).
    pub source: &'static str,
}

#[rustfmt::skip]
pub const LIFECYCLES: &[Lifecycle] = &[
    Lifecycle { name: "card, paid", provider: Provider::Stripe,
        steps: &[Completed("paid")], ends: Paid,
        source: "Stripe: checkout.session.completed, payment_status paid" },
    Lifecycle { name: "nothing to pay", provider: Provider::Stripe,
        steps: &[Completed("no_payment_required")], ends: Paid,
        source: "Stripe: payment_status no_payment_required -> paid" },
    Lifecycle { name: "async method, paid", provider: Provider::Stripe,
        steps: &[Completed("unpaid"), AsyncSucceeded], ends: Paid,
        source: "Stripe: completed with unpaid (async methods), then async_payment_succeeded" },
    Lifecycle { name: "async method, failed", provider: Provider::Stripe,
        steps: &[Completed("unpaid"), AsyncFailed], ends: Failed,
        source: "Stripe: completed with unpaid (async methods), then async_payment_failed" },
    Lifecycle { name: "declined, then paid", provider: Provider::Stripe,
        steps: &[Declined, Completed("paid")], ends: Paid,
        source: "Stripe: payment_intent.payment_failed, then the card is retried in the same session (state_machine.rs)" },
    Lifecycle { name: "declined three times, then paid", provider: Provider::Stripe,
        steps: &[Declined, Declined, Declined, Completed("paid")], ends: Paid,
        source: "Stripe: one payment_intent.payment_failed per declined attempt" },
    Lifecycle { name: "declined (intent only), then paid", provider: Provider::Stripe,
        steps: &[DeclinedIntentOnly, DeclinedIntentOnly, Completed("paid")], ends: Paid,
        source: "Stripe: a payment intent carries the order only in metadata, often not at all" },
    Lifecycle { name: "declined, then expired", provider: Provider::Stripe,
        steps: &[Declined, SessionExpired], ends: Expired,
        source: "Stripe: payment_intent.payment_failed, then checkout.session.expired" },
    Lifecycle { name: "card, done", provider: Provider::Toss,
        steps: &[Changed("DONE")], ends: Paid,
        source: "Toss: PAYMENT_STATUS_CHANGED is sent on DONE" },
    Lifecycle { name: "done, canceled", provider: Provider::Toss,
        steps: &[Changed("DONE"), Changed("CANCELED")], ends: Canceled,
        source: "Toss: PAYMENT_STATUS_CHANGED on DONE and CANCELED" },
    Lifecycle { name: "done, partly canceled, canceled", provider: Provider::Toss,
        steps: &[Changed("DONE"), Changed("PARTIAL_CANCELED"), Changed("CANCELED")], ends: Canceled,
        source: "Toss: PAYMENT_STATUS_CHANGED on PARTIAL_CANCELED, then on CANCELED" },
    Lifecycle { name: "done, two partial cancels, canceled", provider: Provider::Toss,
        steps: &[Changed("DONE"), Changed("PARTIAL_CANCELED"), Changed("PARTIAL_CANCELED"), Changed("CANCELED")],
        ends: Canceled,
        source: "Toss: one PARTIAL_CANCELED per partial cancel" },
    Lifecycle { name: "virtual account, deposited", provider: Provider::Toss,
        steps: &[Deposit("WAITING_FOR_DEPOSIT"), Deposit("DONE"), Changed("DONE")], ends: Paid,
        source: "Toss: DEPOSIT_CALLBACK on issue and deposit; with PAYMENT_STATUS_CHANGED also registered, each change twice" },
    Lifecycle { name: "virtual account, deposited, refunded", provider: Provider::Toss,
        steps: &[Deposit("WAITING_FOR_DEPOSIT"), Deposit("DONE"), Changed("DONE"), Changed("CANCELED"), Deposit("CANCELED")],
        ends: Canceled,
        source: "Toss: DEPOSIT_CALLBACK statuses include CANCELED; each change twice" },
    Lifecycle { name: "aborted", provider: Provider::Toss,
        steps: &[Changed("ABORTED")], ends: Failed,
        source: "Toss: PAYMENT_STATUS_CHANGED on ABORTED" },
    Lifecycle { name: "expired", provider: Provider::Toss,
        steps: &[Changed("EXPIRED")], ends: Expired,
        source: "Toss: PAYMENT_STATUS_CHANGED on EXPIRED" },
];

pub const ORDER: &str = "order-1";
/// The first event's date: 2026-01-02 05:46:59 UTC, 14:46:59 in Korea.
const FIRST_EVENT: i64 = 1_767_332_819;

/// How long after the previous event one happens: `Same` ties (Stripe's whole seconds; or
/// Toss's two deliveries of one change), `Soon` and `Later` follow it.
#[derive(Debug, Clone, Copy)]
pub enum Gap {
    Same,
    Soon,
    Later,
}

impl Gap {
    fn delta(self, provider: Provider, same_change: bool) -> TimeDelta {
        match (self, provider) {
            (Gap::Same, Provider::Stripe) => TimeDelta::zero(),
            // Toss dates to the microsecond: distinct changes never tie.
            (Gap::Same, Provider::Toss) if same_change => TimeDelta::zero(),
            (Gap::Same, Provider::Toss) => TimeDelta::microseconds(1),
            (Gap::Soon, Provider::Stripe) => TimeDelta::seconds(1),
            (Gap::Soon, Provider::Toss) => TimeDelta::microseconds(250_010),
            (Gap::Later, _) => TimeDelta::minutes(90),
        }
    }
}

/// The lifecycle's events as they are queued, dated with `gaps` (one per step).
pub fn envelopes(lifecycle: &Lifecycle, gaps: &[Gap]) -> Vec<EventEnvelope> {
    let mut at = DateTime::from_timestamp(FIRST_EVENT, 0).unwrap();
    let mut previous: Option<Step> = None;
    let mut out = Vec::new();
    for (i, (step, gap)) in lifecycle.steps.iter().zip(gaps).enumerate() {
        if previous.is_some() {
            at += gap.delta(lifecycle.provider, previous.map(status_of) == Some(status_of(*step)));
        }
        previous = Some(*step);
        let body = match lifecycle.provider {
            Provider::Stripe => stripe_body(&format!("evt_{i}"), *step, at),
            Provider::Toss => toss_body(*step, at),
        };
        let (event_type, event_key) = match lifecycle.provider {
            Provider::Stripe => {
                let v: Value = serde_json::from_slice(&body).unwrap();
                (v["type"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string())
            }
            Provider::Toss => {
                let parsed = parse_toss_event(&body).unwrap();
                (parsed.event_type.clone(), parsed.event_key())
            }
        };
        out.push(EventEnvelope {
            provider: lifecycle.provider,
            event_type,
            event_key,
            verification: match lifecycle.provider {
                Provider::Stripe => IngestVerification::Signature,
                Provider::Toss => IngestVerification::Unsigned,
            },
            received_at: Utc::now(),
            request_id: "req".into(),
            attempt: 0,
            delivery_headers: Default::default(),
            body,
        });
    }
    out
}

/// The provider's word for the state a step reports (two steps with the same one are two
/// deliveries of one change).
fn status_of(step: Step) -> &'static str {
    match step {
        Completed(s) | Changed(s) | Deposit(s) => s,
        AsyncSucceeded => "paid",
        AsyncFailed | Declined | DeclinedIntentOnly => "failed",
        SessionExpired => "expired",
    }
}

fn stripe_body(id: &str, step: Step, at: DateTime<Utc>) -> Vec<u8> {
    let session = |kind: &str, payment_status: &str| stripe_session_event(id, kind, ORDER, payment_status, 3000, "usd");
    let body = match step {
        Completed(payment_status) => session("checkout.session.completed", payment_status),
        AsyncSucceeded => session("checkout.session.async_payment_succeeded", "paid"),
        AsyncFailed => session("checkout.session.async_payment_failed", "unpaid"),
        SessionExpired => session("checkout.session.expired", "unpaid"),
        Declined | DeclinedIntentOnly => stripe_payment_failed(id, ORDER, 3000, "usd"),
        Changed(_) | Deposit(_) => unreachable!("a Toss step in a Stripe lifecycle"),
    };
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    event["created"] = json!(at.timestamp());
    if step == DeclinedIntentOnly {
        event["data"]["object"]["metadata"] = json!({});
    }
    serde_json::to_vec(&event).unwrap()
}

fn toss_body(step: Step, at: DateTime<Utc>) -> Vec<u8> {
    // As Toss writes it: Korean time, no offset, trailing zeros of the fraction dropped.
    let kst = FixedOffset::east_opt(9 * 3600).unwrap();
    let created_at = at.with_timezone(&kst).format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    let created_at = created_at.trim_end_matches('0').trim_end_matches('.');
    let event = match step {
        Changed(status) => json!({"eventType": "PAYMENT_STATUS_CHANGED", "createdAt": created_at,
            "data": {"orderId": ORDER, "paymentKey": "pk_1", "status": status, "totalAmount": 37400,
                     "balanceAmount": 37400, "currency": "KRW", "method": "가상계좌"}}),
        Deposit(status) => json!({"createdAt": created_at, "secret": "ps_1", "status": status,
            "transactionKey": format!("tx_{created_at}"), "orderId": ORDER}),
        _ => unreachable!("a Stripe step in a Toss lifecycle"),
    };
    serde_json::to_vec(&event).unwrap()
}
