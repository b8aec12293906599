//! `worker`: consumes queued webhooks (`worker` or `worker run`), or migrates the database
//! (`worker migrate`).

use clap::{Parser, Subcommand};
use shared::{shutdown, telemetry, Settings};

#[derive(Parser)]
#[command(version, about = "Applies queued payment webhooks to Postgres exactly once in effect")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the work queue (the default).
    Run,
    /// Create the database if missing and apply migrations; safe to run concurrently.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    telemetry::init(settings.log_format);
    // Test hooks exist only in builds with `--features failpoints`; others never read FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => worker::migrate::migrate(&settings).await,
        Command::Run => {
            let worker = worker::Worker::build(settings).await?;
            worker.run(shutdown::token_on_signal()).await;
            Ok(())
        }
    }
}
