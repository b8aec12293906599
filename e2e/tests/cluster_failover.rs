//! A three-node RabbitMQ cluster of the test's own loses a node under steady signed load:
//! first the node ingest is connected to, then the node holding the work queue's leader. Each
//! is SIGKILLed and later brought back. Ingest (with `AMQP_URL` listing the three nodes) and two
//! workers keep going without a restart.
//!
//! Invariants: every event answered 200 is applied exactly once (so no 200 was given for a
//! message a majority did not store); every other answer is a 503 that came within
//! `PUBLISH_TIMEOUT`; the longest stretch without a 200 stays within a few seconds.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ingest::TestIngest;
use shared::settings::{Settings, WorkerSettings};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::{RabbitCluster, TestDb};
use tokio_util::sync::CancellationToken;

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// Events posted per second during a case.
const RATE: u64 = 40;
/// The node dies this long into a case, comes back `DOWN_FOR` later, and load stops at `LOAD_FOR`.
const KILL_AT: Duration = Duration::from_secs(4);
const DOWN_FOR: Duration = Duration::from_secs(10);
const LOAD_FOR: Duration = Duration::from_secs(24);
/// The longest stretch without a 200 the test accepts (it measures and prints the real one).
const MAX_GAP: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug)]
enum Victim {
    IngestsNode,
    WorkQueueLeader,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_node_loses_no_acknowledged_event_and_service_returns_within_seconds() {
    testkit::init_logs();
    let mut cluster = RabbitCluster::start(3).await;
    for victim in [Victim::IngestsNode, Victim::WorkQueueLeader] {
        run_case(&mut cluster, victim).await;
    }
}

/// One posted event and what ingest answered.
struct Answer {
    order: usize,
    status: Option<u16>,
    sent: Instant,
    took: Duration,
}

/// A binary's settings from `vars`.
fn load<S: Settings>(vars: &[(String, String)]) -> S {
    S::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).expect("valid settings")
}

