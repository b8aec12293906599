//! `ingest`: answers provider webhooks once they are durably queued.

use shared::{shutdown, telemetry, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _logs = telemetry::init(settings.log_format, "ingest").map_err(anyhow::Error::msg)?;
    let ingest = ingest::Ingest::build(settings).await?;
    ingest.run(shutdown::token_on_signal()).await;
    Ok(())
}
