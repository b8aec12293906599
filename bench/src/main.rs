//! Benchmarks against the real PostgreSQL and RabbitMQ (found like the tests find them, through
//! `TEST_DATABASE_URL` and `TEST_AMQP_URL`), each run in a database and AMQP prefix of its own.
//!
//! - `bench ingest` ([`ingest_bench`]): the broker-only ceiling, ingest (the release binary, in a
//!   process of its own) and the inline Node peer, at one concurrency in one run; throughput
//!   ratios, CPU per request from `/proc`, peak memory, latency at full load and at half of
//!   ingest's maximum rate;
//! - `bench broker` ([`broker_bench`]): what the broker costs per confirmed message behind
//!   ingest, quorum against classic (version 2) queues and ingest's publishing against one
//!   channel, a channel per publish and coalesced writes, side by side in one run;
//! - `bench worker` ([`worker_bench`]): a queued backlog drained by one worker (the release
//!   binary) with batch size 1 and the default, against the inline peer; throughput, CPU per
//!   event of the worker, Postgres and RabbitMQ, memory, and lag at a steady rate;
//! - `bench pipeline` ([`pipeline`]): ingest and one worker at once under signed load at fixed
//!   rates stepped up until the lag passes a second, against the inline peer stepped the same
//!   way; answered rate, answer latency, end-to-end lag and CPU per event of every process;
//! - `bench reconcile` ([`reconcile_bench`]): the catch-up of missed Stripe events from a fake
//!   events list by one worker: wall time, CPU per event of the worker, Postgres and RabbitMQ,
//!   and the lag of live webhooks during the catch-up against the same traffic without it;
//! - `bench soak` ([`soak`]): the pipeline as processes under steady load for a long time, a
//!   worker killed every few minutes; memory, lag per minute and the exactly-once invariant.
//!
//! Run with `cargo run --release -p bench -- ingest` (or `broker`, `worker`, `pipeline`, `reconcile`, or `soak`).

// `json!` of a whole Checkout Session nests deeper than the default macro recursion limit.
#![recursion_limit = "256"]

