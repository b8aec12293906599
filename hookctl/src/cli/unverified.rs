//! `hookctl unverified list|recheck` over [`crate::unverified`].

use chrono::SecondsFormat;
use clap::Subcommand;
use shared::settings::HookctlSettings;
use shared::topology::Topology;

use crate::unverified::{self, Recheck, RecheckError, UnverifiedEvent};

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

pub async fn run(settings: &HookctlSettings, command: UnverifiedCommand) -> anyhow::Result<()> {
    let client = super::database(&settings.database).await?;
    match command {
        UnverifiedCommand::List { limit } => {
            let events = unverified::list(&client, limit).await?;
            print_list(&events, limit);
        }
        UnverifiedCommand::Recheck { event_key, all } => {
            let which = match (event_key, all) {
                (Some(key), _) => Recheck::Keys(vec![key]),
                (None, true) => Recheck::All,
                (None, false) => anyhow::bail!("say what to re-check: an event key, or --all"),
            };
            let fetch_back = settings.toss_api.toss_fetch_back_enabled();
            // Said before the broker is reached: it is what the operator has to change.
            unverified::ensure_possible(fetch_back)?;
            let connection = shared::broker::connect_first(&settings.common.amqp_url, "hookctl")
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to AMQP_URL: {e}"))?;
            // Without notification delivery: that is the worker's.
            let topology = Topology::from_settings(&settings.common);
            let report = unverified::recheck(&client, &connection, &topology, &which, fetch_back).await;
            let _ = connection.close(200, "done".into()).await;
            let report = report.map_err(|e| super::explain_refusal(e.into()))?;
            for event in &report.sent {
                println!(
                    "rechecking {} ({} {}, order {})",
                    event.event_key,
                    event.provider,
                    event.event_type,
                    order(event)
                );
            }
            if let Some(error) = report.stopped {
                return Err(super::explain_refusal(error.into()));
            }
            if let Some(key) = report.missing.into_iter().next() {
                return Err(RecheckError::NotFound(key).into());
            }
            println!(
                "{} event(s) sent to the workers again; `hookctl events <order id>` shows the outcome",
                report.sent.len()
            );
        }
    }
    Ok(())
}

fn order(event: &UnverifiedEvent) -> &str {
    event.order_id.as_deref().unwrap_or("-")
}

fn print_list(events: &[UnverifiedEvent], limit: i64) {
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
