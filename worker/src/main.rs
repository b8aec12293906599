//! `worker`: consumes queued webhooks (`worker` or `worker run`), or migrates the database
//! (`worker migrate`). Everything is in the library: [`worker::cli::main`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worker::cli::main().await
}
