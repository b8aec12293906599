//! `hookctl dead` as functions that return what happened instead of printing it: the
//! console calls them, and `hookctl dead replay|purge` prints their reports. One
//! implementation, so a replay from either is checked the same way ([`check_replay`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::Connection;
use shared::topology::Topology;
use shared::verify::message::WebhookSecrets;

use crate::cli::dead::{
    check_replay, queue_exists, queues, read_all, replay, require_queue, DeadLetter, Which, SCAN_LIMIT,
};

/// Which dead letters to replay; every given condition must hold. `ids: None` means any id.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Event keys or message ids (as listed); each one that matches nothing is reported missing.
    pub ids: Option<Vec<String>>,
    /// Only this provider's events.
    pub provider: Option<String>,
    /// Only messages parked within this long.
    pub since: Option<Duration>,
}

/// What a replay did, message by message.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Published to the work queue (confirmed) and removed from the dead letters.
    pub replayed: Vec<LetterSummary>,
    /// Left dead: they do not prove what they claim (the worker's own check).
    pub refused: Vec<(LetterSummary, String)>,
    /// Ids asked for that no message in the queue has.
    pub missing: Vec<String>,
    /// Messages read from the queue (at most [`SCAN_LIMIT`]).
    pub scanned: usize,
}

/// What is shown of a dead letter once it is back in its queue.
#[derive(Debug, Clone)]
pub struct LetterSummary {
    pub id: String,
    pub provider: String,
    pub event_type: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub attempts: i64,
}

impl From<&DeadLetter> for LetterSummary {
    fn from(letter: &DeadLetter) -> Self {
        Self {
            id: letter.id.clone(),
            provider: letter.provider.clone(),
            event_type: letter.event_type.clone(),
            reason: letter.reason.clone(),
            dead_at: letter.dead_at,
            attempts: letter.attempts,
        }
    }
}

/// Replays the dead letters `selection` picks: each is checked as the worker checks a
/// delivery (with `secrets`; events only), published to the work queue with a confirm, and
/// only then acknowledged. Whatever is not replayed goes back to the dead-letter queue.
pub async fn replay_selected(
    connection: &Connection,
    topology: &Topology,
    which: Which,
    selection: &Selection,
    secrets: Option<&WebhookSecrets>,
) -> anyhow::Result<ReplayReport> {
    let (dead, work) = queues(topology, which);
    require_queue(connection, &dead, which).await?;
    let cutoff = selection.since.map(|d| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
    let reader = connection.create_channel().await?;
    let result = async {
        let letters = read_all(&reader, &dead, SCAN_LIMIT).await?;
        let mut report = ReplayReport { scanned: letters.len(), ..Default::default() };
        let chosen: Vec<&DeadLetter> = letters
            .iter()
            .filter(|l| selection.ids.as_ref().is_none_or(|ids| ids.iter().any(|id| l.matches_id(id))))
            .filter(|l| selection.provider.as_deref().is_none_or(|p| l.provider == p))
            .filter(|l| cutoff.is_none_or(|c| l.dead_at.is_some_and(|t| t >= c)))
            .collect();
        for id in selection.ids.iter().flatten() {
            if !chosen.iter().any(|l| l.matches_id(id)) {
                report.missing.push(id.clone());
            }
        }
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        for letter in chosen {
            if let Some(Err(why)) = secrets.map(|secrets| check_replay(letter, secrets)) {
                report.refused.push((letter.into(), why));
                continue;
            }
            replay(&publisher, &work, letter).await?;
            letter.message.delivery.ack(BasicAckOptions::default()).await?;
            report.replayed.push(letter.into());
        }
        let _ = publisher.close(200, "done".into()).await;
        Ok(report)
    }
    .await;
    // Whatever was read and not replayed goes back to the dead-letter queue.
    let _ = reader.close(200, "done".into()).await;
    result
}

/// Deletes every message of the dead-letter queue; returns how many there were.
pub async fn purge_queue(connection: &Connection, topology: &Topology, which: Which) -> anyhow::Result<u32> {
    let (dead, _) = queues(topology, which);
    require_queue(connection, &dead, which).await?;
    let channel = connection.create_channel().await?;
    let purged = channel.queue_purge(dead.as_str().into(), QueuePurgeOptions::default()).await;
    let _ = channel.close(200, "done".into()).await;
    Ok(purged?)
}

/// Reads up to `limit` dead letters without acknowledging them and returns them to the
/// queue (by closing the channel) before returning what they were. `None`: no such queue.
pub async fn peek_letters(
    connection: &Connection,
    topology: &Topology,
    which: Which,
    limit: usize,
) -> anyhow::Result<Option<Vec<DeadLetter>>> {
    let (dead, _) = queues(topology, which);
    if !queue_exists(connection, &dead).await {
        return Ok(None);
    }
    let reader = connection.create_channel().await?;
    let letters = read_all(&reader, &dead, limit).await;
    let _ = reader.close(200, "done".into()).await;
    letters.map(Some)
}
