//! `hookctl dead`: inspect the dead-letter queue and move messages back to work.
//!
//! Messages are read with `basic.get` and left unacknowledged; closing the channel returns
//! every one that was not replayed or purged, so listing never loses anything. A replayed
//! message is published to the work queue with a publisher confirm *before* its dead copy is
//! acknowledged; it goes through the inbox like any delivery, so an event that was applied in
//! the meantime is recognised as a duplicate. Before that, each is checked as the worker checks
//! every delivery (its signature, its key and type against its body): one that is unverifiable
//! stays in the dead letters, with a line saying why.
//!
//! hookctl declares nothing: the worker owns the topology, and the operator's AMQP user as
//! deployed may only read the dead-letter queues and publish to the default exchange
//! (`deploy/rabbitmq/permissions`).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use shared::envelope::EventEnvelope;
use shared::envelope::{
    header_int, header_str, long_string, H_ATTEMPT, H_DEAD_AT, H_DEAD_REASON, H_EVENT_KEY, H_EVENT_TYPE, H_LAST_ERROR,
    H_PROVIDER,
};
use shared::providers::escape_controls;
use shared::topology::Topology;
use shared::verify::message::{check_message, WebhookSecrets};
use shared::Settings;

use crate::cli::dead_api::{purge_queue, replay_selected, Selection};
use crate::retry::UNVERIFIABLE;

#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List dead-lettered messages (oldest first).
    List {
        /// Read at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        which: Which,
    },
    /// Show one message: its headers and its body (secret fields masked).
    Show {
        /// Event key (e.g. evt_...) or message id.
        id: String,
        #[command(flatten)]
        which: Which,
    },
    /// Move messages back to work: one by id, all, or those matching --provider / --since.
    Replay(ReplayArgs),
    /// Delete every dead-lettered message.
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        which: Which,
    },
}

#[derive(Args, Debug, Clone, Copy)]
pub struct Which {
    /// The notifications' dead letters instead of the events'.
    #[arg(long)]
    pub notifications: bool,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Event key or message id of one message.
    pub id: Option<String>,
    /// Every message.
    #[arg(long, conflicts_with = "id")]
    pub all: bool,
    /// Only this provider's events (stripe, toss).
    #[arg(long, conflicts_with = "id")]
    pub provider: Option<String>,
    /// Only messages parked within this long (e.g. 2h, 30m, 1d).
    #[arg(long, conflicts_with = "id")]
    pub since: Option<String>,
    #[command(flatten)]
    pub which: Which,
}

/// One dead-lettered message, read but not yet acknowledged.
pub struct DeadLetter {
    pub message: BasicGetMessage,
    pub id: String,
    pub provider: String,
    pub event_type: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub attempts: i64,
}

impl DeadLetter {
    /// Reads what `list` shows. Control characters in it are escaped (`\u{0}`) as the worker
    /// records them: a hostile message must not write to the operator's terminal, and its id
    /// is given to `show` and `replay` the way it is shown.
    fn from_message(message: BasicGetMessage) -> Self {
        let headers = message.delivery.properties.headers().clone().unwrap_or_default();
        let message_id = message.delivery.properties.message_id().as_ref().map(|m| m.to_string());
        let text = |name| header_str(&headers, name).map(|v| escape_controls(&v).into_owned());
        let id = text(H_EVENT_KEY)
            .or_else(|| message_id.as_deref().map(|m| escape_controls(m).into_owned()))
            .unwrap_or_else(|| format!("#{}", message.delivery.delivery_tag));
        let reason = text(H_DEAD_REASON).unwrap_or_else(|| death_reason(&headers));
        Self {
            id,
            provider: text(H_PROVIDER).unwrap_or_default(),
            event_type: text(H_EVENT_TYPE)
                .or_else(|| {
                    message.delivery.properties.kind().as_ref().map(|k| escape_controls(k.as_str()).into_owned())
                })
                .unwrap_or_default(),
            dead_at: header_str(&headers, H_DEAD_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            attempts: header_int(&headers, H_ATTEMPT).unwrap_or(0),
            reason,
            message,
        }
    }

    pub fn matches_id(&self, id: &str) -> bool {
        let message_id = self.message.delivery.properties.message_id();
        self.id == id || message_id.as_ref().is_some_and(|m| m.as_str() == id || escape_controls(m.as_str()) == id)
    }
}

/// Messages parked by the broker itself (delivery limit) carry `x-death`, not our reason.
fn death_reason(headers: &FieldTable) -> String {
    match headers.inner().get("x-death") {
        Some(_) => "delivery limit exceeded (the message crashed or stalled every worker)".into(),
        None => "unknown".into(),
    }
}

pub async fn run(settings: &Settings, command: DeadCommand) -> anyhow::Result<()> {
    // A replay is checked as the worker checks every delivery, with the same secrets.
    let secrets = match &command {
        DeadCommand::Replay(args) if !args.which.notifications => Some(WebhookSecrets::from_settings(settings)?),
        _ => None,
    };
    let connection = shared::broker::connect_first(&settings.amqp_url, "hookctl")
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to AMQP_URL: {e}"))?;
    let topology = Topology::from_settings(settings);
    let outbox = match &command {
        DeadCommand::List { which, .. }
        | DeadCommand::Show { which, .. }
        | DeadCommand::Purge { which, .. }
        | DeadCommand::Replay(ReplayArgs { which, .. })
            if which.notifications =>
        {
            crate::cli::dead_outbox::connect(settings).await
        }
        _ => None,
    };
    let result = execute(&connection, &topology, command, outbox.as_ref(), secrets.as_ref()).await;
    let _ = connection.close(200, "done".into()).await;
    result.map_err(explain_refusal)
}

/// A refused permission, with what to grant.
fn explain_refusal(error: anyhow::Error) -> anyhow::Error {
    match error.downcast_ref::<lapin::Error>().and_then(shared::broker::access::refusal) {
        Some(refusal) => error.context(refusal.remedy()),
        None => error,
    }
}

/// Fails unless `queue` exists, saying why it might not.
pub(crate) async fn require_queue(connection: &Connection, queue: &str, which: Which) -> anyhow::Result<()> {
    if queue_exists(connection, queue).await {
        return Ok(());
    }
    anyhow::bail!("no queue {queue}: {}", why_missing(which))
}

fn why_missing(which: Which) -> &'static str {
    if which.notifications {
        "notification delivery is off (NOTIFY_WEBHOOK_URL), or no worker has started with it"
    } else {
        "no worker has started on this AMQP_PREFIX yet (the worker declares the queues)"
    }
}

