//! One search box: an order id, a payment key (Stripe `pi_…`, Toss `paymentKey`), an event key
//! (Stripe `evt_…`, a Toss key) or a request id. Each is an exact match through an index.

use deadpool_postgres::Client;

/// What a search found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Order ids, each with how it matched.
    pub orders: Vec<(String, &'static str)>,
    /// Events that name no order: (id, event key, how it matched).
    pub orphan_events: Vec<(i64, String, &'static str)>,
}

impl Found {
    /// The one place to go, when there is exactly one.
    pub fn single_order(&self) -> Option<&str> {
        match (self.orders.as_slice(), self.orphan_events.is_empty()) {
            ([(order, _)], true) => Some(order),
            _ => None,
        }
    }
}

/// Longest query accepted (ids are far shorter).
pub const MAX_QUERY: usize = 200;

pub async fn search(client: &Client, query: &str) -> anyhow::Result<Found> {
    let mut found = Found::default();
    let add_order = |found: &mut Found, order: String, how: &'static str| {
        if !found.orders.iter().any(|(o, _)| *o == order) {
            found.orders.push((order, how));
        }
    };
    // payments' unique key on order_id, and webhook_events_order for orders with events only.
    if client.query_opt("SELECT 1 FROM payments WHERE order_id = $1", &[&query]).await?.is_some()
        || client.query_opt("SELECT 1 FROM webhook_events WHERE order_id = $1 LIMIT 1", &[&query]).await?.is_some()
    {
        add_order(&mut found, query.to_string(), "order id");
    }
    // payments_provider_payment_id.
    for row in client.query("SELECT order_id FROM payments WHERE provider_payment_id = $1 LIMIT 20", &[&query]).await? {
        add_order(&mut found, row.get(0), "payment key");
    }
    // webhook_events_provider_event_key (provider, event_key): one probe per provider.
    let by_key = client
        .query(
            "SELECT id, event_key, order_id FROM webhook_events
              WHERE provider IN ('stripe', 'toss') AND event_key = $1 LIMIT 20",
            &[&query],
        )
        .await?;
    // webhook_events_request_id (migration V9).
    let by_request = client
        .query("SELECT id, event_key, order_id FROM webhook_events WHERE request_id = $1 LIMIT 20", &[&query])
        .await?;
    for (rows, how) in [(by_key, "event key"), (by_request, "request id")] {
        for row in rows {
            match row.get::<_, Option<String>>(2) {
                Some(order) => add_order(&mut found, order, how),
                None => found.orphan_events.push((row.get(0), row.get(1), how)),
            }
        }
    }
    Ok(found)
}
