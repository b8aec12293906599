//! `bench ingest`: signed Stripe events posted by concurrent clients to an ingest; latency
//! until the `200` (which includes the publisher confirm) and throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// What `bench ingest` is asked to do.
pub struct IngestBench {
    pub requests: usize,
    pub concurrency: usize,
    pub peer: bool,
    pub log_format: String,
}

pub async fn run(bench: IngestBench) -> anyhow::Result<()> {
    let IngestBench { requests, concurrency, peer, log_format } = bench;
    if peer || log_format != "text" {
        eprintln!("note: this ingest benchmark runs ingest in-process, without the inline peer");
    }
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
    crate::report_latency("latency until 200 (after the publisher confirm)", &*histogram.lock().await, "ms");
    stop.cancel();
    server.await?;
    Ok(())
}
