//! Events for one payment arrive in any order: Stripe guarantees none, Toss retries for days,
//! and an event retried because its payment did not exist yet lands behind later ones. So that
//! a payment's final status does not depend on that order, each event is dated by its provider
//! ([`IncomingEvent::provider_time`](crate::domain::event::IncomingEvent::provider_time)), the payment
//! keeps the date of the last event applied to it (`payments.last_event_at`), and:
//!
//! - an event dated **before** the last applied one changes nothing ("older than the last
//!   applied event");
//! - an event dated **the same** (Stripe dates in whole seconds) changes the status only when
//!   the state machine allows it *and* its status comes later in [`tie_rank`]'s order, so
//!   that two events of one second end in the same status whichever came first;
//! - an event dated **after** it, or either date unknown (the guide's flat Toss body carries
//!   none), is decided by the state machine alone, as it always was.
//!
//! The rule only ever refuses what the state machine would allow, never the reverse, so its
//! guarantees hold as they are: `paid` is left only for a cancel, `canceled` is final,
//! `failed` and `expired` may still become `paid`.

use std::cmp::Ordering;

use chrono::{DateTime, TimeDelta, Utc};
use shared::status::PaymentStatus;

use crate::domain::state_machine::{decide, IgnoreReason, Transition};

/// How far ahead of its receipt an event may be dated and still be believed: clocks differ a
/// little. A date further ahead is not used (the event is decided as one without a date):
/// believed, it would make every genuine event after it look older, and freeze the payment.
pub const CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The provider's date of an event as the worker uses it: `None` when there is none, or when
/// it lies more than [`CLOCK_SKEW`] after the event was received.
pub fn believed_time(provider_time: Option<DateTime<Utc>>, received_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let time = provider_time?;
    // Checked: `received_at` comes from a message header, and adding to the largest date panics.
    let latest = received_at.checked_add_signed(CLOCK_SKEW).unwrap_or(DateTime::<Utc>::MAX_UTC);
    // Pure, as the whole domain: the pipeline logs the date it drops, before the transaction.
    (time <= latest).then_some(time)
}

/// Decides whether a payment in `current`, whose last applied event is dated
/// `last_applied_at`, may move to `target` for an event dated `event_at`.
pub fn decide_in_order(
    current: PaymentStatus,
    last_applied_at: Option<DateTime<Utc>>,
    target: PaymentStatus,
    event_at: Option<DateTime<Utc>>,
) -> Transition {
    let by_status = decide(current, target);
    let (Some(event_at), Some(last_applied_at)) = (event_at, last_applied_at) else { return by_status };
    if by_status == Transition::Ignore(IgnoreReason::Repeated) {
        return by_status;
    }
    match event_at.cmp(&last_applied_at) {
        Ordering::Less => Transition::Ignore(IgnoreReason::OlderThanLastApplied),
        Ordering::Equal if by_status == Transition::Apply && tie_rank(target) < tie_rank(current) => {
            Transition::Ignore(IgnoreReason::SameTimeEarlierStatus)
        }
        _ => by_status,
    }
}

