//! A trace begun before ingest (a gateway, a load balancer that traces) goes on through the
//! pipeline even where nothing is exported: ingest (the binary, a process of its own, with no
//! OTLP endpoint) passes the request's W3C `traceparent` on in the message, and the worker (in
//! this test process, exporting nothing either) passes it on to the notification message and
//! its HTTP delivery. A webhook that came without one gets none.

mod common;

use std::time::Duration;

use lapin::message::BasicGetMessage;
use shared::envelope::header_str;
use shared::settings::WorkerSettings;
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::{Behavior, FakeEndpoint, TestBroker, TestDb};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// What a tracing gateway in front of ingest sends.
const RECEIVED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// To see it fail, make `traces::traceparent` return `None` when nothing is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_a_received_traceparent_reaches_the_message_and_the_notification() {
    // This test binary holds this one test: nothing here, nor in the ingest it starts, exports.
    for name in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] {
        std::env::remove_var(name);
    }
    testkit::init_logs();
    assert!(!shared::traces::exporting());

    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let endpoint = FakeEndpoint::start(vec![Behavior::Status(200, String::new())]).await;
    let notify_url = endpoint.url("/hooks/notify");
    let settings: WorkerSettings = broker.settings(
        Some(&db.url),
        &[
            ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
            ("NOTIFY_WEBHOOK_URL", &notify_url),
            ("NOTIFY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ],
    );
    worker::store::migrate::migrate(&settings.database).await.expect("migrations apply");
    worker::Worker::topology(&settings).declare(broker.connection()).await.unwrap();
    let sql = db.client().await;
    for order in ["order-traced", "order-plain"] {
        seed(&sql, order).await;
    }
    let events = broker.subscribe(&format!("{}.events", broker.prefix)).await;
    let notifications = broker.subscribe(&format!("{}.notifications", broker.prefix)).await;

    let (mut ingest, addr, _metrics) = common::ingest::spawn_ingest_process(&broker, &[]).await;
    let stop = CancellationToken::new();
    let worker = worker::Worker::build(settings).await.expect("worker builds");
    let running = tokio::spawn(worker.run(stop.clone()));

    let client = reqwest::Client::new();
    for (key, order, traceparent) in
        [("evt_traced", "order-traced", Some(RECEIVED)), ("evt_plain", "order-plain", None)]
    {
        let body = stripe_session_event(key, "checkout.session.completed", order, "paid", 3000, "usd");
        let mut request = client
            .post(format!("http://{addr}{}", ingest::STRIPE_ROUTE))
            .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let status = request.body(body).send().await.unwrap().status();
        assert_eq!(status, 200, "{key}");
    }

    // The messages ingest published.
    let published = messages(&broker, &events, 2).await;
    let of = |messages: &[BasicGetMessage], needle: &str| -> Option<String> {
        let message = messages
            .iter()
            .find(|m| String::from_utf8_lossy(&m.delivery.data).contains(needle))
            .unwrap_or_else(|| panic!("a message about {needle}"));
        header_str(&message.delivery.properties.headers().clone().unwrap_or_default(), "traceparent")
    };
    assert_eq!(of(&published, "evt_traced").as_deref(), Some(RECEIVED), "passed on as received");
    assert_eq!(of(&published, "evt_plain"), None, "nothing received, nothing invented");

    // The notifications the worker published.
    let notified = messages(&broker, &notifications, 2).await;
    let traced = of(&notified, "order-traced").expect("the notification carries the trace on");
    assert_eq!(trace_id(&traced), TRACE_ID);
    assert_eq!(of(&notified, "order-plain"), None);

    // And their HTTP deliveries.
    let posted = testkit::eventually("both notifications delivered", WAIT, || async {
        let requests = endpoint.requests();
        (requests.len() >= 2).then_some(requests)
    })
    .await;
    let delivered = |order: &str| {
        let request = posted
            .iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains(order))
            .unwrap_or_else(|| panic!("a delivery for {order}"));
        request.header("traceparent").map(str::to_string)
    };
    assert_eq!(delivered("order-traced").as_deref().map(trace_id), Some(TRACE_ID));
    assert_eq!(delivered("order-plain"), None);

    stop.cancel();
    let _ = running.await;
    ingest.terminate();
    ingest.wait_exit(Duration::from_secs(20)).await;
}

/// Waits for `count` messages in `queue` and returns them.
async fn messages(broker: &TestBroker, queue: &str, count: usize) -> Vec<BasicGetMessage> {
    let all = std::cell::RefCell::new(Vec::new());
    testkit::eventually(&format!("{count} messages in {queue}"), WAIT, || async {
        let drained = broker.drain(queue).await;
        let mut all = all.borrow_mut();
        all.extend(drained);
        (all.len() >= count).then_some(())
    })
    .await;
    all.into_inner()
}

fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
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
