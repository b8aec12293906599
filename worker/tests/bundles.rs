//! A bundle (several webhooks in one broker message, as ingest sends them with
//! `INGEST_BUNDLE_MAX`) is opened into one delivery per webhook, and each is settled on its own
//! merits: a forged or inconsistent webhook in a bundle is dead-lettered alone, as a message of
//! one webhook, one whose payment does not exist yet goes to a delay tier alone, and the others
//! are applied once. Sharing a message with genuine webhooks proves nothing about a webhook.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use lapin::BasicProperties;
use shared::envelope::header_str;
use shared::Provider;
use testkit::amqp::{envelope_as_ingest, publish_confirmed};
use testkit::events::{stripe_session_event, STRIPE_SECRET};

const WAIT: Duration = Duration::from_secs(30);
const TYPE: &str = "checkout.session.completed";

/// A Stripe webhook as ingest would put it in a bundle, signed with `secret`.
fn webhook(key: &str, order: &str, amount: i64, secret: &str) -> (BasicProperties, Vec<u8>) {
    let body = stripe_session_event(key, TYPE, order, "paid", amount, "usd");
    (envelope_as_ingest(Provider::Stripe, TYPE, key, &body, secret).properties(), body)
}

#[tokio::test]
async fn each_webhook_of_a_bundle_is_settled_on_its_own_and_a_forged_one_changes_nothing() {
    let env = Env::new().await;
    let settings = env.settings(&[("RETRY_DELAYS", "300ms,600ms"), ("RETRY_MAX_ATTEMPTS", "20")]);
    env.declare(&settings).await;
    let ok = [
        env.seed_payment("order-b1", "stripe", Some(3000), Some("usd")).await,
        env.seed_payment("order-b2", "stripe", Some(3000), Some("usd")).await,
    ];
    let forged = env.seed_payment("order-forged", "stripe", Some(3000), Some("usd")).await;
    let mismatched = env.seed_payment("order-amount", "stripe", Some(3000), Some("usd")).await;

    let entries = vec![
        webhook("evt_b1", "order-b1", 3000, STRIPE_SECRET),
        webhook("evt_forged", "order-forged", 3000, "whsec_guessed"),
        webhook("evt_amount", "order-amount", 1, STRIPE_SECRET),
        webhook("evt_early", "order-early", 3000, STRIPE_SECRET),
        webhook("evt_b2", "order-b2", 3000, STRIPE_SECRET),
    ];
    let forged_body = entries[1].1.clone();
    let mismatched_body = entries[2].1.clone();
    let bundle = shared::bundle::encode(&entries);
    publish_confirmed(&env.broker, "bundle", &bundle, shared::bundle::properties(entries.len())).await;

    let worker = TestWorker::spawn(settings).await;
    for order in ["order-b1", "order-b2"] {
        env.wait_count(
            "the genuine webhooks applied",
            &format!("SELECT count(*) FROM payments WHERE order_id = '{order}' AND payment_status = 'paid'"),
            1,
            WAIT,
        )
        .await;
    }
    // The two that prove nothing are parked, each alone, with its own body and reason.
    let mut dead = Vec::new();
    for _ in 0..2 {
        let message = env.broker.wait_get(&env.dead_queue(), WAIT).await;
        assert!(!shared::bundle::is_bundle(&message.delivery.properties), "parked as a single webhook");
        let reason = header_str(message.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
        dead.push((message.delivery.data.clone(), reason));
    }
    dead.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(dead[0].0, mismatched_body, "{dead:?}");
    assert!(dead[0].1.starts_with("permanent: amount mismatch"), "{}", dead[0].1);
    assert_eq!(dead[1].0, forged_body);
    assert!(dead[1].1.contains("signature"), "{}", dead[1].1);
    for (order, what) in [("order-forged", "a forged webhook"), ("order-amount", "an amount mismatch")] {
        assert_eq!(env.status(order).await, "pending", "{what} changes nothing");
    }
    assert_eq!(env.notifications_for(forged.trainer_id).await, 0);
    assert_eq!(env.notifications_for(mismatched.trainer_id).await, 0);

    // The webhook whose payment is not there yet waits in a delay tier, alone, until it is.
    env.wait_count(
        "the early webhook retried",
        "SELECT count(*) FROM webhook_events WHERE event_key = 'evt_early' AND status = 'retrying'",
        1,
        WAIT,
    )
    .await;
    let early = env.seed_payment("order-early", "stripe", Some(3000), Some("usd")).await;
    env.wait_count(
        "the early webhook applied once its payment exists",
        "SELECT count(*) FROM payments WHERE order_id = 'order-early' AND payment_status = 'paid'",
        1,
        WAIT,
    )
    .await;

    for seeded in ok.iter().chain([&early]) {
        assert_eq!(env.notifications_for(seeded.trainer_id).await, 1, "notified once");
    }
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE status = 'applied'").await, 3);
    assert_eq!(env.count("SELECT coalesce(sum(duplicates), 0) FROM webhook_events").await, 0);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "nothing else parked");
    let metrics = testkit::metrics::scrape(&format!("http://{}/metrics", worker.addr)).await;
    assert_eq!(metrics.value("worker_bundles_total", &[("way", "opened")]), 1.0);
    assert_eq!(metrics.value("worker_bundles_total", &[("way", "split")]), 0.0);
    // Batches count webhooks: the bundle's batch is 5, every later one (the early webhook's
    // retries) 1.
    let (batches, webhooks) =
        (metrics.value("worker_batch_size_count", &[]), metrics.value("worker_batch_size_sum", &[]));
    assert_eq!(webhooks - batches, 4.0, "{webhooks} webhooks in {batches} batches");
    worker.stop().await;
    // The bundle itself was settled: nothing of it waits in the work queue.
    assert_eq!(env.broker.count(&env.work_queue()).await, 0);
}

