//! `ingest`: answers provider webhooks once they are durably queued. Everything is in the
//! library: [`ingest::main`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ingest::main().await
}
