//! The broker is not a trust boundary: whoever may publish to the events exchange can send a
//! message no ingest would. One whose `headers` nest tables as deep as the broker's frame size
//! allows is parsed, and dropped, by recursive code; on a default thread stack it aborts the
//! worker process, again on every redelivery. The worker runs on stacks sized for it
//! (`shared::runtime`), refuses headers nested past 8 levels or larger than 16 KiB as no
//! envelope, and parks such a message without them: a copy with them (and a reason added)
//! could pass the broker's frame size, and the broker would close the worker's connection
//! instead of taking it, again on every redelivery.

mod common;

use std::time::Duration;

use common::{spawn_worker_process, Env};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use shared::envelope::{header_str, H_DEAD_REASON, H_HEADERS_DROPPED};
use shared::Provider;
use testkit::amqp::publish_confirmed;
use testkit::events::stripe_session_event;
use testkit::raw_amqp::{deepest_nesting, nested_headers, publish_with_headers};

const WAIT: Duration = Duration::from_secs(60);
const TYPE: &str = "checkout.session.completed";

/// RabbitMQ's default `frame_max`, which the test broker keeps.
const FRAME_MAX: u32 = 128 * 1024;

#[tokio::test]
async fn a_message_with_headers_nested_as_deep_as_a_frame_allows_is_parked_and_the_worker_goes_on() {
    let env = Env::new().await;
    env.declare(&env.settings(&[])).await;
    let depth = deepest_nesting(FRAME_MAX);
    let body = stripe_session_event("evt_deep", TYPE, "order-deep", "paid", 3000, "usd");
    let exchange = format!("{}.events", env.broker.prefix);
    let frame_max = publish_with_headers(
        &testkit::amqp_url(),
        &exchange,
        "stripe.checkout.session.completed",
        &nested_headers(depth, &[]),
        &body,
    )
    .await
    .expect("the broker takes the deep message");
    assert_eq!(frame_max, FRAME_MAX, "the test broker's frame_max, which sets how deep headers nest");
    parked_without_its_headers_while_the_worker_goes_on(&env, &body, "nested more than 8 deep").await;
}

#[tokio::test]
async fn a_message_with_headers_as_large_as_a_frame_allows_is_parked_and_the_worker_goes_on() {
    let env = Env::new().await;
    env.declare(&env.settings(&[])).await;
    // Flat, within a frame by a few bytes: the dead letter's reason and time would not fit.
    let mut headers = FieldTable::default();
    headers.insert("x-big".into(), AMQPValue::LongString("x".repeat(FRAME_MAX as usize - 72).into()));
    let body = stripe_session_event("evt_large", TYPE, "order-large", "paid", 3000, "usd");
    let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    publish_confirmed(&env.broker, "stripe.checkout.session.completed", &body, properties).await;
    parked_without_its_headers_while_the_worker_goes_on(&env, &body, "larger than 16 KiB").await;
}

/// With the hostile message (its body `body`) queued, queues a genuine event behind it and
/// starts one worker process: the genuine event is applied, the hostile message is parked with
/// its body and the reason `why` instead of its headers, and the worker never died.
async fn parked_without_its_headers_while_the_worker_goes_on(env: &Env, body: &[u8], why: &str) {
    let paid = env.seed_payment("order-after", "stripe", Some(3000), Some("usd")).await;
    let genuine = stripe_session_event("evt_after", TYPE, "order-after", "paid", 3000, "usd");
    env.publish(Provider::Stripe, TYPE, "evt_after", &genuine).await;
    assert_eq!(env.broker.count(&env.work_queue()).await, 2);

    let mut worker = spawn_worker_process(&env.env_vars(&[]));
    let settled = async {
        env.wait_count(
            "the genuine event behind the hostile one applied",
            "SELECT count(*) FROM payments WHERE order_id = 'order-after' AND payment_status = 'paid'",
            1,
            WAIT,
        )
        .await;
        testkit::eventually("the hostile message parked, none waiting", WAIT, || async {
            let (dead, waiting) =
                (env.broker.count(&env.dead_queue()).await, env.broker.count(&env.work_queue()).await);
            (dead == 1 && waiting == 0).then_some(())
        })
        .await;
    };
    tokio::select! {
        exited = worker.wait() => panic!("the worker died on the hostile message ({why}): {exited:?}"),
        () = settled => {}
    }
    assert_eq!(env.notifications_for(paid.trainer_id).await, 1);
    // The dead letter keeps the body and says why, without the headers: nested that deep they
    // would overflow whoever reads it (this test's own AMQP client included).
    let dead = env.broker.get(&env.dead_queue()).await.expect("the dead letter");
    let headers = dead.delivery.properties.headers().clone().unwrap_or_default();
    assert_eq!(header_str(&headers, H_HEADERS_DROPPED).as_deref(), Some(why));
    let reason = header_str(&headers, H_DEAD_REASON).unwrap_or_default();
    assert!(reason.contains(why), "{reason}");
    assert_eq!(dead.delivery.data, body);
    // Still running, and was never restarted: this one process handled both.
    assert!(worker.try_wait().expect("the worker's status").is_none(), "the worker is still running");
    common::kill_hard(&mut worker).await;
}
