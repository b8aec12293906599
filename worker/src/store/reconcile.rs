//! Reconciliation's statements: the per-provider lease and watermark (`reconcile_state`,
//! migration V10), which events the inbox already holds, and which Toss payments look stuck.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use shared::Provider;

use super::Store;

/// One provider's lease, held by this process until it lets go or stops renewing.
#[derive(Debug, Clone)]
pub struct Lease {
    pub provider: Provider,
    pub holder: String,
    pub ttl: Duration,
}

/// A Toss payment that may have missed its webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckPayment {
    pub order_id: String,
    pub payment_status: String,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// Takes or renews `lease` when it is free, expired or already ours; returns the
    /// provider's watermark when it is ours (`Some(None)`: no watermark yet), `None` when
    /// another holder has it.
    pub async fn acquire_lease(&self, lease: &Lease) -> anyhow::Result<Option<Option<DateTime<Utc>>>> {
        let client = self.client().await.context("no database connection for the reconciliation lease")?;
        let row = client
            .query_opt(
                "INSERT INTO reconcile_state (provider, holder, lease_until)
                 VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (provider) DO UPDATE
                     SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until, updated_at = now()
                     WHERE reconcile_state.holder = EXCLUDED.holder
                        OR reconcile_state.lease_until IS NULL
                        OR reconcile_state.lease_until < now()
                 RETURNING watermark",
                &[&lease.provider.as_str(), &lease.holder, &seconds(lease.ttl)],
            )
            .await
            .context("cannot take the reconciliation lease")?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Lets go of `lease` (another worker may take it at once); `last_success` records a
    /// completed run.
    pub async fn release_lease(&self, lease: &Lease, succeeded: bool) -> anyhow::Result<()> {
        let client = self.client().await.context("no database connection for the reconciliation lease")?;
        client
            .execute(
                "UPDATE reconcile_state
                 SET lease_until = NULL, updated_at = now(),
                     last_success_at = CASE WHEN $3 THEN now() ELSE last_success_at END
                 WHERE provider = $1 AND holder = $2",
                &[&lease.provider.as_str(), &lease.holder, &succeeded],
            )
            .await
            .context("cannot release the reconciliation lease")?;
        Ok(())
    }

    /// Moves the watermark forward to `to` (never back), renewing the lease at the same time;
    /// `false` when the lease is no longer ours (expired and taken): the caller stops.
    pub async fn advance_watermark(&self, lease: &Lease, to: Option<DateTime<Utc>>) -> anyhow::Result<bool> {
        let client = self.client().await.context("no database connection for the watermark")?;
        let updated = client
            .execute(
                "UPDATE reconcile_state
                 SET watermark = GREATEST(watermark, $3),
                     lease_until = now() + make_interval(secs => $4), updated_at = now()
                 WHERE provider = $1 AND holder = $2 AND lease_until >= now()",
                &[&lease.provider.as_str(), &lease.holder, &to, &seconds(lease.ttl)],
            )
            .await
            .context("cannot advance the watermark")?;
        Ok(updated == 1)
    }

    /// The provider's watermark, read without a lease (`hookctl reconcile`).
    pub async fn watermark(&self, provider: Provider) -> anyhow::Result<Option<DateTime<Utc>>> {
        let client = self.client().await.context("no database connection for the watermark")?;
        let row = client
            .query_opt("SELECT watermark FROM reconcile_state WHERE provider = $1", &[&provider.as_str()])
            .await
            .context("cannot read the watermark")?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Which of `keys` the inbox already holds for `provider`.
    pub async fn known_event_keys(&self, provider: Provider, keys: &[&str]) -> anyhow::Result<Vec<String>> {
        let client = self.client().await.context("no database connection to check the inbox")?;
        let rows = client
            .query(
                "SELECT event_key FROM webhook_events WHERE provider = $1 AND event_key = ANY($2)",
                &[&provider.as_str(), &keys],
            )
            .await
            .context("cannot check the inbox")?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Toss payments still waiting for an outcome, created between `horizon` and `after` ago,
    /// oldest first, at most `limit`.
    pub async fn stuck_toss_payments(
        &self,
        after: Duration,
        horizon: Duration,
        created_from: Option<DateTime<Utc>>,
        limit: i64,
    ) -> anyhow::Result<Vec<StuckPayment>> {
        let client = self.client().await.context("no database connection to find stuck payments")?;
        let rows = client
            .query(
                "SELECT order_id, payment_status FROM payments
                 WHERE provider = 'toss' AND payment_status IN ('pending', 'waiting_for_deposit')
                   AND created_at <= now() - make_interval(secs => $1)
                   AND created_at >= GREATEST(now() - make_interval(secs => $2), COALESCE($3::timestamptz, '-infinity'::timestamptz))
                 ORDER BY created_at LIMIT $4",
                &[&seconds(after), &seconds(horizon), &created_from, &limit],
            )
            .await
            .context("cannot find stuck payments")?;
        Ok(rows.into_iter().map(|r| StuckPayment { order_id: r.get(0), payment_status: r.get(1) }).collect())
    }
}
