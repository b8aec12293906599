//! The operator's actions, through the same code as `hookctl` (one implementation): reading,
//! replaying and purging dead letters (`worker::cli::dead`, `worker::cli::dead_api`), and
//! re-checking unverified events (`worker::cli::unverified`). A replay checks each message as
//! the worker checks a delivery (`shared::verify::message::check_message`, through
//! `worker::cli::dead::check_replay`) before it goes back to work.
//!
//! This module is the console's only door to that code, so when `hookctl` becomes a crate of
//! its own only the paths below change.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use lapin::types::AMQPValue;
use shared::providers::escape_controls;
use shared::topology::Topology;
use shared::verify::message::WebhookSecrets;
use shared::Settings;
use worker::cli::dead::{self, DeadLetter, Which};
use worker::cli::dead_api::{self, ReplayReport, Selection};
use worker::cli::unverified::{self, Unverified};

use crate::broker::BrokerHandle;

pub use worker::cli::dead::mask_secrets;

/// Most dead letters one page reads from a queue (each read is a `basic.get`, returned to the
/// queue at once). A queue holding more says so on the page.
pub const PEEK_LIMIT: usize = 500;

/// Events' or notifications' dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Events,
    Notifications,
}

impl Kind {
    fn which(self) -> Which {
        Which { notifications: self == Kind::Notifications }
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
        dead::queues(topology, self.which()).0
    }
}

/// A dead letter as pages show it, read and already returned to its queue.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: String,
    pub provider: String,
    pub event_type: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub attempts: i64,
    /// Headers, each value shown as text with control characters escaped.
    pub headers: Vec<(String, String)>,
    /// The body: pretty JSON with every `secret` member masked, or escaped text.
    pub body: String,
}

impl From<&DeadLetter> for Letter {
    fn from(letter: &DeadLetter) -> Self {
        let delivery = &letter.message.delivery;
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|headers| {
                headers
                    .inner()
                    .iter()
                    .map(|(k, v)| {
                        let shown = match v {
                            AMQPValue::LongString(s) => {
                                escape_controls(&String::from_utf8_lossy(s.as_bytes())).into_owned()
                            }
                            other => format!("{other:?}"),
                        };
                        (escape_controls(k.as_str()).into_owned(), shown)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: letter.id.clone(),
            provider: letter.provider.clone(),
            event_type: letter.event_type.clone(),
            reason: letter.reason.clone(),
            dead_at: letter.dead_at,
            attempts: letter.attempts,
            headers,
            body: pretty_masked(&delivery.data),
        }
    }
}

/// A body for display: pretty-printed JSON with secrets masked, else text with control
/// characters escaped.
pub fn pretty_masked(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => serde_json::to_string_pretty(&mask_secrets(json)).unwrap_or_default(),
        Err(_) => escape_controls(&String::from_utf8_lossy(body)).into_owned(),
    }
}

/// The dead letters of `kind` (up to [`PEEK_LIMIT`]); `None` when the queue does not exist.
pub async fn dead_letters(
    broker: &BrokerHandle,
    topology: &Topology,
    kind: Kind,
) -> anyhow::Result<Option<Vec<Letter>>> {
    broker
        .with(async |connection| {
            let letters = dead_api::peek_letters(connection, topology, kind.which(), PEEK_LIMIT).await?;
            Ok(letters.map(|letters| letters.iter().map(Letter::from).collect()))
        })
        .await
}

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// Ids as listed; `None`: every message that matches the other conditions.
    pub ids: Option<Vec<String>>,
    pub provider: Option<String>,
    pub since: Option<Duration>,
}

/// Replays dead letters through hookctl's replay; events are checked with `secrets` first.
pub async fn replay(
    broker: &BrokerHandle,
    topology: &Topology,
    kind: Kind,
    request: ReplayRequest,
    secrets: Option<&WebhookSecrets>,
) -> anyhow::Result<ReplayReport> {
    let selection = Selection { ids: request.ids, provider: request.provider, since: request.since };
    let secrets = if kind == Kind::Events {
        Some(secrets.ok_or_else(|| {
            anyhow::anyhow!("a replay checks each event's signature: set STRIPE_WEBHOOK_SECRET on the console")
        })?)
    } else {
        None
    };
    broker
        .with(async |connection| {
            dead_api::replay_selected(connection, topology, kind.which(), &selection, secrets).await
        })
        .await
}

/// Deletes every dead letter of `kind`; returns how many.
pub async fn purge(broker: &BrokerHandle, topology: &Topology, kind: Kind) -> anyhow::Result<u32> {
    broker.with(async |connection| dead_api::purge_queue(connection, topology, kind.which()).await).await
}

/// Whether re-checking is possible, and why not.
pub fn recheck_possible(settings: &Settings) -> Result<(), String> {
    unverified::ensure_recheck_possible(settings).map_err(|e| e.to_string())
}

/// Sends unverified events (by key; all of them when `keys` is `None`, up to hookctl's limit)
/// to the workers again, as `hookctl unverified recheck` does. Returns the keys sent.
pub async fn recheck(
    settings: &Settings,
    client: &Client,
    broker: &BrokerHandle,
    topology: &Topology,
    keys: Option<&[String]>,
) -> anyhow::Result<Vec<String>> {
    unverified::ensure_recheck_possible(settings)?;
    let events: Vec<Unverified> = match keys {
        None => unverified::read(client, None, unverified::RECHECK_LIMIT).await?,
        Some(keys) => {
            let mut events = Vec::new();
            for key in keys {
                events.extend(unverified::read(client, Some(key), 1).await?);
            }
            events
        }
    };
    broker
        .with(async |connection| {
            let sent = unverified::publish_on(connection, topology, &events).await?;
            Ok(sent.into_iter().map(|e| e.event_key.clone()).collect())
        })
        .await
}
