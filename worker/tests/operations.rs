//! Operating the worker: metrics that move, readiness that follows its dependencies,
//! SIGTERM mid-stream, and JSON logs without secrets.

mod common;

use std::time::Duration;

use common::{postgres_addr, Env, TestWorker};
use shared::Provider;
use testkit::events::{stripe_session_event, toss_deposit_callback};
use testkit::metrics::scrape;
use testkit::{LoggedProcess, TcpProxy};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn metrics_count_applied_duplicate_and_dead_lettered_once_each() {
    let env = Env::new().await;
    env.seed_payment("order-m1", "stripe", Some(1000), Some("usd")).await;
    env.seed_payment("order-m2", "stripe", Some(1000), Some("usd")).await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    let _subscriber = env.broker.subscribe(&format!("{}.notifications", env.broker.prefix)).await;
    let worker = TestWorker::spawn(settings).await;
    let url = format!("http://{}/metrics", worker.addr);
    let before = scrape(&url).await;
    assert_eq!(before.value("worker_events_total", &[]), 0.0);

    let good = stripe_session_event("evt_m1", "checkout.session.completed", "order-m1", "paid", 1000, "usd");
    let wrong_amount = stripe_session_event("evt_m2", "checkout.session.completed", "order-m2", "paid", 5, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_m1", &good).await;
    env.wait_count("applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_m1", &good).await;
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_m2", &wrong_amount).await;
    env.wait_count("dead", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    env.wait_count("duplicate", "SELECT duplicates::bigint FROM webhook_events WHERE event_key = 'evt_m1'", 1, WAIT)
        .await;

    let labels = |outcome| [("provider", "stripe"), ("event_type", "checkout.session.completed"), ("outcome", outcome)];
    let after = testkit::eventually("dead-letter depth sampled", WAIT, || async {
        let m = scrape(&url).await;
        (m.value("amqp_queue_messages", &[("queue", &env.dead_queue())]) == 1.0).then_some(m)
    })
    .await;
    assert_eq!(after.value("worker_events_total", &labels("applied")), 1.0);
    assert_eq!(after.value("worker_events_total", &labels("duplicate")), 1.0);
    assert_eq!(after.value("worker_events_total", &labels("dead_lettered")), 1.0);
    assert_eq!(after.value("worker_events_total", &labels("retried")), 0.0);
    assert_eq!(
        after.value("worker_event_lag_seconds", &[("provider", "stripe")]),
        1.0,
        "lag observed once, when applied"
    );
    assert_eq!(after.value("worker_processing_seconds", &[("provider", "stripe")]), 3.0);
    assert_eq!(after.value("notifications_total", &[("stage", "published")]), 1.0);
    assert_eq!(after.value("outbox_pending", &[]), 0.0);
    assert_eq!(after.value("amqp_queue_messages", &[("queue", &env.work_queue())]), 0.0);
    assert_eq!(after.value("amqp_connected", &[]), 1.0);
    worker.stop().await;
}

async fn ready(url: &str) -> bool {
    reqwest::get(url).await.map(|r| r.status().is_success()).unwrap_or(false)
}

#[tokio::test]
async fn readiness_follows_the_database_and_the_broker() {
    let env = Env::new().await;
    let db_proxy = TcpProxy::start(postgres_addr(&env.db.url)).await;
    let amqp = reqwest::Url::parse(&testkit::amqp_url()).unwrap();
    let mq_proxy = TcpProxy::start(format!("127.0.0.1:{}", amqp.port().unwrap_or(5672)).parse().unwrap()).await;
    let worker = TestWorker::spawn(env.settings(&[
        ("DATABASE_URL", &env.db.url_via(db_proxy.addr())),
        ("AMQP_URL", &format!("amqp://guest:guest@{}/%2f", mq_proxy.addr())),
    ]))
    .await;
    let url = format!("http://{}/readyz", worker.addr);
    let health = format!("http://{}/healthz", worker.addr);
    assert!(ready(&url).await);

    db_proxy.cut();
    testkit::eventually("unready without the database", WAIT, || async { (!ready(&url).await).then_some(()) }).await;
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["database"], false);
    assert!(ready(&health).await, "still alive");
    db_proxy.restore();
    testkit::eventually("ready with the database back", WAIT, || async { ready(&url).await.then_some(()) }).await;

    mq_proxy.cut();
    testkit::eventually("unready without the broker", WAIT, || async { (!ready(&url).await).then_some(()) }).await;
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["broker"], false);
    mq_proxy.restore();
    testkit::eventually("ready with the broker back", WAIT, || async { ready(&url).await.then_some(()) }).await;
    worker.stop().await;
}

