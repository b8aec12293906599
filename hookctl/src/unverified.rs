//! Events recorded as `unverified` (an unsigned Toss payment event that nothing could verify;
//! it changed nothing), and running them again once a verification means exists.
//!
//! [`recheck`] publishes each stored event as ingest would (same provider, type, key, receipt
//! time and request id; verification `unsigned`), so the worker decides it again through the one
//! code path every event takes: fetched back from the Toss API and applied, or recorded as
//! unverified again. The inbox keeps Toss bodies without their `secret`, and a Toss event key
//! hashes the body in that form, so the copy is the same event.
//!
//! Each copy goes to the work queue by name, through the default exchange, as a replay does,
//! and nothing is declared: the operator's broker user may publish only there
//! (`deploy/rabbitmq/permissions`), and the work queue is all the events exchange routes to. A
//! missing work queue (no worker started yet) fails the mandatory publish.

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use shared::envelope::{EnvelopeHeaders, IngestVerification};
use shared::topology::Topology;
use shared::Provider;

/// One `unverified` inbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedEvent {
    pub provider: String,
    pub event_key: String,
    pub event_type: String,
    pub order_id: Option<String>,
    pub detail: Option<String>,
    pub payload: String,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub attempts: i32,
}

/// Which events to re-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// These events, by key (as [`list`] shows them). A key with no unverified event (decided
    /// meanwhile, or never one) is reported in [`RecheckReport::missing`].
    Keys(Vec<String>),
    /// Every unverified event (at most [`RECHECK_LIMIT`] in one run).
    All,
}

/// Why a re-check did not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecheckError {
    #[error(
        "nothing new to verify with: set TOSS_SECRET_KEY (the worker fetches each payment back from the Toss API), \
         on the workers and here, then run this again"
    )]
    NoVerification,
    #[error("no unverified event with key {0}")]
    NotFound(String),
    #[error(
        "the broker did not take event {key} (is {queue} declared? a worker declares it); nothing after it was sent"
    )]
    NotTaken { key: String, queue: String },
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Unreadable(String),
}

/// What [`recheck`] sent, in order.
#[derive(Debug, Default)]
pub struct RecheckReport {
    /// Published to the work queue, each confirmed by the broker.
    pub sent: Vec<UnverifiedEvent>,
    /// Keys of [`Recheck::Keys`] with no unverified event; nothing was sent for them.
    pub missing: Vec<String>,
    /// Sending stopped here; what `sent` lists went out before.
    pub stopped: Option<RecheckError>,
}

/// Most events one re-check of all publishes; run it again for the rest.
pub const RECHECK_LIMIT: i64 = 10_000;

/// Unverified events, newest first, at most `limit`.
pub async fn list(client: &tokio_postgres::Client, limit: i64) -> Result<Vec<UnverifiedEvent>, tokio_postgres::Error> {
    read(client, None, limit).await
}

/// Whether a re-check can change anything: only once the workers can verify (`fetch_back`:
/// `TOSS_SECRET_KEY`, or `TOSS_FETCH_BACK`). Callers ask before they offer one.
pub fn ensure_possible(fetch_back: bool) -> Result<(), RecheckError> {
    if fetch_back {
        Ok(())
    } else {
        Err(RecheckError::NoVerification)
    }
}

/// Sends the chosen events through the workers again, on `connection`. `fetch_back` says
/// whether the workers can verify now ([`ensure_possible`]).
pub async fn recheck(
    client: &tokio_postgres::Client,
    connection: &Connection,
    topology: &Topology,
    which: &Recheck,
    fetch_back: bool,
) -> Result<RecheckReport, RecheckError> {
    ensure_possible(fetch_back)?;
    let (events, missing) = match which {
        Recheck::Keys(keys) => {
            let events = read(client, Some(keys), RECHECK_LIMIT).await?;
            let missing = keys.iter().filter(|k| !events.iter().any(|e| &e.event_key == *k)).cloned().collect();
            (events, missing)
        }
        Recheck::All => (read(client, None, RECHECK_LIMIT).await?, Vec::new()),
    };
    let mut report = RecheckReport { sent: Vec::with_capacity(events.len()), missing, stopped: None };
    if events.is_empty() {
        return Ok(report);
    }
    let channel = connection.create_channel().await?;
    let published = publish(&channel, topology, events, &mut report).await;
    let _ = channel.close(200, "done".into()).await;
    published.map(|()| report)
}

async fn read(
    client: &tokio_postgres::Client,
    keys: Option<&[String]>,
    limit: i64,
) -> Result<Vec<UnverifiedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT provider, event_key, event_type, order_id, detail, payload, request_id, received_at, attempts
               FROM webhook_events
              WHERE status = 'unverified' AND ($1::text[] IS NULL OR event_key = ANY($1))
              ORDER BY received_at DESC
              LIMIT $2",
            &[&keys, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UnverifiedEvent {
            provider: r.get(0),
            event_key: r.get(1),
            event_type: r.get(2),
            order_id: r.get(3),
            detail: r.get(4),
            payload: r.get(5),
            request_id: r.get(6),
            received_at: r.get(7),
            attempts: r.get(8),
        })
        .collect())
}

/// Publishes each event as ingest would, each confirmed by the broker, to the work queue by
/// name; stops at the first the broker did not take ([`RecheckReport::stopped`]).
async fn publish(
    channel: &Channel,
    topology: &Topology,
    events: Vec<UnverifiedEvent>,
    report: &mut RecheckReport,
) -> Result<(), RecheckError> {
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let work = topology.work_queue();
    for event in events {
        match publish_one(channel, &work, &event).await {
            Ok(()) => report.sent.push(event),
            Err(error) => {
                report.stopped = Some(error);
                break;
            }
        }
    }
    Ok(())
}

async fn publish_one(channel: &Channel, work: &str, event: &UnverifiedEvent) -> Result<(), RecheckError> {
    let provider: Provider = event.provider.parse().map_err(RecheckError::Unreadable)?;
    let properties = EnvelopeHeaders {
        provider,
        event_type: &event.event_type,
        event_key: &event.event_key,
        verification: IngestVerification::Unsigned,
        received_at: event.received_at,
        request_id: event.request_id.as_deref().unwrap_or_default(),
        attempt: 0,
    }
    .properties(std::iter::empty());
    let confirm = channel
        .basic_publish(
            "".into(),
            work.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            event.payload.as_bytes(),
            properties,
        )
        .await?
        .await?;
    if !matches!(confirm, Confirmation::Ack(None)) {
        return Err(RecheckError::NotTaken { key: event.event_key.clone(), queue: work.to_string() });
    }
    Ok(())
}
