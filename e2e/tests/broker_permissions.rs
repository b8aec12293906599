//! The RabbitMQ users as deployed. `deploy/rabbitmq/setup.sh` (what compose's rabbitmq-setup
//! service runs) applies `deploy/rabbitmq/permissions` to this test's prefix on the shared
//! broker, with user names of the test's own (deleted when it ends, also on failure), and
//! each role does its job and nothing more.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, TestIngest, TestWorker};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use serde_json::json;
use shared::broker::access::{refusal, Refusal};
use shared::settings::WorkerSettings;
use testkit::events::{stripe_session_event, STRIPE_SECRET};
use testkit::fake_http::Recorded;
use testkit::{Behavior, FakeEndpoint, LoggedProcess, RoleUsers, TestBroker};

const WAIT: Duration = Duration::from_secs(30);
const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A persistent, mandatory publish on a fresh confirm channel, as ingest publishes.
async fn publish(connection: &Connection, exchange: &str, routing_key: &str) -> Result<Confirmation, lapin::Error> {
    let channel = connection.create_channel().await?;
    publish_on(&channel, exchange, routing_key).await
}

async fn publish_on(channel: &Channel, exchange: &str, routing_key: &str) -> Result<Confirmation, lapin::Error> {
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let options = BasicPublishOptions { mandatory: true, immediate: false };
    let properties = BasicProperties::default().with_delivery_mode(2);
    channel.basic_publish(exchange.into(), routing_key.into(), options, b"{}", properties).await?.await
}

async fn get(connection: &Connection, queue: &str) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.map(drop)
}

async fn consume(connection: &Connection, queue: &str) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_consume(queue.into(), "t".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map(drop)
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, lapin::Error>, what: &str) {
    match result {
        Err(error) => assert_eq!(refusal(&error), Some(Refusal::Permission), "{what}: {error}"),
        Ok(value) => panic!("{what} was allowed: {value:?}"),
    }
}

#[tokio::test]
async fn each_user_may_do_its_roles_job_and_nothing_more() {
    testkit::init_logs();
    let broker = TestBroker::new().await;
    let settings = broker.settings::<WorkerSettings>(
        None,
        &[("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/"), ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET)],
    );
    let topology = worker::Worker::topology(&settings);
    topology.declare(broker.connection()).await.expect("the administrator declares the topology");
    let users = RoleUsers::create(&broker.prefix).await;
    let (events, notifications) = (topology.events_exchange(), topology.notifications_exchange());
    let (work, dead) = (topology.work_queue(), topology.dead_queue());

    // Ingest: publishes to the events exchange, confirmed and routed. With a write regex that
    // matches more than `{prefix}.events` in deploy/rabbitmq/permissions, the refusals below
    // become successes and this test fails.
    let ingest = users.connect("ingest").await;
    let confirmed = publish(&ingest, &events, "stripe.checkout.session.completed").await.expect("publish");
    assert!(matches!(confirmed, Confirmation::Ack(None)), "confirmed and routed: {confirmed:?}");
    assert_eq!(broker.count(&work).await, 1);
    let channel = ingest.create_channel().await.unwrap();
    assert_refused(publish_on(&channel, &notifications, "payment.paid").await, "ingest publishing a notification");
    assert!(!channel.status().connected(), "the broker closed the channel");
    assert_refused(publish(&ingest, "", &work).await, "ingest publishing to the work queue by name");
    assert_refused(consume(&ingest, &work).await, "ingest consuming the work queue");
    assert_refused(get(&ingest, &work).await, "ingest reading the work queue (basic.get)");
    assert_refused(get(&ingest, &dead).await, "ingest reading the dead letters");
    let channel = ingest.create_channel().await.unwrap();
    let declared = channel
        .exchange_declare(
            events.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_refused(declared, "ingest declaring an exchange");
    let again = publish(&ingest, &events, "stripe.charge.succeeded").await.expect("publish");
    assert!(matches!(again, Confirmation::Ack(None)), "the refusals closed channels, not the connection");
    let _ = ingest.close(200, "done".into()).await;

    // Worker: declares its topology (what a worker does at start) and consumes work, but
    // cannot read the dead letters nor publish as ingest.
    let worker = users.connect("worker").await;
    topology.declare(&worker).await.expect("the worker's user declares the whole topology");
    consume(&worker, &work).await.expect("the worker consumes the work queue");
    assert_refused(get(&worker, &dead).await, "the worker reading the dead letters");
    assert_refused(publish(&worker, &events, "stripe.x").await, "the worker publishing a webhook");
    let _ = worker.close(200, "done".into()).await;

    // Operator: reads dead letters and publishes to the work queue by name (a replay, a
    // re-check), declares and consumes nothing else.
    let operator = users.connect("operator").await;
    get(&operator, &dead).await.expect("the operator reads the dead letters");
    let sent = publish(&operator, "", &work).await.expect("publish");
    assert!(matches!(sent, Confirmation::Ack(None)), "the operator's copy is confirmed and routed: {sent:?}");
    assert_refused(get(&operator, &work).await, "the operator reading the work queue");
    assert_refused(publish(&operator, &events, "stripe.x").await, "the operator publishing a webhook");
    assert_refused(topology.declare(&operator).await.map_err(into_lapin), "the operator declaring");
    let _ = operator.close(200, "done".into()).await;
    broker.drain(&work).await;
}

