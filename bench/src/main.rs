//! Benchmarks against the real PostgreSQL and RabbitMQ (found like the tests find them, through
//! `TEST_DATABASE_URL` and `TEST_AMQP_URL`), each run in a database and AMQP prefix of its own.
//!
//! - `bench ingest` ([`ingest_bench`]): the broker-only ceiling, ingest (the release binary, in a
//!   process of its own) and the inline Node peer, at one concurrency in one run; throughput
//!   ratios, CPU per request from `/proc`, peak memory, latency at full load and at half of
//!   ingest's maximum rate;
//! - `bench worker` ([`worker_bench`]): events queued ahead, then one worker started; throughput
//!   until every payment is paid, and lag from receipt to application.
//!
//! Run with `cargo run --release -p bench -- ingest` (or `worker`).

// `json!` of a whole Checkout Session nests deeper than the default macro recursion limit.
#![recursion_limit = "256"]

mod events;
mod ingest_bench;
mod load;
mod peer;
mod procfs;
mod worker_bench;

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(about = "Benchmarks of the webhook pipeline against local PostgreSQL and RabbitMQ")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest against the broker-only ceiling and the inline peer (throughput, CPU, memory, latency).
    Ingest {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Keep-alive connections (and, for the ceiling, publishing tasks).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Skip the inline Node peer (it needs `node` and `npm`).
        #[arg(long)]
        no_peer: bool,
        /// Ingest's LOG_FORMAT; production runs `json`.
        #[arg(long, default_value = "json")]
        log_format: String,
        /// Extra environment for the ingest process (`NAME=value`, repeatable), to compare settings.
        #[arg(long = "ingest-env")]
        ingest_env: Vec<String>,
    },
    /// Throughput of one worker and the lag of each event.
    Worker {
        #[arg(long, default_value_t = 2000)]
        events: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Events per second posted in the lag phase (keep it under the drain throughput, or
        /// the lag measures the queue building up).
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest { requests, concurrency, no_peer, log_format, ingest_env } => {
            let bench = ingest_bench::IngestBench { requests, concurrency, peer: !no_peer, log_format, ingest_env };
            ingest_bench::run(bench).await
        }
        Command::Worker { events, concurrency, rate } => worker_bench::bench_worker(events, concurrency, rate).await,
    }
}

/// Prints one latency histogram recorded in microseconds.
pub fn report_latency(name: &str, histogram: &Histogram<u64>, unit: &str) {
    println!(
        "{name}: p50 {:.2} {unit}, p90 {:.2} {unit}, p99 {:.2} {unit}, p99.9 {:.2} {unit}, max {:.2} {unit} ({} samples)",
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.90) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.value_at_quantile(0.999) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
}
