//! `bench pipeline`: the capacity of the whole pipeline on one machine, against the inline route,
//! in one run.
//!
//! 1. Ingest and one worker (the release binaries, processes of their own) on a database and
//!    AMQP prefix of each step's own; signed Stripe events posted at a fixed rate (open loop:
//!    each request is sent when it is due whatever the answers, over enough keep-alive
//!    connections, and its latency counts from when it was due) for a step, at each rate in
//!    turn until the lag's p99 passes a second. Per step: the answered rate, ingest's answer
//!    latency, the lag from ingest's receipt to the worker's commit, the CPU time per event of
//!    every process (ingest, worker, Postgres, RabbitMQ, the load generator), the queue left at
//!    the end of the load, and the invariant (every answered event applied once, nothing dead).
//! 2. The inline Node route stepped the same way (it applies each event before it answers):
//!    the highest rate whose answer p99 stays under a second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio_postgres::Client;

use crate::events::EventTemplate;
use crate::load::{http_load_with, LoadResult, MakeEvent, Pace};
use crate::process::{free_port, start_ingest};
use crate::procfs::{cpu_time, pid_listening_on, CpuMeter};
use crate::worker_bench::stage::{stage, Stage};
use crate::worker_bench::{
    build_binaries, metric_sum, postgres_background_pids, start_worker, wait_applied, worker_backend_pids,
};
use crate::{peer, worker_bench};

/// What `bench pipeline` is asked to do.
pub struct PipelineBench {
    /// Events per second of each pipeline step, in order.
    pub rates: Vec<u32>,
    /// Events per second of each step of the inline route.
    pub route_rates: Vec<u32>,
    pub step: Duration,
    /// Keep-alive connections of the load generator.
    pub connections: usize,
    pub peer: bool,
    pub log_format: String,
    /// `NAME=value` pairs added to ingest's environment.
    pub ingest_env: Vec<String>,
    /// `NAME=value` pairs added to the worker's environment.
    pub worker_env: Vec<String>,
}

/// The lag (or, for the route, the answer) p99 a rate must stay under.
const BOUND: Duration = Duration::from_secs(1);

/// A step holds if at least this share of its requests was answered 200.
const ANSWERED: f64 = 0.99;

/// CPU time per answered event of each process, in microseconds.
#[derive(Default)]
struct Cpu {
    ingest: f64,
    worker: f64,
    postgres: f64,
    rabbit: Option<f64>,
    generator: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.ingest + self.worker + self.postgres + self.rabbit.unwrap_or(0.0) + self.generator
    }
}

struct PipelineStep {
    rate: u32,
    load: LoadResult,
    lag: Histogram<u64>,
    /// Lag p99 of the events received in the step's first and last thirds (µs).
    lag_p99_thirds: (u64, u64),
    /// Messages ready in the work queue when the last request was answered.
    queued_at_end: u32,
    cpu: Cpu,
    /// Webhooks per broker message ingest published (`ingest_bundle_webhooks`), when it bundles.
    per_message: Option<f64>,
    load_average: String,
}

impl PipelineStep {
    fn holds(&self) -> bool {
        self.lag.value_at_quantile(0.99) < BOUND.as_micros() as u64 && answered_enough(&self.load)
    }

    /// More than a second of events still queued when the load ended, or a lag over the bound
    /// in the step's last third: the worker fell behind.
    fn backlog_grew(&self) -> bool {
        self.queued_at_end > self.rate || self.lag_p99_thirds.1 >= BOUND.as_micros() as u64
    }
}

struct RouteStep {
    rate: u32,
    load: LoadResult,
    node_us: f64,
    postgres_us: f64,
    generator_us: f64,
    load_average: String,
}

impl RouteStep {
    fn holds(&self) -> bool {
        self.load.latency.value_at_quantile(0.99) < BOUND.as_micros() as u64 && answered_enough(&self.load)
    }
}

