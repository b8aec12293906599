//! The dead-letter queues: list, show, replay, purge.
//!
//! Messages are read with `basic.get` and left unacknowledged; closing the channel returns
//! every one that was not replayed or purged, so reading never loses anything. A replayed
//! message is published to the work queue with a publisher confirm *before* its dead copy is
//! acknowledged; it goes through the inbox like any delivery, so an event that was applied in
//! the meantime is recognised as a duplicate. Before that, each event is checked as the worker
//! checks every delivery (its signature, its key and type against its body): one that is
//! unverifiable stays in the dead letters, and the report says why. A replay of events without
//! the secrets to check them with is refused.
//!
//! Nothing here declares anything: the worker owns the topology, and the operator's AMQP user
//! as deployed may only read the dead-letter queues and publish to the default exchange
//! (`deploy/rabbitmq/permissions`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};

mod read;

use lapin::{BasicProperties, Channel, Confirmation, Connection};
use read::Read;
use shared::envelope::{
    copied, headers_out_of_bounds, long_string, EventEnvelope, H_ATTEMPT, H_DEAD_AT, H_DEAD_REASON, H_LAST_ERROR,
};
use shared::topology::Topology;
use shared::verify::message::{check_message, WebhookSecrets};
use shared::Provider;
use worker::domain::retry::UNVERIFIABLE;

/// Which dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Webhook events (`{prefix}.dead`).
    Events,
    /// Notifications whose HTTP delivery failed (`{prefix}.notify.dead`).
    Notifications,
}

impl Queue {
    /// The dead-letter queue and the queue its messages are replayed to.
    pub fn names(self, topology: &Topology) -> (String, String) {
        match self {
            Self::Events => (topology.dead_queue(), topology.work_queue()),
            Self::Notifications => (topology.notify_dead_queue(), topology.notify_queue()),
        }
    }

    /// Why the queue might not exist.
    pub fn why_missing(self) -> &'static str {
        match self {
            Self::Notifications => {
                "notification delivery is off (NOTIFY_WEBHOOK_URL), or no worker has started with it"
            }
            Self::Events => "no worker has started on this AMQP_PREFIX yet (the worker declares the queues)",
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no queue {queue}: {why}")]
    NoQueue { queue: String, why: &'static str },
    #[error("no dead letter with id {0}")]
    NotFound(String),
    #[error("say what to replay: an id, --all, --provider or --since")]
    NothingSelected,
    #[error(
        "a replay of events checks each one as the worker does, with the webhook secrets \
         (STRIPE_WEBHOOK_SECRET), and none were given"
    )]
    NoSecrets,
    #[error("the broker did not store the replayed copy of {0}; it stays dead")]
    NotStored(String),
    #[error("the broker did not answer basic.get")]
    NoAnswer,
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// One dead-lettered message as listed. Text from the message has its control characters
/// escaped (`\u{0}`) as the worker records them: a hostile message must not write to an
/// operator's terminal or page, and its id is given back to [`show`] and [`replay`] as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event key, else the message id, else `#<delivery tag>`.
    pub id: String,
    pub provider: String,
    pub event_type: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub attempts: i64,
}

/// One message in full: what [`show`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterDetail {
    pub letter: DeadLetter,
    /// Header names and values, escaped.
    pub headers: Vec<(String, String)>,
    /// The body: pretty JSON with Toss's payment `secret` masked, else the text, escaped.
    pub body: String,
}

/// Which messages to replay: those that meet every criterion given. At least one must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// These messages, by event key or message id as listed; empty: any. An id that matches
    /// no message read is reported in [`ReplayReport::missing`].
    pub ids: Vec<String>,
    /// Every message.
    pub all: bool,
    /// Only this provider's events.
    pub provider: Option<Provider>,
    /// Only messages parked within this long.
    pub since: Option<Duration>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.all && self.provider.is_none() && self.since.is_none()
    }
}

/// What happened to one selected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Published to the work queue (confirmed) and its dead copy acknowledged.
    Replayed(DeadLetter),
    /// Left in the dead letters: it does not prove what it claims.
    Refused { letter: DeadLetter, reason: String },
}

/// What [`replay`] did, in the order it did it.
#[derive(Debug)]
pub struct ReplayReport {
    pub outcomes: Vec<ReplayOutcome>,
    /// Ids of [`Selection::ids`] that no message read has (replayed or purged meanwhile).
    pub missing: Vec<String>,
    /// Where the replayed messages went.
    pub work_queue: String,
    /// Only the first [`SCAN_LIMIT`] messages were read; there may be more.
    pub scan_truncated: bool,
    /// The replay stopped here; what `outcomes` lists happened before.
    pub stopped: Option<DeadLetterError>,
}

impl ReplayReport {
    /// How many messages went back to work.
    pub fn replayed(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o, ReplayOutcome::Replayed(_))).count()
    }

    /// How many stay dead because they do not prove what they claim.
    pub fn refused(&self) -> usize {
        self.outcomes.len() - self.replayed()
    }
}

