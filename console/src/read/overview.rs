//! The overview's numbers from Postgres: events per minute by outcome over the last hour, and
//! how many events are dead, unverified or waiting for a retry.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;

/// Events that reached an outcome in one minute.
#[derive(Debug, Clone)]
pub struct Minute {
    pub start: DateTime<Utc>,
    /// (status, count) for each status with events in that minute.
    pub counts: Vec<(String, i64)>,
}

/// The database's part of the overview.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub minutes: Vec<Minute>,
    pub dead: i64,
    pub unverified: i64,
    pub retrying: i64,
    /// Outbox rows the broker refused too often (set aside).
    pub outbox_set_aside: i64,
    /// Reconciliation against the providers' APIs, one row per provider that has run.
    pub reconciliation: Vec<Reconciliation>,
}

/// A provider's row of `reconcile_state` (V10).
#[derive(Debug, Clone)]
pub struct Reconciliation {
    pub provider: String,
    /// When a run last completed.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Stripe: the `created` time of the newest event known published.
    pub watermark: Option<DateTime<Utc>>,
    /// The worker running it now (its lease is current), if any.
    pub running_on: Option<String>,
}

/// The statuses counted per minute: the outcomes that have a `processed_at`.
pub const PER_MINUTE_STATUSES: [&str; 4] = ["applied", "ignored", "unverified", "dead"];

pub async fn counts(client: &Client) -> anyhow::Result<Counts> {
    // webhook_events_prunable_v5 (processed_at) WHERE status IN (these four): the last hour
    // of it, not the table. Dated by processing, the time an outcome was reached.
    let rows = client
        .query(
            "SELECT date_trunc('minute', processed_at) AS minute, status, count(*)
               FROM webhook_events
              WHERE status IN ('applied', 'ignored', 'dead', 'unverified')
                AND processed_at >= date_trunc('minute', now()) - interval '59 minutes'
              GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?;
    let mut minutes: Vec<Minute> = Vec::new();
    for row in rows {
        let (start, status, count): (DateTime<Utc>, String, i64) = (row.get(0), row.get(1), row.get(2));
        match minutes.last_mut() {
            Some(last) if last.start == start => last.counts.push((status, count)),
            _ => minutes.push(Minute { start, counts: vec![(status, count)] }),
        }
    }
    // webhook_events_status (status) WHERE status IN ('retrying', 'dead'), and
    // webhook_events_unverified (received_at) WHERE status = 'unverified'.
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM webhook_events WHERE status = 'dead'),
                    (SELECT count(*) FROM webhook_events WHERE status = 'unverified'),
                    (SELECT count(*) FROM webhook_events WHERE status = 'retrying'),
                    (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL)",
            &[],
        )
        .await?;
    // Two rows at most (one per provider).
    let reconciliation = client
        .query(
            "SELECT provider, last_success_at, watermark, CASE WHEN lease_until > now() THEN holder END
               FROM reconcile_state ORDER BY provider",
            &[],
        )
        .await?
        .into_iter()
        .map(|row| Reconciliation {
            provider: row.get(0),
            last_success_at: row.get(1),
            watermark: row.get(2),
            running_on: row.get(3),
        })
        .collect();
    Ok(Counts {
        minutes,
        dead: row.get(0),
        unverified: row.get(1),
        retrying: row.get(2),
        outbox_set_aside: row.get(3),
        reconciliation,
    })
}