fn answered_enough(load: &LoadResult) -> bool {
    load.ok > 0 && load.ok as f64 >= ANSWERED * (load.ok + load.failed) as f64
}

pub async fn run(bench: PipelineBench) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench lives in the workspace").to_path_buf();
    let bins = build_binaries(&workspace)?;
    let logs = workspace.join("target/bench");
    std::fs::create_dir_all(&logs)?;
    let amqp_port = reqwest::Url::parse(&testkit::amqp_url())?.port().unwrap_or(5672);
    let beam = pid_listening_on(amqp_port);
    if beam.is_none() {
        eprintln!("note: the RabbitMQ process on port {amqp_port} is not visible; its CPU is not reported");
    }
    let load_at_start = load_average();

    let mut steps = Vec::new();
    for &rate in &bench.rates {
        eprintln!("pipeline at {rate} events/s for {} s", bench.step.as_secs());
        let step = pipeline_step(&bins, &logs, rate, &bench, beam).await?;
        eprintln!(
            "  answered {:.0}/s, answer p99 {:.1} ms, lag p99 {:.1} ms, {} queued at the end",
            step.load.per_second(),
            ms(step.load.latency.value_at_quantile(0.99)),
            ms(step.lag.value_at_quantile(0.99)),
            step.queued_at_end
        );
        let holds = step.holds();
        steps.push(step);
        if !holds {
            break;
        }
    }

    let mut route = Vec::new();
    if bench.peer {
        let source =
            std::env::var("INLINE_PEER_DIR").map(PathBuf::from).unwrap_or_else(|_| peer::default_source(&workspace));
        for &rate in &bench.route_rates {
            eprintln!("inline route at {rate} events/s for {} s", bench.step.as_secs());
            let step = route_step(&source, &workspace, rate, &bench).await?;
            eprintln!(
                "  answered {:.0}/s, answer p99 {:.1} ms",
                step.load.per_second(),
                ms(step.load.latency.value_at_quantile(0.99))
            );
            let holds = step.holds();
            route.push(step);
            if !holds {
                break;
            }
        }
    }
    let load_at_end = load_average();

    println!();
    println!(
        "pipeline: ingest and one worker, signed Stripe checkout.session.completed events (~1.5 KB) at a fixed rate \
         (open loop, {} connections) for {} s a step; load average {load_at_start} at the start, {load_at_end} at the end",
        bench.connections,
        bench.step.as_secs()
    );
    println!(
        "| offered/s | answered 200/s | not 200 | sent late | answer p50 / p99 ms | lag p50 / p99 ms | lag p99 first / last third ms | queued at end | backlog grew | webhooks/message | ingest µs | worker µs | Postgres µs | RabbitMQ µs | generator µs | total µs/event | load average |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &steps {
        let h = &s.load.latency;
        let rabbit = s.cpu.rabbit.map_or("n/a".to_string(), |u| format!("{u:.0}"));
        let per_message = s.per_message.map_or("1 (no bundles)".to_string(), |n| format!("{n:.2}"));
        println!(
            "| {} | {:.0} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} | {per_message} | {:.0} | {:.0} | {:.0} | {rabbit} | {:.0} | {:.0} | {} |",
            s.rate,
            s.load.per_second(),
            s.load.failed,
            s.load.late,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(s.lag.value_at_quantile(0.5)),
            ms(s.lag.value_at_quantile(0.99)),
            ms(s.lag_p99_thirds.0),
            ms(s.lag_p99_thirds.1),
            s.queued_at_end,
            if s.backlog_grew() { "yes" } else { "no" },
            s.cpu.ingest,
            s.cpu.worker,
            s.cpu.postgres,
            s.cpu.generator,
            s.cpu.total(),
            s.load_average
        );
    }
    if !route.is_empty() {
        println!();
        println!("inline route (verify, transaction, 200), the same load:");
        println!("| offered/s | answered 200/s | not 200 | sent late | answer p50 / p99 ms | Node µs | Postgres µs | generator µs | total µs/event | load average |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for s in &route {
            let h = &s.load.latency;
            println!(
                "| {} | {:.0} | {} | {} | {:.1} / {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                s.rate,
                s.load.per_second(),
                s.load.failed,
                s.load.late,
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                s.node_us,
                s.postgres_us,
                s.generator_us,
                s.node_us + s.postgres_us + s.generator_us,
                s.load_average
            );
        }
    }
    println!();
    let best = steps.iter().filter(|s| s.holds()).max_by_key(|s| s.rate);
    match best {
        Some(s) => println!(
            "pipeline: highest rate with lag p99 under 1 s: {}/s (ingest's answer p99 there {:.1} ms; target under 20 ms)",
            s.rate,
            ms(s.load.latency.value_at_quantile(0.99))
        ),
        None => println!("pipeline: no step kept its lag p99 under 1 s"),
    }
    if steps.last().is_some_and(PipelineStep::holds) {
        println!("pipeline: every step held; its capacity is above the last rate");
    }
    let route_best = route.iter().filter(|s| s.holds()).max_by_key(|s| s.rate);
    if !route.is_empty() {
        match route_best {
            Some(s) => println!("inline route: highest rate with answer p99 under 1 s: {}/s", s.rate),
            None => println!("inline route: no step kept its answer p99 under 1 s"),
        }
        if route.last().is_some_and(RouteStep::holds) {
            println!("inline route: every step held; its capacity is above the last rate");
        }
    }
    if let (Some(p), Some(r)) = (best, route_best) {
        println!("pipeline / inline route: {:.2}x (target >= 3)", f64::from(p.rate) / f64::from(r.rate));
    }
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `/proc/loadavg`'s 1-, 5- and 15-minute figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `NAME=value` pairs as environment variables.
fn pairs(list: &[String]) -> Vec<(&str, String)> {
    list.iter().filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k, v.to_string())).collect()
}