/// The order of statuses that breaks a tie between events of the same date: the order a
/// payment's life runs in. Every change the state machine allows goes up in it, except
/// `failed -> waiting_for_deposit` (allowed for a later event, but within one second a
/// `checkout.session.completed` with `unpaid` and the `async_payment_failed` that follows it
/// must end `failed`, whichever arrives first).
pub fn tie_rank(status: PaymentStatus) -> u8 {
    use PaymentStatus::*;
    match status {
        Pending => 0,
        WaitingForDeposit => 1,
        Failed => 2,
        Expired => 3,
        Paid => 4,
        PartiallyCanceled => 5,
        Canceled => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;
    use PaymentStatus::*;

    const A: Transition = Transition::Apply;
    const OLDER: Transition = Transition::Ignore(IgnoreReason::OlderThanLastApplied);
    const TIE: Transition = Transition::Ignore(IgnoreReason::SameTimeEarlierStatus);

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_719_800_000 + seconds, 0)
    }

    #[test]
    fn an_event_older_than_the_last_applied_one_changes_nothing() {
        // The example that started it: async_payment_failed applied, then the earlier
        // completed(unpaid) arrives. The state machine alone would go back to waiting.
        assert_eq!(decide(Failed, WaitingForDeposit), A);
        assert_eq!(decide_in_order(Failed, at(60), WaitingForDeposit, at(0)), OLDER);
        assert_eq!(decide_in_order(Canceled, at(60), Paid, at(0)), OLDER);
        assert_eq!(decide_in_order(Paid, at(60), Failed, at(0)), OLDER);
    }

    #[test]
    fn a_repeated_status_is_a_repeat_whatever_its_date() {
        let repeated = Transition::Ignore(IgnoreReason::Repeated);
        assert_eq!(decide_in_order(Paid, at(60), Paid, at(0)), repeated);
        assert_eq!(decide_in_order(Paid, at(0), Paid, at(60)), repeated);
    }

    #[test]
    fn a_newer_event_is_decided_by_the_state_machine() {
        assert_eq!(decide_in_order(Failed, at(0), WaitingForDeposit, at(60)), A);
        assert_eq!(decide_in_order(Failed, at(0), Paid, at(60)), A);
        assert_eq!(decide_in_order(Expired, at(0), Paid, at(60)), A);
        assert_eq!(decide_in_order(Paid, at(0), Failed, at(60)), decide(Paid, Failed));
        assert_eq!(decide_in_order(Canceled, at(0), Paid, at(60)), decide(Canceled, Paid));
    }

    #[test]
    fn without_both_dates_the_state_machine_alone_decides() {
        for current in PaymentStatus::iter() {
            for target in PaymentStatus::iter() {
                let expected = decide(current, target);
                assert_eq!(decide_in_order(current, None, target, at(0)), expected);
                assert_eq!(decide_in_order(current, at(0), target, None), expected);
                assert_eq!(decide_in_order(current, None, target, None), expected);
            }
        }
    }

    #[test]
    fn events_of_the_same_second_go_up_the_order_of_statuses() {
        assert_eq!(decide_in_order(WaitingForDeposit, at(0), Failed, at(0)), A);
        assert_eq!(decide_in_order(Failed, at(0), WaitingForDeposit, at(0)), TIE);
        assert_eq!(decide_in_order(Failed, at(0), Paid, at(0)), A);
        assert_eq!(decide_in_order(Failed, at(0), Expired, at(0)), A);
        assert_eq!(decide_in_order(Paid, at(0), Canceled, at(0)), A);
    }

    /// Ordering only narrows the state machine: what it refuses stays refused, so `paid` is
    /// left only for a cancel and `canceled` stays final whatever the dates.
    #[test]
    fn ordering_never_allows_what_the_state_machine_refuses() {
        for current in PaymentStatus::iter() {
            for target in PaymentStatus::iter() {
                for (last, event) in [(at(0), at(0)), (at(0), at(1)), (at(1), at(0)), (None, at(0))] {
                    if decide_in_order(current, last, target, event) == A {
                        assert_eq!(decide(current, target), A, "{current} -> {target} ({last:?}, {event:?})");
                    }
                }
            }
        }
    }

    /// The tie order agrees with every change the state machine allows but one, so a tie
    /// refuses nothing else.
    #[test]
    fn the_tie_order_follows_the_state_machine_but_for_failed_to_waiting() {
        for current in PaymentStatus::iter() {
            for target in PaymentStatus::iter() {
                if decide(current, target) == A && (current, target) != (Failed, WaitingForDeposit) {
                    assert!(tie_rank(target) > tie_rank(current), "{current} -> {target}");
                }
            }
        }
    }

    #[test]
    fn a_date_far_after_receipt_is_not_believed() {
        let received = at(0).unwrap();
        assert_eq!(believed_time(at(-3600), received), at(-3600));
        assert_eq!(believed_time(at(60), received), at(60), "a little clock skew is fine");
        assert_eq!(believed_time(at(3600), received), None);
        assert_eq!(believed_time(None, received), None);
        assert_eq!(believed_time(at(0), DateTime::<Utc>::MAX_UTC), at(0), "no overflow");
    }
}
