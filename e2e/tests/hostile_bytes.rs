//! Hostile bytes published straight to the work queue (past ingest's checks, as a direct
//! publish or a replay would be): each such message is dead-lettered alone with its reason and
//! recorded with what was made safe, and the batch it came in commits in one transaction.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use shared::envelope::{header_str, H_DEAD_REASON, H_EVENT_KEY};
use shared::settings::WorkerSettings;
use shared::topology::Topology;
use shared::Provider;
use testkit::events::{stripe_payment_failed, stripe_session_event, toss_deposit_callback};

const WAIT: Duration = Duration::from_secs(60);

/// One worker, one batch slot, room for every delivery of the test in one batch, and a first
/// retry tier an hour away, so a retried message would still be sitting in it.
fn one_big_batch(env: &Env) -> WorkerSettings {
    env.settings(&[
        ("WORKER_CONCURRENCY", "1"),
        ("WORKER_BATCH_SIZE", "200"),
        ("WORKER_BATCH_LINGER", "1s"),
        ("RETRY_DELAYS", "1h"),
        ("TOSS_ALLOW_UNVERIFIED", "true"),
    ])
}

/// `(batches, deliveries in them)` as the worker counted them.
async fn batches(worker: &TestWorker) -> (f64, f64) {
    let metrics = testkit::metrics::scrape(&format!("http://{}/metrics", worker.addr)).await;
    (metrics.value("worker_batch_size_count", &[]), metrics.value("worker_batch_size_sum", &[]))
}

/// How many transactions wrote the inbox rows (each row's `xmin` is the transaction that wrote
/// it last).
async fn inbox_transactions(env: &Env) -> i64 {
    env.count("SELECT count(DISTINCT xmin::text) FROM webhook_events").await
}

/// Nothing went to a delay tier: no row is retrying, none was tried twice, the tier is empty.
async fn assert_nothing_retried(env: &Env, settings: &WorkerSettings) {
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE status = 'retrying' OR attempts <> 1").await, 0);
    assert_eq!(
        env.broker.count(&Topology::from_settings(&settings.common).retry_queue(0)).await,
        0,
        "the retry tier is empty"
    );
}

