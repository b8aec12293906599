//! The `hookctl` command line: parses, calls the library, prints.
//!
//! - `send stripe|toss …`: build a realistic event, sign it as the provider does, post it to a
//!   running ingest and print the answer (the offline `stripe trigger` and the guide's curl);
//! - `dead list|show|replay|purge`: inspect the dead-letter queue and move messages back (a
//!   replay is checked as the worker checks it: an unverifiable message stays dead);
//! - `unverified list|recheck`: events nothing could verify, and running them again once it can;
//! - `events <order id>`: what the pipeline received and did for an order, newest first;
//! - `reconcile stripe|toss --since 72h [--dry-run]`: find, through the provider's API, events
//!   whose webhooks never came, and queue them (or only list them);
//! - `probe <url>`: exit 0 when a URL answers 2xx (container health checks without curl).

mod dead;
mod events;
mod reconcile;
pub mod send;
mod unverified;

pub use dead::{DeadCommand, ReplayArgs, Which};
pub use reconcile::ReconcileCommand;
pub use unverified::UnverifiedCommand;

use clap::{Parser, Subcommand};
use shared::settings::{DatabaseSettings, HookctlSettings, Settings};

use crate::dead_letters::DeadLetterError;
use crate::unverified::RecheckError;

#[derive(Parser, Debug)]
#[command(name = "hookctl", version, about = "Send test events, inspect and replay dead letters, trace an order")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build, sign and post an event to a running ingest.
    #[command(subcommand)]
    Send(send::SendCommand),
    /// Inspect and replay the dead-letter queue.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Events recorded as unverified (they changed nothing), and re-checking them.
    #[command(subcommand)]
    Unverified(UnverifiedCommand),
    /// Show what the pipeline received and did for an order, newest first.
    Events {
        /// The order id (`payments.order_id`).
        order_id: String,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Find events whose webhooks never came through the provider's API, and queue them.
    Reconcile(ReconcileCommand),
    /// Exit 0 if the URL answers 2xx within 3 s, 1 otherwise.
    Probe { url: String },
}

/// The binary: parses the command line, runs it, and exits 1 with the error on failure.
pub async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Runs a parsed command, printing what it did.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Probe { url } => probe(&url).await,
        command => {
            let settings = HookctlSettings::load()?;
            match command {
                Command::Send(send) => send::run(&settings, send).await,
                Command::Dead(dead) => dead::run(&settings, dead).await,
                Command::Unverified(command) => unverified::run(&settings, command).await,
                Command::Events { order_id, limit } => events::run(&settings, &order_id, limit).await,
                Command::Reconcile(command) => reconcile::run(&settings, command).await,
                Command::Probe { .. } => unreachable!("handled above"),
            }
        }
    }
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?;
    let response = client.get(url).send().await?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    Ok(())
}

/// A refused broker permission, with what to grant.
fn explain_refusal(error: anyhow::Error) -> anyhow::Error {
    let refused = match (error.downcast_ref::<DeadLetterError>(), error.downcast_ref::<RecheckError>()) {
        (Some(DeadLetterError::Broker(e)), _) | (_, Some(RecheckError::Broker(e))) => Some(e),
        _ => error.downcast_ref::<lapin::Error>(),
    };
    match refused.and_then(shared::broker::access::refusal) {
        Some(refusal) => error.context(refusal.remedy()),
        None => error,
    }
}

/// A pooled connection as the worker opens it (TLS per `DATABASE_URL`).
async fn database(settings: &DatabaseSettings) -> anyhow::Result<deadpool_postgres::Client> {
    let pool = worker::store::db::pool(settings)?;
    pool.get().await.map_err(|e| anyhow::anyhow!(worker::store::db::describe_pool_error(&e)))
}
