//! `hookctl events <order id>`: the inbox rows of an order, newest first.

use shared::providers::escape_controls;
use shared::Settings;

pub async fn run(settings: &Settings, order_id: &str, limit: i64) -> anyhow::Result<()> {
    let pool = crate::db::pool(settings)?;
    let client = pool.get().await.map_err(|e| anyhow::anyhow!(crate::db::describe_pool_error(&e)))?;
    let rows = client
        .query(
            "SELECT received_at, provider, event_type, event_key, status, attempts, duplicates,
                    COALESCE(verification, ''), COALESCE(detail, ''), COALESCE(last_error, '')
               FROM webhook_events WHERE order_id = $1
              ORDER BY received_at DESC, id DESC LIMIT $2",
            &[&order_id, &limit],
        )
        .await?;
    if rows.is_empty() {
        println!("no events recorded for order {order_id}");
        return Ok(());
    }
    for row in rows {
        let received: chrono::DateTime<chrono::Utc> = row.get(0);
        let (provider, event_type, key, status): (String, String, String, String) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        let (attempts, duplicates): (i32, i32) = (row.get(5), row.get(6));
        let (verification, detail, error): (String, String, String) = (row.get(7), row.get(8), row.get(9));
        // Stored text came from outside; none of it writes to the terminal.
        let [event_type, key, detail, error] =
            [event_type, key, detail, error].map(|v| escape_controls(&v).into_owned());
        println!(
            "{}  {provider:<6} {event_type:<40} {status:<8} attempts={attempts} duplicates={duplicates} verification={verification}",
            received.format("%Y-%m-%d %H:%M:%S%.3f")
        );
        println!("    event {key}");
        if !detail.is_empty() {
            println!("    {detail}");
        }
        if !error.is_empty() {
            println!("    last error: {error}");
        }
    }
    Ok(())
}
