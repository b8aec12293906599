//! `bench reconcile`: the catch-up of missed Stripe events by reconciliation, in one run:
//!
//! 1. catch-up alone: `--missed` paid `checkout.session.completed` events (about 1.5 KB each,
//!    100 to a second) in a fake Stripe events list (testkit's, in this process), none of them
//!    delivered; one worker (the release binary) started with `STRIPE_API_KEY` reconciles at
//!    start. Wall time until every one is applied, the list calls made, and CPU time per event of
//!    the worker, Postgres (the worker's backends and the server's background processes) and
//!    RabbitMQ, read from `/proc`;
//! 2. the same catch-up while live webhooks arrive at `--rate` a second (published as ingest
//!    publishes them), and 3. the same live traffic with nothing to catch up: the live events'
//!    lag (receipt to commit) in both, so the catch-up's cost to live traffic is a ratio on the
//!    same machine.
//!
//! Each run checks that every event was applied once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hdrhistogram::Histogram;
use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::topology::Topology;
use shared::verify::stripe::sign_stripe_payload;
use shared::Provider;

use crate::events::{session_completed, SECRET};
use crate::load::{broker_load, DirectPublish, Pace, SignedEvent};
use crate::procfs::{cpu_time, pid_listening_on, CpuMeter};
use crate::worker_bench::stage::{stage, Stage};
use crate::worker_bench::{build_binaries, postgres_background_pids, start_worker, total_cpu, worker_backend_pids};

const API_KEY: &str = "rk_test_bench_reconcile";

/// What `bench reconcile` is asked to do.
pub struct ReconcileBench {
    pub missed: usize,
    pub rate: u32,
    pub live_seconds: u64,
}

/// One measured run.
struct Run {
    wall: Duration,
    calls: usize,
    worker_us: f64,
    postgres_us: f64,
    rabbit_us: Option<f64>,
    lag: Option<Histogram<u64>>,
}

pub async fn run(bench: ReconcileBench) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench lives in the workspace").to_path_buf();
    let bins = build_binaries(&workspace)?;
    let logs = workspace.join("target/bench");
    std::fs::create_dir_all(&logs)?;
    let amqp_port = reqwest::Url::parse(&testkit::amqp_url())?.port().unwrap_or(5672);
    let beam = pid_listening_on(amqp_port);
    if beam.is_none() {
        eprintln!("note: the RabbitMQ process on port {amqp_port} is not visible; its CPU is not reported");
    }
    let live = bench.rate as usize * bench.live_seconds as usize;

    eprintln!("catching up {} missed events", bench.missed);
    let alone = catch_up(&bins.worker, &logs, bench.missed, 0, bench.rate, beam, "alone").await?;
    eprintln!("catching up {} missed events under {} live events/s", bench.missed, bench.rate);
    let loaded = catch_up(&bins.worker, &logs, bench.missed, live, bench.rate, beam, "under-load").await?;
    eprintln!("{} live events/s, nothing to catch up", bench.rate);
    let baseline = catch_up(&bins.worker, &logs, 0, live, bench.rate, beam, "baseline").await?;

    println!();
    println!(
        "reconcile: {} missed Stripe checkout.session.completed events (~1.5 KB) in a fake events list, one worker",
        bench.missed
    );
    println!("| run | wall time | list calls | events/s | worker µs/event | Postgres µs/event | RabbitMQ µs/event |");
    println!("|---|---|---|---|---|---|---|");
    for (name, run) in [("catch-up alone", &alone), (&*format!("catch-up with {}/s live", bench.rate), &loaded)] {
        let rabbit = run.rabbit_us.map_or("n/a".to_string(), |u| format!("{u:.0}"));
        println!(
            "| {name} | {:.2} s | {} | {:.0} | {:.0} | {:.0} | {rabbit} |",
            run.wall.as_secs_f64(),
            run.calls,
            bench.missed as f64 / run.wall.as_secs_f64(),
            run.worker_us,
            run.postgres_us,
        );
    }
    println!("(with live traffic, CPU per event counts the missed and the live events together)");
    if let (Some(with), Some(without)) = (&loaded.lag, &baseline.lag) {
        crate::report_latency(&format!("live lag at {}/s during the catch-up", bench.rate), with, "ms");
        crate::report_latency(&format!("live lag at {}/s, nothing to catch up", bench.rate), without, "ms");
        println!(
            "live p99 lag during the catch-up vs without: {:.2}x",
            with.value_at_quantile(0.99) as f64 / without.value_at_quantile(0.99).max(1) as f64
        );
    }
    Ok(())
}