async fn publish_paid(env: &Env, key: &str, order: &str) {
    let body = stripe_session_event(key, "checkout.session.completed", order, "paid", 3000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", key, &body).await;
}

#[tokio::test]
async fn a_nul_in_one_key_among_a_hundred_valid_events_costs_the_others_nothing() {
    let env = &Env::new().await;
    for i in 0..100 {
        env.seed_payment(&format!("hb-{i}"), "stripe", Some(3000), Some("usd")).await;
    }
    env.seed_payment("hb-bad", "stripe", Some(3000), Some("usd")).await;
    let settings = one_big_batch(env);
    env.declare(&settings).await;
    // The worst case: a NUL in the dedupe key, which goes into every statement's key array.
    let bad_key = "evt_hb\0bad";
    for i in 0..100 {
        if i == 50 {
            publish_paid(env, bad_key, "hb-bad").await;
        }
        publish_paid(env, &format!("evt_hb_{i}"), &format!("hb-{i}")).await;
    }

    let worker = TestWorker::spawn(settings.clone()).await;
    env.wait_count("100 applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 100, WAIT).await;
    assert_eq!(batches(&worker).await, (1.0, 101.0), "one batch of 101");
    // (Replace the `screen` call in `Item::read` (worker/src/pipeline/item.rs) with the order id of
    // the event to see the database refuse the batch: the hundred are then applied one
    // transaction each, and the bad one goes unrecorded.)
    assert_eq!(inbox_transactions(env).await, 1, "the hundred and the bad one's record in one transaction");
    assert_eq!(env.count("SELECT count(*) FROM webhook_events").await, 101);
    assert_nothing_retried(env, &settings).await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 100);
    assert_eq!(env.status("hb-bad").await, "pending");

    // Recorded with its key escaped, and parked with its reason.
    let (status, attempts, error) = env.inbox(r"evt_hb\u{0}bad").await.expect("the bad one is recorded");
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    let error = error.unwrap();
    assert!(error.contains("x-event-key contains a control character (U+0000)"), "{error}");
    // The operator sees it, escaped.
    testkit::eventually("the bad one parked", WAIT, || async {
        (env.broker.count(&env.dead_queue()).await == 1).then_some(())
    })
    .await;
    let (ok, out) = env.hookctl(&[], &["dead", "list"]).await;
    assert!(ok && out.contains(r"evt_hb\u{0}bad") && out.contains("U+0000"), "{out}");
    assert!(!out.contains('\0'), "{out:?}");
    let parked = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let headers = parked.delivery.properties.headers().clone().unwrap();
    assert_eq!(header_str(&headers, H_EVENT_KEY).as_deref(), Some(bad_key), "the message itself is unchanged");
    let reason = header_str(&headers, H_DEAD_REASON).unwrap();
    assert!(reason.starts_with("permanent: ") && reason.contains("control character (U+0000)"), "{reason}");
    assert!(env.broker.get(&env.dead_queue()).await.is_none(), "only the bad one is dead");
    worker.stop().await;
}

#[tokio::test]
async fn a_number_past_postgres_numeric_range_among_a_hundred_valid_events_costs_the_others_nothing() {
    let env = &Env::new().await;
    for i in 0..100 {
        env.seed_payment(&format!("hn-{i}"), "stripe", Some(3000), Some("usd")).await;
    }
    env.seed_payment("hn-big", "stripe", Some(3000), Some("usd")).await;
    let settings = one_big_batch(env);
    env.declare(&settings).await;
    // Valid JSON, signed like any other, in a field nobody reads: `jsonb` refuses the number
    // ("value overflows numeric format"), and the object goes into the batch's one statement.
    let big = stripe_session_event("evt_hn_big", "checkout.session.completed", "hn-big", "paid", 3000, "usd");
    let big = String::from_utf8(big).unwrap().replace(r#""mode":"payment""#, r#""mode":"payment","tip":1e131072"#);
    assert!(big.contains("1e131072"), "the number is in the body");
    for i in 0..100 {
        if i == 50 {
            env.publish(Provider::Stripe, "checkout.session.completed", "evt_hn_big", big.as_bytes()).await;
        }
        publish_paid(env, &format!("evt_hn_{i}"), &format!("hn-{i}")).await;
    }

    let worker = TestWorker::spawn(settings.clone()).await;
    env.wait_count("101 applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 101, WAIT).await;
    // (Make `stored::jsonb` (worker/src/store/stored.rs) return its input unchanged to see the
    // database refuse the whole batch: none of the 101 is applied within the wait.)
    assert_eq!(batches(&worker).await, (1.0, 101.0), "one batch of 101");
    assert_eq!(inbox_transactions(env).await, 1, "all 101 in one transaction");
    assert_nothing_retried(env, &settings).await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 101);
    // Its object is kept, the number as written inside a string.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM payments WHERE order_id = 'hn-big' AND position('\"tip\": \"1e131072\"' in payment_metadata::text) > 0"
        )
        .await,
        1,
        "the number stored as its text"
    );
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE status = 'dead'").await, 0);
    assert!(env.broker.get(&env.dead_queue()).await.is_none(), "nothing dead-lettered");
    worker.stop().await;
}