/// The CPU time of Postgres on behalf of some clients: their backends (present at the start or
/// opened later) and the server's own background processes.
struct PostgresMeter {
    backends: HashMap<u32, std::time::Duration>,
    background: Vec<u32>,
    background_before: Duration,
}

impl PostgresMeter {
    async fn start(admin: &Client, backends: &[u32]) -> anyhow::Result<Self> {
        let background = postgres_background_pids(admin).await?;
        let background_before = worker_bench::total_cpu(&background);
        let backends = backends.iter().filter_map(|&p| Some((p, cpu_time(p)?))).collect();
        Ok(Self { backends, background, background_before })
    }

    /// CPU since the start of the backends in `now` (those gone since are not counted).
    fn elapsed(&self, now: &[u32]) -> Duration {
        let clients: Duration = now
            .iter()
            .filter_map(|p| Some(cpu_time(*p)?.saturating_sub(self.backends.get(p).copied().unwrap_or_default())))
            .sum();
        clients + worker_bench::total_cpu(&self.background).saturating_sub(self.background_before)
    }
}

/// The process of the benchmark itself: the load generator.
fn generator() -> CpuMeter {
    CpuMeter::start(Some(std::process::id()))
}

fn template(tag: &str) -> MakeEvent {
    let template = Arc::new(EventTemplate::new(tag));
    Arc::new(move |i| template.signed(i))
}

