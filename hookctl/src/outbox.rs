//! Notifications the broker kept refusing: outbox rows set aside as dead after
//! `OUTBOX_MAX_ATTEMPTS` (see `crate::outbox`). They live in Postgres, not in a queue, so
//! `hookctl dead ... --notifications` reads them from there next to the delivery's dead letters.

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::Client;
use shared::Settings;
use uuid::Uuid;

/// Connects for the outbox; `None` (with a note) when the database cannot be reached, so the
/// queue's dead letters are still shown.
pub async fn connect(settings: &Settings) -> Option<Client> {
    let pool = crate::db::pool(settings).ok()?;
    match pool.get().await {
        Ok(client) => Some(client),
        Err(e) => {
            println!("note: outbox not read ({})", crate::db::describe_pool_error(&e));
            None
        }
    }
}

/// Prints the dead outbox rows.
pub async fn list(client: &Client, limit: i64) -> anyhow::Result<()> {
    let rows = client
        .query(
            "SELECT notification_id, routing_key, attempts, dead_at, COALESCE(last_error, '')
               FROM outbox WHERE dead_at IS NOT NULL ORDER BY dead_at LIMIT $1",
            &[&limit],
        )
        .await?;
    if rows.is_empty() {
        println!("no notifications set aside in the outbox");
        return Ok(());
    }
    println!("notifications the broker refused (outbox):");
    println!("{:<44} {:<28} {:>8}  {:<24} LAST ERROR", "ID", "TYPE", "ATTEMPTS", "DEAD AT");
    for row in &rows {
        let (id, kind, attempts): (Uuid, String, i32) = (row.get(0), row.get(1), row.get(2));
        let dead_at: DateTime<Utc> = row.get(3);
        let error: String = row.get(4);
        println!(
            "{:<44} {:<28} {:>8}  {:<24} {error}",
            id.to_string(),
            kind,
            attempts,
            dead_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
    }
    println!("{} row(s)", rows.len());
    Ok(())
}

/// Gives dead rows (one by id, or all) a fresh start: the relay publishes them again.
pub async fn replay(client: &Client, id: Option<&str>) -> anyhow::Result<u64> {
    let revived = match id {
        Some(id) => {
            let Ok(id) = id.parse::<Uuid>() else { return Ok(0) };
            client
                .execute(
                    "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, claimed_until = now()
                      WHERE notification_id = $1 AND dead_at IS NOT NULL",
                    &[&id],
                )
                .await?
        }
        None => {
            client
                .execute(
                    "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, claimed_until = now()
                      WHERE dead_at IS NOT NULL",
                    &[],
                )
                .await?
        }
    };
    if revived > 0 {
        println!("{revived} notification(s) handed back to the outbox relay");
    }
    Ok(revived)
}

/// Deletes the dead rows (the `notifications` rows stay).
pub async fn purge(client: &Client) -> anyhow::Result<u64> {
    let purged = client.execute("DELETE FROM outbox WHERE dead_at IS NOT NULL", &[]).await?;
    println!("purged {purged} notification(s) set aside in the outbox");
    Ok(purged)
}
