//! Notification delivery signs only what the worker wrote. The broker is not a trust boundary:
//! whoever may publish to the notifications exchange could otherwise have the worker sign, and
//! send to the app, a "payment.paid" for a payment nobody paid. Each message is checked against
//! the digest its `notifications` row keeps of the message the worker wrote, and its id against
//! the form the outbox writes; one that is not what the database holds goes to
//! the notification dead letters as `unverifiable`, counted apart from the endpoint's refusals
//! (it has an alert of its own), and the endpoint never sees it.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use lapin::BasicProperties;
use shared::envelope::header_str;
use shared::Provider;
use testkit::amqp::publish_confirmed_to;
use testkit::events::stripe_session_event;
use testkit::metrics::scrape;
use testkit::{Behavior, FakeEndpoint};
use uuid::Uuid;
use worker::domain::notification::NotificationMessage;

const WAIT: Duration = Duration::from_secs(30);
const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Publishes `message` to the notifications exchange as the outbox relay does.
async fn publish_notification(env: &Env, message: &NotificationMessage) {
    let body = serde_json::to_vec(message).unwrap();
    publish_as(env, &message.notification_id.to_string(), &message.kind, &body).await;
}

/// Publishes `body` to the notifications exchange with the message id `id`.
async fn publish_as(env: &Env, id: &str, kind: &str, body: &[u8]) {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into());
    let exchange = format!("{}.notifications", env.broker.prefix);
    publish_confirmed_to(&env.broker, &exchange, kind, body, properties).await;
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
    let genuine_body = endpoint.requests()[0].body.clone();
    let genuine: NotificationMessage = serde_json::from_slice(&genuine_body).unwrap();

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
    // The genuine one with a field the table does not hold changed (the amount), and the
    // genuine bytes under its id spelt another way (a new `webhook-id` for receivers).
    let mut reworded = genuine.clone();
    reworded.payment.amount = Some("1".into());
    publish_notification(&env, &reworded).await;
    let shouted = genuine.notification_id.to_string().to_uppercase();
    publish_as(&env, &shouted, &genuine.kind, &genuine_body).await;

    let dead_queue = format!("{}.notify.dead", env.broker.prefix);
    testkit::eventually("all four dead-lettered", WAIT, || async {
        (env.broker.count(&dead_queue).await == 4).then_some(())
    })
    .await;
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let dead = env.broker.wait_get(&dead_queue, WAIT).await;
        reasons.push(header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap());
    }
    reasons.sort();
    assert_eq!(reasons[0], "unverifiable: its message id is not a notification id", "{reasons:?}");
    assert!(
        reasons[1].starts_with("unverifiable: no notification") && reasons[1].ends_with("in the database"),
        "{reasons:?}"
    );
    for reason in &reasons[2..] {
        assert!(reason.starts_with("unverifiable: notification"), "{reasons:?}");
        assert!(reason.ends_with("is not the message the worker wrote (its digest differs)"), "{reasons:?}");
    }
    assert_eq!(endpoint.requests().len(), 1, "the endpoint got the genuine notification only");
    let metrics = scrape(&format!("http://{}/metrics", worker.addr)).await;
    assert_eq!(metrics.value("notifications_total", &[("stage", "unverifiable")]), 4.0);
    assert_eq!(metrics.value("notifications_total", &[("stage", "dead_lettered")]), 0.0, "no endpoint refused");
    assert_eq!(metrics.value("notifications_total", &[("stage", "delivered")]), 1.0);
    assert_eq!(env.status("order-unpaid").await, "pending");
    worker.stop().await;
}
