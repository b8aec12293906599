//! Notification delivery signs only what the worker wrote. The broker is not a trust boundary:
//! whoever may publish to the notifications exchange could otherwise have the worker sign, and
//! send to the app, a "payment.paid" for a payment nobody paid. Each message is checked against
//! its `notifications` row and payment first; one that is not what the database holds goes to
//! the notification dead letters as `unverifiable`, and the endpoint never sees it.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use lapin::BasicProperties;
use shared::envelope::header_str;
use shared::Provider;
use testkit::amqp::publish_confirmed_to;
use testkit::events::stripe_session_event;
use testkit::{Behavior, FakeEndpoint};
use uuid::Uuid;
use worker::domain::notification::NotificationMessage;

const WAIT: Duration = Duration::from_secs(30);
const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Publishes `message` to the notifications exchange as the outbox relay does.
async fn publish_notification(env: &Env, message: &NotificationMessage) {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.notification_id.to_string().into());
    let exchange = format!("{}.notifications", env.broker.prefix);
    publish_confirmed_to(&env.broker, &exchange, &message.kind, &serde_json::to_vec(message).unwrap(), properties)
        .await;
}

#[tokio::test]
async fn a_notification_the_database_does_not_hold_is_never_signed_and_is_dead_lettered() {
    let env = Env::new().await;
    env.seed_payment("order-genuine", "stripe", Some(1000), Some("usd")).await;
    let unpaid = env.seed_payment("order-unpaid", "stripe", Some(1000), Some("usd")).await;
    let endpoint = FakeEndpoint::start(vec![Behavior::Status(200, "{}".into())]).await;
    let url = endpoint.url("/hooks/notify");
    let worker = TestWorker::spawn(env.settings(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET),
        ("RETRY_DELAYS", "200ms"),
    ]))
    .await;
    let body = stripe_session_event("evt_genuine", "checkout.session.completed", "order-genuine", "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_genuine", &body).await;
    testkit::eventually("the genuine notification delivered", WAIT, || async {
        (endpoint.requests().len() == 1).then_some(())
    })
    .await;
    let genuine: NotificationMessage = serde_json::from_slice(&endpoint.requests()[0].body).unwrap();

    // A notification of its own for a payment nobody paid, and the genuine one turned into
    // that payment's.
    let mut invented = genuine.clone();
    invented.notification_id = Uuid::new_v4();
    invented.payment.id = unpaid.payment_id;
    invented.payment.order_id = "order-unpaid".into();
    let mut altered = genuine.clone();
    altered.payment.order_id = "order-unpaid".into();
    publish_notification(&env, &invented).await;
    publish_notification(&env, &altered).await;

    let dead_queue = format!("{}.notify.dead", env.broker.prefix);
    testkit::eventually("both dead-lettered", WAIT, || async {
        (env.broker.count(&dead_queue).await == 2).then_some(())
    })
    .await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let dead = env.broker.wait_get(&dead_queue, WAIT).await;
        reasons.push(header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap());
    }
    reasons.sort();
    assert!(
        reasons[0].starts_with("unverifiable: no notification") && reasons[0].ends_with("in the database"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("unverifiable: notification") && reasons[1].ends_with("in payment.order_id"),
        "{reasons:?}"
    );
    assert_eq!(endpoint.requests().len(), 1, "the endpoint got the genuine notification only");
    assert_eq!(env.status("order-unpaid").await, "pending");
    worker.stop().await;
}
