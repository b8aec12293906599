//! Retention of the inbox: `webhook_events` rows that are final (`applied`, `ignored`, `dead`)
//! or `unverified`, and were processed longer than `EVENT_RETENTION` ago, are deleted, in small
//! batches, by every worker. `retrying` and `processing` rows are never touched: their events are
//! still in flight. Unverified rows go too: anyone can post them, so keeping them for ever would
//! let a flood of forged events grow the table without bound.
//!
//! Batches are claimed with `FOR UPDATE SKIP LOCKED`, so workers pruning at the same time share
//! the work instead of waiting on each other, and a row a delivery holds at that moment (a
//! duplicate being counted) is simply left for the next round. The partial index of migration
//! V5 holds exactly the prunable rows in `processed_at` order, so a batch costs an index range
//! read, not a table scan.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;

/// Rows deleted per statement: small enough that a batch holds its row locks and writes its
/// WAL for milliseconds, not long enough to get in the way of deliveries.
pub const PRUNE_BATCH: i64 = 500;

/// How often a worker looks for expired rows once it has caught up. Retention is counted in
/// days, so a few minutes of delay change nothing, and one cheap query per interval is noise.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// Pause between two full batches, so a large backlog (the first run after an upgrade, say)
/// is worked off without hogging the database.
const PAUSE_BETWEEN_BATCHES: Duration = Duration::from_millis(100);

/// Deletes up to `$2` prunable rows processed more than `$1` seconds ago, oldest first. The
/// status list is the predicate of the `webhook_events_prunable_v5` index, word for word, so the
/// planner can use it.
pub const PRUNE_SQL: &str = "DELETE FROM webhook_events WHERE id IN (
    SELECT id FROM webhook_events
     WHERE status IN ('applied', 'ignored', 'dead', 'unverified')
       AND processed_at < now() - make_interval(secs => $1)
     ORDER BY processed_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED)";

/// Deletes one batch of expired rows; returns how many went.
pub async fn prune_batch(
    client: &tokio_postgres::Client,
    retention: Duration,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    client.execute(PRUNE_SQL, &[&retention.as_secs_f64(), &batch]).await
}

/// Deletes batch after batch until fewer than a full batch are left or `stop` fires;
/// returns how many rows went in all.
pub async fn prune_expired(store: &Store, retention: Duration, stop: &CancellationToken) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let client = store.client().await?;
        let deleted = prune_batch(&client, retention, PRUNE_BATCH).await?;
        drop(client);
        total += deleted;
        if deleted < PRUNE_BATCH as u64 || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(total),
            _ = tokio::time::sleep(PAUSE_BETWEEN_BATCHES) => {}
        }
    }
}

/// The pruner of one worker: its store and `EVENT_RETENTION`.
#[derive(Clone)]
pub struct Pruner {
    pub store: Store,
    /// `0`: keep everything.
    pub retention: Duration,
}

/// Prunes at start and then every [`PRUNE_EVERY`] until `stop` fires. Does nothing when
/// `EVENT_RETENTION` is 0 (keep everything).
pub async fn run_pruner(pruner: Pruner, stop: CancellationToken) {
    let Pruner { store, retention } = pruner;
    if retention.is_zero() {
        tracing::info!("EVENT_RETENTION is 0: webhook events are kept forever");
        return;
    }
    let days = retention.as_secs_f64() / 86_400.0;
    loop {
        match prune_expired(&store, retention, &stop).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, retention_days = days, "expired webhook events pruned"),
            // Logged and tried again next round: pruning is never urgent.
            Err(error) => tracing::warn!(%error, "could not prune expired webhook events (database unavailable?)"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