fn into_lapin(error: shared::topology::TopologyError) -> lapin::Error {
    match error {
        shared::topology::TopologyError::Refused { error } | shared::topology::TopologyError::Broker(error) => error,
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn ingest_worker_and_hookctl_under_their_own_users_carry_events_end_to_end() {
    let env = Env::new().await;
    let users = RoleUsers::create(&env.broker.prefix).await;
    let receiver = FakeEndpoint::start(vec![Behavior::Status(200, String::new())]).await;
    let notify_url = receiver.url("/notifications");
    let notify = [("NOTIFY_WEBHOOK_URL", notify_url.as_str()), ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET)];

    // Nothing is declared yet: the worker declares it all under its user, then ingest finds
    // what it publishes to.
    let worker_url = users.url("worker");
    let mut worker_vars = vec![("AMQP_URL", worker_url.as_str()), ("RETRY_MAX_ATTEMPTS", "2")];
    worker_vars.extend(notify);
    let worker = TestWorker::spawn(env.settings(&worker_vars)).await;
    let ingest_url = users.url("ingest");
    let ingest = TestIngest::spawn(env.settings(&[("AMQP_URL", ingest_url.as_str())])).await;
    let post = |key: &'static str, order: &'static str| {
        let ingest = &ingest;
        async move {
            let body = stripe_session_event(key, "checkout.session.completed", order, "paid", 1500, "usd");
            let signature = testkit::events::stripe_signature(&body, STRIPE_SECRET);
            ingest.post(ingest::STRIPE_ROUTE, &body, &[("stripe-signature", signature.as_str())]).await
        }
    };

    // Applied, notified through the notifications exchange and delivered from its queue.
    let paid = env.seed_payment("order-roles-a", "stripe", Some(1500), Some("usd")).await;
    assert_eq!(post("evt_roles_a", "order-roles-a").await, 200);
    env.wait_count("paid", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 1, WAIT).await;
    testkit::eventually("the notification delivered", WAIT, || async {
        (!receiver.requests().is_empty()).then_some(())
    })
    .await;
    assert_eq!(env.notifications_for(paid.trainer_id).await, 1);

    // No payment yet: retried through a delay queue, then dead-lettered (both republished by
    // the worker through the default exchange).
    assert_eq!(post("evt_roles_b", "order-roles-b").await, 200);
    env.wait_count("dead", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    testkit::eventually("in the dead letters", WAIT, || async {
        (env.broker.count(&env.dead_queue()).await == 1).then_some(())
    })
    .await;

    // The operator lists and replays it with hookctl.
    let operator_url = users.url("operator");
    let as_operator = [("AMQP_URL", operator_url.as_str())];
    let (ok, out) = env.hookctl(&as_operator, &["dead", "list"]).await;
    assert!(ok && out.contains("evt_roles_b"), "{out}");
    env.seed_payment("order-roles-b", "stripe", Some(1500), Some("usd")).await;
    let (ok, out) = env.hookctl(&as_operator, &["dead", "replay", "evt_roles_b"]).await;
    assert!(ok && out.contains("1 message(s) moved back"), "{out}");
    env.wait_count("both paid", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 2, WAIT).await;
    let (ok, out) = env.hookctl(&as_operator, &["dead", "purge", "--yes"]).await;
    assert!(ok && out.contains("purged 0"), "{out}");
    worker.stop().await;
    ingest.stop().await;
}

/// `hookctl unverified recheck` under the operator's user, with a worker under its own: each
/// event goes to the work queue by name through the default exchange and nothing is declared,
/// which is all that user may do. Make `hookctl::unverified::recheck` declare the topology
/// again, or publish to the events exchange, and the operator is refused: this fails.
#[tokio::test]
async fn the_operator_rechecks_an_unverified_event_under_its_own_user() {
    let env = Env::new().await;
    let users = RoleUsers::create(&env.broker.prefix).await;
    let order = "order-roles-unverified";
    // The Toss API, answering for this order, for the worker's fetch-back.
    let paid = json!({
        "paymentKey": "pk_roles", "orderId": order, "status": "DONE", "method": "카드",
        "currency": "KRW", "totalAmount": 5000, "balanceAmount": 5000
    })
    .to_string();
    let router = Arc::new(move |r: &Recorded| {
        (r.path == format!("/v1/payments/orders/{order}")).then(|| Behavior::Status(200, paid.clone()))
    });
    let api = FakeEndpoint::start_with(vec![Behavior::Status(404, "{}".into())], Some(router)).await;
    let base = api.url("");
    let fetch_back = [("TOSS_SECRET_KEY", "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R"), ("TOSS_API_BASE", base.as_str())];
    let worker_url = users.url("worker");
    let mut worker_vars = vec![("AMQP_URL", worker_url.as_str())];
    worker_vars.extend(fetch_back);
    let worker = TestWorker::spawn(env.settings(&worker_vars)).await;

    // Recorded as unverified before the workers had a key (as the worker records it: the body
    // kept, the key computed from it).
    let seeded = env.seed_payment(order, "toss", None, None).await;
    let body = json!({"eventType": "PAYMENT_STATUS_CHANGED", "orderId": order, "status": "DONE"}).to_string();
    let key = shared::providers::toss::parse_toss_event(body.as_bytes()).unwrap().event_key();
    env.sql
        .execute(
            "INSERT INTO webhook_events (provider, event_key, event_type, order_id, status, detail, attempts,
                                         verification, payload, request_id, received_at, processed_at)
             VALUES ('toss', $1, 'PAYMENT_STATUS_CHANGED', $2, 'unverified', 'nothing verified it', 1, 'none',
                     $3, 'req-roles', now(), now())",
            &[&key, &order, &body],
        )
        .await
        .unwrap();

    let operator_url = users.url("operator");
    let mut as_operator = vec![("AMQP_URL", operator_url.as_str())];
    as_operator.extend(fetch_back);
    let (ok, out) = env.hookctl(&as_operator, &["unverified", "recheck", &key]).await;
    assert!(ok && out.contains("1 event(s) sent"), "{out}");
    env.wait_count(
        "applied once fetched back",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied' AND verification = 'fetched'",
        1,
        WAIT,
    )
    .await;
    assert_eq!(env.status(order).await, "paid");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_without_its_permissions_says_at_start_what_to_grant() {
    let env = Env::new().await;
    let users = RoleUsers::create(&env.broker.prefix).await;
    let ingest_url = users.url("ingest");

    // A worker given ingest's user may not declare its queues.
    let vars = env.env_vars(&[("AMQP_URL", ingest_url.as_str()), ("LOG_FORMAT", "json")]);
    let worker = LoggedProcess::spawn(env!("CARGO_BIN_EXE_e2e-worker"), &[], &vars);
    let line =
        worker.wait_for_line("the worker's refusal", WAIT, |l| l.contains("cannot declare the broker topology")).await;
    assert!(line.contains("ACCESS_REFUSED") && line.contains("deploy/rabbitmq/permissions"), "{line}");
    assert!(!line.contains(users.password("ingest")), "no password in the log: {line}");
}

/// Reconciliation publishes what it finds under the users as deployed: the worker's (which may
/// not write to the events exchange) and, by hand, the operator's. Make the reconciler publish
/// to `{p}.events` and the broker refuses both: this fails.
#[tokio::test]
async fn the_worker_and_hookctl_reconcile_under_their_own_users() {
    const KEY: &str = "rk_test_roles_reconcile";
    let env = Env::new().await;
    let users = RoleUsers::create(&env.broker.prefix).await;
    let api = testkit::FakeStripe::start(KEY).await;
    let created = chrono::Utc::now().timestamp() - 3600;
    let missed = |key: &str, order: &str| {
        serde_json::from_slice(&stripe_session_event(key, "checkout.session.completed", order, "paid", 1500, "usd"))
            .unwrap()
    };
    env.seed_payment("order-rec-worker", "stripe", Some(1500), Some("usd")).await;
    api.add_event(missed("evt_rec_worker", "order-rec-worker"), created);
    let base = api.base();
    let worker_url = users.url("worker");
    let worker_vars = [
        ("AMQP_URL", worker_url.as_str()),
        ("STRIPE_API_KEY", KEY),
        ("STRIPE_API_BASE", base.as_str()),
        ("RECONCILE_INTERVAL", "1s"),
    ];
    let worker = TestWorker::spawn(env.settings(&worker_vars)).await;
    env.wait_count("found by the worker", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 1, WAIT).await;
    worker.stop().await;

    env.seed_payment("order-rec-operator", "stripe", Some(1500), Some("usd")).await;
    api.add_event(missed("evt_rec_operator", "order-rec-operator"), created + 1);
    let operator_url = users.url("operator");
    let as_operator =
        [("AMQP_URL", operator_url.as_str()), ("STRIPE_API_KEY", KEY), ("STRIPE_API_BASE", base.as_str())];
    let (ok, out) = env.hookctl(&as_operator, &["reconcile", "stripe", "--since", "72h"]).await;
    assert!(ok && out.contains("missing 1, published 1"), "{out}");
    let worker_vars = [("AMQP_URL", worker_url.as_str()), ("STRIPE_API_KEY", KEY), ("RECONCILE_INTERVAL", "0")];
    let worker = TestWorker::spawn(env.settings(&worker_vars)).await;
    env.wait_count("found by the operator", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 2, WAIT)
        .await;
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE verification = 'fetched'").await, 2);
    worker.stop().await;
}
