//! `hookctl dead`: the dead-letter queues ([`crate::dead_letters`]) and, with
//! `--notifications`, the notifications set aside in the outbox ([`crate::outbox`]).

use chrono::SecondsFormat;
use clap::{Args, Subcommand};
use deadpool_postgres::Client;
use lapin::Connection;
use shared::settings::{DatabaseSettings, HookctlSettings};
use shared::topology::Topology;
use shared::verify::message::WebhookSecrets;
use shared::Provider;

use crate::dead_letters::{self, DeadLetter, DeadLetterError, Queue, ReplayOutcome, Selection, SCAN_LIMIT};
use crate::outbox;

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

impl Which {
    fn queue(self) -> Queue {
        if self.notifications {
            Queue::Notifications
        } else {
            Queue::Events
        }
    }
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
    pub provider: Option<Provider>,
    /// Only messages parked within this long (e.g. 2h, 30m, 1d).
    #[arg(long, conflicts_with = "id", value_parser = shared::settings::parse_duration)]
    pub since: Option<std::time::Duration>,
    #[command(flatten)]
    pub which: Which,
}

pub async fn run(settings: &HookctlSettings, command: DeadCommand) -> anyhow::Result<()> {
    // A replay is checked as the worker checks every delivery, with the same secrets (and
    // the Stripe API key, which proves the events reconciliation fetched).
    let secrets = match &command {
        DeadCommand::Replay(args) if !args.which.notifications => Some(
            WebhookSecrets::from_settings(&settings.secrets)?
                .with_stripe_api_key(settings.reconcile.stripe_api_key.as_ref()),
        ),
        _ => None,
    };
    let connection = shared::broker::connect_first(&settings.common.amqp_url, "hookctl")
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to AMQP_URL: {e}"))?;
    let topology = Topology::from_settings(&settings.common);
    let outbox = match &command {
        DeadCommand::List { which, .. }
        | DeadCommand::Show { which, .. }
        | DeadCommand::Purge { which, .. }
        | DeadCommand::Replay(ReplayArgs { which, .. })
            if which.notifications =>
        {
            connect_outbox(&settings.database).await
        }
        _ => None,
    };
    let result = execute(&connection, &topology, command, outbox.as_ref(), secrets.as_ref()).await;
    let _ = connection.close(200, "done".into()).await;
    result.map_err(super::explain_refusal)
}

/// Connects for the outbox; `None` (with a note) when the database cannot be reached, so the
/// queue's dead letters are still shown.
async fn connect_outbox(settings: &DatabaseSettings) -> Option<Client> {
    let pool = worker::store::db::pool(settings).ok()?;
    match pool.get().await {
        Ok(client) => Some(client),
        Err(e) => {
            println!("note: outbox not read ({})", worker::store::db::describe_pool_error(&e));
            None
        }
    }
}

/// Runs `command`; with `--notifications`, `outbox` also reaches the notifications the broker
/// refused, which wait in the outbox table rather than in a queue.
async fn execute(
    connection: &Connection,
    topology: &Topology,
    command: DeadCommand,
    outbox: Option<&Client>,
    secrets: Option<&WebhookSecrets>,
) -> anyhow::Result<()> {
    match command {
        DeadCommand::List { limit, which } => {
            match dead_letters::list(connection, topology, which.queue(), limit).await? {
                Some(letters) => print_list(&letters, limit),
                None => println!("no queue {} ({})", which.queue().names(topology).0, which.queue().why_missing()),
            }
            if let Some(client) = outbox {
                print_outbox(&outbox::list(client, limit as i64).await?);
            }
        }
        DeadCommand::Show { id, which } => {
            let detail = dead_letters::show(connection, topology, which.queue(), &id).await?;
            println!("id:        {}", detail.letter.id);
            println!("reason:    {}", detail.letter.reason);
            println!("attempts:  {}", detail.letter.attempts);
            if !detail.headers.is_empty() {
                println!("headers:");
                for (name, value) in &detail.headers {
                    println!("  {name}: {value}");
                }
            }
            println!("body:");
            println!("{}", detail.body);
        }
        DeadCommand::Replay(args) if outbox.is_some() && (args.all || args.id.is_some()) => {
            let revived = outbox::replay(outbox.expect("checked"), args.id.as_deref()).await?;
            if revived > 0 {
                println!("{revived} notification(s) handed back to the outbox relay");
            }
            if revived == 0 || args.all {
                Box::pin(execute(connection, topology, DeadCommand::Replay(args), None, None)).await?;
            }
        }
        DeadCommand::Purge { yes, which } if which.notifications && outbox.is_some() => {
            anyhow::ensure!(yes, "purging deletes every dead notification for good; add --yes");
            let purged = outbox::purge(outbox.expect("checked")).await?;
            println!("purged {purged} notification(s) set aside in the outbox");
            Box::pin(execute(connection, topology, DeadCommand::Purge { yes, which }, None, None)).await?;
        }
        DeadCommand::Replay(args) => {
            let ids = args.id.into_iter().collect();
            let selection = Selection { ids, all: args.all, provider: args.provider, since: args.since };
            let report = dead_letters::replay(connection, topology, args.which.queue(), &selection, secrets).await?;
            if report.scan_truncated {
                println!("note: read the first {SCAN_LIMIT} messages only; run again for the rest");
            }
            for outcome in &report.outcomes {
                match outcome {
                    ReplayOutcome::Replayed(l) => println!("replayed {} ({} {})", l.id, l.provider, l.event_type),
                    ReplayOutcome::Refused { letter: l, reason } => {
                        println!("not replayed {} ({} {}): {reason}; it stays dead", l.id, l.provider, l.event_type)
                    }
                }
            }
            if let Some(error) = report.stopped {
                return Err(error.into());
            }
            if let Some(id) = report.missing.first() {
                return Err(DeadLetterError::NotFound(id.clone()).into());
            }
            println!("{} message(s) moved back to {}", report.replayed(), report.work_queue);
        }
        DeadCommand::Purge { yes, which } => {
            let (dead, _) = which.queue().names(topology);
            anyhow::ensure!(yes, "purging deletes every message in {dead} for good; add --yes");
            let purged = dead_letters::purge(connection, topology, which.queue()).await?;
            println!("purged {purged} message(s) from {dead}");
        }
    }
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

fn print_outbox(rows: &[outbox::DeadNotification]) {
    if rows.is_empty() {
        println!("no notifications set aside in the outbox");
        return;
    }
    println!("notifications the broker refused (outbox):");
    println!("{:<44} {:<28} {:>8}  {:<24} LAST ERROR", "ID", "TYPE", "ATTEMPTS", "DEAD AT");
    for row in rows {
        println!(
            "{:<44} {:<28} {:>8}  {:<24} {}",
            row.id.to_string(),
            row.kind,
            row.attempts,
            row.dead_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            row.last_error
        );
    }
    println!("{} row(s)", rows.len());
}
