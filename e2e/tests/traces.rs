//! One trace from the provider's request to the worker's commit, across the queue: ingest (the
//! binary, a process of its own) exports its request span and puts the W3C `traceparent` in
//! the message; the worker (in this test process, exporting too) continues that trace for the
//! delivery and its transaction, again for every retry of an event through a delay tier, and
//! carries it on to the notification message. Both export to an OTLP receiver of the test's own.
//! A request that comes with a `traceparent` (a tracing gateway in front) joins that trace.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use shared::envelope::header_str;
use shared::settings::{LogFormat, WorkerSettings};
use testkit::events::{stripe_session_event, STRIPE_SECRET};
use testkit::otlp::{OtlpReceiver, ReceivedSpan};
use testkit::{Behavior, FakeEndpoint, LoggedProcess, TestBroker, TestDb};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_joins_the_ingest_request_and_the_workers_commit_across_retries() {
    let receiver = OtlpReceiver::start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        // Export every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    // This test binary holds this one test, so its process-wide subscriber is the worker's.
    for (name, value) in &otel {
        std::env::set_var(name, value);
    }
    let _telemetry = shared::telemetry::init(LogFormat::Text, "worker").expect("telemetry with trace export");
    assert!(shared::traces::exporting());

    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let endpoint = FakeEndpoint::start(vec![Behavior::Status(200, String::new())]).await;
    let notify_url = endpoint.url("/hooks/notify");
    let settings: WorkerSettings = broker.settings(
        Some(&db.url),
        &[
            ("RETRY_DELAYS", "300ms"),
            ("RETRY_MAX_ATTEMPTS", "20"),
            ("NOTIFY_WEBHOOK_URL", &notify_url),
            ("NOTIFY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ],
    );
    worker::store::migrate::migrate(&settings.database).await.expect("migrations apply");
    worker::Worker::topology(&settings).declare(broker.connection()).await.unwrap();
    let sql = db.client().await;
    seed(&sql, "order-now").await;
    let notifications = broker.subscribe(&format!("{}.notifications", broker.prefix)).await;

    let mut vars: Vec<(String, String)> = otel.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    for (k, v) in [
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", broker.prefix.clone()),
        ("INGEST_ADDR", "127.0.0.1:0".to_string()),
        ("INGEST_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET.to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ] {
        vars.push((k.to_string(), v));
    }
    let mut ingest = LoggedProcess::spawn(env!("CARGO_BIN_EXE_e2e-ingest"), &[], &vars);
    let addr = ingest.logged_addr("ingest listening").await;
    let stop = CancellationToken::new();
    let worker = worker::Worker::build(settings).await.expect("worker builds");
    let running = tokio::spawn(worker.run(stop.clone()));

    let client = reqwest::Client::new();
    testkit::eventually("ingest ready", WAIT, || async {
        client.get(format!("http://{addr}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    // One event applies at once; the other names an order that appears only later, so it is
    // retried through a delay tier first.
    for (key, order) in [("evt_now", "order-now"), ("evt_later", "order-later")] {
        let body = stripe_session_event(key, "checkout.session.completed", order, "paid", 3000, "usd");
        let status = common::ingest::post_signed_stripe(&client, addr, body).await.unwrap().status();
        assert_eq!(status, 200, "{key}");
    }
    // A third event comes from a gateway that traces: ingest's request span is a child of it.
    let gateway = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    seed(&sql, "order-gateway").await;
    let body = stripe_session_event("evt_gateway", "checkout.session.completed", "order-gateway", "paid", 3000, "usd");
    let status = client
        .post(format!("http://{addr}{}", ingest::STRIPE_ROUTE))
        .header("stripe-signature", testkit::events::stripe_signature(&body, STRIPE_SECRET))
        .header("traceparent", format!("00-{}-{}-01", gateway.0, gateway.1))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "evt_gateway");
    let count = |sql_text: &'static str| {
        let sql = &sql;
        async move { sql.query_one(sql_text, &[]).await.ok().map(|r| r.get::<_, i64>(0)) }
    };
    testkit::eventually("evt_later retried", WAIT, || async {
        let n =
            count("SELECT count(*) FROM webhook_events WHERE event_key = 'evt_later' AND status = 'retrying'").await?;
        (n == 1).then_some(())
    })
    .await;
    seed(&sql, "order-later").await;
    testkit::eventually("all three applied", WAIT, || async {
        (count("SELECT count(*) FROM webhook_events WHERE status = 'applied'").await? == 3).then_some(())
    })
    .await;

    // The request span of each event, as ingest exported it.
    let request_span = |spans: &[ReceivedSpan], key: &str| {
        spans
            .iter()
            .find(|s| {
                s.service == "ingest"
                    && s.name == "webhook"
                    && s.attributes.get("event_id").map(String::as_str) == Some(key)
            })
            .cloned()
    };
    let joined = |spans: &[ReceivedSpan], key: &str, attempts: usize| -> Option<(ReceivedSpan, Vec<ReceivedSpan>)> {
        let request = request_span(spans, key)?;
        let in_trace: Vec<ReceivedSpan> =
            spans.iter().filter(|s| s.trace_id == request.trace_id && s.service == "worker").cloned().collect();
        let deliveries = in_trace.iter().filter(|s| s.name == "delivery").count();
        let transactions = in_trace.iter().filter(|s| s.name == "transaction").count();
        (deliveries >= attempts && transactions >= attempts).then_some((request, in_trace))
    };
    let (now_request, now_spans) =
        testkit::eventually("evt_now's trace", WAIT, || async { joined(&receiver.spans(), "evt_now", 1) }).await;
    let (later_request, later_spans) = testkit::eventually("evt_later's trace, both attempts", WAIT, || async {
        joined(&receiver.spans(), "evt_later", 2)
    })
    .await;
    assert_ne!(now_request.trace_id, later_request.trace_id, "each webhook is a trace of its own");
    let (gateway_request, _) =
        testkit::eventually("evt_gateway's trace", WAIT, || async { joined(&receiver.spans(), "evt_gateway", 1) })
            .await;
    assert_eq!(
        (gateway_request.trace_id.as_str(), gateway_request.parent_span_id.as_str()),
        gateway,
        "the request continues the gateway's trace"
    );

    for (request, spans, attempts) in
        [(&now_request, &now_spans, ["1"].as_slice()), (&later_request, &later_spans, &["1", "2"])]
    {
        let deliveries: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "delivery").collect();
        let seen: BTreeSet<&str> =
            deliveries.iter().filter_map(|s| s.attributes.get("attempt").map(String::as_str)).collect();
        assert_eq!(seen, attempts.iter().copied().collect(), "the delivery of every attempt joins the trace");
        for delivery in &deliveries {
            assert_eq!(delivery.parent_span_id, request.span_id, "a delivery continues ingest's request span");
            assert_eq!(delivery.attributes.get("event_id"), request.attributes.get("event_id"));
        }
        for transaction in spans.iter().filter(|s| s.name == "transaction") {
            assert!(
                deliveries.iter().any(|d| d.span_id == transaction.parent_span_id),
                "the transaction is a child of a delivery of this trace"
            );
        }
    }

    // The notification message carries the trace on.
    let message = testkit::eventually("a notification", WAIT, || async { broker.get(&notifications).await }).await;
    let headers = message.delivery.properties.headers().clone().unwrap_or_default();
    let traceparent = header_str(&headers, "traceparent").expect("the notification carries a traceparent");
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default();
    assert!(
        [now_request.trace_id.as_str(), later_request.trace_id.as_str(), gateway.0].contains(&trace_id),
        "{traceparent} continues an event's trace"
    );

    // And the HTTP delivery of each notification, whose span joins the same trace.
    let posted = testkit::eventually("the three notifications delivered", WAIT, || async {
        let requests = endpoint.requests();
        (requests.len() >= 3).then_some(requests)
    })
    .await;
    let mut delivered: Vec<String> = posted
        .iter()
        .map(|r| {
            r.header("traceparent").expect("the delivery carries a traceparent").split('-').nth(1).unwrap().to_string()
        })
        .collect();
    delivered.sort();
    let mut expected = vec![now_request.trace_id.clone(), later_request.trace_id.clone(), gateway.0.to_string()];
    expected.sort();
    assert_eq!(delivered, expected, "each delivered notification carries its event's trace");
    testkit::eventually("the delivery spans in the three traces", WAIT, || async {
        let spans = receiver.spans();
        expected
            .iter()
            .all(|trace| spans.iter().any(|s| s.name == "notification" && &s.trace_id == trace))
            .then_some(())
    })
    .await;

    stop.cancel();
    let _ = running.await;
    ingest.terminate();
    ingest.wait_exit(Duration::from_secs(20)).await;
}

async fn seed(sql: &tokio_postgres::Client, order_id: &str) {
    let booking: Uuid = sql
        .query_one("INSERT INTO bookings (trainer_id) VALUES (gen_random_uuid()) RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    sql.execute(
        "INSERT INTO payments (order_id, booking_id, provider, amount, currency) VALUES ($1, $2, 'stripe', 3000, 'usd')",
        &[&order_id, &booking],
    )
    .await
    .unwrap();
}
