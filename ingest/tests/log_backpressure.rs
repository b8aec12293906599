//! Logging never stalls ingest. The `ingest` binary runs with its stdout and stderr on pipes
//! that nobody reads once it has started (a log shipper that stopped reading), logging every
//! frame and parse step (`RUST_LOG=trace`), and answers a stream of signed webhooks: far more
//! is logged than the pipe (64 KiB) and the log buffer (16 MiB) hold. Every webhook is still
//! answered 200 and queued, and `/metrics` counts the log lines dropped.
//!
//! To see it fail, make the log writer's `append` wait for room instead of dropping
//! (`shared/src/telemetry/writer.rs`): once the buffer is full every tokio worker blocks in
//! logging and the webhooks time out.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::{TestBroker, UnreadProcess};

/// Each webhook logs some 6 KiB at `trace` (lapin's frames and I/O loop, the webhook's lines):
/// six thousand are about twice what the pipe and the buffer hold together.
const WEBHOOKS: usize = 6_000;
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_every_webhook_while_nobody_reads_its_log() {
    let broker = TestBroker::new().await;
    let _ = broker.settings::<shared::IngestSettings>(None, &[]); // registers the prefix's queues for clean-up
    let vars: Vec<(String, String)> = [
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", broker.prefix.clone()),
        ("INGEST_ADDR", "127.0.0.1:0".into()),
        ("INGEST_METRICS_ADDR", "127.0.0.1:0".into()),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET.into()),
        ("LOG_FORMAT", "json".into()),
        ("RUST_LOG", "trace,lapin=trace".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (_ingest, listening) =
        UnreadProcess::spawn(env!("CARGO_BIN_EXE_ingest"), &vars, &["ingest listening", "ingest metrics listening"])
            .await;
    let addr = UnreadProcess::addr_of(&listening[0]);
    let metrics_addr = UnreadProcess::addr_of(&listening[1]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    testkit::eventually("ingest ready", WAIT, || async {
        client.get(format!("http://{addr}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;

    let answered = stream::iter(0..WEBHOOKS)
        .map(|i| {
            let client = &client;
            async move {
                let key = format!("evt_unread_{i}");
                let body =
                    stripe_session_event(&key, "checkout.session.completed", &format!("order-{i}"), "paid", 100, "usd");
                let response = client
                    .post(format!("http://{addr}{}", ingest::STRIPE_ROUTE))
                    .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET))
                    .body(body)
                    .send()
                    .await;
                response.map(|r| r.status().as_u16()).map_err(|e| format!("{key}: {e}"))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let answers = tokio::time::timeout(WAIT, answered).await.expect("every webhook answered within the deadline");
    let failed: Vec<String> = answers
        .into_iter()
        .filter_map(|answer| match answer {
            Ok(200) => None,
            Ok(status) => Some(status.to_string()),
            Err(error) => Some(error),
        })
        .collect();
    assert!(failed.is_empty(), "every webhook answered 200; not: {:?}", &failed[..failed.len().min(5)]);
    let work = format!("{}.work", broker.prefix);
    testkit::eventually("every webhook queued", WAIT, || async {
        (broker.count(&work).await as usize == WEBHOOKS).then_some(())
    })
    .await;

    let metrics = testkit::metrics::scrape(&format!("http://{metrics_addr}/metrics")).await;
    let dropped = metrics.value("log_lines_dropped_total", &[]);
    println!("log lines dropped: {dropped}");
    assert!(dropped > 0.0, "more was logged than the pipe and the buffer hold: lines were dropped ({dropped})");
}
