//! Ingest as deployed connects as a RabbitMQ user that may only publish to the events exchange
//! (`deploy/rabbitmq/permissions`, applied here by `deploy/rabbitmq/setup.sh` with user names
//! of the test's own): it declares nothing, and what it lacks it says in its log.

mod common;

use std::time::Duration;

use common::TestIngest;
use shared::topology::Topology;
use testkit::events::STRIPE_SECRET;
use testkit::{LoggedProcess, RoleUsers, TestBroker};

const WAIT: Duration = Duration::from_secs(30);

/// The ingest binary on `broker`'s prefix with `amqp_url`, logging JSON.
fn ingest_process(broker: &TestBroker, amqp_url: &str) -> LoggedProcess {
    let _ = broker.settings::<shared::IngestSettings>(None, &[]); // registers the prefix's queues for clean-up
    let vars: Vec<(String, String)> = [
        ("AMQP_URL", amqp_url.to_string()),
        ("AMQP_PREFIX", broker.prefix.clone()),
        ("INGEST_ADDR", "127.0.0.1:0".into()),
        ("INGEST_METRICS_ADDR", "127.0.0.1:0".into()),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET.into()),
        ("LOG_FORMAT", "json".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    LoggedProcess::spawn(env!("CARGO_BIN_EXE_ingest"), &[], &vars)
}

#[tokio::test]
async fn under_its_own_user_ingest_starts_and_stores_webhooks_without_declaring_anything() {
    let broker = TestBroker::new().await;
    let settings = broker.settings::<shared::IngestSettings>(None, &[]);
    // As a worker does at its start, with its own user.
    Topology::from_settings(&settings.common).declare(broker.connection()).await.expect("declared");
    let users = RoleUsers::create(&broker.prefix).await;
    let url = users.url("ingest");
    // With `Declaring::Everything` for ingest in ingest/src/lib.rs it never gets ready: its
    // user may not declare.
    let ingest = TestIngest::spawn(broker.settings(None, &[("AMQP_URL", url.as_str())])).await;
    let body = testkit::events::stripe_session_event("evt_role", "checkout.session.completed", "o", "paid", 100, "usd");
    let signature = testkit::events::stripe_signature(&body, STRIPE_SECRET);
    assert_eq!(ingest.post_stripe(&body, Some(&signature)).await.status(), 200);
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 1);
    ingest.stop().await;
    broker.drain(&format!("{}.work", broker.prefix)).await;
}

#[tokio::test]
async fn ingest_says_at_start_what_is_missing_or_refused_and_what_to_do() {
    let broker = TestBroker::new().await;
    let users = RoleUsers::create(&broker.prefix).await;

    // No worker has declared anything yet, and ingest's user may not: it says so and waits.
    // (Declaring with `Declaring::Everything` in ingest/src/lib.rs instead reports a refused
    // declaration, without the exchange's name and what to start.)
    let ingest = ingest_process(&broker, &users.url("ingest"));
    let line = ingest.wait_for_line("the missing exchange", WAIT, |l| l.contains("does not exist on the broker")).await;
    assert!(line.contains(&format!("{}.events", broker.prefix)) && line.contains("start a worker"), "{line}");
    assert!(!line.contains(users.password("ingest")), "no password in the log: {line}");
    drop(ingest);

    // A wrong password is a refused login, not an unreachable broker.
    let mut wrong = reqwest::Url::parse(&users.url("ingest")).unwrap();
    wrong.set_password(Some("not-the-password")).unwrap();
    let ingest = ingest_process(&broker, wrong.as_str());
    let line =
        ingest.wait_for_line("the refused login", WAIT, |l| l.contains("the broker refused this AMQP user")).await;
    assert!(line.contains("check the user and password in AMQP_URL"), "{line}");
    assert!(!line.contains("not-the-password"), "no password in the log: {line}");
    drop(ingest);

    // A user without write on the events exchange (the operator's): ingest starts, since the
    // topology is there, and every webhook is a 503 whose log line says what to grant.
    let settings = broker.settings::<shared::IngestSettings>(None, &[]);
    Topology::from_settings(&settings.common).declare(broker.connection()).await.expect("declared");
    let ingest = ingest_process(&broker, &users.url("operator"));
    let addr = ingest.logged_addr("ingest listening").await;
    let client = reqwest::Client::new();
    testkit::eventually("ingest ready", WAIT, || async {
        let r = client.get(format!("http://{addr}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let body =
        testkit::events::stripe_session_event("evt_refused", "checkout.session.completed", "o", "paid", 1, "usd");
    let answer = common::post_signed_stripe(&client, addr, body).await.unwrap();
    assert_eq!(answer.status(), 503, "not stored, so not 200");
    let line =
        ingest.wait_for_line("the refused publish", WAIT, |l| l.contains("the broker refused the publish")).await;
    assert!(line.contains("ACCESS_REFUSED") && line.contains("deploy/rabbitmq/permissions"), "{line}");
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 0);
}
