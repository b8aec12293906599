//! The broker is not a trust boundary: whoever may publish to the events exchange can send a
//! message no ingest would. One whose `headers` nest tables as deep as the broker's frame size
//! allows is parsed, and dropped, by recursive code; on a default thread stack it aborts the
//! worker process, again on every redelivery. The worker runs on stacks sized for it
//! (`shared::runtime`): it parks the message, without those headers, and goes on.

mod common;

use std::time::Duration;

use common::{spawn_worker_process, Env};
use shared::envelope::{header_str, H_DEAD_REASON, H_HEADERS_DROPPED};
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::raw_amqp::{deepest_nesting, nested_headers, publish_with_headers};

const WAIT: Duration = Duration::from_secs(60);

/// RabbitMQ's default `frame_max`, which the test broker keeps.
const FRAME_MAX: u32 = 128 * 1024;

#[tokio::test]
async fn a_message_with_headers_nested_as_deep_as_a_frame_allows_is_parked_and_the_worker_goes_on() {
    let env = Env::new().await;
    let vars = env.env_vars(&[]);
    env.declare(&env.settings(&[])).await;
    let paid = env.seed_payment("order-after-deep", "stripe", Some(3000), Some("usd")).await;

    // First the hostile message, then a genuine one behind it in the queue.
    let depth = deepest_nesting(FRAME_MAX);
    let headers = nested_headers(depth);
    let body = stripe_session_event("evt_deep", "checkout.session.completed", "order-deep", "paid", 3000, "usd");
    let exchange = format!("{}.events", env.broker.prefix);
    let frame_max =
        publish_with_headers(&testkit::amqp_url(), &exchange, "stripe.checkout.session.completed", &headers, &body)
            .await
            .expect("the broker takes the deep message");
    assert_eq!(frame_max, FRAME_MAX, "the test broker's frame_max, which sets how deep headers nest");
    let genuine =
        stripe_session_event("evt_after_deep", "checkout.session.completed", "order-after-deep", "paid", 3000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_after_deep", &genuine).await;
    assert_eq!(env.broker.count(&env.work_queue()).await, 2);

    let mut worker = spawn_worker_process(&vars);
    let settled = async {
        env.wait_count(
            "the genuine event behind the deep one applied",
            "SELECT count(*) FROM payments WHERE order_id = 'order-after-deep' AND payment_status = 'paid'",
            1,
            WAIT,
        )
        .await;
        testkit::eventually("the deep message parked, none waiting", WAIT, || async {
            let (dead, waiting) =
                (env.broker.count(&env.dead_queue()).await, env.broker.count(&env.work_queue()).await);
            (dead == 1 && waiting == 0).then_some(())
        })
        .await;
    };
    tokio::select! {
        exited = worker.wait() => panic!("the worker died on a message with {depth} levels of headers: {exited:?}"),
        () = settled => {}
    }
    assert_eq!(env.notifications_for(paid.trainer_id).await, 1);
    // The dead letter keeps the body and says why, without the headers: nested that deep they
    // would overflow whoever reads it (this test's own AMQP client included).
    let dead = env.broker.get(&env.dead_queue()).await.expect("the dead letter");
    let headers = dead.delivery.properties.headers().clone().unwrap_or_default();
    assert_eq!(header_str(&headers, H_HEADERS_DROPPED).as_deref(), Some("nested more than 8 deep"));
    let reason = header_str(&headers, H_DEAD_REASON).unwrap_or_default();
    assert!(reason.contains("nested more than 8 deep"), "{reason}");
    assert_eq!(dead.delivery.data, body);
    // Still running, and was never restarted: this one process handled both.
    assert!(worker.try_wait().expect("the worker's status").is_none(), "the worker is still running");
    common::kill_hard(&mut worker).await;
}
