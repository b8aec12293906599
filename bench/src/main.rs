//! Benchmarks against the real PostgreSQL and RabbitMQ (found like the tests find them, through
//! `TEST_DATABASE_URL` and `TEST_AMQP_URL`), each run in a database and AMQP prefix of its own.
//!
//! - `bench ingest`: signed Stripe events posted by concurrent clients to an ingest; latency
//!   until the `200` (which includes the publisher confirm) and throughput;
//! - `bench worker`: events queued ahead, then one worker started; throughput until every
//!   payment is paid, and lag from receipt to application;
//! - `bench soak`: the pipeline as processes under steady load for a long time, a worker
//!   killed every few minutes; memory, lag per minute and the exactly-once invariant (`soak`).
//!
//! Run with `cargo run --release -p bench -- ingest` (or `worker`, or `soak`).

mod soak;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Benchmarks of the webhook pipeline against local PostgreSQL and RabbitMQ")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Latency and throughput of ingest (verify, publish, confirm, answer).
    Ingest {
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
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
        Command::Ingest { requests, concurrency } => bench_ingest(requests, concurrency).await,
        Command::Worker { events, concurrency, rate } => bench_worker(events, concurrency, rate).await,
        Command::Soak { duration, rate, workers, kill_every, bin_dir } => {
            soak::run(soak::SoakOptions { duration, rate, workers: workers.max(1), kill_every, bin_dir }).await
        }
    }
}

