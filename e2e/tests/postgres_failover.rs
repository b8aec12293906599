//! Postgres fails over under steady signed load, twice, with ingest and two worker processes
//! running throughout on one multi-host `DATABASE_URL`
//! (`postgres://a,b/webhooks?target_session_attrs=read-write`):
//!
//! 1. **The primary crashes** (`pg_ctl stop -m immediate`: every session dies, commits in flight
//!    with it) and its synchronous standby is promoted a moment later, as a failover manager
//!    would. New connections skip the lost server and find the new primary.
//! 2. **A switchover with the old primary left running.** A new synchronous standby is built at
//!    the lost server's address; the primary is fenced (`default_transaction_read_only`, the
//!    way a failover manager demotes it in place) and the new standby promoted. The workers'
//!    pooled sessions on the fenced server stay open and every write on them fails with
//!    `read_only_sql_transaction` (SQLSTATE 25006): the workers must leave those sessions and
//!    find the new primary. Without that (delete the `leave_read_only_server` call in
//!    `worker/src/process.rs::try_commit`, and the `ReadOnlyServer` line in
//!    `worker/src/db.rs::classify`), they keep failing on the fenced server until the events
//!    run out of attempts, and this test fails.
//!
//! Invariants: every event answered 200 is applied exactly once (payment paid once, one
//! notification, its inbox row applied), nothing is dead-lettered, and the outbox is complete:
//! empty, and every notification published (counted on a queue of the test's own bound to the
//! notifications exchange). The longest stretch without a commit is measured from the inbox's
//! `processed_at` times and printed; no timing is asserted.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::TestIngest;
use shared::settings::WorkerSettings;
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::pg_pair::{fence, make_synchronous, multi_host_url, wait_caught_up};
use testkit::{LoggedProcess, PgPair, PgServer, TestBroker};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events posted per second.
const RATE: u64 = 50;
/// The load stops this long after the second failover, or after `MAX_LOAD` at the latest.
const LOAD_AFTER: Duration = Duration::from_secs(3);
const MAX_LOAD: Duration = Duration::from_secs(50);
/// How long the crashed primary is gone before the standby is promoted: the failover
/// manager's detection time, cut short.
const DETECTION: Duration = Duration::from_secs(1);
/// Deadline for each condition the test waits on.
const WAIT: Duration = Duration::from_secs(40);
/// What the workers log when they leave a read-only server (`worker/src/process.rs`).
const LEFT_READ_ONLY: &str = "the database server takes no writes";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failovers_to_a_synchronous_standby_lose_no_acknowledged_event_and_apply_each_once() {
    testkit::init_logs();
    let PgPair { primary: first, standby: second } = PgPair::start().await;
    let url = multi_host_url(&[&first, &second], "webhooks");
    let broker = TestBroker::new().await;
    let vars = [
        // Enough room that an outage of a few seconds never exhausts the retries.
        ("RETRY_DELAYS", "200ms,500ms,1s,2s"),
        ("RETRY_MAX_ATTEMPTS", "40"),
    ];
    let settings: WorkerSettings = broker.settings(Some(&url), &vars);
    worker::store::migrate::migrate(&settings.database).await.expect("migrations apply through the multi-host URL");
    let orders = (RATE * MAX_LOAD.as_secs()) as i64;
    testkit::db::connect(&url)
        .await
        .batch_execute(&format!(
            "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {orders}) RETURNING id)
             INSERT INTO payments (order_id, booking_id, provider, amount, currency)
             SELECT 'fo-' || row_number() OVER (), id, 'stripe', 100, 'usd' FROM b"
        ))
        .await
        .unwrap();
    worker::Worker::topology(&settings).declare(broker.connection()).await.unwrap();
    let notifications = broker.subscribe(&format!("{}.notifications", broker.prefix)).await;

    let ingest = TestIngest::spawn(broker.settings(Some(&url), &vars)).await;
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url.clone()),
        ("AMQP_URL".into(), testkit::amqp_url()),
        ("AMQP_PREFIX".into(), broker.prefix.clone()),
        ("WORKER_ADDR".into(), "127.0.0.1:0".into()),
        ("STRIPE_WEBHOOK_SECRET".into(), STRIPE_SECRET.into()),
        ("RUST_LOG".into(), "info,lapin=error".into()),
    ];
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let workers = Workers([
        LoggedProcess::spawn(env!("CARGO_BIN_EXE_e2e-worker"), &[], &env),
        LoggedProcess::spawn(env!("CARGO_BIN_EXE_e2e-worker"), &[], &env),
    ]);

    let stop_load = CancellationToken::new();
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let load = tokio::spawn(post_load(ingest.addr, answers.clone(), stop_load.clone()));
    let applied = "SELECT count(*) FROM webhook_events WHERE status = 'applied'";

    // 1. The primary crashes; the standby takes over.
    let sql = testkit::db::connect(&first.url("webhooks")).await;
    testkit::eventually("the load applied on the first primary", WAIT, || async {
        (count(&sql, applied).await >= 3 * RATE as i64).then_some(())
    })
    .await;
    first.crash().await;
    let crashed_at = Utc::now();
    tokio::time::sleep(DETECTION).await;
    second.promote().await;
    let sql = testkit::db::connect(&second.url("webhooks")).await;
    let promoted_at = now(&sql).await;
    wait_for_commits_since(&sql, promoted_at, "commits on the promoted standby").await;

    // 2. A new standby where the lost server was; then a switchover to it, with the old
    // primary fenced and left running.
    let third = PgServer::start_standby_of(&second, Some(first.port())).await;
    make_synchronous(&second).await;
    let fenced_at = Utc::now();
    fence(&second).await;
    wait_caught_up(&second, &third).await;
    third.promote().await;
    let sql = testkit::db::connect(&third.url("webhooks")).await;
    let switched_at = now(&sql).await;
    wait_for_commits_since(&sql, switched_at, "commits on the new primary, the old one still up").await;
    tokio::time::sleep(LOAD_AFTER).await;
    stop_load.cancel();
    load.await.unwrap();

    // Every 200 applied exactly once, on the final primary.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let accepted: Vec<String> =
        answers.iter().filter(|a| a.status == 200).map(|a| format!("evt_fo_{}", a.order)).collect();
    let refused: Vec<(usize, u16)> = answers.iter().filter(|a| a.status != 200).map(|a| (a.order, a.status)).collect();
    assert!(refused.is_empty(), "ingest does not depend on Postgres; it answered {refused:?}");
    let applied_of_accepted = || async {
        sql.query_one(
            "SELECT count(*) FROM webhook_events WHERE status = 'applied' AND event_key = ANY($1)",
            &[&accepted],
        )
        .await
        .unwrap()
        .get::<_, i64>(0) as usize
    };
    testkit::eventually("every acknowledged event applied", WAIT, || async {
        (applied_of_accepted().await == accepted.len()).then_some(())
    })
    .await;
    let total = accepted.len() as i64;
    assert_eq!(count(&sql, "SELECT count(*) FROM webhook_events").await, total, "one inbox row per event");
    assert_eq!(count(&sql, "SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, total);
    assert_eq!(count(&sql, "SELECT count(*) FROM notifications").await, total, "one notification per event");
    assert_eq!(count(&sql, "SELECT count(DISTINCT payment_id) FROM notifications").await, total);
    assert_eq!(count(&sql, "SELECT count(*) FROM webhook_events WHERE status = 'dead'").await, 0);
    assert_eq!(broker.count(&format!("{}.dead", broker.prefix)).await, 0, "nothing in the dead-letter queue");

    // The fenced server's 25006 made the workers leave it, and sent no event to a retry tier.
    assert!(workers.logged(|line| line.contains(LEFT_READ_ONLY)), "the workers met the fenced server");
    let retried = |line: &str| line.contains("Processing failed") && line.contains("25006");
    assert!(!workers.logged(retried), "an event was retried or dead-lettered for a read-only server");

    // The outbox complete: empty, and every notification published (a republish repeats an id,
    // never invents one).
    testkit::eventually("the outbox drained", WAIT, || async {
        (count(&sql, "SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    let rows = sql.query("SELECT id FROM notifications", &[]).await.unwrap();
    let expected: BTreeSet<String> = rows.iter().map(|r| r.get::<_, Uuid>(0).to_string()).collect();
    let mut published = BTreeSet::new();
    let until = Instant::now() + WAIT;
    while published.len() < expected.len() && Instant::now() < until {
        for message in broker.drain(&notifications).await {
            if let Some(id) = message.delivery.properties.message_id().as_ref() {
                published.insert(id.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published, expected, "published notifications are exactly the committed ones");

    // The longest stretch without a commit, from the inbox's times.
    let times: Vec<DateTime<Utc>> = sql
        .query("SELECT processed_at FROM webhook_events WHERE status = 'applied' ORDER BY processed_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let longest = |from: DateTime<Utc>, to: DateTime<Utc>| {
        times
            .windows(2)
            .filter(|w| w[1] > from && w[0] < to)
            .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
            .max()
            .unwrap_or_default()
    };
    let far = Utc::now() + chrono::Duration::days(1);
    let mut answered: Vec<Instant> = answers.iter().map(|a| a.sent + a.took).collect();
    answered.sort();
    let no_200 = answered.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    eprintln!(
        "Postgres failover: {} events posted at {RATE}/s, {} answered 200 (longest stretch without one {no_200:?}, \
         slowest answer {slowest:?}), {} applied once, 0 dead-lettered; longest stretch without a commit: {:?} \
         overall, {:?} around the crash ({:?} until the promotion), {:?} around the switchover (old primary \
         fenced, left running)",
        answers.len(),
        accepted.len(),
        applied_of_accepted().await,
        longest(DateTime::<Utc>::MIN_UTC, far),
        longest(crashed_at, fenced_at),
        DETECTION,
        longest(fenced_at, far),
    );
    drop(workers);
    ingest.stop().await;
}

/// The two worker processes; their logs are printed when the test fails.
struct Workers([LoggedProcess; 2]);

impl Workers {
    /// Whether either worker logged a line that matches.
    fn logged(&self, matches: impl Fn(&str) -> bool) -> bool {
        self.0.iter().any(|worker| worker.lines().iter().any(|line| matches(line)))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, worker) in self.0.iter().enumerate() {
                let lines = worker.lines();
                eprintln!("--- worker {i}, last lines:\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
            }
        }
    }
}

/// One posted event and what ingest answered (0: no answer).
struct Answer {
    order: usize,
    status: u16,
    sent: Instant,
    took: Duration,
}

/// Posts signed `checkout.session.completed` events for orders `fo-1`, `fo-2`, … to ingest at
/// `RATE` until `stop` (or `MAX_LOAD`); records each answer.
async fn post_load(ingest: std::net::SocketAddr, answers: Arc<Mutex<Vec<Answer>>>, stop: CancellationToken) {
    let client = reqwest::Client::new();
    let url = format!("http://{ingest}/api/webhooks/stripe");
    let mut pace = tokio::time::interval(Duration::from_secs(1) / RATE as u32);
    let mut requests = Vec::new();
    for order in 1..=(RATE * MAX_LOAD.as_secs()) as usize {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = pace.tick() => {}
        }
        let (client, url, answers) = (client.clone(), url.clone(), answers.clone());
        requests.push(tokio::spawn(async move {
            let body = stripe_session_event(
                &format!("evt_fo_{order}"),
                "checkout.session.completed",
                &format!("fo-{order}"),
                "paid",
                100,
                "usd",
            );
            let sent = Instant::now();
            let response = client
                .post(url)
                .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET))
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let status = response.map_or(0, |r| r.status().as_u16());
            answers.lock().unwrap().push(Answer { order, status, sent, took: sent.elapsed() });
        }));
    }
    for request in requests {
        let _ = request.await;
    }
}

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

async fn now(sql: &Client) -> DateTime<Utc> {
    sql.query_one("SELECT now()", &[]).await.unwrap().get(0)
}

async fn wait_for_commits_since(sql: &Client, since: DateTime<Utc>, what: &str) {
    testkit::eventually(what, WAIT, || async {
        let n: i64 = sql
            .query_one("SELECT count(*) FROM webhook_events WHERE processed_at > $1", &[&since])
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
}
