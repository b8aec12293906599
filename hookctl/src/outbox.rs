//! Notifications the broker kept refusing: outbox rows set aside as dead after
//! `OUTBOX_MAX_ATTEMPTS` (see `worker::store::outbox`). They live in Postgres, not in a queue,
//! so they are read from there next to the delivery's dead letters.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use uuid::Uuid;

/// One outbox row set aside as dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadNotification {
    pub id: Uuid,
    /// `payment.<status>`: the notification type and routing key.
    pub kind: String,
    pub attempts: i32,
    pub dead_at: DateTime<Utc>,
    pub last_error: String,
}

/// Up to `limit` dead rows, oldest first.
pub async fn list(client: &Client, limit: i64) -> Result<Vec<DeadNotification>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT notification_id, routing_key, attempts, dead_at, COALESCE(last_error, '')
               FROM outbox WHERE dead_at IS NOT NULL ORDER BY dead_at LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DeadNotification {
            id: row.get(0),
            kind: row.get(1),
            attempts: row.get(2),
            dead_at: row.get(3),
            last_error: row.get(4),
        })
        .collect())
}

/// Gives dead rows (one by id, or all) a fresh start: the relay publishes them again. Returns
/// how many; an id that is no UUID matches nothing.
pub async fn replay(client: &Client, id: Option<&str>) -> Result<u64, tokio_postgres::Error> {
    match id {
        Some(id) => {
            let Ok(id) = id.parse::<Uuid>() else { return Ok(0) };
            client
                .execute(
                    "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, claimed_until = now()
                      WHERE notification_id = $1 AND dead_at IS NOT NULL",
                    &[&id],
                )
                .await
        }
        None => {
            client
                .execute(
                    "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, claimed_until = now()
                      WHERE dead_at IS NOT NULL",
                    &[],
                )
                .await
        }
    }
}

/// Deletes the dead rows (the `notifications` rows stay); returns how many went.
pub async fn purge(client: &Client) -> Result<u64, tokio_postgres::Error> {
    client.execute("DELETE FROM outbox WHERE dead_at IS NOT NULL", &[]).await
}