fn report(name: &str, histogram: &Histogram<u64>, unit: &str) {
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

async fn bench_ingest(requests: usize, concurrency: usize) -> anyhow::Result<()> {
    let broker = testkit::TestBroker::new().await;
    let settings = broker.settings(None, &[("MAX_INFLIGHT_REQUESTS", "100000")]);
    let ingest = ingest::Ingest::build(settings).await?;
    let url = format!("http://{}{}", ingest.local_addr(), ingest::STRIPE_ROUTE);
    let stop = CancellationToken::new();
    let server = tokio::spawn(ingest.run(stop.clone()));
    let client = reqwest::Client::new();
    let ready = url.replace(ingest::STRIPE_ROUTE, "/readyz");
    testkit::eventually("ingest ready", Duration::from_secs(20), || async {
        client.get(&ready).send().await.ok()?.status().is_success().then_some(())
    })
    .await;

    // Bodies and signatures are prepared up front so only ingest is measured.
    let bodies: Vec<(Vec<u8>, String)> = (0..requests)
        .map(|i| {
            let body = shared::samples::stripe_session_event(
                &format!("evt_bench_{i}"),
                "checkout.session.completed",
                "bench",
                "paid",
                3000,
                "usd",
            );
            let signature = testkit::events::stripe_signature(&body, testkit::events::STRIPE_SECRET);
            (body, signature)
        })
        .collect();
    let queue = Arc::new(Mutex::new(bodies));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (queue, histogram, client, url) = (queue.clone(), histogram.clone(), client.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let Some((body, signature)) = queue.lock().await.pop() else { break };
                let sent = Instant::now();
                let response = client.post(&url).header("stripe-signature", signature).body(body).send().await;
                let micros = sent.elapsed().as_micros() as u64;
                match response {
                    Ok(r) if r.status().is_success() => histogram.lock().await.record(micros.max(1)).unwrap(),
                    _ => failures += 1,
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for c in clients {
        failures += c.await?;
    }
    let elapsed = started.elapsed();
    println!("ingest: {requests} signed Stripe events, {concurrency} concurrent clients, {failures} failed");
    println!(
        "throughput: {:.0} requests/s over {:.2} s",
        requests as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    report("latency until 200 (after the publisher confirm)", &*histogram.lock().await, "ms");
    stop.cancel();
    server.await?;
    Ok(())
}

async fn bench_worker(events: usize, concurrency: usize, rate: u32) -> anyhow::Result<()> {
    let db = testkit::TestDb::create().await;
    let broker = testkit::TestBroker::new().await;
    let concurrency_text = concurrency.to_string();
    let settings =
        broker.settings(Some(&db.url), &[("WORKER_CONCURRENCY", &concurrency_text), ("WORKER_PREFETCH", "64")]);
    worker::migrate::migrate(&settings).await?;
    let sql = db.client().await;
    sql.batch_execute(&format!(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {events}) RETURNING id)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT 'bench-' || row_number() OVER (), id, 'stripe', 3000, 'usd' FROM b"
    ))
    .await?;

    let ingest = ingest::Ingest::build(settings.clone()).await?;
    let url = format!("http://{}{}", ingest.local_addr(), ingest::STRIPE_ROUTE);
    let stop_ingest = CancellationToken::new();
    let server = tokio::spawn(ingest.run(stop_ingest.clone()));
    let client = reqwest::Client::new();
    testkit::eventually("ingest ready", Duration::from_secs(20), || async {
        client.get(url.replace(ingest::STRIPE_ROUTE, "/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let post = {
        let (client, url) = (client.clone(), url.clone());
        move |i: usize| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body = shared::samples::stripe_session_event(
                    &format!("evt_wb_{i}"),
                    "checkout.session.completed",
                    &format!("bench-{i}"),
                    "paid",
                    3000,
                    "usd",
                );
                let signature = testkit::events::stripe_signature(&body, testkit::events::STRIPE_SECRET);
                let status = client.post(&url).header("stripe-signature", signature).body(body).send().await?.status();
                anyhow::ensure!(status.is_success(), "ingest answered {status}");
                Ok(())
            }
        }
    };
    let paid = |expected: usize| {
        let sql = &sql;
        async move {
            testkit::eventually("payments paid", Duration::from_secs(600), || async {
                let paid: i64 = sql
                    .query_one("SELECT count(*) FROM payments WHERE payment_status = 'paid'", &[])
                    .await
                    .ok()?
                    .get(0);
                (paid as usize >= expected).then_some(())
            })
            .await
        }
    };

    // Phase 1: the first half queued ahead, then the worker drains a full queue.
    let half = events / 2;
    for i in 1..=half {
        post(i).await?;
    }
    let worker = worker::Worker::build(settings).await?;
    let deps = worker.deps();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(stop.clone()));
    paid(half).await;
    let drained = started.elapsed();
    let processing = deps.metrics.processing.with_label_values(&["stripe"]);
    let mean_ms = processing.get_sample_sum() / processing.get_sample_count().max(1) as f64 * 1000.0;

    // Phase 2: the second half posted at a steady `rate` while the worker runs; the lag of
    // each event is ingest's receipt to the worker's commit.
    let mut pace = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut senders = Vec::new();
    for i in half + 1..=events {
        pace.tick().await;
        senders.push(tokio::spawn(post(i)));
    }
    for s in senders {
        s.await??;
    }
    paid(events).await;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let streamed: Vec<String> = (half + 1..=events).map(|i| format!("evt_wb_{i}")).collect();
    let rows = sql
        .query(
            "SELECT (extract(epoch FROM processed_at - received_at) * 1000000)::bigint FROM webhook_events
              WHERE status = 'applied' AND event_key = ANY($1)",
            &[&streamed],
        )
        .await?;
    for row in rows {
        let micros: i64 = row.get(0);
        lag.record(micros.max(1) as u64)?;
    }
    stop.cancel();
    running.await?;
    stop_ingest.cancel();
    server.await?;

    println!("worker: {events} events, concurrency {concurrency}, lag phase at {rate} events/s");
    println!(
        "drain: {half} queued events applied in {:.2} s = {:.0} events/s (each: inbox, row lock, update, notification, outbox, commit, ack); mean {mean_ms:.2} ms per delivery",
        drained.as_secs_f64(),
        half as f64 / drained.as_secs_f64()
    );
    report("end-to-end lag while streaming (ingest receipt to worker commit)", &lag, "ms");
    Ok(())
}
