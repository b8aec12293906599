//! Deciding batches: order within a batch, isolation of failures, duplicates.

use std::collections::HashSet;

use chrono::Utc;
use rust_decimal::Decimal;
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::status::PaymentStatus::{self, *};
use shared::Provider;
use uuid::Uuid;

use super::*;
use crate::domain::event::{Confirmed, IncomingEvent};

fn stripe_envelope(key: &str, event_type: &str, order: &str, payment_status: &str, amount: i64) -> EventEnvelope {
    let body = shared::samples::stripe_session_event(key, event_type, order, payment_status, amount, "usd");
    EventEnvelope {
        provider: Provider::Stripe,
        event_type: event_type.into(),
        event_key: key.into(),
        verification: IngestVerification::Signature,
        received_at: Utc::now(),
        request_id: "req".into(),
        attempt: 0,
        delivery_headers: Default::default(),
        body,
    }
}

fn toss_envelope(key: &str, order: &str, status: &str) -> EventEnvelope {
    let body = format!(
        r#"{{"eventType":"PAYMENT_STATUS_CHANGED","data":{{"orderId":"{order}","paymentKey":"pk_{order}","status":"{status}","totalAmount":1000,"currency":"KRW"}}}}"#
    );
    EventEnvelope {
        provider: Provider::Toss,
        event_type: "PAYMENT_STATUS_CHANGED".into(),
        event_key: key.into(),
        verification: IngestVerification::Unsigned,
        received_at: Utc::now(),
        request_id: "req".into(),
        attempt: 0,
        delivery_headers: Default::default(),
        body: body.into_bytes(),
    }
}

fn payment(order: &str, status: PaymentStatus, provider: &str, amount: i64) -> LockedPayment {
    LockedPayment {
        id: Uuid::new_v4(),
        order_id: order.into(),
        status,
        booking_id: Some(Uuid::new_v4()),
        trainer_id: Some(Uuid::new_v4()),
        provider: Some(provider.into()),
        amount: Some(Decimal::from(amount)),
        currency: Some(if provider == "toss" { "KRW" } else { "usd" }.into()),
        deposit_secret: None,
        provider_payment_id: None,
        last_event_at: None,
    }
}

/// Decides `envelopes` (parsed here) against `payments`, each verified as the worker verifies
/// it in production: Stripe events by their signature, Toss events by fetch-back.
fn run(envelopes: &[EventEnvelope], finals: &[&str], payments: Vec<LockedPayment>) -> Plan {
    let verified = |e: &EventEnvelope| match e.provider {
        Provider::Stripe => Confirmed { signature: true, ..Confirmed::default() },
        Provider::Toss => Confirmed { fetched: true, ..Confirmed::default() },
    };
    run_with(envelopes, finals, payments, verified, Trust::default())
}

/// Decides `envelopes` with what the worker established about each (`confirmed`) and `trust`.
fn run_with(
    envelopes: &[EventEnvelope],
    finals: &[&str],
    payments: Vec<LockedPayment>,
    confirmed: impl Fn(&EventEnvelope) -> Confirmed,
    trust: Trust,
) -> Plan {
    let events: Vec<IncomingEvent> = envelopes.iter().map(|e| IncomingEvent::parse(e).unwrap()).collect();
    let confirmed: Vec<Confirmed> = envelopes.iter().map(confirmed).collect();
    let candidates: Vec<Candidate<'_>> = envelopes
        .iter()
        .zip(&events)
        .zip(&confirmed)
        .map(|((envelope, event), confirmed)| Candidate { envelope, event, confirmed, traceparent: None })
        .collect();
    let finals: HashSet<(String, String)> = finals.iter().map(|k| ("stripe".to_string(), k.to_string())).collect();
    decide_batch(&candidates, &finals, payments, trust, Utc::now())
}

/// Nothing established: an unsigned Toss event without fetch-back.
fn nothing(_: &EventEnvelope) -> Confirmed {
    Confirmed::default()
}

