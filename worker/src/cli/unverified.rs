//! `hookctl unverified`: events recorded as `unverified` (an unsigned Toss payment event that
//! nothing could verify; it changed nothing), and running them again once a verification means
//! exists.
//!
//! `recheck` publishes each stored event to the work queue exactly as ingest would (same
//! provider, type, key, receipt time and request id; verification `unsigned`), so the worker
//! decides it again through the one code path every event takes: fetched back from the Toss API
//! and applied, or recorded as unverified again. The inbox keeps Toss bodies without their
//! `secret`, and a Toss event key hashes the body in that form, so the copy is the same event.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use shared::envelope::{EnvelopeHeaders, IngestVerification};
use shared::topology::Topology;
use shared::{Provider, Settings};

#[derive(Subcommand, Debug)]
pub enum UnverifiedCommand {
    /// List unverified events, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Run unverified events through the worker again (needs TOSS_SECRET_KEY: fetch-back).
    Recheck {
        /// The event key of one event (as `list` shows it).
        event_key: Option<String>,
        /// Every unverified event.
        #[arg(long, conflicts_with = "event_key")]
        all: bool,
    },
}

/// One `unverified` inbox row.
#[derive(Debug, Clone)]
pub struct Unverified {
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

pub async fn run(settings: &Settings, command: UnverifiedCommand) -> anyhow::Result<()> {
    let pool = crate::db::pool(settings)?;
    let client = pool.get().await.map_err(|e| anyhow::anyhow!(crate::db::describe_pool_error(&e)))?;
    match command {
        UnverifiedCommand::List { limit } => {
            let events = read(&client, None, limit).await?;
            print_list(&events, limit);
        }
        UnverifiedCommand::Recheck { event_key, all } => {
            anyhow::ensure!(event_key.is_some() || all, "say what to re-check: an event key, or --all");
            ensure_recheck_possible(settings)?;
            let events = read(&client, event_key.as_deref(), RECHECK_LIMIT).await?;
            if let Some(key) = &event_key {
                anyhow::ensure!(!events.is_empty(), "no unverified event with key {key}");
            }
            let published = publish(settings, &events).await?;
            for event in &published {
                println!(
                    "rechecking {} ({} {}, order {})",
                    event.event_key,
                    event.provider,
                    event.event_type,
                    order(event)
                );
            }
            println!(
                "{} event(s) sent to the workers again; `hookctl events <order id>` shows the outcome",
                published.len()
            );
        }
    }
    Ok(())
}

/// Re-checking only makes sense once the workers have a means to verify (fetch-back).
pub fn ensure_recheck_possible(settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.toss_fetch_back_enabled(),
        "nothing new to verify with: set TOSS_SECRET_KEY (the worker fetches each payment back from the \
         Toss API), on the workers and here, then run this again"
    );
    Ok(())
}

/// Most events one `recheck --all` publishes; run it again for the rest.
pub const RECHECK_LIMIT: i64 = 10_000;

/// The unverified events, newest first: one by key, or up to `limit`.
pub async fn read(client: &tokio_postgres::Client, key: Option<&str>, limit: i64) -> anyhow::Result<Vec<Unverified>> {
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
        .map(|r| Unverified {
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

/// Publishes each event as ingest would, each confirmed by the broker; returns those sent,
/// in order (an error stops at the first the broker did not take).
pub async fn publish<'e>(settings: &Settings, events: &'e [Unverified]) -> anyhow::Result<Vec<&'e Unverified>> {
    let connection = shared::broker::connect_first(&settings.amqp_url, "hookctl")
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to AMQP_URL: {e}"))?;
    let result = publish_on(&connection, &Topology::from_settings(settings), events).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

/// [`publish`] on an open connection. Each copy goes to the work queue by name, through the
/// default exchange, as a replay does: the operator's broker user may publish only there
/// (`deploy/rabbitmq/permissions`), and the work queue is all the events exchange routes to.
/// A missing work queue (no worker started yet) fails the mandatory publish.
pub async fn publish_on<'e>(
    connection: &lapin::Connection,
    topology: &Topology,
    events: &'e [Unverified],
) -> anyhow::Result<Vec<&'e Unverified>> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let work = topology.work_queue();
    let mut published = Vec::new();
    for event in events {
        let provider: Provider = event.provider.parse().map_err(anyhow::Error::msg)?;
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
                work.as_str().into(),
                BasicPublishOptions { mandatory: true, immediate: false },
                event.payload.as_bytes(),
                properties,
            )
            .await?
            .await?;
        anyhow::ensure!(
            matches!(confirm, Confirmation::Ack(None)),
            "the broker did not take event {} (is {work} declared? a worker declares it); nothing after it was sent",
            event.event_key
        );
        published.push(event);
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(published)
}

fn order(event: &Unverified) -> &str {
    event.order_id.as_deref().unwrap_or("-")
}

fn print_list(events: &[Unverified], limit: i64) {
    if events.is_empty() {
        println!("no unverified events");
        return;
    }
    println!("{:<24} {:<6} {:<24} {:<28} {:>8}  EVENT KEY", "RECEIVED", "PROV", "TYPE", "ORDER", "ATTEMPTS");
    for e in events {
        println!(
            "{:<24} {:<6} {:<24} {:<28} {:>8}  {}",
            e.received_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            e.provider,
            e.event_type,
            order(e),
            e.attempts,
            e.event_key
        );
        if let Some(detail) = &e.detail {
            println!("    {detail}");
        }
    }
    if events.len() as i64 == limit {
        println!("{} event(s) shown; there may be more (--limit)", events.len());
    } else {
        println!("{} event(s)", events.len());
    }
}
