//! `bench ingest`: in one run and at one concurrency,
//! 1. the ceiling: lapin publishing the same bodies with ingest's options (persistent,
//!    mandatory, its envelope headers, to its exchange and quorum queue), each awaited until
//!    its confirm;
//! 2. ingest itself, the release binary in a process of its own (so its CPU time and memory
//!    can be read from `/proc`), taking signed webhooks over keep-alive connections;
//! 3. both again, paced at half of ingest's measured maximum, for latency below saturation;
//! 4. the inline Node peer, for the ratio to what teams run today.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use lapin::options::{ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{Connection, ConnectionProperties};
use shared::envelope::{EnvelopeHeaders, IngestVerification};
use shared::topology::Topology;
use shared::Provider;

use crate::load::{broker_load, http_load, DirectPublish, LoadResult, Pace};
use crate::process::start_ingest;
use crate::procfs::{pid_listening_on, status_kib, CpuMeter};
use crate::{events, peer};

/// What `bench ingest` is asked to do.
pub struct IngestBench {
    pub requests: usize,
    pub concurrency: usize,
    pub peer: bool,
    pub log_format: String,
    /// `NAME=value` pairs added to ingest's environment.
    pub ingest_env: Vec<String>,
}

/// One measured phase.
struct Phase {
    name: &'static str,
    result: LoadResult,
    /// CPU of the process under test (ingest or the peer) per successful request.
    cpu_us: Option<f64>,
    /// CPU of the RabbitMQ node per successful request.
    beam_us: Option<f64>,
}

pub async fn run(bench: IngestBench) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench lives in the workspace").to_path_buf();
    let ingest_bin = build_ingest(&workspace)?;
    let broker = testkit::TestBroker::new().await;
    let settings: shared::IngestSettings = broker.settings(None, &[]);
    let topology = Topology::from_settings(&settings.common);
    topology.declare(broker.connection()).await?;
    let amqp_port = reqwest::Url::parse(&testkit::amqp_url())?.port().unwrap_or(5672);
    let beam = pid_listening_on(amqp_port);
    if beam.is_none() {
        eprintln!("note: the RabbitMQ process listening on port {amqp_port} is not visible; its CPU is not reported");
    }

    let direct = Arc::new(direct_publisher(&topology).await?);
    let logs = workspace.join("target/bench");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join("ingest.log");
    let ingest = start_ingest(&ingest_bin, &broker.prefix, &bench.log_format, &bench.ingest_env, &log_path).await?;
    let ingest_pid = ingest.pid();
    let purge = || async {
        let _ = broker.channel().queue_purge(topology.work_queue().into(), QueuePurgeOptions::default()).await;
    };

    // Warm both paths up (connections, channels, allocator, queue) before measuring.
    let warm = events::signed_batch("warm", 2000.min(bench.requests));
    broker_load(direct.clone(), warm.clone(), bench.concurrency, Pace::Closed).await?;
    http_load(ingest.addr, ingest::STRIPE_ROUTE, warm, bench.concurrency, Pace::Closed).await?;
    purge().await;

    let n = bench.requests;
    let c = bench.concurrency;
    let measure = |name, pid: Option<u32>| (name, CpuMeter::start(pid), CpuMeter::start(beam));
    let mut phases = Vec::new();

    let (name, _, beam_cpu) = measure("broker only (lapin, confirmed)", None);
    let result = broker_load(direct.clone(), events::signed_batch("direct", n), c, Pace::Closed).await?;
    phases.push(finish(name, result, None, &beam_cpu));
    purge().await;

    let (name, cpu, beam_cpu) = measure("ingest (verify, publish, confirm, 200)", ingest_pid);
    let result =
        http_load(ingest.addr, ingest::STRIPE_ROUTE, events::signed_batch("ingest", n), c, Pace::Closed).await?;
    phases.push(finish(name, result, Some(&cpu), &beam_cpu));
    purge().await;
    let ingest_max = phases[1].result.per_second();
    let half = ingest_max / 2.0;
    // Paced phases last about as long as the full-load ones.
    let paced = ((half * 4.0) as usize).max(1000).min(n);

    let (name, _, beam_cpu) = measure("broker only at half of ingest's max", None);
    let result = broker_load(direct.clone(), events::signed_batch("direct_half", paced), c, Pace::Rate(half)).await?;
    phases.push(finish(name, result, None, &beam_cpu));
    purge().await;

    let (name, cpu, beam_cpu) = measure("ingest at half of its max", ingest_pid);
    let batch = events::signed_batch("ingest_half", paced);
    let result = http_load(ingest.addr, ingest::STRIPE_ROUTE, batch, c, Pace::Rate(half)).await?;
    phases.push(finish(name, result, Some(&cpu), &beam_cpu));
    purge().await;

    let peak_rss = ingest_pid.and_then(|pid| status_kib(pid, "VmHWM"));
    let rss = ingest_pid.and_then(|pid| status_kib(pid, "VmRSS"));
    ingest.stop().await;
    let log_lines = std::fs::read_to_string(&log_path).map(|s| s.lines().count()).unwrap_or(0);

    if bench.peer {
        let source =
            std::env::var("INLINE_PEER_DIR").map(PathBuf::from).unwrap_or_else(|_| peer::default_source(&workspace));
        let peer = peer::InlinePeer::start(&source, &workspace.join("target"), n).await?;
        let (name, cpu, _) = measure("inline Node peer (verify, transaction, 200)", peer.pid());
        let result =
            http_load(peer.addr, ingest::STRIPE_ROUTE, events::signed_batch("peer", n), c, Pace::Closed).await?;
        phases.push(finish(name, result, Some(&cpu), &CpuMeter::start(None)));
        peer.stop().await;
    }
    for channel in &direct.channels {
        let _ = channel.close(200, "done".into()).await;
    }

    let body_len = events::session_completed("evt_size", "ord0").len();
    println!(
        "ingest benchmark: {n} signed Stripe events of {body_len} bytes, {c} keep-alive connections (or publishing tasks), {} publisher channels, LOG_FORMAT={} {}",
        ingest::PUBLISH_CHANNELS,
        bench.log_format,
        bench.ingest_env.join(" ")
    );
    println!(
        "{:<46} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "phase", "req/s", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms", "CPU us/req", "beam us/msg"
    );
    for phase in &phases {
        let h = &phase.result.latency;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{:<46} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12} {:>12}",
            phase.name,
            phase.result.per_second(),
            phase.result.failed,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0,
            opt(phase.cpu_us),
            opt(phase.beam_us)
        );
    }
    let ceiling = phases[0].result.per_second();
    let p99 = |i: usize| phases[i].result.latency.value_at_quantile(0.99) as f64 / 1000.0;
    println!();
    println!("ingest / broker-only ceiling:       {:.2}x (target >= 0.6)", ingest_max / ceiling);
    if let Some(peer) = phases.get(4) {
        let peer = peer.result.per_second();
        println!("ingest / inline peer:               {:.1}x (target >= 10)", ingest_max / peer);
        // Ingest publishes each webhook as the ceiling does, so it cannot pass the ceiling:
        // this ratio bounds the one above.
        println!("broker-only ceiling / inline peer:  {:.1}x (the most ingest can reach)", ceiling / peer);
    }
    if let Some(cpu) = phases[1].cpu_us {
        println!("ingest CPU per accepted webhook:    {cpu:.1} us at full load (target <= 30)");
    }
    println!(
        "p99 at {half:.0}/s (half of ingest's max): ingest {:.2} ms, broker only {:.2} ms, {:.2}x (target <= 2)",
        p99(3),
        p99(2),
        p99(3) / p99(2)
    );
    let mib = |kib: Option<u64>| kib.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!("ingest RSS: peak {} (target <= 40 MiB), at the end {}", mib(peak_rss), mib(rss));
    println!("ingest log: {log_lines} lines in {}", log_path.display());
    Ok(())
}

