//! Events recorded as `unverified` (an unsigned Toss payment event that nothing could verify;
//! it changed nothing), and running them again once a verification means exists.
//!
//! [`recheck`] publishes each stored event to the events exchange exactly as ingest would (same
//! provider, type, key, receipt time and request id; verification `unsigned`), so the worker
//! decides it again through the one code path every event takes: fetched back from the Toss API
//! and applied, or recorded as unverified again. The inbox keeps Toss bodies without their
//! `secret`, and a Toss event key hashes the body in that form, so the copy is the same event.

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Confirmation, Connection};
use secrecy::SecretString;
use shared::envelope::{EnvelopeHeaders, IngestVerification};
use shared::topology::{Topology, TopologyError};
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
    /// The event with this key.
    Event(String),
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
    #[error("the broker did not take event {0}; nothing after it was sent")]
    NotTaken(String),
    #[error("cannot connect to AMQP_URL: {0}")]
    Connect(#[from] shared::broker::ConnectError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Unreadable(String),
}

/// What [`recheck`] sent, in order.
#[derive(Debug)]
pub struct RecheckReport {
    /// Published to the events exchange, each confirmed by the broker.
    pub sent: Vec<UnverifiedEvent>,
    /// Sending stopped here; what `sent` lists went out before.
    pub stopped: Option<RecheckError>,
}

/// Most events one re-check of all publishes; run it again for the rest.
pub const RECHECK_LIMIT: i64 = 10_000;

/// Unverified events, newest first, at most `limit`.
pub async fn list(client: &tokio_postgres::Client, limit: i64) -> Result<Vec<UnverifiedEvent>, tokio_postgres::Error> {
    read(client, None, limit).await
}

/// Sends the chosen events through the workers again. `fetch_back` says whether the workers
/// can verify now (`TOSS_SECRET_KEY`): without it there is nothing new to verify with.
pub async fn recheck(
    client: &tokio_postgres::Client,
    amqp_url: &SecretString,
    topology: &Topology,
    which: &Recheck,
    fetch_back: bool,
) -> Result<RecheckReport, RecheckError> {
    if !fetch_back {
        return Err(RecheckError::NoVerification);
    }
    let events = match which {
        Recheck::Event(key) => {
            let events = read(client, Some(key), RECHECK_LIMIT).await?;
            if events.is_empty() {
                return Err(RecheckError::NotFound(key.clone()));
            }
            events
        }
        Recheck::All => read(client, None, RECHECK_LIMIT).await?,
    };
    let connection = shared::broker::connect_first(amqp_url, "hookctl").await?;
    let report = publish(&connection, topology, events).await;
    let _ = connection.close(200, "done".into()).await;
    report
}

async fn read(
    client: &tokio_postgres::Client,
    key: Option<&str>,
    limit: i64,
) -> Result<Vec<UnverifiedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT provider, event_key, event_type, order_id, detail, payload, request_id, received_at, attempts
               FROM webhook_events
              WHERE status = 'unverified' AND ($1::text IS NULL OR event_key = $1)
              ORDER BY received_at DESC
              LIMIT $2",
            &[&key, &limit],
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

/// Publishes each event as ingest would, each confirmed by the broker.
async fn publish(
    connection: &Connection,
    topology: &Topology,
    events: Vec<UnverifiedEvent>,
) -> Result<RecheckReport, RecheckError> {
    topology.declare(connection).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut report = RecheckReport { sent: Vec::with_capacity(events.len()), stopped: None };
    for event in events {
        match publish_one(&channel, topology, &event).await {
            Ok(()) => report.sent.push(event),
            Err(error) => {
                report.stopped = Some(error);
                break;
            }
        }
    }
    Ok(report)
}

async fn publish_one(
    channel: &lapin::Channel,
    topology: &Topology,
    event: &UnverifiedEvent,
) -> Result<(), RecheckError> {
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
    let routing_key = Topology::routing_key(provider.as_str(), &event.event_type);
    let confirm = channel
        .basic_publish(
            topology.events_exchange().as_str().into(),
            routing_key.as_str().into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            event.payload.as_bytes(),
            properties,
        )
        .await?
        .await?;
    if !matches!(confirm, Confirmation::Ack(None)) {
        return Err(RecheckError::NotTaken(event.event_key.clone()));
    }
    Ok(())
}
