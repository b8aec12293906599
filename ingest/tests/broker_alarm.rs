//! On a RabbitMQ node of the test's own, a memory alarm makes the broker block publishers:
//! ingest answers 503 promptly (never waiting past `PUBLISH_TIMEOUT`), `/readyz` is 503, and
//! both recover without a restart when the alarm clears.

mod common;

use std::time::{Duration, Instant};

use common::TestIngest;
use shared::settings::{IngestSettings, Settings};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::RabbitCluster;

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_memory_alarm_means_prompt_503_and_unready_until_it_clears() {
    let cluster = RabbitCluster::start(1).await;
    let node = &cluster.nodes[0];
    let url = node.amqp_url();
    let prefix = testkit::unique("t");
    let settings = IngestSettings::from_vars([
        ("AMQP_URL", url.as_str()),
        ("AMQP_PREFIX", prefix.as_str()),
        ("INGEST_ADDR", "127.0.0.1:0"),
        ("INGEST_METRICS_ADDR", "127.0.0.1:0"),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
        ("PUBLISH_TIMEOUT", "2s"),
    ])
    .unwrap();
    let ingest = TestIngest::spawn(settings).await;
    let post = |key: String| {
        let ingest = &ingest;
        async move {
            let body = stripe_session_event(&key, "checkout.session.completed", "o", "paid", 100, "usd");
            let started = Instant::now();
            let status = ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await.status();
            (status.as_u16(), started.elapsed())
        }
    };
    let ready = || async { ingest.client.get(ingest.url("/readyz")).send().await.unwrap().status().as_u16() };
    assert_eq!(post("evt_before".into()).await.0, 200);

    node.ctl(&["set_vm_memory_high_watermark", "0.0000001"]).await;
    let mut answers = Vec::new();
    for i in 0..10 {
        answers.push(post(format!("evt_alarm_{i}")).await);
    }
    eprintln!("answers under the alarm: {answers:?}");
    assert!(answers.iter().all(|(status, _)| *status == 503), "only 503 while publishers are blocked: {answers:?}");
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap();
    assert!(
        slowest < PUBLISH_TIMEOUT + Duration::from_millis(500),
        "no answer waits past PUBLISH_TIMEOUT ({slowest:?})"
    );
    let last = answers.last().unwrap().1;
    assert!(last < Duration::from_millis(500), "once the broker said it blocks, 503 comes at once ({last:?})");
    assert_eq!(ready().await, 503, "not ready while the broker blocks publishers");

    node.ctl(&["set_vm_memory_high_watermark", "0.4"]).await;
    testkit::eventually("ready again after the alarm", Duration::from_secs(30), || async {
        (ready().await == 200).then_some(())
    })
    .await;
    assert_eq!(post("evt_after".into()).await.0, 200);
    ingest.stop().await;
}
