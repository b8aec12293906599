//! When reconciliation runs: every `RECONCILE_INTERVAL` under the provider's lease, at once
//! again while a catch-up is larger than a run holds, and after a growing pause while the
//! provider refuses the key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A provider whose API refused the key: when to try it again.
struct Refused {
    next_try: Instant,
    wait: Duration,
}

impl Refused {
    fn new(interval: Duration) -> Self {
        Self { next_try: Instant::now(), wait: interval.min(KEY_REFUSED_RETRY_MAX) }
    }

    /// Another refusal: the pause doubles, up to [`KEY_REFUSED_RETRY_MAX`]. Returns it.
    fn refused_again(&mut self) -> Duration {
        let wait = self.wait;
        self.next_try = Instant::now() + wait;
        self.wait = (wait * 2).min(KEY_REFUSED_RETRY_MAX);
        wait
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
                if refused.get(&provider).is_some_and(|r| Instant::now() < r.next_try) {
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
                let retry = refused
                    .entry(provider)
                    .or_insert_with(|| Refused::new(self.settings.reconcile_interval))
                    .refused_again();
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
