//! `hookctl events <order id>`: the inbox rows of an order, newest first.

use shared::providers::escape_controls;
use shared::settings::HookctlSettings;

use crate::events::for_order;

pub async fn run(settings: &HookctlSettings, order_id: &str, limit: i64) -> anyhow::Result<()> {
    let client = super::database(&settings.database).await?;
    let events = for_order(&client, order_id, limit).await?;
    if events.is_empty() {
        println!("no events recorded for order {order_id}");
        return Ok(());
    }
    for event in events {
        // Stored text came from outside; none of it writes to the terminal.
        let [event_type, key, detail, error] =
            [&event.event_type, &event.event_key, &event.detail, &event.last_error].map(|v| escape_controls(v));
        println!(
            "{}  {:<6} {event_type:<40} {:<8} attempts={} duplicates={} verification={}",
            event.received_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            event.provider,
            event.status,
            event.attempts,
            event.duplicates,
            event.verification,
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
