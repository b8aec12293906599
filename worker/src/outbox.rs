//! The outbox relay: publishes notification rows committed with payment changes to the
//! notifications exchange, with publisher confirms, and deletes each row once confirmed.
//!
//! Safe in every worker at once: each batch is claimed with `FOR UPDATE SKIP LOCKED`. A crash
//! between publish and delete leaves the row, so it is published again with the same message
//! id (= `notification_id`): a duplicate consumers can drop, never a loss.

use std::sync::Arc;

use futures_util::future::join_all;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use shared::broker::PublishError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::notification::MESSAGE_VERSION;
use crate::outcome::HandleError;
use crate::Deps;

/// Publishes until `stop` fires, then flushes what is left once. Wakes on `deps.outbox_wakeup`
/// (this worker committed a notification) or every `OUTBOX_POLL_INTERVAL` (other workers did).
pub async fn run_relay(deps: Arc<Deps>, stop: CancellationToken) {
    loop {
        drain(&deps).await;
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = deps.outbox_wakeup.notified() => {}
            _ = tokio::time::sleep(deps.settings.outbox_poll_interval) => {}
        }
    }
    tracing::info!("outbox relay stopped");
}

async fn drain(deps: &Deps) {
    loop {
        match relay_batch(deps).await {
            Ok(BatchResult { claimed, published, .. })
                if claimed as i64 == deps.settings.outbox_batch_size && published == claimed =>
            {
                continue
            }
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, "outbox relay could not run (database unavailable?)");
                break;
            }
        }
    }
}

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub claimed: usize,
    pub published: usize,
    pub unrouted: usize,
}

/// Claims, publishes and deletes one batch.
pub async fn relay_batch(deps: &Deps) -> Result<BatchResult, HandleError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT notification_id, routing_key, payload::text FROM outbox
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&deps.settings.outbox_batch_size],
        )
        .await?;
    if rows.is_empty() {
        return Ok(BatchResult::default());
    }
    let exchange = deps.broker.topology().notifications_exchange();
    let publishes = rows.iter().map(|row| {
        let id: Uuid = row.get(0);
        let routing_key: String = row.get(1);
        let payload: String = row.get(2);
        let exchange = exchange.clone();
        async move {
            let result =
                deps.broker.publish(&exchange, &routing_key, payload.as_bytes(), properties(id, &routing_key)).await;
            (id, result)
        }
    });
    let results = join_all(publishes).await;

    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut unrouted = 0;
    for (id, result) in results {
        match result {
            Ok(()) => done.push(id),
            // Stored nowhere because nobody subscribed: there is no one to deliver to.
            Err(PublishError::Unroutable(_)) => {
                unrouted += 1;
                done.push(id);
            }
            Err(error) => failed.push((id, error.to_string())),
        }
    }
    // Test hook: the process dies after the broker confirmed and before the rows are deleted.
    fail::fail_point!("outbox-after-publish", |_| { std::process::abort() });

    tx.execute("DELETE FROM outbox WHERE notification_id = ANY($1)", &[&done]).await?;
    for (id, error) in &failed {
        tx.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE notification_id = $1",
            &[id, error],
        )
        .await?;
    }
    tx.commit().await?;

    let published = done.len();
    deps.metrics.notifications.with_label_values(&["published"]).inc_by((published - unrouted) as u64);
    deps.metrics.notifications.with_label_values(&["unrouted"]).inc_by(unrouted as u64);
    if unrouted > 0 && !deps.unrouted_warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(exchange = %exchange, "no queue is bound to the notifications exchange: notifications are kept in the notifications table only (counted as notifications_total{{stage=\"unrouted\"}})");
    }
    if !failed.is_empty() {
        tracing::warn!(failed = failed.len(), first_error = %failed[0].1, "notifications not confirmed; they stay in the outbox");
    }
    if published > unrouted {
        tracing::info!(published = published - unrouted, "notifications published");
    }
    Ok(BatchResult { claimed: rows.len(), published, unrouted })
}

fn properties(notification_id: Uuid, routing_key: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-notification-version".into(), AMQPValue::LongLongInt(i64::from(MESSAGE_VERSION)));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(notification_id.to_string().into())
        .with_type(routing_key.into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("worker".into())
        .with_headers(headers)
}
