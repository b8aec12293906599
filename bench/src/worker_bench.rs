//! `bench worker`: in one run,
//! 1. drains: a backlog of signed Stripe `checkout.session.completed` events (ingest's exact
//!    messages) queued ahead for existing payments, then one worker (the release binary, in a
//!    process of its own) started, once with `WORKER_BATCH_SIZE=1` and once with the default;
//!    events/s until every event is applied, CPU time per event of the worker, of Postgres (the
//!    worker's backends and the server's own background processes) and of RabbitMQ, read from
//!    `/proc` before and after, and the worker's peak RSS; each drain is verified (every payment
//!    paid once by its own event, one notification each, outbox empty);
//! 2. the inline Node peer on the same number of events, side by side;
//! 3. the end-to-end lag (ingest's receipt to the worker's commit) at a steady rate through
//!    ingest, with the default batch size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio_postgres::Client;

use crate::load::{http_load, Pace};
use crate::process::{start_ingest, ServiceProcess};
use crate::procfs::{cpu_time, pid_listening_on, status_kib, CpuMeter};
use crate::{events, peer};

pub(crate) mod stage;

use self::stage::{fill, stage, verify, Stage};

/// What `bench worker` is asked to do.
pub struct WorkerBench {
    pub events: usize,
    /// Batch sizes to drain with; `None` is the default.
    pub batch_sizes: Vec<Option<usize>>,
    pub peer: bool,
    pub lag_events: usize,
    pub rate: u32,
    /// `LOG_FORMAT` of the worker; production runs `json`.
    pub log_format: String,
    /// Also drain over TLS to Postgres.
    pub tls: bool,
}

/// One measured drain.
struct Drain {
    name: String,
    events: usize,
    elapsed: Duration,
    worker_us: f64,
    postgres_us: f64,
    rabbit_us: Option<f64>,
    peak_rss_kib: u64,
    mean_batch: f64,
}

impl Drain {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(bench: WorkerBench) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench lives in the workspace").to_path_buf();
    let bins = build_binaries(&workspace)?;
    let logs = workspace.join("target/bench");
    std::fs::create_dir_all(&logs)?;
    let amqp_port = reqwest::Url::parse(&testkit::amqp_url())?.port().unwrap_or(5672);
    let beam = pid_listening_on(amqp_port);
    if beam.is_none() {
        eprintln!("note: the RabbitMQ process on port {amqp_port} is not visible; its CPU is not reported");
    }
    let signed = events::signed_batch("wb", bench.events);

    let mut drains = Vec::new();
    for batch in &bench.batch_sizes {
        let name = batch.map_or("default batch size".to_string(), |n| format!("batch size {n}"));
        eprintln!("draining {} events, {name}", bench.events);
        let how = How { name, batch_size: *batch, tls: false };
        drains.push(drain(&bins.worker, &logs, &signed, &how, beam, &bench.log_format).await?);
    }
    let tls = if bench.tls {
        eprintln!("draining {} events, default batch size, Postgres over TLS", bench.events);
        let how = How { name: "default batch size over TLS".into(), batch_size: None, tls: true };
        Some(drain(&bins.worker, &logs, &signed, &how, beam, &bench.log_format).await?)
    } else {
        None
    };
    let plain = bench.batch_sizes.iter().position(Option::is_none).map(|i| &drains[i]);
    let tls_vs_plain = tls.as_ref().zip(plain).map(|(tls, plain)| {
        format!(
            "default batch over TLS vs in clear: {:.2}x the throughput, {:.0} vs {:.0} us of worker + Postgres CPU per event",
            tls.per_second() / plain.per_second(),
            tls.worker_us + tls.postgres_us,
            plain.worker_us + plain.postgres_us
        )
    });
    drains.extend(tls);

    let peer = if bench.peer {
        eprintln!("posting {} events to the inline peer", bench.events);
        Some(run_peer(&workspace, &signed).await?)
    } else {
        None
    };