async fn pipeline_step(
    bins: &worker_bench::Binaries,
    logs: &Path,
    rate: u32,
    bench: &PipelineBench,
    beam: Option<u32>,
) -> anyhow::Result<PipelineStep> {
    let count = (u64::from(rate) * bench.step.as_secs()).max(1) as usize;
    let stage = stage(count).await?;
    let mut worker_vars = vec![("LOG_FORMAT", bench.log_format.clone())];
    worker_vars.extend(pairs(&bench.worker_env));
    let worker =
        start_worker(&bins.worker, &stage, &worker_vars, &logs.join(format!("pipeline-worker-{rate}.log"))).await?;
    // A known metrics port, read for the webhooks per message once the load ends (last: it
    // wins over one in `--ingest-env`).
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let mut ingest_env = bench.ingest_env.clone();
    ingest_env.push(format!("INGEST_METRICS_ADDR={metrics_addr}"));
    let ingest = start_ingest(
        &bins.ingest,
        &stage.broker.prefix,
        &bench.log_format,
        &ingest_env,
        &logs.join(format!("pipeline-ingest-{rate}.log")),
    )
    .await?;
    let backends = testkit::eventually("the worker's database connections", Duration::from_secs(30), || async {
        let pids = worker_backend_pids(&stage).await.ok()?;
        (!pids.is_empty()).then_some(pids)
    })
    .await;
    let postgres = PostgresMeter::start(&stage.sql, &backends).await?;
    let (ingest_cpu, worker_cpu, rabbit, generator) =
        (CpuMeter::start(ingest.pid()), CpuMeter::start(worker.pid()), CpuMeter::start(beam), generator());

    let load = http_load_with(
        ingest.addr,
        ingest::STRIPE_ROUTE,
        count,
        template("wb"),
        bench.connections,
        Pace::Rate(f64::from(rate)),
    )
    .await?;
    let queued_at_end = stage.broker.count(&stage.topology.work_queue()).await;
    let per_message = webhooks_per_message(&metrics_addr).await?;
    let generator_cpu = generator.elapsed().unwrap_or_default();
    let load_average = load_average();
    wait_applied(&worker, load.ok as usize).await?;

    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / load.ok.max(1) as f64;
    let cpu = Cpu {
        ingest: per_event(ingest_cpu.elapsed().unwrap_or_default()),
        worker: per_event(worker_cpu.elapsed().unwrap_or_default()),
        postgres: per_event(postgres.elapsed(&worker_backend_pids(&stage).await?)),
        rabbit: rabbit.elapsed().map(per_event),
        generator: per_event(generator_cpu),
    };
    worker.stop().await;
    ingest.stop().await;
    check_pipeline(&stage, &load, count).await?;
    let (lag, lag_p99_thirds) = lag(&stage.sql).await?;
    Ok(PipelineStep { rate, load, lag, lag_p99_thirds, queued_at_end, cpu, per_message, load_average })
}

/// The mean of ingest's `ingest_bundle_webhooks`; `None` when it published no bundle histogram
/// samples (bundling off).
async fn webhooks_per_message(metrics_addr: &str) -> anyhow::Result<Option<f64>> {
    let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await?.error_for_status()?.text().await?;
    let (sum, count) = (
        metric_sum(&text, "ingest_bundle_webhooks_sum", None),
        metric_sum(&text, "ingest_bundle_webhooks_count", None),
    );
    Ok((count > 0.0).then(|| sum / count))
}