/// Most messages `show` and `replay` read in one run (they are held in memory, unacknowledged).
pub const SCAN_LIMIT: usize = 10_000;

/// Up to `limit` dead letters, oldest first; `Ok(None)` when the queue does not exist.
pub async fn list(
    connection: &Connection,
    topology: &Topology,
    queue: Queue,
    limit: usize,
) -> Result<Option<Vec<DeadLetter>>, DeadLetterError> {
    let (dead, _) = queue.names(topology);
    if !queue_exists(connection, &dead).await {
        return Ok(None);
    }
    let reader = connection.create_channel().await?;
    let read = read_all(&reader, &dead, limit).await;
    // Whatever was read goes back to the dead-letter queue.
    let _ = reader.close(200, "done".into()).await;
    Ok(Some(read?.iter().map(|m| m.letter.clone()).collect()))
}

/// One dead letter in full.
pub async fn show(
    connection: &Connection,
    topology: &Topology,
    queue: Queue,
    id: &str,
) -> Result<DeadLetterDetail, DeadLetterError> {
    let (dead, _) = queue.names(topology);
    require_queue(connection, &dead, queue).await?;
    let reader = connection.create_channel().await?;
    let found = find(&reader, &dead, id).await.map(|found| found.as_ref().map(Read::detail));
    // Whatever was read goes back to the dead-letter queue.
    let _ = reader.close(200, "done".into()).await;
    found?.ok_or_else(|| DeadLetterError::NotFound(id.to_string()))
}

/// Moves the selected messages back to work. Events are checked first with `secrets` (required
/// for them) as the worker checks every delivery ([`check_replay`]); one that does not hold
/// stays dead and is reported as refused.
pub async fn replay(
    connection: &Connection,
    topology: &Topology,
    queue: Queue,
    selection: &Selection,
    secrets: Option<&WebhookSecrets>,
) -> Result<ReplayReport, DeadLetterError> {
    let secrets = check_request(queue, selection, secrets)?;
    let (dead, work) = queue.names(topology);
    require_queue(connection, &dead, queue).await?;
    let reader = connection.create_channel().await?;
    let result = replay_from(connection, &reader, &dead, work, selection, secrets).await;
    // Whatever was read and not replayed goes back to the dead-letter queue.
    let _ = reader.close(200, "done".into()).await;
    result
}

async fn replay_from(
    connection: &Connection,
    reader: &Channel,
    dead: &str,
    work: String,
    selection: &Selection,
    secrets: Option<&WebhookSecrets>,
) -> Result<ReplayReport, DeadLetterError> {
    let cutoff = selection.since.map(|d| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
    let read = read_all(reader, dead, SCAN_LIMIT).await?;
    let chosen: Vec<&Read> = read
        .iter()
        .filter(|m| selection.ids.is_empty() || selection.ids.iter().any(|id| m.matches_id(id)))
        .filter(|m| selection.provider.is_none_or(|p| m.letter.provider == p.as_str()))
        .filter(|m| cutoff.is_none_or(|c| m.letter.dead_at.is_some_and(|t| t >= c)))
        .collect();
    let missing = selection.ids.iter().filter(|id| !chosen.iter().any(|m| m.matches_id(id))).cloned().collect();
    let mut report = ReplayReport {
        outcomes: Vec::new(),
        missing,
        work_queue: work,
        scan_truncated: read.len() == SCAN_LIMIT,
        stopped: None,
    };
    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    for message in chosen {
        // Whatever the secrets say: no ingest sends such headers, and the copy would carry them.
        if let Some(why) = headers_out_of_bounds(&message.message.delivery.properties) {
            let reason = format!("not a webhook envelope: its headers are {why}");
            report.outcomes.push(ReplayOutcome::Refused { letter: message.letter.clone(), reason });
            continue;
        }
        if let Some(Err(reason)) = secrets.map(|secrets| check_replay(&message.message, secrets)) {
            report.outcomes.push(ReplayOutcome::Refused { letter: message.letter.clone(), reason });
            continue;
        }
        let moved = async {
            publish_copy(&publisher, &report.work_queue, message).await?;
            message.message.delivery.ack(BasicAckOptions::default()).await?;
            Ok::<_, DeadLetterError>(())
        };
        if let Err(error) = moved.await {
            report.stopped = Some(error);
            break;
        }
        report.outcomes.push(ReplayOutcome::Replayed(message.letter.clone()));
    }
    let _ = publisher.close(200, "done".into()).await;
    Ok(report)
}

/// What a replay needs before it reads anything: a selection, and for events the secrets to
/// check them with (`None` for notifications, which carry no provider signature).
fn check_request<'s>(
    queue: Queue,
    selection: &Selection,
    secrets: Option<&'s WebhookSecrets>,
) -> Result<Option<&'s WebhookSecrets>, DeadLetterError> {
    if selection.is_empty() {
        return Err(DeadLetterError::NothingSelected);
    }
    match queue {
        Queue::Events => secrets.map(Some).ok_or(DeadLetterError::NoSecrets),
        Queue::Notifications => Ok(None),
    }
}

