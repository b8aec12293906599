//! A three-node RabbitMQ cluster of the test's own loses a node under steady signed load:
//! first the node ingest is connected to, then the node holding the work queue's leader. Each
//! is SIGKILLed and later brought back. Ingest (with `AMQP_URL` listing the three nodes) and two
//! workers keep going without a restart.
//!
//! Invariants: every event answered 200 is applied exactly once (so no 200 was given for a
//! message a majority did not store); every other answer is a 503 that came within
//! `PUBLISH_TIMEOUT`; the longest stretch without a 200 stays within a few seconds.

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ingest::TestIngest;
use common::steady::{self, SteadyLoad};
use shared::settings::{Settings, WorkerSettings};
use testkit::events::STRIPE_SECRET;
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
    steady::seed_orders(&sql, "cf", (RATE * LOAD_FOR.as_secs() + RATE) as usize).await;

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

    let started = Instant::now();
    let events = (RATE * LOAD_FOR.as_secs()) as usize;
    let load = SteadyLoad::start(&ingest, "cf", RATE, PUBLISH_TIMEOUT * 4, Arc::new(AtomicUsize::new(1)), events);

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
    let answers = load.done().await;

    // Every 200 is applied exactly once; every answer is a 200 or a 503.
    let accepted = steady::accepted(&format!("{victim:?}"), &answers);
    steady::assert_applied_once(&sql, "cf", &accepted, Duration::from_secs(120)).await;

    // The 503s prompt; the longest stretch without a 200.
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
        accepted.len(),
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
