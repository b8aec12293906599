//! A copy the broker does not take (a queue full, a resource alarm, a lost confirm) is
//! published again while its delivery stays with the worker, unacknowledged, and the rest of
//! its batch is acknowledged. Returning the delivery to its queue instead would spend one of
//! its `DELIVERY_LIMIT` deliveries a round, and the broker would park it after the last, a
//! bundle with all its webhooks.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use lapin::BasicProperties;
use shared::envelope::header_str;
use shared::Provider;
use testkit::amqp::publish_confirmed_to;
use testkit::broker_policy::QueuePolicy;
use testkit::events::stripe_session_event;
use testkit::metrics::scrape;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_copy_the_broker_does_not_take_is_published_again_without_spending_deliveries() {
    let env = Env::new().await;
    let ok = env.seed_payment("order-ok", "stripe", Some(3000), Some("usd")).await;
    let wrong = env.seed_payment("order-amount", "stripe", Some(3000), Some("usd")).await;
    // One batch for both events below: it waits for the second.
    let settings = env.settings(&[("DELIVERY_LIMIT", "2"), ("WORKER_BATCH_LINGER", "1s"), ("WORKER_BATCH_SIZE", "2")]);
    env.declare(&settings).await;
    // The dead-letter queue is full and refuses what comes: one message in it, and a limit of
    // none (a quorum queue refuses once it is over its limit).
    let dead_queue = env.dead_queue();
    publish_confirmed_to(&env.broker, "", &dead_queue, b"already here", BasicProperties::default()).await;
    let full =
        QueuePolicy::set(&env.broker.prefix, r"\.dead$", r#"{"max-length":0,"overflow":"reject-publish"}"#).await;

    // One batch: a wrong amount (dead-lettered at once, so a copy for the dead-letter queue)
    // and a good event.
    let held = stripe_session_event("evt_held", "checkout.session.completed", "order-amount", "paid", 1, "usd");
    let good = stripe_session_event("evt_ok", "checkout.session.completed", "order-ok", "paid", 3000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_held", &held).await;
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_ok", &good).await;
    let worker = TestWorker::spawn(settings.clone()).await;
    let url = format!("http://{}/metrics", worker.addr);
    // More rounds than the delivery limit allows deliveries (two, the first included) ...
    testkit::eventually("the copy refused four times", WAIT, || async {
        (scrape(&url).await.value("amqp_publish_total", &[("outcome", "nacked")]) >= 4.0).then_some(())
    })
    .await;
    // ... and the event is still the worker's: tried once, not returned and tried again.
    assert_eq!(env.broker.count(&env.work_queue()).await, 0, "not returned to the queue");
    assert_eq!(env.inbox("evt_held").await.map(|(s, a, _)| (s, a)), Some(("dead".into(), 1)));
    assert_eq!(env.status("order-ok").await, "paid");
    // Stopping returns the waiting delivery, and only it: the rest of its batch was
    // acknowledged meanwhile.
    worker.stop().await;
    assert_eq!(env.broker.count(&env.work_queue()).await, 1, "the waiting one returned, the applied one not");

    // Once the queue takes messages again, the next worker parks it; nothing is applied twice.
    full.clear();
    let worker = TestWorker::spawn(settings).await;
    testkit::eventually("the copy parked", WAIT, || async { (env.broker.count(&dead_queue).await == 2).then_some(()) })
        .await;
    worker.stop().await;
    assert_eq!(env.broker.count(&env.work_queue()).await, 0, "acknowledged");
    assert_eq!(env.broker.wait_get(&dead_queue, WAIT).await.delivery.data, b"already here");
    let parked = env.broker.wait_get(&dead_queue, WAIT).await;
    assert_eq!(parked.delivery.data, held);
    let reason = header_str(parked.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.starts_with("permanent: amount mismatch"), "{reason}");
    assert_eq!(env.status("order-amount").await, "pending");
    assert_eq!(env.notifications_for(wrong.trainer_id).await, 0);
    assert_eq!(env.notifications_for(ok.trainer_id).await, 1, "the good event applied once");
    assert_eq!(env.count("SELECT coalesce(sum(duplicates), 0) FROM webhook_events").await, 0);
}