pub fn queues(topology: &Topology, which: Which) -> (String, String) {
    if which.notifications {
        (topology.notify_dead_queue(), topology.notify_queue())
    } else {
        (topology.dead_queue(), topology.work_queue())
    }
}

/// Runs `command`; with `--notifications`, `outbox` also reaches the notifications the broker
/// refused, which wait in the outbox table rather than in a queue.
async fn execute(
    connection: &Connection,
    topology: &Topology,
    command: DeadCommand,
    outbox: Option<&deadpool_postgres::Client>,
    secrets: Option<&WebhookSecrets>,
) -> anyhow::Result<()> {
    use crate::cli::dead_outbox;
    let reader = connection.create_channel().await?;
    match command {
        DeadCommand::List { limit, which } => {
            let (dead, _) = queues(topology, which);
            if queue_exists(connection, &dead).await {
                let letters = read_all(&reader, &dead, limit).await?;
                print_list(&letters, limit);
            } else {
                println!("no queue {dead} ({})", why_missing(which));
            }
            if let Some(client) = outbox {
                dead_outbox::list(client, limit as i64).await?;
            }
        }
        DeadCommand::Show { id, which } => {
            let (dead, _) = queues(topology, which);
            require_queue(connection, &dead, which).await?;
            let letters = read_all(&reader, &dead, SCAN_LIMIT).await?;
            let letter = letters
                .iter()
                .find(|l| l.matches_id(&id))
                .ok_or_else(|| anyhow::anyhow!("no dead letter with id {id}"))?;
            print_one(letter);
        }
        DeadCommand::Replay(args) if outbox.is_some() && (args.all || args.id.is_some()) => {
            let client = outbox.expect("checked");
            let revived = dead_outbox::replay(client, args.id.as_deref()).await?;
            if revived == 0 || args.all {
                Box::pin(execute(connection, topology, DeadCommand::Replay(args), None, None)).await?;
            }
        }
        DeadCommand::Purge { yes, which } if which.notifications && outbox.is_some() => {
            anyhow::ensure!(yes, "purging deletes every dead notification for good; add --yes");
            dead_outbox::purge(outbox.expect("checked")).await?;
            Box::pin(execute(connection, topology, DeadCommand::Purge { yes, which }, None, None)).await?;
        }
        DeadCommand::Replay(args) => {
            anyhow::ensure!(
                args.id.is_some() || args.all || args.provider.is_some() || args.since.is_some(),
                "say what to replay: an id, --all, --provider or --since"
            );
            let since =
                args.since.as_deref().map(shared::settings::parse_duration).transpose().map_err(anyhow::Error::msg)?;
            let selection = Selection { ids: args.id.map(|id| vec![id]), provider: args.provider, since };
            let report = replay_selected(connection, topology, args.which, &selection, secrets).await?;
            if report.scanned == SCAN_LIMIT {
                println!("note: read the first {SCAN_LIMIT} messages only; run again for the rest");
            }
            for letter in &report.replayed {
                println!("replayed {} ({} {})", letter.id, letter.provider, letter.event_type);
            }
            for (letter, why) in &report.refused {
                println!(
                    "not replayed {} ({} {}): {why}; it stays dead",
                    letter.id, letter.provider, letter.event_type
                );
            }
            if let Some(id) = report.missing.first() {
                anyhow::bail!("no dead letter with id {id}");
            }
            println!("{} message(s) moved back to {}", report.replayed.len(), queues(topology, args.which).1);
        }
        DeadCommand::Purge { yes, which } => {
            let (dead, _) = queues(topology, which);
            anyhow::ensure!(yes, "purging deletes every message in {dead} for good; add --yes");
            let purged = purge_queue(connection, topology, which).await?;
            println!("purged {purged} message(s) from {dead}");
        }
    }
    // Whatever was read and not replayed goes back to the dead-letter queue.
    let _ = reader.close(200, "done".into()).await;
    Ok(())
}

