//! Lists of events, paginated by keyset (never by offset): each page starts after the last row
//! of the one before, so page 1,000 costs what page 1 costs.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;

use super::order::{event_from_row, Event, EVENT_COLUMNS};

/// Rows per page.
pub const PAGE: i64 = 50;

/// Filters of the events list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// One of [`super::EVENT_STATUSES`].
    pub status: Option<&'static str>,
    /// `stripe` or `toss`.
    pub provider: Option<&'static str>,
    /// Only events processed in the minute starting here (the overview's per-minute numbers).
    pub minute: Option<DateTime<Utc>>,
    /// Keyset: only ids below this one.
    pub before: Option<i64>,
}

/// A page of events, newest (highest id) first, and the cursor of the next page.
pub async fn events(client: &Client, filter: &EventFilter) -> anyhow::Result<(Vec<Event>, Option<i64>)> {
    // Newest first by id: the primary key walked backwards, filtered. A rare status uses its
    // partial index (webhook_events_status, webhook_events_unverified) instead, and a minute
    // the processed_at index (webhook_events_prunable_v5). Status and provider come from fixed
    // lists, so they are written into the statement: the planner then sees which partial
    // index applies.
    let mut conditions = vec!["id < $1".to_string()];
    if let Some(status) = filter.status {
        conditions.push(format!("status = '{status}'"));
    }
    if let Some(provider) = filter.provider {
        conditions.push(format!("provider = '{provider}'"));
    }
    if filter.minute.is_some() {
        conditions.push("processed_at >= $3 AND processed_at < $3 + interval '1 minute'".into());
        if filter.status.is_none() {
            conditions.push("status IN ('applied', 'ignored', 'dead', 'unverified')".into());
        }
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE {} ORDER BY id DESC LIMIT $2",
        conditions.join(" AND ")
    );
    let before = filter.before.unwrap_or(i64::MAX);
    let limit = PAGE + 1;
    let rows = match &filter.minute {
        Some(minute) => client.query(&sql, &[&before, &limit, minute]).await?,
        None => client.query(&sql, &[&before, &limit]).await?,
    };
    Ok(page(rows.iter().map(event_from_row).collect(), |e| e.id))
}

/// Unverified events newest first (webhook_events_unverified), keyset on (received_at, id).
pub async fn unverified(
    client: &Client,
    before: Option<(DateTime<Utc>, i64)>,
) -> anyhow::Result<(Vec<Event>, Option<(DateTime<Utc>, i64)>)> {
    let rows = match before {
        Some((at, id)) => {
            client
                .query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM webhook_events
                          WHERE status = 'unverified' AND (received_at, id) < ($1, $2)
                          ORDER BY received_at DESC, id DESC LIMIT $3"
                    ),
                    &[&at, &id, &(PAGE + 1)],
                )
                .await?
        }
        None => {
            client
                .query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE status = 'unverified'
                          ORDER BY received_at DESC, id DESC LIMIT $1"
                    ),
                    &[&(PAGE + 1)],
                )
                .await?
        }
    };
    Ok(page(rows.iter().map(event_from_row).collect(), |e| (e.received_at, e.id)))
}

/// Cuts the extra row read to know whether another page follows; its cursor is the last shown.
fn page<T, C>(mut rows: Vec<T>, cursor: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
    if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}
