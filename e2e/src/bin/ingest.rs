//! The `ingest` binary under a name of its own, for the end-to-end tests (see Cargo.toml).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ingest::main().await
}