/// Whether a dead event may go back to work: the check the worker makes of every delivery
/// ([`check_message`]), so a message that cannot prove what it claims is not sent round again.
pub fn check_replay(letter: &DeadLetter, secrets: &WebhookSecrets) -> Result<(), String> {
    let delivery = &letter.message.delivery;
    let envelope = EventEnvelope::from_amqp(&delivery.properties, &delivery.data)
        .map_err(|e| format!("not a webhook envelope: {e}"))?;
    check_message(&envelope, secrets).map(|_| ()).map_err(|e| format!("{UNVERIFIABLE}: {e}"))
}

/// Whether `queue` exists (a passive declare on a channel of its own: a missing queue closes it).
pub async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    let Ok(channel) = connection.create_channel().await else { return false };
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let exists = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.is_ok();
    let _ = channel.close(200, "".into()).await;
    exists
}

/// Most messages `show` and `replay` read in one run (they are held in memory, unacknowledged).
pub const SCAN_LIMIT: usize = 10_000;

/// Reads up to `limit` ready messages without acknowledging them.
pub(crate) async fn read_all(channel: &Channel, queue: &str, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    while letters.len() < limit {
        let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false });
        let next = tokio::time::timeout(Duration::from_secs(10), get)
            .await
            .map_err(|_| anyhow::anyhow!("the broker did not answer basic.get"))??;
        let Some(message) = next else { break };
        letters.push(DeadLetter::from_message(message));
    }
    Ok(letters)
}

/// Publishes a fresh copy to `work`: attempts start again, the dead-letter headers go.
pub(crate) async fn replay(publisher: &Channel, work: &str, letter: &DeadLetter) -> anyhow::Result<()> {
    let delivery = &letter.message.delivery;
    let old = delivery.properties.headers().clone().unwrap_or_default();
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
    headers.insert("x-replayed-at".into(), long_string(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)));
    let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
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
    anyhow::ensure!(
        matches!(confirm, Confirmation::Ack(None)),
        "the broker did not store the replayed copy of {}; it stays dead",
        letter.id
    );
    Ok(())
}

fn print_list(letters: &[DeadLetter], limit: usize) {
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    println!("{:<44} {:<7} {:<40} {:>8}  {:<24} REASON", "ID", "PROV", "TYPE", "ATTEMPTS", "DEAD AT");
    for l in letters {
        let dead_at = l.dead_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)).unwrap_or_default();
        println!("{:<44} {:<7} {:<40} {:>8}  {:<24} {}", l.id, l.provider, l.event_type, l.attempts, dead_at, l.reason);
    }
    if letters.len() == limit {
        println!("{} message(s) shown; there may be more (--limit)", letters.len());
    } else {
        println!("{} message(s)", letters.len());
    }
}

fn print_one(letter: &DeadLetter) {
    let delivery = &letter.message.delivery;
    println!("id:        {}", letter.id);
    println!("reason:    {}", letter.reason);
    println!("attempts:  {}", letter.attempts);
    if let Some(headers) = delivery.properties.headers() {
        println!("headers:");
        for (k, v) in headers.inner() {
            let shown = match v {
                AMQPValue::LongString(s) => escape_controls(&String::from_utf8_lossy(s.as_bytes())).into_owned(),
                other => format!("{other:?}"),
            };
            println!("  {}: {shown}", escape_controls(k.as_str()));
        }
    }
    println!("body:");
    match serde_json::from_slice::<serde_json::Value>(&delivery.data) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&mask_secrets(json)).unwrap_or_default()),
        Err(_) => println!("{}", escape_controls(&String::from_utf8_lossy(&delivery.data))),
    }
}

/// Toss puts a payment `secret` in bodies; it is shown masked.
pub fn mask_secrets(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if k == "secret" && !v.is_null() {
                        (k, Value::String("***".into()))
                    } else {
                        (k, mask_secrets(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask_secrets).collect()),
        other => other,
    }
}
