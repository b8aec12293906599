//! With the broker connection really cut, ingest answers 503 (never 200); when the broker is
//! reachable again it recovers without a restart.

mod common;

use std::time::Duration;

use common::{broker_addr, error_code, TestIngest};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::{TcpProxy, TestBroker};

#[tokio::test]
async fn cut_broker_means_503_and_recovery_without_restart() {
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(broker_addr()).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let ingest = TestIngest::spawn(broker.settings(None, &[("AMQP_URL", &via_proxy), ("PUBLISH_TIMEOUT", "2s")])).await;
    let event = |n: u32| {
        stripe_session_event(&format!("evt_outage_{n}"), "checkout.session.completed", "o", "paid", 100, "usd")
    };
    let post = |n: u32| {
        let body = event(n);
        let sig = stripe_signature(&body, STRIPE_SECRET);
        let ingest = &ingest;
        async move { ingest.post_stripe(&body, Some(&sig)).await }
    };

    assert_eq!(post(0).await.status(), 200, "healthy before the cut");

    proxy.cut();
    let mut accepted_while_down = Vec::new();
    for n in 1..=20 {
        let response = post(n).await;
        match response.status().as_u16() {
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                assert_eq!(error_code(response).await, "broker_unavailable");
            }
            other => accepted_while_down.push((n, other)),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted_while_down.is_empty(), "answers other than 503 while the broker was cut: {accepted_while_down:?}");
    let ready = ingest.client.get(ingest.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the broker is cut");

    proxy.restore();
    testkit::eventually("200 again after the broker returns", Duration::from_secs(20), || async {
        (post(100).await.status() == 200).then_some(())
    })
    .await;

    testkit::eventually("ready again", Duration::from_secs(20), || async {
        let r = ingest.client.get(ingest.url("/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let queued = broker.drain(&format!("{}.work", broker.prefix)).await;
    let keys: Vec<String> = queued
        .iter()
        .map(|m| {
            shared::envelope::header_str(m.delivery.properties.headers().as_ref().unwrap(), "x-event-key").unwrap()
        })
        .collect();
    assert!(keys.contains(&"evt_outage_0".to_string()));
    assert!(keys.contains(&"evt_outage_100".to_string()));
    assert!(
        keys.iter().all(|k| k == "evt_outage_0" || k == "evt_outage_100"),
        "an event answered 503 was queued: {keys:?}"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn an_event_the_broker_cannot_route_is_answered_503_not_200() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    // Without a binding, the mandatory publish comes back as a return followed by an ack.
    broker
        .channel()
        .queue_unbind(
            format!("{}.work", broker.prefix).into(),
            format!("{}.events", broker.prefix).into(),
            "#".into(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let body = stripe_session_event("evt_unroutable", "checkout.session.completed", "o", "paid", 100, "usd");
    let response = ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await;
    assert_eq!(response.status(), 503);
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("amqp_publish_total", &[("outcome", "unroutable")]), 1.0);
    ingest.stop().await;
}

#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    let mut requests = Vec::new();
    for i in 0..64 {
        let body =
            stripe_session_event(&format!("evt_shared_{i}"), "checkout.session.completed", "o", "paid", 100, "usd");
        let signature = stripe_signature(&body, STRIPE_SECRET);
        let (client, url) = (ingest.client.clone(), ingest.url(ingest::STRIPE_ROUTE));
        requests.push(tokio::spawn(async move {
            client.post(url).header("stripe-signature", signature).body(body).send().await.unwrap().status().as_u16()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("amqp_connects_total", &[]), 1.0, "one AMQP connection for every request");
    assert_eq!(metrics.value("amqp_publish_total", &[("outcome", "confirmed")]), 64.0);
    ingest.stop().await;
}

#[tokio::test]
async fn a_process_configured_with_another_delivery_limit_still_starts_and_publishes() {
    let broker = TestBroker::new().await;
    let first = broker.settings::<shared::IngestSettings>(None, &[("DELIVERY_LIMIT", "5")]);
    shared::topology::Topology::from_settings(&first.common).declare(broker.connection()).await.unwrap();
    // The work queue exists with x-delivery-limit 5; this ingest would declare 7.
    let ingest = TestIngest::spawn(broker.settings(None, &[("DELIVERY_LIMIT", "7")])).await;
    let body = stripe_session_event("evt_limit", "checkout.session.completed", "o", "paid", 100, "usd");
    assert_eq!(ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await.status(), 200);
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 1);
    ingest.stop().await;
}

#[tokio::test]
async fn a_silent_broker_means_503_and_unready_until_confirms_flow_again() {
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(broker_addr()).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let ingest = TestIngest::spawn(broker.settings(None, &[("AMQP_URL", &via_proxy), ("PUBLISH_TIMEOUT", "1s")])).await;
    let post = |key: &'static str| {
        let body = stripe_session_event(key, "checkout.session.completed", "o", "paid", 100, "usd");
        let ingest = &ingest;
        async move { ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await.status() }
    };
    assert_eq!(post("evt_before_stall").await, 200);

    // The connection stays open but nothing comes back: no confirm, no error.
    proxy.stall();
    assert_eq!(post("evt_during_stall").await, 503);
    let ready = ingest.client.get(ingest.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "unready while confirms do not flow");

    proxy.restore();
    testkit::eventually("ready again", Duration::from_secs(30), || async {
        let r = ingest.client.get(ingest.url("/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert_eq!(post("evt_after_stall").await, 200);
    ingest.stop().await;
}
