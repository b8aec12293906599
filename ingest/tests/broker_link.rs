//! Failures of the broker link stay as small as they are: a late confirm fails only its own
//! request, and a nack retires only its channel; neither reconnects.

mod common;

use std::time::Duration;

use common::TestIngest;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::{TcpProxy, TestBroker};

fn signed(key: &str) -> (Vec<u8>, String) {
    let body = stripe_session_event(key, "checkout.session.completed", "o", "paid", 100, "usd");
    let signature = stripe_signature(&body, STRIPE_SECRET);
    (body, signature)
}

#[tokio::test]
async fn a_late_confirm_fails_only_its_own_request_and_keeps_the_connection() {
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(common::broker_addr()).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let ingest = TestIngest::spawn(broker.settings(None, &[("AMQP_URL", &via_proxy), ("PUBLISH_TIMEOUT", "1s")])).await;
    let (body, sig) = signed("evt_before");
    assert_eq!(ingest.post_stripe(&body, Some(&sig)).await.status(), 200);

    // The broker goes quiet for 1.6 s: the first request waits past its 1 s timeout; the
    // second starts 0.9 s later and its confirm arrives within its own second.
    proxy.stall();
    let (late_body, late_sig) = signed("evt_late");
    let late = {
        let ingest = &ingest;
        async move { ingest.post_stripe(&late_body, Some(&late_sig)).await.status() }
    };
    let (next_body, next_sig) = signed("evt_next");
    let next = {
        let ingest = &ingest;
        async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            ingest.post_stripe(&next_body, Some(&next_sig)).await.status()
        }
    };
    let restore = async {
        tokio::time::sleep(Duration::from_millis(1600)).await;
        proxy.restore();
    };
    let (late, next, ()) = tokio::join!(late, next, restore);
    assert_eq!(late, 503, "the request whose confirm came too late is not told it was stored");
    assert_eq!(next, 200, "a request in flight at the same time is not failed with it");

    testkit::eventually("ready again", Duration::from_secs(10), || async {
        ingest.client.get(ingest.url("/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("amqp_connects_total", &[]), 1.0, "no reconnect for a slow confirm");
    assert_eq!(metrics.value("amqp_publish_total", &[("outcome", "timeout")]), 1.0);
    ingest.stop().await;
}

#[tokio::test]
async fn a_nack_retires_its_channel_and_the_next_publish_is_stored() {
    let broker = TestBroker::new().await;
    let settings = broker.settings::<shared::IngestSettings>(None, &[]);
    // The work queue holds one message and refuses (nacks) publishes beyond it. Ingest's own
    // declaration then differs in its arguments, which it tolerates.
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    let work = format!("{}.work", broker.prefix);
    broker
        .channel()
        .queue_declare(work.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .unwrap();
    let ingest = TestIngest::spawn(settings).await;

    // A quorum queue applies its length limit a little late; within a few publishes it refuses.
    let mut stored = 0;
    for i in 0..10 {
        let (body, sig) = signed(&format!("evt_{i}"));
        match ingest.post_stripe(&body, Some(&sig)).await.status().as_u16() {
            200 => stored += 1,
            503 => break,
            other => panic!("unexpected answer {other}"),
        }
    }
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("amqp_publish_total", &[("outcome", "nacked")]), 1.0, "the queue refused one");
    assert_eq!(metrics.value("amqp_channels_retired_total", &[]), 1.0, "the nacking channel was retired");
    assert_eq!(broker.drain(&work).await.len(), stored, "every 200 is in the queue, nothing else");
    let (body, sig) = signed("evt_after");
    assert_eq!(ingest.post_stripe(&body, Some(&sig)).await.status(), 200);
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("amqp_connects_total", &[]), 1.0, "a nack does not cost the connection");
    assert!(ingest.client.get(ingest.url("/readyz")).send().await.unwrap().status().is_success());
    ingest.stop().await;
}
