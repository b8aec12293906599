//! Dead letters stay until an operator replays or purges them: reading them any number of
//! times (as `hookctl dead list` and `show` do, returning each one) never pushes one out,
//! whatever delivery limit the broker would otherwise apply.

mod common;

use std::time::Duration;

use common::Env;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use shared::settings::WorkerSettings;

const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Far more reads than any delivery limit in play: RabbitMQ 4's default (20) and this
/// project's `DELIVERY_LIMIT` default (20).
const READS: usize = 60;

/// Runs hookctl with HTTP notification delivery on, as the topology here is declared (only then
/// is there a `{p}.notify.dead` queue for `--notifications`).
async fn hookctl(env: &Env, args: &[&str]) -> (bool, String) {
    env.hookctl(&[("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/"), ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET)], args).await
}

/// Puts a persistent message straight into `queue` and waits for the broker's confirm.
async fn park(env: &Env, queue: &str, id: &str) {
    let mut headers = FieldTable::default();
    headers.insert("x-event-key".into(), AMQPValue::LongString(id.into()));
    headers.insert("x-dead-reason".into(), AMQPValue::LongString("permanent: test".into()));
    let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(id.into()).with_headers(headers);
    let body = format!("{{\"id\":\"{id}\"}}");
    testkit::amqp::publish_confirmed_to(&env.broker, "", queue, body.as_bytes(), properties).await;
}

/// Reads the message at the head of `queue` without acknowledging it, then closes the channel,
/// which returns it: exactly what hookctl does. Returns the broker's `x-delivery-count` of it.
async fn look(env: &Env, queue: &str) -> i64 {
    let channel = env.broker.connection().create_channel().await.unwrap();
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{queue} lost its dead letter"));
    let _ = channel.close(200, "".into()).await;
    let headers = message.delivery.properties.headers().clone().unwrap_or_default();
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        _ => 0,
    }
}

#[tokio::test]
async fn reading_dead_letters_many_more_times_than_any_delivery_limit_never_drops_them() {
    let env = Env::new().await;
    let settings = env.settings(&[
        ("DELIVERY_LIMIT", "2"),
        ("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/"),
        ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET),
    ]);
    env.declare(&settings).await;
    let topology = worker::Worker::topology(&settings);
    let queues = [topology.dead_queue(), topology.notify_dead_queue()];
    for queue in &queues {
        park(&env, queue, &format!("evt_kept_{queue}")).await;
        park(&env, queue, &format!("evt_second_{queue}")).await;
    }

    let mut counted = 0;
    for _ in 0..READS {
        for queue in &queues {
            counted = look(&env, queue).await;
        }
    }
    // The broker counted the returns (so a limit below READS would have fired).
    assert!(counted >= READS as i64 - 1, "the broker counts each return as a delivery (x-delivery-count {counted})");
    // And the operator's tool, a few more times, with its own reading of every message.
    for _ in 0..3 {
        let (ok, out) = hookctl(&env, &["dead", "list"]).await;
        assert!(ok && out.contains(&format!("evt_kept_{}", queues[0])), "{out}");
        let (ok, out) = hookctl(&env, &["dead", "list", "--notifications"]).await;
        assert!(ok && out.contains(&format!("evt_kept_{}", queues[1])), "{out}");
    }

    for queue in &queues {
        testkit::eventually("every message back in its queue", Duration::from_secs(10), || async {
            (env.broker.count(queue).await == 2).then_some(())
        })
        .await;
        let ids: Vec<String> = env
            .broker
            .drain(queue)
            .await
            .iter()
            .map(|m| m.delivery.properties.message_id().as_ref().unwrap().to_string())
            .collect();
        assert_eq!(ids, [format!("evt_kept_{queue}"), format!("evt_second_{queue}")], "both kept, in order");
    }
}

#[tokio::test]
async fn a_dead_letter_queue_declared_without_the_limit_is_kept_with_its_messages() {
    let env = Env::new().await;
    let settings: WorkerSettings = env.settings(&[]);
    let topology = worker::Worker::topology(&settings);
    // The dead-letter queue as an earlier version declared it: quorum, no delivery limit.
    let channel = env.broker.connection().create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(
            topology.dead_queue().as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            args,
        )
        .await
        .unwrap();
    park(&env, &topology.dead_queue(), "evt_old").await;

    // The worker declares at every start; the old queue must neither fail that nor be replaced.
    topology.declare(env.broker.connection()).await.expect("declaring over the old queue succeeds");
    assert_eq!(env.broker.count(&topology.dead_queue()).await, 1);
    let (ok, out) = hookctl(&env, &["dead", "list"]).await;
    assert!(ok && out.contains("evt_old"), "{out}");
}