    eprintln!("streaming {} events through ingest at {}/s", bench.lag_events, bench.rate);
    let lag = lag_phase(&bins, &logs, bench.lag_events, bench.rate, &bench.log_format).await?;

    println!();
    println!(
        "worker: {} signed Stripe checkout.session.completed events (~1.5 KB) queued ahead, one worker",
        bench.events
    );
    println!("| run | events/s | worker µs/event | Postgres µs/event | RabbitMQ µs/event | total µs/event | peak RSS | mean batch |");
    println!("|---|---|---|---|---|---|---|---|");
    for d in &drains {
        let rabbit = d.rabbit_us.map_or("n/a".to_string(), |u| format!("{u:.0}"));
        let total = d.worker_us + d.postgres_us + d.rabbit_us.unwrap_or(0.0);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {rabbit} | {total:.0} | {:.1} MiB | {:.1} |",
            d.name,
            d.per_second(),
            d.worker_us,
            d.postgres_us,
            d.peak_rss_kib as f64 / 1024.0,
            d.mean_batch
        );
    }
    if let Some(p) = &peer {
        println!(
            "| inline peer (Node, {} connections) | {:.0} | node {:.0} | {:.0} | — | {:.0} | {:.1} MiB | — |",
            PEER_CONNECTIONS,
            p.per_second,
            p.node_us,
            p.postgres_us,
            p.node_us + p.postgres_us,
            p.peak_rss_kib as f64 / 1024.0
        );
    }
    println!();
    let one = bench.batch_sizes.iter().position(|b| *b == Some(1)).map(|i| &drains[i]);
    let default = bench.batch_sizes.iter().position(Option::is_none).map(|i| &drains[i]);
    if let (Some(one), Some(default)) = (one, default) {
        println!("default batch vs batch size 1: {:.2}x", default.per_second() / one.per_second());
    }
    if let Some(p) = &peer {
        for d in &drains {
            println!("{} vs the inline peer: {:.2}x", d.name, d.per_second() / p.per_second);
        }
    }
    if let Some(line) = tls_vs_plain {
        println!("{line}");
    }
    crate::report_latency(
        &format!("end-to-end lag at {}/s through ingest (receipt to commit)", bench.rate),
        &lag,
        "ms",
    );
    Ok(())
}

pub(crate) struct Binaries {
    pub(crate) worker: PathBuf,
    pub(crate) ingest: PathBuf,
}

/// Builds the release binaries (so the benchmark never measures stale ones).
pub(crate) fn build_binaries(workspace: &Path) -> anyhow::Result<Binaries> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "worker", "--bin", "worker", "-p", "ingest", "--bin", "ingest"])
        .current_dir(workspace)
        .status()
        .context("cargo build --release")?;
    anyhow::ensure!(status.success(), "building the binaries failed");
    let dir = std::env::current_exe()?.parent().expect("the benchmark binary is in a directory").to_path_buf();
    Ok(Binaries { worker: dir.join("worker"), ingest: dir.join("ingest") })
}

