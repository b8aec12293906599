//! When reconciliation runs: every `RECONCILE_INTERVAL` under the provider's lease, at once
//! again while a catch-up is larger than a run holds, and after a growing pause while the
//! provider refuses the key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::Provider;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Reconciler, Report, RunError, RunOptions};
use crate::provider_api::ApiError;
use crate::store::reconcile::Lease;

/// The longest pause between tries of a refused key: under the 15 minutes over which the
/// `ReconciliationKeyRefused` alert counts refusals, so the alert holds while the key is refused.
pub const KEY_REFUSED_RETRY_MAX: Duration = Duration::from_secs(10 * 60);

/// What the reconciling loop does after a run.
enum Next {
    /// Wait for the next interval.
    Done,
    /// Run again now: the run found more than it holds.
    More,
    /// Shutting down.
    Stop,
}

/// A provider whose API refused the key: how many ticks to let pass before trying it again.
/// Counted in ticks, not time, so each pause is a whole number of intervals however late a
/// tick comes.
struct Refused {
    /// Ticks still to let pass.
    skip: u32,
    /// The next pause, in intervals.
    pause: u32,
    /// The longest pause, in intervals: [`KEY_REFUSED_RETRY_MAX`], at least one.
    longest: u32,
}

impl Refused {
    fn new(interval: Duration) -> Self {
        let longest = (KEY_REFUSED_RETRY_MAX.as_secs_f64() / interval.as_secs_f64().max(1e-3)).floor();
        Self { skip: 0, pause: 1, longest: (longest as u32).max(1) }
    }

    /// Whether this tick is let pass.
    fn waits(&mut self) -> bool {
        let waits = self.skip > 0;
        self.skip = self.skip.saturating_sub(1);
        waits
    }

    /// Another refusal: the next try comes after `pause` intervals, and the pause after it
    /// is twice as long, up to the longest. Returns this pause in intervals.
    fn refused_again(&mut self) -> u32 {
        let pause = self.pause;
        self.skip = pause - 1;
        self.pause = pause.saturating_mul(2).min(self.longest);
        pause
    }
}

impl Reconciler {
    /// Reconciles every `RECONCILE_INTERVAL` until `shutdown`. A provider that refuses the key
    /// (401/403) is tried again after a growing pause ([`KEY_REFUSED_RETRY_MAX`] at most), each
    /// refusal said and counted, so the alert on refusals stays up for as long as the key is
    /// refused and a key fixed on the provider's side (a restricted key's permission given back)
    /// is picked up without a restart. The rest of the worker keeps running either way.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let providers = self.providers();
        if !self.settings.enabled() || providers.is_empty() {
            return;
        }
        for provider in &providers {
            self.metrics.enable(*provider, self.settings.reconcile_interval);
        }
        tracing::info!(providers = ?providers.iter().map(|p| p.as_str()).collect::<Vec<_>>(), interval = ?self.settings.reconcile_interval, "reconciliation on");
        let mut refused: HashMap<Provider, Refused> = HashMap::new();
        let mut ticker = tokio::time::interval(self.settings.reconcile_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for provider in providers.iter().copied() {
                if refused.get_mut(&provider).is_some_and(Refused::waits) {
                    continue;
                }
                // A catch-up larger than one run holds goes on at once, run after run.
                loop {
                    match self.run_once(provider, &mut refused, &shutdown).await {
                        Next::Stop => return,
                        Next::More => {}
                        Next::Done => break,
                    }
                }
            }
        }
    }

    /// One leased run of `provider`, said and counted.
    async fn run_once(
        &self,
        provider: Provider,
        refused: &mut HashMap<Provider, Refused>,
        shutdown: &CancellationToken,
    ) -> Next {
        match self.run_leased(provider, shutdown).await {
            Ok(None) => Next::Done,
            Ok(Some(report)) => {
                if refused.remove(&provider).is_some() {
                    tracing::info!(provider = provider.as_str(), "the provider API accepts our key again");
                }
                self.metrics.succeeded(provider);
                tracing::info!(
                    provider = provider.as_str(),
                    examined = report.examined,
                    found = report.found.len(),
                    published = report.published,
                    watermark = report.watermark.map(|w| w.to_rfc3339()).unwrap_or_default(),
                    more = report.more,
                    "reconciliation run done"
                );
                if report.more {
                    Next::More
                } else {
                    Next::Done
                }
            }
            Err(RunError::Stopped) => Next::Stop,
            Err(RunError::Api(ApiError::Auth(status))) => {
                let interval = self.settings.reconcile_interval;
                let pause = refused.entry(provider).or_insert_with(|| Refused::new(interval)).refused_again();
                let retry = interval * pause;
                tracing::error!(
                    provider = provider.as_str(),
                    status,
                    retry_in = ?retry,
                    "the provider API refused our key: nothing is reconciled for this provider until it accepts the key again"
                );
                Next::Done
            }
            Err(error) => {
                if let Some(kind) = error.kind() {
                    self.metrics.error(provider, kind);
                }
                tracing::warn!(provider = provider.as_str(), %error, "reconciliation run failed; the next interval tries again");
                Next::Done
            }
        }
    }

    /// One run under the provider's lease; `None` when another worker holds it.
    pub async fn run_leased(
        &self,
        provider: Provider,
        shutdown: &CancellationToken,
    ) -> Result<Option<Report>, RunError> {
        let lease = Lease { provider, holder: self.holder.clone(), ttl: self.settings.reconcile_lease };
        let Some(watermark) = self.store.acquire_lease(&lease).await? else { return Ok(None) };
        let result = match provider {
            Provider::Stripe => self.reconcile_stripe(RunOptions::default(), Some((&lease, watermark)), shutdown).await,
            Provider::Toss => self.reconcile_toss(RunOptions::default(), Some(&lease), shutdown).await,
        };
        if let Err(error) = self.store.release_lease(&lease, result.is_ok()).await {
            tracing::warn!(
                provider = provider.as_str(),
                error = format!("{error:#}"),
                "cannot release the reconciliation lease; it expires by itself"
            );
        }
        result.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ticks a refused key waits through before each of its next tries.
    fn pauses(interval: Duration, tries: usize) -> Vec<u32> {
        let mut refused = Refused::new(interval);
        let mut pauses = Vec::new();
        for _ in 0..tries {
            refused.refused_again();
            let mut ticks = 1;
            while refused.waits() {
                ticks += 1;
            }
            pauses.push(ticks);
        }
        pauses
    }

    #[test]
    fn a_refused_key_is_tried_after_pauses_that_double_up_to_ten_minutes() {
        assert_eq!(pauses(Duration::from_secs(1), 12), [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        // The default 5-minute interval: 5, then every 10 minutes.
        assert_eq!(pauses(Duration::from_secs(300), 4), [1, 2, 2, 2]);
        // An interval longer than the longest pause: every tick.
        assert_eq!(pauses(Duration::from_secs(3600), 3), [1, 1, 1]);
    }
}
