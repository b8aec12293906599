//! `hookctl`: send signed test events, inspect and replay dead letters, trace an order.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = worker::cli::Cli::parse();
    if let Err(error) = worker::cli::run(cli).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