/// The database URL with `sslmode` set to `mode` unless it sets one. The worker and the inline
/// peer (whose `pg` pool does not use TLS) are compared on the same plain loopback connections
/// (`disable`), not on who encrypts; `--tls` adds a drain with `require`.
fn with_sslmode(url: &str, mode: &str) -> String {
    if url.contains("sslmode=") {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode={mode}")
}

/// How a drain runs: its name in the report, the batch size (`None`: the worker's default),
/// and whether the worker talks to Postgres over TLS.
struct How {
    name: String,
    batch_size: Option<usize>,
    tls: bool,
}

async fn drain(
    bin: &Path,
    logs: &Path,
    signed: &Arc<Vec<crate::load::SignedEvent>>,
    how: &How,
    beam: Option<u32>,
    log_format: &str,
) -> anyhow::Result<Drain> {
    let name = &how.name;
    let stage = stage(signed.len()).await?;
    fill(&stage, signed).await?;
    let log = logs.join(format!("worker-{}.log", name.replace(' ', "-")));
    let mut vars = vec![("LOG_FORMAT", log_format.to_string())];
    if how.tls {
        vars.push(("DATABASE_URL", with_sslmode(&stage.db.url, "require")));
    }
    if let Some(size) = how.batch_size {
        vars.push(("WORKER_BATCH_SIZE", size.to_string()));
    }
    let background = postgres_background_pids(&stage.sql).await?;
    let background_before = total_cpu(&background);
    let rabbit = CpuMeter::start(beam);
    let started = Instant::now();
    let worker = start_worker(bin, &stage, &vars, &log).await?;
    let backends = testkit::eventually("the worker's database connections", Duration::from_secs(30), || async {
        let pids = worker_backend_pids(&stage).await.ok()?;
        (!pids.is_empty()).then_some(pids)
    })
    .await;
    let applied = wait_applied(&worker, signed.len()).await?;
    let elapsed = started.elapsed();
    // Connections opened later (the pool grows on demand) are counted too.
    let backends = {
        let mut all = backends;
        all.extend(worker_backend_pids(&stage).await?);
        all.sort_unstable();
        all.dedup();
        all
    };
    let worker_cpu = worker.pid().and_then(cpu_time).unwrap_or_default();
    let postgres_cpu = total_cpu(&backends) + total_cpu(&background).saturating_sub(background_before);
    let rabbit_cpu = rabbit.elapsed();
    let peak_rss_kib = worker.pid().and_then(|p| status_kib(p, "VmHWM")).unwrap_or(0);
    let (batches, batched) = applied.batches;
    worker.stop().await;
    verify(&stage, signed.len()).await?;
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / signed.len() as f64;
    Ok(Drain {
        name: name.to_string(),
        events: signed.len(),
        elapsed,
        worker_us: per_event(worker_cpu),
        postgres_us: per_event(postgres_cpu),
        rabbit_us: rabbit_cpu.map(per_event),
        peak_rss_kib,
        mean_batch: if batches > 0.0 { batched / batches } else { 0.0 },
    })
}

pub(crate) fn total_cpu(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| cpu_time(*p)).sum()
}

