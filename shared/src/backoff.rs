//! How long a reconnect or retry loop waits before its next attempt: exponential growth with
//! full jitter, bounded.
//!
//! When RabbitMQ or Postgres goes away, every ingest and worker process notices at the same
//! moment. Fixed or purely exponential delays keep them in step, so they all come back at
//! once and hit the recovering server together, round after round. A random delay drawn from
//! the whole window (AWS's "full jitter") spreads them out while the window still grows
//! exponentially up to a cap. The window starts at `min`, not zero, so no loop ever spins.
//!
//! The retry schedule of failed *events* is a different thing (`RETRY_DELAYS`, delay queues).
//!
//! Ten lines over `fastrand` rather than a backoff crate: `backoff` is unmaintained
//! (RUSTSEC-2025-0012), and `backon` (in the tree through lapin) adds its jitter on top of the
//! capped delay, so its delays pass the cap (up to twice it) and are never short again once
//! the cap is reached.

use std::time::Duration;

/// The delay before attempt `attempt` (0 for the first retry): uniform in
/// `[min, min(max, min · 2^(attempt + 1))]`. Never below `min` nor above `max` (a `max`
/// below `min` counts as `min`); any `attempt` is fine, the window saturates instead of
/// overflowing (durations past `u64::MAX` nanoseconds, 584 years, count as that).
pub fn full_jitter(min: Duration, max: Duration, attempt: u32) -> Duration {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let (min, max) = (nanos(min), nanos(max).max(nanos(min)));
    let growth = 1u64.checked_shl(attempt.saturating_add(1)).unwrap_or(u64::MAX);
    let ceiling = min.saturating_mul(growth).min(max);
    Duration::from_nanos(fastrand::u64(min..=ceiling))
}

/// A loop's backoff state: the next delay grows with each failure in a row, and
/// [`Backoff::reset`] starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays between `min` and `max` (see [`full_jitter`]).
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, failures: 0 }
    }

    /// The delay to wait now; the one after it may be longer.
    pub fn next_delay(&mut self) -> Duration {
        let delay = full_jitter(self.min, self.max, self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// After a success: the next delay is a short one again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    /// Fails if `full_jitter` loses its cap (`.min(max)`) or its floor (`min..=`).
    #[test]
    fn every_delay_stays_within_its_window_and_the_cap() {
        for attempt in 0..40 {
            let ceiling = (MIN * 2u32.pow((attempt + 1).min(31))).min(MAX);
            for _ in 0..200 {
                let delay = full_jitter(MIN, MAX, attempt);
                assert!(delay >= MIN, "attempt {attempt}: {delay:?} below the floor");
                assert!(delay <= ceiling, "attempt {attempt}: {delay:?} above {ceiling:?}");
            }
        }
    }

    #[test]
    fn the_window_grows_exponentially_until_the_cap() {
        // The largest of many draws approaches each window's ceiling: 200, 400, 800 ms, ...
        let largest = |attempt| (0..2000).map(|_| full_jitter(MIN, MAX, attempt)).max().unwrap();
        assert!(largest(0) > Duration::from_millis(190) && largest(0) <= Duration::from_millis(200));
        assert!(largest(1) > Duration::from_millis(380));
        assert!(largest(2) > Duration::from_millis(760));
        assert!(largest(10) > Duration::from_millis(4900) && largest(10) <= MAX);
    }

    /// Processes that failed together must not retry together. Fails if `full_jitter`
    /// returns its ceiling instead of drawing from the window.
    #[test]
    fn jitter_actually_varies() {
        let drawn: HashSet<Duration> = (0..100).map(|_| full_jitter(MIN, MAX, 3)).collect();
        assert!(drawn.len() > 90, "only {} distinct delays in 100 draws", drawn.len());
        let first_retries: HashSet<Duration> = (0..100).map(|_| full_jitter(MIN, MAX, 0)).collect();
        assert!(first_retries.len() > 90, "the first retry is not jittered");
    }

    /// Fails (overflow) if the growth is a plain `1 << (attempt + 1)`.
    #[test]
    fn extreme_inputs_neither_overflow_nor_panic() {
        assert!(full_jitter(MIN, MAX, u32::MAX) <= MAX);
        assert_eq!(full_jitter(Duration::MAX, Duration::MAX, u32::MAX), Duration::from_nanos(u64::MAX));
        assert_eq!(full_jitter(Duration::ZERO, Duration::ZERO, 7), Duration::ZERO);
        // A cap below the floor is the floor.
        assert_eq!(full_jitter(MAX, MIN, 3), MAX);
        let mut backoff = Backoff { min: MIN, max: MAX, failures: u32::MAX };
        assert!(backoff.next_delay() <= MAX);
        assert_eq!(backoff.failures, u32::MAX);
    }

    /// Fails if `Backoff::reset` keeps the count of failures.
    #[test]
    fn a_success_starts_the_delays_over() {
        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..20 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= MIN * 2);
    }
}