/// The delivery limit the dead-letter queues must carry, written out here rather than read from
/// the code under test: a billion returns, a number on every RabbitMQ version. (Not RabbitMQ
/// 4's default of 20, which the 21st look would exceed; not `-1`, which RabbitMQ 3.x takes as a
/// limit the first return exceeds.)
const EXPECTED_DEAD_LETTER_LIMIT: i64 = 1_000_000_000;

/// Redeclares `queue` (not passively: a passive declare ignores arguments) as a durable quorum
/// queue with `delivery_limit` (none: no `x-delivery-limit` at all), on a channel of its own
/// since a refusal closes the channel. RabbitMQ compares the arguments with the queue's own.
async fn redeclare_with_limit(env: &Env, queue: &str, delivery_limit: Option<i64>) -> Result<(), lapin::Error> {
    let channel = env.broker.connection().create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    if let Some(limit) = delivery_limit {
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
    }
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    let result = channel.queue_declare(queue.into(), options, args).await.map(|_| ());
    let _ = channel.close(200, "".into()).await;
    result
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if e.kind() == &lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED))
}

/// Pins the value production declares: change `DEAD_LETTER_DELIVERY_LIMIT` (or drop it from
/// `shared::topology::dead_letter_args`) and this fails.
#[tokio::test]
async fn the_dead_letter_queues_are_declared_with_a_limit_of_a_billion_returns() {
    let env = Env::new().await;
    let settings =
        env.settings(&[("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/"), ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET)]);
    env.declare(&settings).await;
    let topology = worker::Worker::topology(&settings);
    for queue in [topology.dead_queue(), topology.notify_dead_queue()] {
        redeclare_with_limit(&env, &queue, Some(EXPECTED_DEAD_LETTER_LIMIT))
            .await
            .unwrap_or_else(|e| panic!("{queue} was declared with x-delivery-limit {EXPECTED_DEAD_LETTER_LIMIT}: {e}"));
        // The control: the broker does compare the limit, so the success above says something.
        for other in [Some(20), Some(-1), Some(EXPECTED_DEAD_LETTER_LIMIT - 1), None] {
            let refused = redeclare_with_limit(&env, &queue, other)
                .await
                .expect_err(&format!("a redeclaration of {queue} with x-delivery-limit {other:?} must be refused"));
            assert!(is_precondition_failed(&refused), "{queue}, limit {other:?}: {refused}");
        }
    }
}

/// A message whose headers nest tables as deep as a frame allows, put into the dead letters by
/// whoever may publish there (or by the broker, after it aborted workers that lacked the stack
/// for it): `hookctl` lists it, shows it without those headers, refuses to replay it, and keeps
/// it, where a copy, a `Debug` print or a parse on a default stack would have aborted it.
#[tokio::test]
async fn a_dead_letter_with_headers_nested_as_deep_as_a_frame_allows_is_listed_shown_and_not_replayed() {
    let env = Env::new().await;
    env.declare(&env.settings::<WorkerSettings>(&[])).await;
    // Room for what the broker adds when it delivers the letter again (`x-delivery-count`):
    // every read of hookctl's returns it.
    let depth = testkit::raw_amqp::deepest_nesting(128 * 1024) - 16;
    let headers = testkit::raw_amqp::nested_headers(
        depth,
        &[("x-event-key", "evt_deep_dead"), ("x-dead-reason", "permanent: parked by hand")],
    );
    testkit::raw_amqp::publish_with_headers(&testkit::amqp_url(), "", &env.dead_queue(), &headers, b"{\"id\":1}")
        .await
        .expect("the dead-letter queue takes it");

    let (ok, out) = hookctl(&env, &["dead", "list"]).await;
    assert!(ok && out.contains("evt_deep_dead") && out.contains("parked by hand"), "{out}");
    let (ok, out) = hookctl(&env, &["dead", "show", "evt_deep_dead"]).await;
    assert!(ok && out.contains("not shown: nested more than 8 deep"), "{out}");
    let (ok, out) = hookctl(&env, &["dead", "replay", "evt_deep_dead"]).await;
    assert!(ok && out.contains("not replayed evt_deep_dead") && out.contains("nested more than 8 deep"), "{out}");
    testkit::eventually("the letter kept", Duration::from_secs(30), || async {
        (env.broker.count(&env.dead_queue()).await == 1).then_some(())
    })
    .await;
    assert_eq!(env.broker.count(&env.work_queue()).await, 0, "nothing replayed");
}
