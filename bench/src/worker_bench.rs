//! `bench worker`: events queued ahead, then one worker started; throughput until every
//! payment is paid, and the lag from receipt to application while events stream in.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::report_latency;

pub async fn bench_worker(events: usize, concurrency: usize, rate: u32) -> anyhow::Result<()> {
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
    report_latency("end-to-end lag while streaming (ingest receipt to worker commit)", &lag, "ms");
    Ok(())
}
