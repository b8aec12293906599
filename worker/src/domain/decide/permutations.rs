//! A payment's final status does not depend on the order its events are delivered in.
//!
//! [`LIFECYCLES`](lifecycles::LIFECYCLES) lists the event sequences Stripe and Toss really send for one payment, with
//! where each comes from. Each is dated the way its provider dates it (Stripe in whole seconds,
//! so events may tie; Toss to the microsecond, in KST without an offset, with a fraction of
//! variable length) and delivered through [`decide_batch`] as the worker does it: in batches
//! (one event each, or several), with duplicates, an event whose payment cannot be found yet
//! retried behind the others, and the payment row carried from one batch to the next as the
//! transaction leaves it. Every order must end in the status of the in-order delivery, with
//! one notification per applied change.
//!
//! To see it fail, decide with the state machine alone: in `decide_one` (decide.rs), replace
//! `decide_in_order(from, payment.row.last_event_at, target, event_at)` with
//! `crate::domain::state_machine::decide(from, target)`; "async method, failed" then ends in
//! `waiting_for_deposit` when `completed(unpaid)` arrives last.

use std::collections::{HashSet, VecDeque};

use chrono::Utc;
use proptest::prelude::*;
use proptest::sample::Index;
use rust_decimal::Decimal;
use shared::envelope::EventEnvelope;
use shared::status::PaymentStatus::{self, *};
use shared::Provider;
use uuid::Uuid;

use super::*;
use crate::domain::event::{Confirmed, IncomingEvent};

mod lifecycles;

use lifecycles::{envelopes, Gap, Lifecycle, LIFECYCLES, ORDER};

fn pending_payment(provider: Provider) -> LockedPayment {
    let stripe = provider == Provider::Stripe;
    LockedPayment {
        id: Uuid::new_v4(),
        order_id: ORDER.into(),
        status: Pending,
        booking_id: Some(Uuid::new_v4()),
        trainer_id: Some(Uuid::new_v4()),
        provider: Some(provider.as_str().into()),
        amount: Some(Decimal::from(if stripe { 3000 } else { 37400 })),
        currency: Some(if stripe { "usd" } else { "KRW" }.into()),
        deposit_secret: None,
        provider_payment_id: None,
        last_event_at: None,
    }
}

/// What delivering the events did.
#[derive(Debug)]
struct Delivered {
    status: PaymentStatus,
    /// The status of each applied change, in order.
    applied: Vec<PaymentStatus>,
    /// The kind of each notification, in order.
    notified: Vec<String>,
}

/// Delivers `events` in `order` (indexes; one may repeat: a duplicate delivery), in batches of
/// `batch_sizes` (cycled), as the worker does: an event not found yet goes to the back of the
/// queue (its delay tier); a second copy in one batch follows the first (`process::mark_copies`);
/// what the transaction wrote is the next batch's locked row and inbox.
fn deliver(events: &[EventEnvelope], order: &[usize], batch_sizes: &[usize]) -> Delivered {
    let parsed: Vec<IncomingEvent> = events.iter().map(|e| IncomingEvent::parse(e).unwrap()).collect();
    // Verified as in production: Stripe by its signature, Toss by fetch-back (whose event the
    // worker then dates by the payment the API returned; here each event carries its time).
    let confirmed = match events[0].provider {
        Provider::Stripe => Confirmed { signature: true, ..Confirmed::default() },
        Provider::Toss => Confirmed { fetched: true, ..Confirmed::default() },
    };
    let mut row = pending_payment(events[0].provider);
    let mut inbox: HashSet<(String, String)> = HashSet::new();
    let mut queue: VecDeque<usize> = order.iter().copied().collect();
    let mut sizes = batch_sizes.iter().cycle();
    let mut delivered = Delivered { status: Pending, applied: Vec::new(), notified: Vec::new() };
    let mut applied_keys = HashSet::new();
    for _ in 0..1000 {
        if queue.is_empty() {
            delivered.status = row.status;
            return delivered;
        }
        let size = *sizes.next().unwrap();
        let (mut batch, mut copies) = (Vec::new(), Vec::new());
        while batch.len() < size {
            let Some(i) = queue.pop_front() else { break };
            if batch.contains(&i) {
                copies.push(i);
            } else {
                batch.push(i);
            }
        }
        let candidates: Vec<Candidate<'_>> = batch
            .iter()
            .map(|&i| Candidate { envelope: &events[i], event: &parsed[i], confirmed: &confirmed, traceparent: None })
            .collect();
        let plan = decide_batch(&candidates, &inbox, vec![row.clone()], Trust::default(), Utc::now());
        let mut retried = Vec::new();
        for (&i, result) in batch.iter().zip(&plan.results) {
            let key = (events[i].provider.as_str().to_string(), events[i].event_key.clone());
            match result {
                Ok(Outcome::Applied { to, notified, .. }) => {
                    assert!(applied_keys.insert(key.clone()), "event {} applied twice", key.1);
                    assert!(notified.ids().is_some(), "an applied change is notified");
                    delivered.applied.push(*to);
                    inbox.insert(key);
                }
                Ok(Outcome::Ignored { .. }) => {
                    inbox.insert(key);
                }
                Ok(Outcome::Duplicate) => {}
                Ok(Outcome::Unverified { reason, .. }) => panic!("event {i} is verified, yet: {reason}"),
                Err(HandleError::NotFoundYet(_)) => retried.push(i),
                Err(error) => panic!("event {i} failed: {error}"),
            }
        }
        queue.extend(copies.into_iter().filter(|i| retried.contains(i)));
        queue.extend(retried);
        delivered.notified.extend(plan.notifications.iter().map(|n| n.kind.clone()));
        for update in plan.payments {
            // As UPDATE_PAYMENTS writes it.
            row.status = update.status;
            row.last_event_at = row.last_event_at.max(update.last_event_at);
            row.provider = row.provider.or(update.provider);
            row.provider_payment_id = row.provider_payment_id.or(update.provider_payment_id);
            row.deposit_secret = row.deposit_secret.or(update.deposit_secret);
        }
    }
    panic!("an event is retried for ever: {queue:?}");
}