#[tokio::test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the test hooks: --features worker/failpoints")]
async fn a_bundle_that_kills_every_worker_is_split_and_each_webhook_parked_alone_by_the_delivery_limit() {
    let env = Env::new().await;
    let settings = env.settings(&[("DELIVERY_LIMIT", "2")]);
    env.declare(&settings).await;
    let keys = ["evt_poison_a", "evt_poison_b", "evt_poison_c"];
    let entries: Vec<_> = keys.iter().map(|key| webhook(key, &format!("order-{key}"), 3000, STRIPE_SECRET)).collect();
    for key in keys {
        env.seed_payment(&format!("order-{key}"), "stripe", Some(3000), Some("usd")).await;
    }
    publish_confirmed(&env.broker, "bundle", &shared::bundle::encode(&entries), shared::bundle::properties(3)).await;

    // Every worker dies on what it is given before settling it. The bundle comes back to the
    // next worker marked redelivered, which splits it into single messages before trying any;
    // those kill workers in turn until the broker's delivery limit parks each of them.
    let vars = env.env_vars(&[("DELIVERY_LIMIT", "2"), ("FAILPOINTS", "process-delivery=return")]);
    let crashes = env.crash_workers_until_parked(&vars, 3, 12).await;
    assert!(crashes >= 2, "the bundle and then its webhooks crashed workers ({crashes} crashes)");
    // Each webhook is parked on its own, as a message of one webhook that `hookctl` can replay.
    // Some may be parked twice, and the bundle itself too: the worker that split the bundle may
    // die on the split-off webhooks before its acknowledgement of the bundle reached the
    // broker, which then delivers the bundle again (split again, or parked whole at the limit).
    // Nothing is lost either way, and a webhook replayed twice is a duplicate in the inbox.
    let key =
        |body: &[u8]| serde_json::from_slice::<serde_json::Value>(body).unwrap()["id"].as_str().unwrap().to_owned();
    let mut singles = Vec::new();
    let mut bundled = Vec::new();
    while let Some(message) = env.broker.get(&env.dead_queue()).await {
        let properties = &message.delivery.properties;
        let headers = properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key("x-death"), "dead-lettered by the broker: {headers:?}");
        if shared::bundle::is_bundle(properties) {
            let webhooks = shared::bundle::decode(&message.delivery.data).expect("a whole bundle");
            bundled.push(webhooks.iter().map(|(_, body)| key(body)).collect::<Vec<_>>());
        } else {
            singles.push(key(&message.delivery.data));
        }
    }
    let distinct: std::collections::BTreeSet<&str> = singles.iter().map(String::as_str).collect();
    assert_eq!(distinct, keys.into_iter().collect(), "each webhook of the bundle parked on its own: {singles:?}");
    assert!(singles.len() <= 2 * keys.len(), "split at most twice: {singles:?}");
    assert!(bundled.len() <= 1 && bundled.iter().all(|b| *b == keys), "at most the bundle itself, whole: {bundled:?}");
    assert_eq!(env.broker.count(&env.work_queue()).await, 0, "nothing left to deliver");
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 0);
    // A webhook seen on its last delivery is recorded as dead before it is tried; one returned
    // unseen from a crashed worker's prefetch is parked without a row. None is recorded applied.
    for key in keys {
        if let Some((status, _, error)) = env.inbox(key).await {
            assert_eq!(status, "dead", "{key}");
            assert!(error.unwrap_or_default().contains("delivery limit"), "{key}: the reason names the delivery limit");
        }
    }
}