#[tokio::test]
async fn every_kind_of_hostile_bytes_is_isolated_and_nul_in_free_text_is_stored_replaced() {
    let env = &Env::new().await;
    for order in ["hv-ok-1", "hv-ok-2", "hv-pi", "hv-meta", "hv-fail"] {
        env.seed_payment(order, "stripe", Some(3000), Some("usd")).await;
    }
    env.seed_payment("hv-toss", "toss", Some(1000), Some("KRW")).await;
    let settings = one_big_batch(env);
    env.declare(&settings).await;

    publish_paid(env, "evt_hv_ok_1", "hv-ok-1").await;
    // A payment intent (stored on the payment) with a NUL: refused, its order id kept.
    let pi = stripe_session_event("evt_hv_pi", "checkout.session.completed", "hv-pi", "paid", 3000, "usd");
    let pi = String::from_utf8(pi).unwrap().replace("pi_hv-pi", r"pi_\u0000").into_bytes();
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_hv_pi", &pi).await;
    // NUL and an unpaired surrogate in fields nobody reads: applied, stored replaced.
    let meta = stripe_session_event("evt_hv_meta", "checkout.session.completed", "hv-meta", "paid", 3000, "usd");
    let meta = String::from_utf8(meta)
        .unwrap()
        .replace(r#""mode":"payment""#, r#""mode":"payment","description":"PT\u0000 10","note":"\ud800""#)
        .into_bytes();
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_hv_meta", &meta).await;
    // A NUL in the failure reason, which goes into the notification's words: applied.
    let fail = String::from_utf8(stripe_payment_failed("evt_hv_fail", "hv-fail", 3000, "usd"))
        .unwrap()
        .replace("insufficient funds.", r"insufficient\u0000 funds.")
        .into_bytes();
    env.publish(Provider::Stripe, "payment_intent.payment_failed", "evt_hv_fail", &fail).await;
    // A signed body whose type holds a terminal escape, named in the type header too (also the
    // routing key): signed, so recorded under its key with the type escaped.
    let esc = stripe_session_event("evt_hv_esc", "checkout.session.completed", "hv-esc", "paid", 3000, "usd");
    let esc = String::from_utf8(esc)
        .unwrap()
        .replace(r#""type":"checkout.session.completed""#, r#""type":"checkout\u001b[2J""#);
    env.publish(Provider::Stripe, "checkout\x1b[2J", "evt_hv_esc", esc.as_bytes()).await;
    // Unsigned Toss bodies from which no key can be computed (a raw NUL byte, a NUL in the order
    // id) prove nothing: dead-lettered as unverifiable, never recorded under a key they name.
    let raw = b"{\"eventType\":\"PAYMENT_STATUS_CHANGED\",\"orderId\":\"hv-toss\"\0}";
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-raw-nul", raw).await;
    let toss_nul = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"hv\u0000toss","status":"DONE"}}"#;
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-nul-order", toss_nul).await;
    publish_paid(env, "evt_hv_ok_2", "hv-ok-2").await;

    let worker = TestWorker::spawn(settings.clone()).await;
    env.wait_count("all six recorded", "SELECT count(*) FROM webhook_events WHERE status <> 'retrying'", 6, WAIT).await;
    assert_eq!(batches(&worker).await, (1.0, 8.0), "one batch of eight");
    // (Make `stored::text`, `stored::jsonb` or `stored::inbox_payload` in worker/src/store/columns.rs
    // return their input as it is to see the batch refused and split.)
    assert_eq!(inbox_transactions(env).await, 1, "one transaction for all six records");
    assert_nothing_retried(env, &settings).await;

    let applied: Vec<String> = env
        .sql
        .query("SELECT event_key FROM webhook_events WHERE status = 'applied' ORDER BY event_key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, ["evt_hv_fail", "evt_hv_meta", "evt_hv_ok_1", "evt_hv_ok_2"]);
    let dead = |key: &'static str| async move {
        let (status, attempts, error) = env.inbox(key).await.unwrap_or_else(|| panic!("{key} recorded"));
        assert_eq!((status.as_str(), attempts), ("dead", 1), "{key}");
        error.unwrap()
    };
    assert!(dead("evt_hv_pi").await.contains("provider payment id contains a control character (U+0000)"));
    assert!(dead("evt_hv_esc").await.contains("x-event-type contains a control character (U+001B)"));
    testkit::eventually("the four parked", WAIT, || async {
        (env.broker.count(&env.dead_queue()).await == 4).then_some(())
    })
    .await;
    let mut reasons: Vec<String> = env
        .broker
        .drain(&env.dead_queue())
        .await
        .iter()
        .map(|m| header_str(m.delivery.properties.headers().as_ref().unwrap(), H_DEAD_REASON).unwrap())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("unverifiable: body is not a Toss event")).count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(env.status("hv-pi").await, "pending");
    assert_eq!(env.status("hv-toss").await, "pending");

    // What was stored, made safe.
    let stored = |sql: &'static str| async move { env.sql.query_one(sql, &[]).await.unwrap().get::<_, String>(0) };
    assert_eq!(
        stored("SELECT payment_metadata->'webhook'->'data'->>'description' FROM payments WHERE order_id = 'hv-meta'")
            .await,
        "PT\u{fffd} 10"
    );
    assert_eq!(
        stored("SELECT payment_metadata->'webhook'->'data'->>'note' FROM payments WHERE order_id = 'hv-meta'").await,
        "\u{fffd}"
    );
    let words = stored(
        "SELECT message FROM notifications n JOIN payments p ON p.id = n.payment_id WHERE p.order_id = 'hv-fail'",
    )
    .await;
    // A notification's words are plain text: the NUL became a space.
    assert!(words.contains("insufficient  funds"), "{words}");
    assert_eq!(
        stored("SELECT event_type FROM webhook_events WHERE event_key = 'evt_hv_esc'").await,
        r"checkout\u{1b}[2J"
    );

    // `hookctl events` shows the refused payment intent among its order's events.
    let (ok, out) = env.hookctl(&[], &["events", "hv-pi"]).await;
    assert!(ok && out.contains("evt_hv_pi") && out.contains("dead") && out.contains("U+0000"), "{out}");
    worker.stop().await;
}

