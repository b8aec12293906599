//! What the pipeline received and did for an order: its inbox rows, newest first.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;

/// One `webhook_events` row as recorded (its text as stored: control characters already
/// escaped by the worker, but shown to a person only through [`shared::providers::escape_controls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub received_at: DateTime<Utc>,
    pub provider: String,
    pub event_type: String,
    pub event_key: String,
    pub status: String,
    pub attempts: i32,
    pub duplicates: i32,
    /// Empty when none was recorded.
    pub verification: String,
    pub detail: String,
    pub last_error: String,
}

/// The order's events, newest first, at most `limit`.
pub async fn for_order(
    client: &Client,
    order_id: &str,
    limit: i64,
) -> Result<Vec<RecordedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT received_at, provider, event_type, event_key, status, attempts, duplicates,
                    COALESCE(verification, ''), COALESCE(detail, ''), COALESCE(last_error, '')
               FROM webhook_events WHERE order_id = $1
              ORDER BY received_at DESC, id DESC LIMIT $2",
            &[&order_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| RecordedEvent {
            received_at: row.get(0),
            provider: row.get(1),
            event_type: row.get(2),
            event_key: row.get(3),
            status: row.get(4),
            attempts: row.get(5),
            duplicates: row.get(6),
            verification: row.get(7),
            detail: row.get(8),
            last_error: row.get(9),
        })
        .collect())
}