mod broker_bench;
mod events;
mod ingest_bench;
mod load;
mod peer;
mod pipeline;
mod process;
mod procfs;
mod reconcile_bench;
mod soak;
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
    /// The broker alone: quorum against classic (version 2) queues, and ingest's publishing
    /// against other channel layouts and coalesced writes (throughput, CPU per confirmed message
    /// of RabbitMQ and the publisher, socket writes each way).
    Broker {
        /// Messages per variant and round.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Concurrent publishing tasks, each awaiting its message's confirm (ingest's requests).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Measured rounds; each runs every variant once, in a rotated order.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// One worker draining a queued backlog (batch size 1 and the default) against the inline
    /// peer (throughput, CPU per event, memory), and the end-to-end lag at a steady rate.
    Worker {
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Batch sizes to drain with, in order (`default` is the worker's default).
        #[arg(long, value_delimiter = ',', default_value = "1,default")]
        batch_sizes: Vec<String>,
        /// Skip the inline Node peer (it needs `node` and `npm`).
        #[arg(long)]
        no_peer: bool,
        /// Events posted through ingest in the lag phase.
        #[arg(long, default_value_t = 4000)]
        lag_events: usize,
        /// Events per second in the lag phase (keep it under the drain throughput, or the lag
        /// measures the queue building up).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// The worker's LOG_FORMAT; production runs `json`.
        #[arg(long, default_value = "json")]
        log_format: String,
        /// Also drain with the default batch size over TLS to Postgres (`sslmode=require`; the
        /// server must offer TLS), to compare with the drain in clear.
        #[arg(long)]
        tls: bool,
    },
    /// Ingest and one worker at once under signed load at fixed rates (open loop), stepped up
    /// until the end-to-end lag's p99 passes 1 s; the inline peer stepped the same way.
    Pipeline {
        /// Events per second of each step, in order; the steps stop at the first whose lag p99
        /// passes 1 s (or that is not answered).
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,3000,4000,5000,6000,7000,8000,10000")]
        rates: Vec<u32>,
        /// Events per second of each step of the inline peer; they stop at the first whose
        /// answer p99 passes 1 s.
        #[arg(long, value_delimiter = ',', default_value = "500,1000,1500,2000,2500,3000,3500,4000")]
        route_rates: Vec<u32>,
        /// Seconds each step lasts.
        #[arg(long, default_value_t = 60)]
        step_secs: u64,
        /// Keep-alive connections of the load generator (enough that it never waits for one).
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// Skip the inline Node peer (it needs `node` and `npm`).
        #[arg(long)]
        no_peer: bool,
        /// LOG_FORMAT of ingest and the worker; production runs `json`.
        #[arg(long, default_value = "json")]
        log_format: String,
        /// Extra environment for the ingest process (`NAME=value`, repeatable).
        #[arg(long = "ingest-env")]
        ingest_env: Vec<String>,
        /// Extra environment for the worker process (`NAME=value`, repeatable).
        #[arg(long = "worker-env")]
        worker_env: Vec<String>,
    },
    /// One worker catching up missed Stripe events from a fake events list (wall time, CPU per
    /// event), and the lag of live webhooks meanwhile against the same traffic without it.
    Reconcile {
        /// Missed events in the fake Stripe events list.
        #[arg(long, default_value_t = 10_000)]
        missed: usize,
        /// Live webhooks per second during the catch-up.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// How long the live traffic lasts.
        #[arg(long, default_value_t = 20)]
        live_seconds: u64,
    },
    /// Steady signed load on ingest and worker processes for a long time, one worker killed
    /// (SIGKILL) and restarted every few minutes. Needs the release binaries: `cargo build
    /// --release --bin ingest --bin worker`.
    Soak {
        /// How long the load lasts.
        #[arg(long, default_value = "30m", value_parser = shared::settings::parse_duration)]
        duration: std::time::Duration,
        /// Signed events per second; about half of what the workers drain (see `bench worker`).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// A worker is killed this often, in turn.
        #[arg(long, default_value = "3m", value_parser = shared::settings::parse_duration)]
        kill_every: std::time::Duration,
        /// Where the ingest and worker binaries are (default: next to this one).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest { requests, concurrency, no_peer, log_format, ingest_env } => {
            let bench = ingest_bench::IngestBench { requests, concurrency, peer: !no_peer, log_format, ingest_env };
            ingest_bench::run(bench).await
        }
        Command::Broker { messages, concurrency, rounds } => {
            let bench = broker_bench::BrokerBench {
                messages: messages.max(1),
                concurrency: concurrency.max(1),
                rounds: rounds.max(1),
            };
            broker_bench::run(bench).await
        }
        Command::Reconcile { missed, rate, live_seconds } => {
            reconcile_bench::run(reconcile_bench::ReconcileBench { missed, rate, live_seconds }).await
        }
        Command::Worker { events, batch_sizes, no_peer, lag_events, rate, log_format, tls } => {
            let batch_sizes = batch_sizes
                .iter()
                .map(|b| match b.as_str() {
                    "default" => Ok(None),
                    n => n.parse().map(Some).map_err(|_| anyhow::anyhow!("--batch-sizes: {n:?} is not a size")),
                })
                .collect::<anyhow::Result<_>>()?;
            let bench =
                worker_bench::WorkerBench { events, batch_sizes, peer: !no_peer, lag_events, rate, log_format, tls };
            worker_bench::run(bench).await
        }
        Command::Pipeline {
            rates,
            route_rates,
            step_secs,
            connections,
            no_peer,
            log_format,
            ingest_env,
            worker_env,
        } => {
            let bench = pipeline::PipelineBench {
                rates,
                route_rates,
                step: std::time::Duration::from_secs(step_secs.max(1)),
                connections: connections.max(1),
                peer: !no_peer,
                log_format,
                ingest_env,
                worker_env,
            };
            // Interrupted, the run is dropped: its processes killed, databases and queues deleted.
            tokio::select! {
                result = pipeline::run(bench) => result,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            }
        }
        Command::Soak { duration, rate, workers, kill_every, bin_dir } => {
            soak::run(soak::SoakOptions { duration, rate, workers: workers.max(1), kill_every, bin_dir }).await
        }
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
