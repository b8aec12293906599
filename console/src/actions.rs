//! The operator's actions, through `hookctl`'s library (one implementation with the command
//! line): reading, replaying and purging dead letters ([`hookctl::dead_letters`]), reading the
//! notifications set aside in the outbox ([`hookctl::outbox`]), and re-checking unverified
//! events ([`hookctl::unverified`]). A replay checks each event as the worker checks a delivery
//! (`shared::verify::message::check_message`, inside [`hookctl::dead_letters::replay`]) before
//! it goes back to work.
//!
//! This module is the console's only door to that code: it adds the console's broker handle
//! and its page limits, nothing else.

use deadpool_postgres::Client;
use hookctl::dead_letters::{self, DeadLetter, DeadLetterDetail, DeadLetterError, Queue, ReplayReport, Selection};
use hookctl::outbox::{self, DeadNotification};
use hookctl::unverified::{self, Recheck, RecheckReport};
use shared::topology::Topology;
use shared::verify::message::WebhookSecrets;

use crate::broker::BrokerHandle;
use crate::settings::PipelineSettings;

/// Most dead letters one page reads from a queue (each read is a `basic.get`, returned to the
/// queue at once). A queue holding more says so on the page.
pub const PEEK_LIMIT: usize = 500;

/// Most notifications set aside in the outbox one page shows. The outbox holds only
/// notifications not yet confirmed: a handful.
pub const OUTBOX_LIMIT: i64 = 200;

/// Events' or notifications' dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Events,
    Notifications,
}

impl Kind {
    fn dead_letters(self) -> Queue {
        match self {
            Kind::Events => Queue::Events,
            Kind::Notifications => Queue::Notifications,
        }
    }

    /// `events` or `notifications`, as in URLs and the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Notifications => "notifications",
        }
    }

    /// The dead-letter queue's name.
    pub fn queue(self, topology: &Topology) -> String {
        self.dead_letters().names(topology).0
    }

    /// Why the queue might not exist yet.
    pub fn why_missing(self) -> &'static str {
        self.dead_letters().why_missing()
    }
}

/// A body for display: pretty-printed JSON with secrets masked, else text with control
/// characters escaped (hookctl's, so the console shows what `hookctl dead show` shows).
pub fn pretty_masked(body: &[u8]) -> String {
    hookctl::shown::body(body)
}

/// The dead letters of `kind` (up to [`PEEK_LIMIT`], oldest first, each returned to its queue);
/// `None` when the queue does not exist.
pub async fn dead_letters(
    broker: &BrokerHandle,
    topology: &Topology,
    kind: Kind,
) -> anyhow::Result<Option<Vec<DeadLetter>>> {
    broker
        .with(async |connection| Ok(dead_letters::list(connection, topology, kind.dead_letters(), PEEK_LIMIT).await?))
        .await
}

/// One dead letter in full; `Ok(None)` when neither it nor its queue is there (any more).
pub async fn dead_letter(
    broker: &BrokerHandle,
    topology: &Topology,
    kind: Kind,
    id: &str,
) -> anyhow::Result<Option<DeadLetterDetail>> {
    broker
        .with(async |connection| match dead_letters::show(connection, topology, kind.dead_letters(), id).await {
            Ok(detail) => Ok(Some(detail)),
            Err(DeadLetterError::NotFound(_) | DeadLetterError::NoQueue { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        })
        .await
}

/// Replays the dead letters with these ids (as listed) through hookctl's replay; events are
/// checked with `secrets` first, and without them hookctl refuses to replay events.
pub async fn replay(
    broker: &BrokerHandle,
    topology: &Topology,
    kind: Kind,
    ids: Vec<String>,
    secrets: Option<&WebhookSecrets>,
) -> anyhow::Result<ReplayReport> {
    let selection = Selection { ids, ..Default::default() };
    broker
        .with(async |connection| {
            Ok(dead_letters::replay(connection, topology, kind.dead_letters(), &selection, secrets).await?)
        })
        .await
}

/// Deletes every dead letter of `kind`; returns how many.
pub async fn purge(broker: &BrokerHandle, topology: &Topology, kind: Kind) -> anyhow::Result<u32> {
    broker.with(async |connection| Ok(dead_letters::purge(connection, topology, kind.dead_letters()).await?)).await
}

/// The notifications the broker refused too often, set aside in the outbox, oldest first.
pub async fn set_aside(client: &Client) -> anyhow::Result<Vec<DeadNotification>> {
    Ok(outbox::list(client, OUTBOX_LIMIT).await?)
}

/// Whether re-checking is possible, and why not.
pub fn recheck_possible(settings: &PipelineSettings) -> Result<(), String> {
    unverified::ensure_possible(settings.toss_api.toss_fetch_back_enabled()).map_err(|e| e.to_string())
}

/// Sends unverified events (by key; all of them when `keys` is `None`, up to hookctl's limit)
/// to the workers again, as `hookctl unverified recheck` does.
pub async fn recheck(
    settings: &PipelineSettings,
    client: &Client,
    broker: &BrokerHandle,
    topology: &Topology,
    keys: Option<Vec<String>>,
) -> anyhow::Result<RecheckReport> {
    let which = keys.map_or(Recheck::All, Recheck::Keys);
    let fetch_back = settings.toss_api.toss_fetch_back_enabled();
    broker
        .with(async |connection| Ok(unverified::recheck(client, connection, topology, &which, fetch_back).await?))
        .await
}
