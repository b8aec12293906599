//! The `worker` binary's own command line: `worker` / `worker run` consumes, `worker migrate`
//! migrates. In the library so deployment checks can parse the commands the compose file runs,
//! and so the end-to-end tests run the same program under a name of their own.

use clap::{Parser, Subcommand};
use shared::settings::{Settings, WorkerSettings};

#[derive(Parser, Debug)]
#[command(name = "worker", version, about = "Applies queued payment webhooks to Postgres exactly once in effect")]
pub struct WorkerCli {
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCommand {
    /// Consume the work queue (the default).
    Run,
    /// Create the database if missing and apply migrations; safe to run concurrently.
    Migrate,
}

/// The `worker` binary: parses its command line and the settings, starts the logs, then
/// migrates or runs until SIGTERM / Ctrl-C.
pub async fn main() -> anyhow::Result<()> {
    let cli = WorkerCli::parse();
    let settings = WorkerSettings::load()?;
    let _logs = shared::telemetry::init(settings.service.log_format, "worker").map_err(anyhow::Error::msg)?;
    // Test hooks exist only in builds with `--features failpoints`; others never read FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match cli.command.unwrap_or(WorkerCommand::Run) {
        WorkerCommand::Migrate => crate::store::migrate::migrate(&settings.database).await,
        WorkerCommand::Run => {
            let worker = crate::Worker::build(settings).await?;
            worker.run(shared::shutdown::token_on_signal()).await;
            Ok(())
        }
    }
}