/// Deletes every message of the queue; returns how many went.
pub async fn purge(connection: &Connection, topology: &Topology, queue: Queue) -> Result<u32, DeadLetterError> {
    let (dead, _) = queue.names(topology);
    require_queue(connection, &dead, queue).await?;
    let channel = connection.create_channel().await?;
    let purged = channel.queue_purge(dead.as_str().into(), QueuePurgeOptions::default()).await;
    let _ = channel.close(200, "done".into()).await;
    Ok(purged?)
}

/// Whether a dead event may go back to work: the check the worker makes of every delivery
/// ([`check_message`]), so a message that cannot prove what it claims is not sent round again.
/// A bundle of webhooks (`INGEST_BUNDLE_MAX`, dead-lettered whole: past the delivery limit, or
/// by a worker too old to open it) goes back only if every webhook in it proves itself.
pub fn check_replay(message: &BasicGetMessage, secrets: &WebhookSecrets) -> Result<(), String> {
    check_message_bytes(&message.delivery.properties, &message.delivery.data, secrets)
}

fn check_message_bytes(
    properties: &lapin::BasicProperties,
    data: &[u8],
    secrets: &WebhookSecrets,
) -> Result<(), String> {
    if shared::bundle::is_bundle(properties) {
        let webhooks = shared::bundle::decode(data).ok_or("not a well-formed bundle of webhooks")?;
        return webhooks.iter().try_for_each(|(properties, body)| check_webhook(properties, body, secrets));
    }
    check_webhook(properties, data, secrets)
}

fn check_webhook(properties: &lapin::BasicProperties, body: &[u8], secrets: &WebhookSecrets) -> Result<(), String> {
    let envelope = EventEnvelope::from_amqp(properties, body).map_err(|e| format!("not a webhook envelope: {e}"))?;
    check_message(&envelope, secrets).map(|_| ()).map_err(|e| format!("{UNVERIFIABLE}: {e}"))
}

/// Fails unless `queue` exists, saying why it might not.
async fn require_queue(connection: &Connection, name: &str, queue: Queue) -> Result<(), DeadLetterError> {
    if queue_exists(connection, name).await {
        return Ok(());
    }
    Err(DeadLetterError::NoQueue { queue: name.to_string(), why: queue.why_missing() })
}

/// Whether `queue` exists (a passive declare on a channel of its own: a missing queue closes it).
async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    let Ok(channel) = connection.create_channel().await else { return false };
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let exists = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.is_ok();
    let _ = channel.close(200, "".into()).await;
    exists
}

/// Reads up to `limit` ready messages without acknowledging them.
async fn read_all(channel: &Channel, queue: &str, limit: usize) -> Result<Vec<Read>, DeadLetterError> {
    let mut read = Vec::new();
    while read.len() < limit {
        let Some(message) = read_one(channel, queue).await? else { break };
        read.push(message);
    }
    Ok(read)
}

/// Reads until the message with `id` (at most [`SCAN_LIMIT`]), without acknowledging any: one
/// near the head of a long queue is found without reading the rest (a console page per click).
async fn find(channel: &Channel, queue: &str, id: &str) -> Result<Option<Read>, DeadLetterError> {
    for _ in 0..SCAN_LIMIT {
        match read_one(channel, queue).await? {
            Some(message) if message.matches_id(id) => return Ok(Some(message)),
            Some(_) => continue,
            None => break,
        }
    }
    Ok(None)
}

/// The next ready message, unacknowledged; `None` when the queue has no more.
async fn read_one(channel: &Channel, queue: &str) -> Result<Option<Read>, DeadLetterError> {
    let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false });
    let next = tokio::time::timeout(Duration::from_secs(10), get).await.map_err(|_| DeadLetterError::NoAnswer)??;
    Ok(next.map(Read::new))
}

/// Publishes a fresh copy to `work`: attempts start again, the dead-letter headers go, and so
/// does what a copy never carries ([`copied`]: a message the broker parked itself keeps what its
/// publisher set, `CC` and `BCC` that would route the copy elsewhere among them).
async fn publish_copy(publisher: &Channel, work: &str, read: &Read) -> Result<(), DeadLetterError> {
    let delivery = &read.message.delivery;
    let base = copied(&delivery.properties);
    let old = base.headers().clone().unwrap_or_default();
    let mut headers = FieldTable::default();
    for (k, v) in old.inner() {
        if ![
            H_DEAD_REASON,
            H_DEAD_AT,
            H_LAST_ERROR,
            H_ATTEMPT,
            "x-death",
            "x-first-death-exchange",
            "x-first-death-queue",
            "x-first-death-reason",
            "x-delivery-count",
        ]
        .contains(&k.as_str())
        {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(0));
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    headers.insert("x-replayed-at".into(), long_string(&now));
    let properties: BasicProperties = base.with_headers(headers);
    let confirm = publisher
        .basic_publish(
            "".into(),
            work.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    if !matches!(confirm, Confirmation::Ack(None)) {
        return Err(DeadLetterError::NotStored(read.letter.id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
