//! An order's whole story: its payment row, every event received for it in time order, and
//! the notifications it caused with their delivery state.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use uuid::Uuid;

/// `payments` row.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: String,
    pub booking_id: Option<Uuid>,
    pub provider: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub status: String,
    pub provider_payment_id: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `payment_metadata->'webhook'`, the last applied webhook (JSON text).
    pub last_webhook: Option<String>,
}

/// `webhook_events` row.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub provider: String,
    pub event_key: String,
    pub event_type: String,
    pub order_id: Option<String>,
    pub status: String,
    pub detail: Option<String>,
    pub attempts: i32,
    pub duplicates: i32,
    pub last_error: Option<String>,
    pub verification: Option<String>,
    pub payload: String,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// A notification and where its message is.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: Uuid,
    pub kind: String,
    pub title: String,
    pub message: String,
    pub link: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivery: Delivery,
}

/// Where a notification's message is, as far as Postgres knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// No outbox row: the broker confirmed the message (its HTTP delivery, when configured,
    /// has its own retries and dead letters).
    Published,
    /// An outbox row waits for the broker's confirm.
    Pending { attempts: i32, last_error: Option<String>, traceparent: Option<String> },
    /// The broker refused it too often; set aside (`hookctl dead replay <id> --notifications`).
    SetAside { attempts: i32, last_error: Option<String>, dead_at: DateTime<Utc> },
}

/// Everything the order page shows.
#[derive(Debug, Clone)]
pub struct OrderStory {
    pub order_id: String,
    pub payment: Option<Payment>,
    pub events: Vec<Event>,
    /// More events than are shown.
    pub more_events: bool,
    pub notifications: Vec<Notification>,
}

/// Most events on one order page; a real order has a handful.
pub const MAX_EVENTS: i64 = 200;

pub const EVENT_COLUMNS: &str = "id, provider, event_key, event_type, order_id, status, detail, attempts, duplicates, \
     last_error, verification, payload, request_id, received_at, processed_at";

pub fn event_from_row(r: &tokio_postgres::Row) -> Event {
    Event {
        id: r.get(0),
        provider: r.get(1),
        event_key: r.get(2),
        event_type: r.get(3),
        order_id: r.get(4),
        status: r.get(5),
        detail: r.get(6),
        attempts: r.get(7),
        duplicates: r.get(8),
        last_error: r.get(9),
        verification: r.get(10),
        payload: r.get(11),
        request_id: r.get(12),
        received_at: r.get(13),
        processed_at: r.get(14),
    }
}

/// The story of `order_id`; `None` when neither a payment nor an event has that order id.
pub async fn load(client: &Client, order_id: &str) -> anyhow::Result<Option<OrderStory>> {
    // payments' unique key on order_id.
    let payment = client
        .query_opt(
            "SELECT id, order_id, booking_id, provider, amount::text, currency, payment_status, provider_payment_id,
                    last_event_at, paid_at, created_at, updated_at, payment_metadata->'webhook'
               FROM payments WHERE order_id = $1",
            &[&order_id],
        )
        .await?
        .map(|r| Payment {
            id: r.get(0),
            order_id: r.get(1),
            booking_id: r.get(2),
            provider: r.get(3),
            amount: r.get(4),
            currency: r.get(5),
            status: r.get(6),
            provider_payment_id: r.get(7),
            last_event_at: r.get(8),
            paid_at: r.get(9),
            created_at: r.get(10),
            updated_at: r.get(11),
            last_webhook: r.get::<_, Option<serde_json::Value>>(12).map(|v| v.to_string()),
        });
    // webhook_events_order (order_id, received_at DESC); an order has a handful to sort.
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE order_id = $1
                  ORDER BY received_at, id LIMIT $2"
            ),
            &[&order_id, &(MAX_EVENTS + 1)],
        )
        .await?;
    let mut events: Vec<Event> = rows.iter().map(event_from_row).collect();
    let more_events = events.len() as i64 > MAX_EVENTS;
    events.truncate(MAX_EVENTS as usize);
    if payment.is_none() && events.is_empty() {
        return Ok(None);
    }
    let notifications = match &payment {
        Some(payment) => notifications(client, payment).await?,
        None => Vec::new(),
    };
    Ok(Some(OrderStory { order_id: order_id.to_string(), payment, events, more_events, notifications }))
}

/// A payment's notifications. `notifications` has no index on `payment_id` (the worker does not
/// need one, and every index slows its inserts): they are found through the trainer's index
/// (`notifications_user`), since a payment notifies its booking's trainer.
async fn notifications(client: &Client, payment: &Payment) -> anyhow::Result<Vec<Notification>> {
    let Some(booking_id) = payment.booking_id else { return Ok(Vec::new()) };
    let rows = client
        .query(
            "SELECT n.id, n.type, n.title, n.message, n.link, n.created_at,
                    o.notification_id IS NOT NULL, o.attempts, o.last_error, o.traceparent, o.dead_at
               FROM notifications n
               LEFT JOIN outbox o ON o.notification_id = n.id
              WHERE n.user_id = (SELECT trainer_id FROM bookings WHERE id = $1) AND n.payment_id = $2
              ORDER BY n.created_at, n.id",
            &[&booking_id, &payment.id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let in_outbox: bool = r.get(6);
            let dead_at: Option<DateTime<Utc>> = r.get(10);
            let delivery = match (in_outbox, dead_at) {
                (false, _) => Delivery::Published,
                (true, Some(dead_at)) => Delivery::SetAside { attempts: r.get(7), last_error: r.get(8), dead_at },
                (true, None) => Delivery::Pending { attempts: r.get(7), last_error: r.get(8), traceparent: r.get(9) },
            };
            Notification {
                id: r.get(0),
                kind: r.get(1),
                title: r.get(2),
                message: r.get(3),
                link: r.get(4),
                created_at: r.get(5),
                delivery,
            }
        })
        .collect())
}

/// One event by id (an event whose body named no order has no order page).
pub async fn event(client: &Client, id: i64) -> anyhow::Result<Option<Event>> {
    let row = client.query_opt(&format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE id = $1"), &[&id]).await?;
    Ok(row.as_ref().map(event_from_row))
}