fn deposit_callback(key: &str, order: &str, secret: &str) -> EventEnvelope {
    let body =
        format!(r#"{{"createdAt":"2026-01-02T14:46:59","secret":"{secret}","status":"DONE","orderId":"{order}"}}"#);
    EventEnvelope {
        event_type: "DEPOSIT_CALLBACK".into(),
        body: body.into_bytes(),
        ..toss_envelope(key, order, "DONE")
    }
}

fn statuses(plan: &Plan) -> Vec<&'static str> {
    plan.results
        .iter()
        .map(|r| match r {
            Ok(o) => o.label().into(),
            Err(HandleError::NotFoundYet(_)) => "not_found",
            Err(HandleError::Permanent(_)) => "permanent",
            Err(HandleError::Transient(_)) => "transient",
            Err(HandleError::Unverifiable(_)) => "unverifiable",
        })
        .collect()
}

#[test]
fn paid_then_canceled_in_one_batch_ends_canceled_with_two_notifications() {
    let p = payment("o1", Pending, "toss", 1000);
    let plan = run(&[toss_envelope("a", "o1", "DONE"), toss_envelope("b", "o1", "CANCELED")], &[], vec![p.clone()]);
    assert_eq!(statuses(&plan), ["applied", "applied"]);
    assert_eq!(plan.payments.len(), 1, "one row update with the final state");
    assert_eq!(plan.payments[0].status, Canceled);
    assert!(plan.payments[0].paid, "paid on the way: paid_at is set");
    assert_eq!(plan.notifications.len(), 2);
    assert_eq!(plan.notifications[0].kind, "payment.paid");
    assert_eq!(plan.notifications[1].kind, "payment.canceled");
    match &plan.results[1] {
        Ok(Outcome::Applied { from, to, .. }) => assert_eq!((*from, *to), (Paid, Canceled)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn canceled_then_paid_in_one_batch_ends_canceled_and_ignores_the_late_payment() {
    let p = payment("o1", Pending, "toss", 1000);
    let plan = run(&[toss_envelope("a", "o1", "CANCELED"), toss_envelope("b", "o1", "DONE")], &[], vec![p]);
    assert_eq!(statuses(&plan), ["applied", "ignored"]);
    assert_eq!(plan.payments[0].status, Canceled);
    assert!(!plan.payments[0].paid);
    assert_eq!(plan.notifications.len(), 1);
}

#[test]
fn one_amount_mismatch_fails_alone() {
    let payments: Vec<LockedPayment> = (0..50).map(|i| payment(&format!("o{i}"), Pending, "stripe", 3000)).collect();
    let envelopes: Vec<EventEnvelope> = (0..50)
        .map(|i| {
            let amount = if i == 17 { 1 } else { 3000 };
            stripe_envelope(&format!("evt_{i}"), "checkout.session.completed", &format!("o{i}"), "paid", amount)
        })
        .collect();
    let plan = run(&envelopes, &[], payments);
    let labels = statuses(&plan);
    assert_eq!(labels[17], "permanent");
    assert_eq!(labels.iter().filter(|l| **l == "applied").count(), 49);
    assert_eq!(plan.payments.len(), 49);
    assert_eq!(plan.notifications.len(), 49);
}

#[test]
fn duplicates_missing_payments_and_ignored_types_are_decided_per_event() {
    let envelopes = [
        stripe_envelope("evt_done", "checkout.session.completed", "o1", "paid", 3000),
        stripe_envelope("evt_new", "checkout.session.completed", "o1", "paid", 3000),
        stripe_envelope("evt_missing", "checkout.session.completed", "nowhere", "paid", 3000),
        stripe_envelope("evt_other", "customer.created", "o1", "paid", 3000),
    ];
    let plan = run(&envelopes, &["evt_done"], vec![payment("o1", Pending, "stripe", 3000)]);
    assert_eq!(statuses(&plan), ["duplicate", "applied", "not_found", "ignored"]);
}

#[test]
fn a_payment_intent_learned_earlier_in_the_batch_finds_the_payment() {
    // The session names the order and its payment intent (pi_o1); the failure names only the
    // intent, which the payment learns from the first event.
    let first = stripe_envelope("evt_1", "checkout.session.completed", "o1", "unpaid", 3000);
    let failed = EventEnvelope {
        event_type: "payment_intent.payment_failed".into(),
        event_key: "evt_2".into(),
        body: br#"{"id":"evt_2","type":"payment_intent.payment_failed","data":{"object":{"object":"payment_intent","id":"pi_o1","metadata":{}}}}"#.to_vec(),
        ..first.clone()
    };
    let plan = run(&[first, failed], &[], vec![payment("o1", Pending, "stripe", 3000)]);
    assert_eq!(statuses(&plan), ["applied", "applied"]);
    assert_eq!(plan.payments[0].status, Failed);
    assert_eq!(plan.payments[0].provider_payment_id.as_deref(), Some("pi_o1"));
}

#[test]
fn a_payment_without_a_booking_changes_without_a_notification() {
    let mut p = payment("o1", Pending, "stripe", 3000);
    p.booking_id = None;
    p.trainer_id = None;
    let plan = run(&[stripe_envelope("e", "checkout.session.completed", "o1", "paid", 3000)], &[], vec![p]);
    assert_eq!(statuses(&plan), ["applied"]);
    assert!(plan.notifications.is_empty());
    match &plan.results[0] {
        Ok(Outcome::Applied { notified, .. }) => assert_eq!(*notified, Notified::NoBooking),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unsigned_toss_event_nothing_verifies_changes_nothing_even_when_its_amount_matches() {
    // The attack: the guide's body for a known order, with the right amount guessed.
    let p = payment("o1", Pending, "toss", 1000);
    let plan = run_with(&[toss_envelope("a", "o1", "DONE")], &[], vec![p], nothing, Trust::default());
    assert_eq!(statuses(&plan), ["unverified"]);
    assert!(plan.payments.is_empty(), "the payment is untouched");
    assert!(plan.notifications.is_empty());
    // Delete the early return for unverified events in `decide_one` to see this fail.
}

#[test]
fn an_unverified_event_for_an_order_that_does_not_exist_is_recorded_at_once_not_retried() {
    let plan = run_with(&[toss_envelope("a", "nowhere", "DONE")], &[], vec![], nothing, Trust::default());
    assert_eq!(statuses(&plan), ["unverified"]);
}

#[test]
fn the_development_opt_in_applies_what_nothing_verified_and_says_so() {
    let trust = Trust { allow_unverified: true };
    let plan =
        run_with(&[toss_envelope("a", "o1", "DONE")], &[], vec![payment("o1", Pending, "toss", 1000)], nothing, trust);
    match &plan.results[0] {
        Ok(Outcome::Applied { verification, to, .. }) => assert_eq!((*verification, *to), (Verification::None, Paid)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_deposit_callback_is_verified_by_the_stored_secret_only_on_a_payment_of_a_known_provider() {
    let mut p = payment("o1", WaitingForDeposit, "toss", 1000);
    p.deposit_secret = Some("ps_right".into());
    let matching =
        run_with(&[deposit_callback("a", "o1", "ps_right")], &[], vec![p.clone()], nothing, Trust::default());
    match &matching.results[0] {
        Ok(Outcome::Applied { verification, .. }) => assert_eq!(*verification, Verification::DepositSecret),
        other => panic!("{other:?}"),
    }
    let wrong = run_with(&[deposit_callback("a", "o1", "ps_guess")], &[], vec![p.clone()], nothing, Trust::default());
    assert_eq!(statuses(&wrong), ["permanent"], "a wrong secret is a failed verification");
    let unknown = LockedPayment { deposit_secret: None, ..p.clone() };
    let no_secret = run_with(&[deposit_callback("a", "o1", "ps_any")], &[], vec![unknown], nothing, Trust::default());
    assert_eq!(statuses(&no_secret), ["unverified"]);
    let no_provider = LockedPayment { provider: None, ..p };
    let plan = run_with(&[deposit_callback("a", "o1", "ps_right")], &[], vec![no_provider], nothing, Trust::default());
    assert_eq!(statuses(&plan), ["unverified"], "a payment with no provider needs a signature or fetch-back");
    assert!(plan.payments.is_empty());
}

#[test]
fn a_payment_without_a_provider_is_changed_by_a_signed_or_fetched_event() {
    let mut p = payment("o1", Pending, "stripe", 3000);
    p.provider = None;
    let plan = run(&[stripe_envelope("e", "checkout.session.completed", "o1", "paid", 3000)], &[], vec![p]);
    assert_eq!(statuses(&plan), ["applied"]);
    assert_eq!(plan.payments[0].provider.as_deref(), Some("stripe"), "and learns its provider");
}