fn finish(name: &'static str, result: LoadResult, cpu: Option<&CpuMeter>, beam: &CpuMeter) -> Phase {
    let per_request = |d: Duration| d.as_secs_f64() * 1e6 / result.ok.max(1) as f64;
    let cpu_us = cpu.and_then(CpuMeter::elapsed).map(per_request);
    let beam_us = beam.elapsed().map(per_request);
    Phase { name, result, cpu_us, beam_us }
}

/// Builds the release `ingest` binary (so the benchmark never measures a stale one) and
/// returns its path, next to this benchmark's own binary.
fn build_ingest(workspace: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "ingest", "--bin", "ingest"])
        .current_dir(workspace)
        .status()
        .context("cargo build --release -p ingest")?;
    anyhow::ensure!(status.success(), "building the ingest binary failed");
    let exe = std::env::current_exe()?;
    let path = exe.parent().expect("the benchmark binary is in a directory").join("ingest");
    anyhow::ensure!(path.exists(), "{} not found after building it", path.display());
    Ok(path)
}

/// A connection with ingest's number of confirm-mode channels.
async fn direct_publisher(topology: &Topology) -> anyhow::Result<DirectPublish> {
    let connection = Connection::connect(
        &testkit::amqp_url(),
        ConnectionProperties::default().with_connection_name("bench-direct".into()),
    )
    .await?;
    let mut channels = Vec::new();
    for _ in 0..ingest::PUBLISH_CHANNELS {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(channel);
    }
    Ok(DirectPublish {
        channels,
        exchange: topology.events_exchange(),
        routing_key: Topology::routing_key("stripe", "checkout.session.completed"),
        properties: envelope_properties(),
    })
}

/// Ingest's envelope headers for message `i` of a benchmark (a signed Stripe event).
pub fn envelope_properties() -> Arc<dyn Fn(usize) -> lapin::BasicProperties + Send + Sync> {
    Arc::new(|i: usize| {
        let key = format!("evt_direct_{i}");
        let request_id = uuid::Uuid::new_v4().to_string();
        EnvelopeHeaders {
            provider: Provider::Stripe,
            event_type: "checkout.session.completed",
            event_key: &key,
            verification: IngestVerification::Signature,
            received_at: Utc::now(),
            request_id: &request_id,
            attempt: 0,
        }
        .properties([("stripe-signature", "t=1,v1=0000000000000000000000000000000000000000000000000000000000000000")])
    })
}
