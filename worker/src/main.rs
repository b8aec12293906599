//! `worker`: consumes queued webhooks (`worker` or `worker run`), or migrates the database
//! (`worker migrate`).

use clap::Parser;
use shared::{shutdown, telemetry, Settings};
use worker::cli::{WorkerCli, WorkerCommand as Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = WorkerCli::parse();
    let settings = Settings::load()?;
    let _logs = telemetry::init(settings.log_format, "worker").map_err(anyhow::Error::msg)?;
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
