//! The retry schedule: what to do with a message after one attempt. Pure.

/// What the consumer does with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (applied, ignored, duplicate): acknowledge.
    Ack,
    /// Republish to delay tier `tier` (the topology clamps it to the last tier), then acknowledge.
    Retry { tier: usize },
    /// Publish to the dead-letter queue with `reason`, then acknowledge.
    DeadLetter { reason: String },
}

impl Disposition {
    /// The `webhook_events.status` an event with this disposition is recorded with, and the
    /// error it is recorded with (for a dead letter: its reason). `None` for a handled event,
    /// whose status is its outcome.
    pub fn inbox_record<'a>(&'a self, error: &'a str) -> Option<(&'static str, &'a str)> {
        match self {
            Self::Ack => None,
            Self::Retry { .. } => Some(("retrying", error)),
            Self::DeadLetter { reason } => Some(("dead", reason)),
        }
    }
}

/// Why an attempt failed, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Transient,
    Permanent,
    /// The message does not prove what it claims; parked apart from ordinary failures.
    Unverifiable,
}

/// The dead-letter reason's first word for a message that does not prove what it claims
/// (`hookctl dead list` and the alert rules look for it).
pub const UNVERIFIABLE: &str = "unverifiable";

/// Decides after attempt number `attempt` (1 for the first delivery) out of `max_attempts`.
pub fn dispose(failure: Option<(Failure, &str)>, attempt: u32, max_attempts: u32) -> Disposition {
    match failure {
        None => Disposition::Ack,
        Some((Failure::Permanent, error)) => Disposition::DeadLetter { reason: format!("permanent: {error}") },
        Some((Failure::Unverifiable, error)) => Disposition::DeadLetter { reason: format!("{UNVERIFIABLE}: {error}") },
        Some((Failure::Transient, error)) if attempt >= max_attempts => {
            Disposition::DeadLetter { reason: format!("gave up after {attempt} attempts: {error}") }
        }
        Some((Failure::Transient, _)) => Disposition::Retry { tier: attempt.saturating_sub(1) as usize },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn success_is_acknowledged() {
        assert_eq!(dispose(None, 1, 8), Disposition::Ack);
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_go_to_the_dead_letters() {
        assert_eq!(dispose(Some((Failure::Transient, "db down")), 1, 3), Disposition::Retry { tier: 0 });
        assert_eq!(dispose(Some((Failure::Transient, "db down")), 2, 3), Disposition::Retry { tier: 1 });
        assert_eq!(
            dispose(Some((Failure::Transient, "db down")), 3, 3),
            Disposition::DeadLetter { reason: "gave up after 3 attempts: db down".into() }
        );
    }

    #[test]
    fn permanent_failures_go_to_the_dead_letters_at_once() {
        assert_eq!(
            dispose(Some((Failure::Permanent, "amount mismatch")), 1, 8),
            Disposition::DeadLetter { reason: "permanent: amount mismatch".into() }
        );
    }

    #[test]
    fn unverifiable_messages_go_to_the_dead_letters_at_once_with_their_own_reason() {
        assert_eq!(
            dispose(Some((Failure::Unverifiable, "no signature")), 1, 8),
            Disposition::DeadLetter { reason: "unverifiable: no signature".into() }
        );
    }

    proptest! {
        #[test]
        fn a_transient_failure_is_retried_exactly_max_minus_one_times(max in 1u32..20) {
            let retries = (1..=max)
                .filter(|a| matches!(dispose(Some((Failure::Transient, "x")), *a, max), Disposition::Retry { .. }))
                .count() as u32;
            prop_assert_eq!(retries, max - 1);
            let dead_after_max = matches!(dispose(Some((Failure::Transient, "x")), max, max), Disposition::DeadLetter { .. });
            prop_assert!(dead_after_max);
        }
    }
}