#[tokio::test]
async fn the_inbox_keeps_toss_bodies_without_their_secret_and_the_message_keeps_it() {
    let env = &Env::new().await;
    let settings = one_big_batch(env);
    env.declare(&settings).await;
    // A deposit callback for a status Toss does not have: dead-lettered as it came.
    let callback = toss_deposit_callback("hs-1", "NOT_A_STATUS", "ps_deposit_secret_1");
    let first_key = env.publish_toss(&callback).await;
    // A virtual account's payment, with secrets at several depths.
    let payment = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"hs-2","status":"READY","secret":"ps_top","virtualAccount":{"accountNumber":"X1","secret":"ps_nested"},"cancels":[{"secret":"ps_in_array","cancelAmount":1}]}}"#;
    let second_key = env.publish_toss(payment).await;

    let worker = TestWorker::spawn(settings).await;
    env.wait_count("both recorded", "SELECT count(*) FROM webhook_events WHERE status <> 'retrying'", 2, WAIT).await;
    let payload = |key: String| async move {
        let row = env.sql.query_one("SELECT payload FROM webhook_events WHERE event_key = $1", &[&key]).await.unwrap();
        row.get::<_, String>(0)
    };
    // (Make `stored::inbox_payload` in worker/src/store/stored.rs treat Toss as Stripe to see
    // the secrets stored.)
    let first = payload(first_key).await;
    assert!(!first.contains("ps_deposit_secret_1") && !first.contains("\"secret\""), "{first}");
    let kept: serde_json::Value = serde_json::from_str(&first).unwrap();
    let mut expected: serde_json::Value = serde_json::from_slice(&callback).unwrap();
    expected.as_object_mut().unwrap().remove("secret");
    assert_eq!(kept, expected, "everything else is kept");
    assert_eq!(
        payload(second_key).await,
        r#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"hs-2","status":"READY","virtualAccount":{"accountNumber":"X1"},"cancels":[{"cancelAmount":1}]}}"#
    );
    // The message in the broker is the body as sent.
    let parked = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    assert_eq!(parked.delivery.data, callback);
    worker.stop().await;
}
