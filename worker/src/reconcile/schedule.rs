//! When reconciliation runs: each provider on its own, every `RECONCILE_INTERVAL` under its
//! lease; at once again, under the same lease, while a catch-up is larger than a run holds; and
//! after a growing pause while the provider refuses the key.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use shared::Provider;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Reconciler, Report, RunError, RunOptions};
use crate::provider_api::ApiError;
use crate::store::reconcile::Lease;

/// The longest pause between tries of a refused key (or one interval, when that is longer).
pub const KEY_REFUSED_RETRY_MAX: Duration = Duration::from_secs(10 * 60);

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
    /// Reconciles every `RECONCILE_INTERVAL` until `shutdown`, each provider on its own, so a
    /// long Stripe catch-up never holds Toss's runs back. A provider that refuses the key
    /// (401/403) is tried again after a growing pause ([`KEY_REFUSED_RETRY_MAX`] at most), each
    /// refusal said, counted and stamped (`reconcile_key_refused_timestamp_seconds`: the alert
    /// holds until a run succeeds), and a key fixed on the provider's side (a restricted key's
    /// permission given back) is picked up without a restart. The rest of the worker keeps
    /// running either way.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let providers = self.providers();
        if !self.settings.enabled() || providers.is_empty() {
            return;
        }
        for provider in &providers {
            self.metrics.enable(*provider, self.settings.reconcile_interval);
        }
        tracing::info!(providers = ?providers.iter().map(|p| p.as_str()).collect::<Vec<_>>(), interval = ?self.settings.reconcile_interval, "reconciliation on");
        join_all(providers.into_iter().map(|provider| self.every_interval(provider, &shutdown))).await;
    }

    async fn every_interval(&self, provider: Provider, shutdown: &CancellationToken) {
        let mut refused: Option<Refused> = None;
        let mut ticker = tokio::time::interval(self.settings.reconcile_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if refused.as_mut().is_some_and(Refused::waits) {
                continue;
            }
            match self.run_leased(provider, shutdown).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    if refused.take().is_some() {
                        tracing::info!(provider = provider.as_str(), "the provider API accepts our key again");
                    }
                }
                Err(RunError::Stopped) => return,
                Err(RunError::Api(ApiError::Auth(status))) => {
                    self.metrics.key_refused(provider);
                    let interval = self.settings.reconcile_interval;
                    let pause = refused.get_or_insert_with(|| Refused::new(interval)).refused_again();
                    tracing::error!(
                        provider = provider.as_str(),
                        status,
                        retry_in = ?(interval * pause),
                        "the provider API refused our key: nothing is reconciled for this provider until it accepts the key again"
                    );
                }
                Err(error) => {
                    if let Some(kind) = error.kind() {
                        self.metrics.error(provider, kind);
                    }
                    tracing::warn!(provider = provider.as_str(), %error, "reconciliation run failed; the next interval tries again");
                }
            }
        }
    }

    /// Runs under the provider's lease, each said and counted: one, and more at once while
    /// each finds more missed events than it holds (the lease kept, so no other worker starts
    /// over meanwhile). The last run's report; `None` when another worker holds the lease.
    pub async fn run_leased(
        &self,
        provider: Provider,
        shutdown: &CancellationToken,
    ) -> Result<Option<Report>, RunError> {
        let lease = Lease { provider, holder: self.holder.clone(), ttl: self.settings.reconcile_lease };
        let Some(mut watermark) = self.store.acquire_lease(&lease).await? else { return Ok(None) };
        let result = loop {
            let result = match provider {
                Provider::Stripe => {
                    self.reconcile_stripe(RunOptions::default(), Some((&lease, watermark)), shutdown).await
                }
                Provider::Toss => self.reconcile_toss(RunOptions::default(), Some(&lease), shutdown).await,
            };
            let Ok(report) = result else { break result };
            self.metrics.succeeded(provider);
            said(&report);
            if !report.more || shutdown.is_cancelled() {
                break Ok(report);
            }
            watermark = report.watermark;
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

    /// By hand (`hookctl reconcile`): without the lease and the watermark, from `since`; runs
    /// on at once while a run finds more than it holds, unless it is a dry run (which lists the
    /// oldest it holds and says there are more). The reports added up.
    pub async fn run_by_hand(
        &self,
        provider: Provider,
        options: RunOptions,
        shutdown: &CancellationToken,
    ) -> Result<Report, RunError> {
        let mut total = Report::new(provider);
        loop {
            let report = match provider {
                Provider::Stripe => self.reconcile_stripe(options.clone(), None, shutdown).await?,
                Provider::Toss => self.reconcile_toss(options.clone(), None, shutdown).await?,
            };
            let more = report.more;
            total.add(report);
            if !more || options.dry_run || shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }
}

/// The run's one log line.
fn said(report: &Report) {
    tracing::info!(
        provider = report.provider.as_str(),
        examined = report.examined,
        found = report.found.len(),
        published = report.published,
        watermark = report.watermark.map(|w| w.to_rfc3339()).unwrap_or_default(),
        more = report.more,
        "reconciliation run done"
    );
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
