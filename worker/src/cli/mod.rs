//! `hookctl`: the operator's and developer's command line.
//!
//! - `send stripe|toss …`: build a realistic event, sign it as the provider does, post it to a
//!   running ingest and print the answer (the offline `stripe trigger` and the guide's curl);
//! - `dead list|show|replay|purge`: inspect the dead-letter queue and move messages back (a
//!   replay is checked as the worker checks it: an unverifiable message stays dead);
//! - `unverified list|recheck`: events nothing could verify, and running them again once it can;
//! - `events <order id>`: what the pipeline received and did for an order, newest first;
//! - `probe <url>`: exit 0 when a URL answers 2xx (container health checks without curl).
//!
//! [`WorkerCli`] is the `worker` binary's own (smaller) command line.

pub mod dead;
pub mod dead_api;
pub mod dead_outbox;
pub mod events;
pub mod send;
pub mod unverified;
mod worker_cli;

pub use worker_cli::{WorkerCli, WorkerCommand};

use clap::{Parser, Subcommand};

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
    Dead(dead::DeadCommand),
    /// Events recorded as unverified (they changed nothing), and re-checking them.
    #[command(subcommand)]
    Unverified(unverified::UnverifiedCommand),
    /// Show what the pipeline received and did for an order, newest first.
    Events {
        /// The order id (`payments.order_id`).
        order_id: String,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Exit 0 if the URL answers 2xx within 3 s, 1 otherwise.
    Probe { url: String },
}

/// Runs a parsed command; the returned text is printed by the binary.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Probe { url } => probe(&url).await,
        command => {
            let settings = shared::Settings::load()?;
            match command {
                Command::Send(send) => send::run(&settings, send).await,
                Command::Dead(dead) => dead::run(&settings, dead).await,
                Command::Unverified(command) => unverified::run(&settings, command).await,
                Command::Events { order_id, limit } => events::run(&settings, &order_id, limit).await,
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
