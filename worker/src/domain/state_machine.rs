//! The payment state machine: which status change an event may make. Pure and exhaustive:
//! every (current, target) pair has exactly one answer, and every pair has a test.
//!
//! Rules, in words:
//! - a repeated status is ignored (Stripe and Toss both resend; both may deliver one change twice);
//! - `paid` is left only for a cancel (`canceled`, `partially_canceled`): a late `failed`,
//!   `expired`, `pending` or `waiting_for_deposit` after `paid` is recorded and ignored;
//! - `canceled` is final: a `paid` that arrives after the cancel is stale;
//! - `failed` and `expired` may still become `paid` (Stripe retries a declined card in the same
//!   session; money that arrived wins over a deadline that passed);
//! - `waiting_for_deposit` never goes back to `pending`;
//! - `partially_canceled` may still be canceled in full; a further partial cancel is recorded
//!   (in the event's metadata) but changes no status and notifies no one, since Toss delivers
//!   one change twice (`DEPOSIT_CALLBACK` and `PAYMENT_STATUS_CHANGED`).

use shared::status::PaymentStatus;

/// The decision for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Change the status.
    Apply,
    /// Record the event and leave the payment as it is.
    Ignore(IgnoreReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// The payment already has this status.
    Repeated,
    /// The event describes an earlier state than the payment is in (out of order, or late).
    Stale,
    /// The provider dated the event before the last event applied to the payment
    /// ([`crate::domain::ordering`]).
    OlderThanLastApplied,
    /// The provider dated the event the same as the last applied one, and its status comes
    /// earlier in the order that breaks such ties ([`crate::domain::ordering`]).
    SameTimeEarlierStatus,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Repeated => "status already applied",
            Self::Stale => "older than the payment's current status",
            Self::OlderThanLastApplied => "older than the last applied event",
            Self::SameTimeEarlierStatus => "as old as the last applied event, and an earlier status",
        }
    }
}

/// Decides whether a payment in `current` may move to `target`.
pub fn decide(current: PaymentStatus, target: PaymentStatus) -> Transition {
    use PaymentStatus::*;
    use Transition::{Apply, Ignore};
    if current == target {
        return Ignore(IgnoreReason::Repeated);
    }
    let allowed = match current {
        Pending => true,
        WaitingForDeposit => matches!(target, Paid | Failed | Expired | Canceled | PartiallyCanceled),
        Paid => matches!(target, Canceled | PartiallyCanceled),
        Failed => matches!(target, Paid | WaitingForDeposit | Expired | Canceled),
        Expired => matches!(target, Paid | Canceled),
        PartiallyCanceled => matches!(target, Canceled),
        Canceled => false,
    };
    if allowed {
        Apply
    } else {
        Ignore(IgnoreReason::Stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;
    use PaymentStatus::*;

    const A: Transition = Transition::Apply;
    const REP: Transition = Transition::Ignore(IgnoreReason::Repeated);
    const OLD: Transition = Transition::Ignore(IgnoreReason::Stale);

    /// The whole table, written out by hand: rows are the current status, columns the target
    /// in the order pending, waiting_for_deposit, paid, failed, expired, canceled, partially_canceled.
    const TABLE: [(PaymentStatus, [Transition; 7]); 7] = [
        (Pending, [REP, A, A, A, A, A, A]),
        (WaitingForDeposit, [OLD, REP, A, A, A, A, A]),
        (Paid, [OLD, OLD, REP, OLD, OLD, A, A]),
        (Failed, [OLD, A, A, REP, A, A, OLD]),
        (Expired, [OLD, OLD, A, OLD, REP, A, OLD]),
        (Canceled, [OLD, OLD, OLD, OLD, OLD, REP, OLD]),
        (PartiallyCanceled, [OLD, OLD, OLD, OLD, OLD, A, REP]),
    ];

    #[test]
    fn every_transition_matches_the_table() {
        for (current, row) in TABLE {
            for (target, expected) in PaymentStatus::iter().zip(row) {
                assert_eq!(decide(current, target), expected, "{current} -> {target}");
            }
        }
        assert_eq!(TABLE.len() * 7, 49);
    }

    #[test]
    fn paid_is_left_only_for_a_cancel() {
        for target in PaymentStatus::iter() {
            let leaves = decide(Paid, target) == A;
            assert_eq!(leaves, matches!(target, Canceled | PartiallyCanceled), "paid -> {target}");
        }
    }

    #[test]
    fn late_failures_and_expiries_after_paid_are_stale() {
        assert_eq!(decide(Paid, Failed), OLD);
        assert_eq!(decide(Paid, Expired), OLD);
    }

    #[test]
    fn a_stripe_retry_after_a_decline_can_still_pay() {
        assert_eq!(decide(Failed, Paid), A);
    }

    #[test]
    fn done_after_canceled_is_stale_so_canceled_stays_final() {
        assert_eq!(decide(Pending, Canceled), A);
        assert_eq!(decide(Canceled, Paid), OLD);
    }

    #[test]
    fn nothing_leaves_canceled() {
        for target in PaymentStatus::iter() {
            assert_ne!(decide(Canceled, target), A, "canceled -> {target}");
        }
    }
}