/// The Postgres server's own processes (WAL writer, checkpointer, background writer, ...): they
/// do work on behalf of every client.
pub(crate) async fn postgres_background_pids(sql: &Client) -> anyhow::Result<Vec<u32>> {
    let rows = sql.query("SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'", &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

/// The backends serving the worker's pool.
pub(crate) async fn worker_backend_pids(stage: &Stage) -> anyhow::Result<Vec<u32>> {
    let rows = stage
        .sql
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'webhooks-worker'",
            &[&stage.db.name],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

pub(crate) struct Applied {
    /// (batches, deliveries in them) from `worker_batch_size`.
    batches: (f64, f64),
}

/// Polls the worker's metrics until `expected` events are applied.
pub(crate) async fn wait_applied(worker: &ServiceProcess, expected: usize) -> anyhow::Result<Applied> {
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", worker.addr);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let text = client.get(&url).send().await?.text().await?;
        let applied = metric_sum(&text, "worker_events_total{", Some("outcome=\"applied\""));
        if applied as usize >= expected {
            let batches = metric_sum(&text, "worker_batch_size_count", None);
            let batched = metric_sum(&text, "worker_batch_size_sum", None);
            return Ok(Applied { batches: (batches, batched) });
        }
        anyhow::ensure!(Instant::now() < deadline, "only {applied} of {expected} events applied in 30 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of the samples of a metric in Prometheus text (optionally only those with `label`).
pub(crate) fn metric_sum(text: &str, prefix: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && label.is_none_or(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The worker's log filter, as in production; `BENCH_WORKER_LOG` overrides it (e.g.
/// `info,worker::pipeline::process=debug` for the timing of every batch).
const DEFAULT_FILTER: &str = shared::telemetry::DEFAULT_FILTER;

/// The worker binary on the stage's database and prefix, with `vars` on top, logging to `log`;
/// started once it answers `/healthz`.
pub(crate) async fn start_worker(
    bin: &Path,
    stage: &Stage,
    vars: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<ServiceProcess> {
    let filter = std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| DEFAULT_FILTER.into());
    let mut all = vec![
        ("DATABASE_URL", with_sslmode(&stage.db.url, "disable")),
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", stage.broker.prefix.clone()),
        ("RUST_LOG", filter),
        // The worker checks every event's signature again.
        ("STRIPE_WEBHOOK_SECRET", crate::events::SECRET.to_string()),
    ];
    all.extend_from_slice(vars);
    ServiceProcess::start(bin, "WORKER_ADDR", &all, log, "/healthz").await
}

/// Connections the inline peer is driven with (its pool holds 16).
const PEER_CONNECTIONS: usize = 64;

struct PeerRun {
    per_second: f64,
    node_us: f64,
    postgres_us: f64,
    peak_rss_kib: u64,
}

async fn run_peer(workspace: &Path, signed: &Arc<Vec<crate::load::SignedEvent>>) -> anyhow::Result<PeerRun> {
    let peer =
        peer::InlinePeer::start(&peer::default_source(workspace), &workspace.join("target"), signed.len()).await?;
    let admin = testkit::db::connect(&testkit::admin_database_url()).await;
    let background = postgres_background_pids(&admin).await?;
    let background_before = total_cpu(&background);
    let node_before = peer.pid().and_then(cpu_time).unwrap_or_default();
    let result = http_load(peer.addr, "/api/webhooks/stripe", signed.clone(), PEER_CONNECTIONS, Pace::Closed).await?;
    let backends: Vec<u32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            &[&peer.database()],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect();
    let node_cpu = peer.pid().and_then(cpu_time).unwrap_or_default().saturating_sub(node_before);
    let postgres_cpu = total_cpu(&backends) + total_cpu(&background).saturating_sub(background_before);
    let peak_rss_kib = peer.pid().and_then(|p| status_kib(p, "VmHWM")).unwrap_or(0);
    anyhow::ensure!(result.failed == 0, "the inline peer failed {} requests", result.failed);
    let paid = peer.paid().await?;
    anyhow::ensure!(paid == signed.len() as i64, "the inline peer paid {paid} of {} payments", signed.len());
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / signed.len() as f64;
    let run = PeerRun {
        per_second: result.per_second(),
        node_us: per_event(node_cpu),
        postgres_us: per_event(postgres_cpu),
        peak_rss_kib,
    };
    peer.stop().await;
    Ok(run)
}

/// Ingest and a worker (both release binaries) on one database and prefix; `count` events
/// posted at `rate`; the lag of each is its `processed_at - received_at`.
async fn lag_phase(
    bins: &Binaries,
    logs: &Path,
    count: usize,
    rate: u32,
    log_format: &str,
) -> anyhow::Result<Histogram<u64>> {
    let stage = stage(count).await?;
    let worker =
        start_worker(&bins.worker, &stage, &[("LOG_FORMAT", log_format.to_string())], &logs.join("worker-lag.log"))
            .await?;
    let ingest =
        start_ingest(&bins.ingest, &stage.broker.prefix, log_format, &[], &logs.join("ingest-lag.log")).await?;
    let signed = events::signed_batch("wb", count);
    let result = http_load(ingest.addr, "/api/webhooks/stripe", signed, 16, Pace::Rate(f64::from(rate))).await?;
    anyhow::ensure!(result.failed == 0, "ingest refused {} events", result.failed);
    wait_applied(&worker, count).await?;
    let rows = stage
        .sql
        .query(
            "SELECT (extract(epoch FROM processed_at - received_at) * 1000000)::bigint FROM webhook_events
              WHERE status = 'applied'",
            &[],
        )
        .await?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for row in rows {
        lag.record(row.get::<_, i64>(0).max(1) as u64)?;
    }
    worker.stop().await;
    ingest.stop().await;
    Ok(lag)
}
