//! The `hookctl` binary under a name of its own, for the end-to-end tests (see Cargo.toml).

#[tokio::main]
async fn main() {
    hookctl::cli::main().await
}