/// Every event answered 200 applied exactly once, to its own payment, notified once; nothing
/// dead, nothing left in the outbox. An event answered otherwise may have been queued (the
/// connection failed after the publish), so the applied ones lie between the two counts.
async fn check_pipeline(stage: &Stage, load: &LoadResult, sent: usize) -> anyhow::Result<()> {
    let one = |sql: &'static str| async move {
        let row = stage.sql.query_one(sql, &[]).await?;
        Ok::<i64, anyhow::Error>(row.get(0))
    };
    let applied = one("SELECT count(*) FROM webhook_events WHERE status = 'applied'").await?;
    let (ok, sent) = (load.ok as i64, sent as i64);
    anyhow::ensure!((ok..=sent).contains(&applied), "{applied} events applied, {ok} answered 200 of {sent} sent");
    let others = one("SELECT count(*) FROM webhook_events WHERE status <> 'applied' OR duplicates <> 0").await?;
    anyhow::ensure!(others == 0, "{others} events not applied, or delivered more than once");
    let paid = one("SELECT count(*) FROM payments
          WHERE payment_status = 'paid' AND paid_at IS NOT NULL
            AND payment_metadata->'webhook'->>'event_id' = 'evt_wb_' || substr(order_id, 4)")
    .await?;
    anyhow::ensure!(paid == applied, "{paid} payments paid by their own event, {applied} events applied");
    let notified = one("SELECT count(DISTINCT payment_id) FROM notifications").await?;
    let notifications = one("SELECT count(*) FROM notifications").await?;
    anyhow::ensure!(
        notified == applied && notifications == applied,
        "{notifications} notifications for {notified} payments, {applied} events applied"
    );
    testkit::eventually("the outbox emptied", Duration::from_secs(60), || async {
        (one("SELECT count(*) FROM outbox").await.ok()? == 0).then_some(())
    })
    .await;
    let dead = stage.broker.count(&stage.topology.dead_queue()).await;
    anyhow::ensure!(dead == 0, "{dead} events dead-lettered");
    Ok(())
}

/// The lag (`processed_at - received_at`) of every applied event, and its p99 among the events
/// received in the first and in the last third of the step.
async fn lag(sql: &Client) -> anyhow::Result<(Histogram<u64>, (u64, u64))> {
    let rows = sql
        .query(
            "SELECT (extract(epoch FROM received_at) * 1000000)::bigint,
                    (extract(epoch FROM processed_at - received_at) * 1000000)::bigint
               FROM webhook_events WHERE status = 'applied'",
            &[],
        )
        .await?;
    let histogram = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3);
    let (mut all, mut first, mut last) = (histogram()?, histogram()?, histogram()?);
    let samples: Vec<(i64, u64)> =
        rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1).max(1) as u64)).collect();
    let start = samples.iter().map(|s| s.0).min().unwrap_or(0);
    let end = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let third = (end - start) / 3;
    for (received, lag) in samples {
        all.record(lag)?;
        if received < start + third {
            first.record(lag)?;
        } else if received >= end - third {
            last.record(lag)?;
        }
    }
    Ok((all, (first.value_at_quantile(0.99), last.value_at_quantile(0.99))))
}

async fn route_step(source: &Path, workspace: &Path, rate: u32, bench: &PipelineBench) -> anyhow::Result<RouteStep> {
    let count = (u64::from(rate) * bench.step.as_secs()).max(1) as usize;
    let peer = peer::InlinePeer::start(source, &workspace.join("target"), count).await?;
    let admin = testkit::db::connect(&testkit::admin_database_url()).await;
    let postgres = PostgresMeter::start(&admin, &client_backends(&admin, peer.database()).await?).await?;
    let (node, generator) = (CpuMeter::start(peer.pid()), generator());
    let load = http_load_with(
        peer.addr,
        ingest::STRIPE_ROUTE,
        count,
        template("peer"),
        bench.connections,
        Pace::Rate(f64::from(rate)),
    )
    .await?;
    let generator_cpu = generator.elapsed().unwrap_or_default();
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / load.ok.max(1) as f64;
    let node_us = per_event(node.elapsed().unwrap_or_default());
    let postgres_us = per_event(postgres.elapsed(&client_backends(&admin, peer.database()).await?));
    let paid = peer.paid().await?;
    anyhow::ensure!(
        (load.ok as i64..=count as i64).contains(&paid),
        "the inline route paid {paid} payments, answered {} of {count} with 200",
        load.ok
    );
    let generator_us = per_event(generator_cpu);
    peer.stop().await;
    Ok(RouteStep { rate, load, node_us, postgres_us, generator_us, load_average: load_average() })
}

/// The client backends connected to `database`.
async fn client_backends(admin: &Client, database: &str) -> anyhow::Result<Vec<u32>> {
    let rows = admin
        .query("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", &[&database])
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}