async fn run_case(cluster: &mut RabbitCluster, victim: Victim) {
    let db = TestDb::create().await;
    let prefix = testkit::unique("t");
    // The settings of a process (ingest or a worker) that connects to node `first` first.
    let vars_from = |first: usize| -> Vec<(String, String)> {
        let urls = cluster.amqp_urls_from(first);
        let vars = [
            ("AMQP_URL", urls.as_str()),
            ("AMQP_PREFIX", prefix.as_str()),
            ("DATABASE_URL", db.url.as_str()),
            ("INGEST_ADDR", "127.0.0.1:0"),
            ("INGEST_METRICS_ADDR", "127.0.0.1:0"),
            ("WORKER_ADDR", "127.0.0.1:0"),
            ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
            ("PUBLISH_TIMEOUT", "3s"),
            ("RETRY_DELAYS", "200ms,1s"),
            ("RETRY_MAX_ATTEMPTS", "30"),
            ("SHUTDOWN_TIMEOUT", "10s"),
        ];
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let settings_from = |first: usize| -> WorkerSettings { load(&vars_from(first)) };
    worker::store::migrate::migrate(&settings_from(0).database).await.expect("migrations apply");
    let sql = db.client().await;
    let orders = (RATE * LOAD_FOR.as_secs() + RATE) as i64;
    sql.batch_execute(&format!(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {orders}) RETURNING id)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT 'cf-' || row_number() OVER (), id, 'stripe', 100, 'usd' FROM b"
    ))
    .await
    .unwrap();

    if let Victim::WorkQueueLeader = victim {
        // Queues get their leader where they are declared: on node 2 here, so that the leader
        // is not the node ingest publishes through.
        let connection = lapin::Connection::connect(&cluster.nodes[2].amqp_url(), Default::default()).await.unwrap();
        worker::Worker::topology(&settings_from(2)).declare(&connection).await.unwrap();
        let _ = connection.close(200, "declared".into()).await;
    }
    // Ingest starts on node 0, the workers on nodes 1 and 2.
    let ingest = TestIngest::spawn(load(&vars_from(0))).await;
    let stop_workers = CancellationToken::new();
    let mut workers = Vec::new();
    for first in [1, 2] {
        let worker = worker::Worker::build(settings_from(first)).await.expect("worker builds");
        workers.push(tokio::spawn(worker.run(stop_workers.clone())));
    }

    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let started = Instant::now();
    let load = {
        let (client, url, answers) = (ingest.client.clone(), ingest.url(ingest::STRIPE_ROUTE), answers.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / RATE as u32);
            let mut requests = Vec::new();
            for order in 1..=(RATE * LOAD_FOR.as_secs()) as usize {
                pace.tick().await;
                let (client, url, answers) = (client.clone(), url.clone(), answers.clone());
                requests.push(tokio::spawn(async move {
                    let body = stripe_session_event(
                        &format!("evt_cf_{order}"),
                        "checkout.session.completed",
                        &format!("cf-{order}"),
                        "paid",
                        100,
                        "usd",
                    );
                    let sent = Instant::now();
                    let status = client
                        .post(url)
                        .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET))
                        .body(body)
                        .timeout(PUBLISH_TIMEOUT * 4)
                        .send()
                        .await
                        .ok()
                        .map(|r| r.status().as_u16());
                    answers.lock().unwrap().push(Answer { order, status, sent, took: sent.elapsed() });
                }));
            }
            for request in requests {
                let _ = request.await;
            }
        })
    };

    tokio::time::sleep_until((started + KILL_AT).into()).await;
    let killed = match victim {
        Victim::IngestsNode => ingest.state.broker.current_node().expect("ingest is connected"),
        Victim::WorkQueueLeader => {
            let work = format!("{prefix}.work");
            let listing =
                cluster.nodes[0].ctl(&["list_queues", "name", "leader", "--no-table-headers", "--quiet"]).await;
            let leader = listing
                .lines()
                .find_map(|line| {
                    let mut fields = line.split_whitespace();
                    (fields.next() == Some(work.as_str())).then(|| fields.next().map(str::to_string)).flatten()
                })
                .unwrap_or_else(|| panic!("no leader listed for {work}:\n{listing}"));
            let leader =
                cluster.index_of(&leader).unwrap_or_else(|| panic!("leader {leader} is not a node of the cluster"));
            assert_ne!(Some(leader), ingest.state.broker.current_node(), "the leader is not ingest's node");
            leader
        }
    };
    let killed_at = Instant::now();
    cluster.nodes[killed].kill().await;
    tokio::time::sleep_until((killed_at + DOWN_FOR).into()).await;
    cluster.nodes[killed].restart().await;
    let back_at = Instant::now();
    load.await.unwrap();

    // Every 200 is applied exactly once.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let accepted: Vec<String> =
        answers.iter().filter(|a| a.status == Some(200)).map(|a| format!("evt_cf_{}", a.order)).collect();
    let applied = |keys: Vec<String>| {
        let sql = &sql;
        async move {
            let row = sql
                .query_one(
                    "SELECT count(*) FROM webhook_events WHERE status = 'applied' AND event_key = ANY($1)",
                    &[&keys],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) as usize
        }
    };
    testkit::eventually("every acknowledged event applied", Duration::from_secs(120), || {
        let keys = accepted.clone();
        let want = accepted.len();
        let applied = &applied;
        async move { (applied(keys).await == want).then_some(()) }
    })
    .await;
    let notifications: HashMap<String, i64> = sql
        .query(
            "SELECT p.order_id, count(n.id) FROM payments p LEFT JOIN notifications n ON n.payment_id = p.id
              WHERE p.payment_status = 'paid' GROUP BY p.order_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for answer in answers.iter().filter(|a| a.status == Some(200)) {
        let order = format!("cf-{}", answer.order);
        assert_eq!(notifications.get(&order), Some(&1), "order {order}: paid once, one notification");
    }
    assert!(notifications.values().all(|n| *n == 1), "no event took effect twice");

    // Answers: 200 or a prompt 503; the longest stretch without a 200.
    let others: Vec<(usize, Option<u16>)> =
        answers.iter().filter(|a| !matches!(a.status, Some(200) | Some(503))).map(|a| (a.order, a.status)).collect();
    assert!(others.is_empty(), "answers other than 200 and 503: {others:?}");
    let slowest = answers.iter().map(|a| a.took).max().unwrap();
    assert!(slowest < PUBLISH_TIMEOUT + Duration::from_secs(2), "an answer took {slowest:?}");
    let mut oks: Vec<Instant> = answers.iter().filter(|a| a.status == Some(200)).map(|a| a.sent + a.took).collect();
    oks.sort();
    let gap = oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let unavailable = answers.iter().filter(|a| a.status == Some(503)).count();
    eprintln!(
        "{victim:?} (node {killed} killed for {:?}, back at {:?}): {} events, {} answered 200, {} answered 503, {} applied, longest stretch without a 200 {gap:?}, slowest answer {slowest:?}",
        DOWN_FOR,
        back_at - started,
        answers.len(),
        accepted.len(),
        unavailable,
        applied(accepted.clone()).await,
    );
    assert!(gap <= MAX_GAP, "service came back only after {gap:?} without a 200");
    let after_return = answers.iter().filter(|a| a.sent > back_at + Duration::from_secs(3)).collect::<Vec<_>>();
    assert!(after_return.iter().all(|a| a.status == Some(200)), "all 200 once the node is back");

    stop_workers.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    ingest.stop().await;
}
