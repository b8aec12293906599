//! `hookctl reconcile stripe|toss --since 72h [--dry-run]` over [`crate::reconcile`].

use clap::Args;
use shared::providers::escape_controls;
use shared::settings::{parse_duration, HookctlSettings};
use shared::Provider;

use crate::reconcile::{reconcile, ReconcileArgs};

#[derive(Args, Debug)]
pub struct ReconcileCommand {
    /// `stripe` (needs STRIPE_API_KEY) or `toss` (needs TOSS_SECRET_KEY).
    pub provider: Provider,
    /// How far back to look (`72h`, `3d`; Stripe keeps 30 days of events).
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    pub since: std::time::Duration,
    /// List what the inbox is missing; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(settings: &HookctlSettings, command: ReconcileCommand) -> anyhow::Result<()> {
    let args = ReconcileArgs { provider: command.provider, since: command.since, dry_run: command.dry_run };
    let report = reconcile(settings, args).await?;
    for found in &report.found {
        // Values from the provider's API; none of them writes to the terminal.
        let [key, event_type, detail] =
            [&found.event_key, &found.event_type, &found.detail].map(|v| escape_controls(v).into_owned());
        println!("missing  {event_type:<40} {key}  {detail}");
    }
    let verb = if command.dry_run { "would publish" } else { "published" };
    println!(
        "{}: examined {}, missing {}, {verb} {}",
        report.provider,
        report.examined,
        report.found.len(),
        if command.dry_run { report.found.len() } else { report.published }
    );
    // Only a dry run stops at the first run that holds all it may; a real one goes on until
    // nothing more is missing.
    if report.more {
        println!("more are missing than one run holds (RECONCILE_MAX_HELD): listed are the oldest");
    }
    Ok(())
}