/// One worker reconciling `missed` events while `live` webhooks arrive at `rate` a second.
async fn catch_up(
    bin: &Path,
    logs: &Path,
    missed: usize,
    live: usize,
    rate: u32,
    beam: Option<u32>,
    name: &str,
) -> anyhow::Result<Run> {
    let stage = stage(missed + live).await?;
    let api = testkit::FakeStripe::start(API_KEY).await;
    let base = Utc::now().timestamp() - 3 * 3600;
    for i in 0..missed {
        let body = session_completed(&format!("evt_rc_{i}"), &format!("ord{i}"));
        api.add_event(serde_json::from_slice(&body)?, base + (i / 100) as i64);
    }
    let now = Utc::now().timestamp();
    let signed: Arc<Vec<SignedEvent>> = Arc::new(
        (0..live)
            .map(|j| {
                let body = session_completed(&format!("evt_live_{j}"), &format!("ord{}", missed + j));
                let signature = sign_stripe_payload(&body, SECRET, now).parse().expect("ASCII header");
                SignedEvent { body: body.into(), signature }
            })
            .collect(),
    );

    let background = postgres_background_pids(&stage.sql).await?;
    let background_before = total_cpu(&background);
    let rabbit = CpuMeter::start(beam);
    let started = Instant::now();
    let vars = [
        ("LOG_FORMAT", "json".to_string()),
        ("STRIPE_API_KEY", API_KEY.to_string()),
        ("STRIPE_API_BASE", api.base()),
        // One run at start; nothing else reconciles during the measurement.
        ("RECONCILE_INTERVAL", "1h".to_string()),
    ];
    let worker = start_worker(bin, &stage, &vars, &logs.join(format!("worker-reconcile-{name}.log"))).await?;
    let live_load = (live > 0).then(|| {
        let stage_prefix = stage.topology.clone();
        let signed = signed.clone();
        tokio::spawn(async move { publish_live(&stage_prefix, signed, rate).await })
    });
    let expected = (missed + live) as i64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut caught_up = None;
    loop {
        let row = stage
            .sql
            .query_one(
                "SELECT count(*) FILTER (WHERE verification = 'fetched'), count(*) FROM webhook_events WHERE status = 'applied'",
                &[],
            )
            .await?;
        let (fetched, applied): (i64, i64) = (row.get(0), row.get(1));
        if caught_up.is_none() && fetched as usize >= missed {
            caught_up = Some(started.elapsed());
        }
        if applied >= expected {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {applied} of {expected} events applied in 30 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = caught_up.unwrap_or_default();
    if let Some(load) = live_load {
        load.await??;
    }
    let backends = worker_backend_pids(&stage).await?;
    let worker_cpu = worker.pid().and_then(cpu_time).unwrap_or_default();
    let postgres_cpu = total_cpu(&backends) + total_cpu(&background).saturating_sub(background_before);
    let rabbit_cpu = rabbit.elapsed();
    worker.stop().await;
    check(&stage, missed, live).await?;
    let lag = if live > 0 { Some(live_lag(&stage).await?) } else { None };
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / (missed + live).max(1) as f64;
    Ok(Run {
        wall,
        calls: api.requests().len(),
        worker_us: per_event(worker_cpu),
        postgres_us: per_event(postgres_cpu),
        rabbit_us: rabbit_cpu.map(per_event),
        lag,
    })
}

/// Publishes the live events at `rate` a second as ingest publishes them.
async fn publish_live(topology: &Topology, signed: Arc<Vec<SignedEvent>>, rate: u32) -> anyhow::Result<()> {
    let connection = Connection::connect(
        &testkit::amqp_url(),
        ConnectionProperties::default().with_connection_name("bench-live".into()),
    )
    .await?;
    let mut channels = Vec::new();
    for _ in 0..2 {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(channel);
    }
    let bodies = signed.clone();
    let properties = Arc::new(move |i: usize| {
        let event = &bodies[i];
        EventEnvelope {
            provider: Provider::Stripe,
            event_type: "checkout.session.completed".into(),
            event_key: format!("evt_live_{i}"),
            verification: IngestVerification::Signature,
            received_at: Utc::now(),
            request_id: uuid::Uuid::new_v4().to_string(),
            attempt: 0,
            delivery_headers: [("stripe-signature".to_string(), event.signature.to_str().unwrap_or("").to_string())]
                .into_iter()
                .collect(),
            body: Vec::new(),
        }
        .properties()
    });
    let target = Arc::new(DirectPublish {
        channels,
        exchange: topology.events_exchange(),
        routing_key: Topology::routing_key("stripe", "checkout.session.completed"),
        properties,
    });
    let result = broker_load(target, signed, 16, Pace::Rate(f64::from(rate))).await?;
    let _ = connection.close(200, "published".into()).await;
    anyhow::ensure!(result.failed == 0, "{} live events could not be queued", result.failed);
    Ok(())
}

/// Every event applied once (a publish tried again may have queued a copy, recorded as a
/// duplicate): the missed ones `fetched`, the live ones `signature`; one notification each.
async fn check(stage: &Stage, missed: usize, live: usize) -> anyhow::Result<()> {
    let row = stage
        .sql
        .query_one(
            "SELECT count(*) FILTER (WHERE verification = 'fetched'), count(*) FILTER (WHERE verification = 'signature'),
                    (SELECT count(*) FROM payments WHERE payment_status = 'paid'),
                    (SELECT count(*) FROM notifications)
               FROM webhook_events WHERE status = 'applied'",
            &[],
        )
        .await?;
    let (fetched, signed, paid, notified): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let total = (missed + live) as i64;
    anyhow::ensure!(
        fetched == missed as i64 && signed == live as i64 && paid == total && notified == total,
        "applied {fetched} fetched + {signed} signed, {paid} paid, {notified} notifications; expected {missed} + {live}"
    );
    Ok(())
}

/// Receipt to commit of the live events.
async fn live_lag(stage: &Stage) -> anyhow::Result<Histogram<u64>> {
    let rows = stage
        .sql
        .query(
            "SELECT (extract(epoch FROM processed_at - received_at) * 1000000)::bigint FROM webhook_events
              WHERE status = 'applied' AND verification = 'signature'",
            &[],
        )
        .await?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for row in rows {
        lag.record(row.get::<_, i64>(0).max(1) as u64)?;
    }
    Ok(lag)
}
