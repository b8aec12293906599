//! A copy the broker does not take (a queue full, a resource alarm, a lost confirm) is
//! published again while its delivery stays with the worker, unacknowledged. Returning the
//! delivery to its queue instead would spend one of its `DELIVERY_LIMIT` deliveries a round,
//! and the broker would park it after the last, a bundle with all its webhooks.

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
    let seeded = env.seed_payment("order-amount", "stripe", Some(3000), Some("usd")).await;
    let worker = TestWorker::spawn(env.settings(&[("DELIVERY_LIMIT", "2")])).await;
    let url = format!("http://{}/metrics", worker.addr);
    // The dead-letter queue is full and refuses what comes: one message in it, and a limit of
    // none (a quorum queue refuses once it is over its limit).
    let dead_queue = env.dead_queue();
    publish_confirmed_to(&env.broker, "", &dead_queue, b"already here", BasicProperties::default()).await;
    let full =
        QueuePolicy::set(&env.broker.prefix, r"\.dead$", r#"{"max-length":0,"overflow":"reject-publish"}"#).await;

    // A wrong amount: dead-lettered at once, so a copy for the dead-letter queue.
    let body = stripe_session_event("evt_held", "checkout.session.completed", "order-amount", "paid", 1, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_held", &body).await;
    // More rounds than the delivery limit allows deliveries (two, the first included) ...
    testkit::eventually("the copy refused four times", WAIT, || async {
        (scrape(&url).await.value("amqp_publish_total", &[("outcome", "nacked")]) >= 4.0).then_some(())
    })
    .await;
    // ... and the event is still the worker's: tried once, not returned and tried again.
    assert_eq!(env.broker.count(&env.work_queue()).await, 0, "not returned to the queue");
    let (status, attempts, _) = env.inbox("evt_held").await.expect("its attempt recorded");
    assert_eq!((status.as_str(), attempts), ("dead", 1));

    // The queue takes messages again: the copy goes in, and the delivery is acknowledged (a
    // worker that stops does not return it).
    full.clear();
    testkit::eventually("the copy parked", WAIT, || async { (env.broker.count(&dead_queue).await == 2).then_some(()) })
        .await;
    worker.stop().await;
    assert_eq!(env.broker.count(&env.work_queue()).await, 0, "acknowledged");
    assert_eq!(env.broker.wait_get(&dead_queue, WAIT).await.delivery.data, b"already here");
    let parked = env.broker.wait_get(&dead_queue, WAIT).await;
    assert_eq!(parked.delivery.data, body);
    let reason = header_str(parked.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.starts_with("permanent: amount mismatch"), "{reason}");
    assert_eq!(env.status("order-amount").await, "pending");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 0);
}