/// Every run must end where the in-order delivery ends, with one notification per applied
/// change, the last one telling the final status.
fn check(lifecycle: &Lifecycle, gaps: &[Gap], order: &[usize], batch_sizes: &[usize]) -> Result<(), String> {
    let events = envelopes(lifecycle, gaps);
    let in_order = deliver(&events, &(0..events.len()).collect::<Vec<_>>(), &[1]);
    if in_order.status != lifecycle.ends {
        return Err(format!("{}: in order it ends {}, not {}", lifecycle.name, in_order.status, lifecycle.ends));
    }
    let run = deliver(&events, order, batch_sizes);
    let kinds: Vec<String> = run.applied.iter().map(|s| format!("payment.{s}")).collect();
    let what = format!(
        "{} ({}), delivered {order:?} in batches of {batch_sizes:?}, dated {gaps:?}",
        lifecycle.name, lifecycle.source
    );
    if run.status != in_order.status {
        return Err(format!("{what}: ends {}, in order {}", run.status, in_order.status));
    }
    if run.notified != kinds {
        return Err(format!("{what}: notified {:?} for the changes {:?}", run.notified, run.applied));
    }
    if run.applied.last() != Some(&run.status) {
        return Err(format!("{what}: the last notification is not the final status ({:?})", run.applied));
    }
    Ok(())
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for smaller in permutations(n - 1) {
        for at in 0..=smaller.len() {
            let mut p = smaller.clone();
            p.insert(at, n - 1);
            all.push(p);
        }
    }
    all
}

#[test]
fn every_order_of_every_lifecycle_ends_as_the_in_order_delivery() {
    let mut runs = 0;
    for lifecycle in LIFECYCLES {
        let n = lifecycle.steps.len();
        for gap in [Gap::Same, Gap::Soon, Gap::Later] {
            let gaps = vec![gap; n];
            for order in permutations(n) {
                for batch_sizes in [[1], [n]] {
                    if let Err(failure) = check(lifecycle, &gaps, &order, &batch_sizes) {
                        panic!("{failure}");
                    }
                    runs += 1;
                }
            }
        }
    }
    assert!(runs > 1000, "{runs} runs");
}

/// A lifecycle, dates, an order with duplicates, batch sizes.
fn scenario() -> impl Strategy<Value = (usize, Vec<Gap>, Vec<usize>, Vec<usize>)> {
    (0..LIFECYCLES.len()).prop_flat_map(|l| {
        let n = LIFECYCLES[l].steps.len();
        let gap = prop_oneof![Just(Gap::Same), Just(Gap::Soon), Just(Gap::Later)];
        let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
        let duplicates = proptest::collection::vec((0..n, any::<Index>()), 0..4);
        let batch_sizes = proptest::collection::vec(1usize..=4, 1..4);
        (Just(l), proptest::collection::vec(gap, n), order, duplicates, batch_sizes).prop_map(
            |(l, gaps, mut order, duplicates, batch_sizes)| {
                for (event, at) in duplicates {
                    let at = at.index(order.len() + 1);
                    order.insert(at, event);
                }
                (l, gaps, order, batch_sizes)
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Mixed dates (ties and gaps within one lifecycle), duplicate deliveries and batches of
    /// mixed sizes.
    #[test]
    fn any_delivery_ends_as_the_in_order_delivery((l, gaps, order, batch_sizes) in scenario()) {
        if let Err(failure) = check(&LIFECYCLES[l], &gaps, &order, &batch_sizes) {
            prop_assert!(false, "{}", failure);
        }
    }
}
