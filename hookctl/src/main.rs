//! `hookctl`: send signed test events, inspect and replay dead letters, trace an order.

#[tokio::main]
async fn main() {
    hookctl::cli::main().await
}