#[tokio::test]
async fn sigterm_mid_stream_then_restart_applies_every_event_once_and_logs_no_secret() {
    let env = Env::new().await;
    let deposit_secret = "ps_deposit_secret_never_logged";
    for i in 0..60 {
        env.seed_payment(&format!("term-{i}"), "stripe", Some(1000), Some("usd")).await;
    }
    env.sql
        .execute(
            "INSERT INTO payments (order_id, provider, deposit_secret) VALUES ('term-toss', 'toss', 'ps_the_real_one')",
            &[],
        )
        .await
        .unwrap();
    let secrets = [
        ("STRIPE_WEBHOOK_SECRET", "whsec_worker_never_logs_this"),
        ("TOSS_WEBHOOK_SECRET", "toss_key_never_logged"),
        ("TOSS_SECRET_KEY", "test_sk_never_logged"),
        ("TOSS_FETCH_BACK", "false"),
        ("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/never-called?token=tok_never_logged"),
        ("NOTIFY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ];
    let mut vars = env.env_vars(&[("LOG_FORMAT", "json"), ("SHUTDOWN_TIMEOUT", "5s"), ("WORKER_CONCURRENCY", "2")]);
    vars.extend(secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    // Mid-rotation: the events are signed with the second secret, as ingest accepted them.
    for (_, value) in vars.iter_mut().filter(|(name, _)| name == "STRIPE_WEBHOOK_SECRET") {
        *value = format!("whsec_worker_never_logs_this,{}", testkit::events::STRIPE_SECRET);
    }
    let worker_bin = env!("CARGO_BIN_EXE_worker");
    let mut first = LoggedProcess::spawn(worker_bin, &[], &vars);
    first.wait_for_line("consuming", WAIT, |l| l.contains("\"consuming\"")).await;

    let forged = toss_deposit_callback("term-toss", "DONE", deposit_secret);
    let forged_key = env.publish_toss(&forged).await;
    let stream = async {
        for i in 0..60 {
            let key = format!("evt_term_{i}");
            let body =
                stripe_session_event(&key, "checkout.session.completed", &format!("term-{i}"), "paid", 1000, "usd");
            env.publish(Provider::Stripe, "checkout.session.completed", &key, &body).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let stop = async {
        env.wait_at_least(
            "part of the stream applied",
            "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
            10,
            WAIT,
        )
        .await;
        first.terminate();
        let signalled = std::time::Instant::now();
        let status = first.wait_exit(Duration::from_secs(8)).await;
        assert!(status.success(), "clean exit: {status}");
        assert!(signalled.elapsed() < Duration::from_secs(7));
    };
    tokio::join!(stream, stop);
    let applied =
        env.count("SELECT count(*) FROM webhook_events WHERE event_key LIKE 'evt_term_%' AND status = 'applied'").await;
    assert!(applied < 60, "stopped mid-stream ({applied} applied)");

    let mut second = LoggedProcess::spawn(worker_bin, &[], &vars);
    env.wait_count(
        "all applied after the restart",
        "SELECT count(*) FROM webhook_events WHERE event_key LIKE 'evt_term_%' AND status = 'applied'",
        60,
        WAIT,
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM payments WHERE order_id LIKE 'term-%' AND payment_status = 'paid'").await,
        60
    );
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 60, "one notification per event");
    let (status, _, _) = env.inbox(&forged_key).await.unwrap();
    assert_eq!(status, "dead", "a wrong deposit secret is parked");
    second.terminate();
    second.wait_exit(Duration::from_secs(8)).await;

    let lines: Vec<String> = first.lines().into_iter().chain(second.lines()).collect();
    assert!(lines.iter().any(|l| l.contains("[Stripe Webhook] Payment updated")));
    assert!(lines.iter().any(|l| l.contains("stopped consuming")));
    for line in &lines {
        let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(json.get("timestamp").is_some() && json.get("level").is_some(), "{line}");
        for secret in secrets.iter().map(|(_, v)| *v).chain([
            testkit::events::STRIPE_SECRET,
            deposit_secret,
            "ps_the_real_one",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ]) {
            let probe = secret.trim_start_matches("http://127.0.0.1:9/never-called?token=");
            assert!(!line.contains(probe), "secret {probe} in a log line: {line}");
        }
    }
}
