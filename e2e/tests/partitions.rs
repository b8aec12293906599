//! Network partitions rather than kills: the processes keep running, packets stop (or crawl).
//!
//! **The broker.** Three RabbitMQ nodes of the test's own, each in a network namespace of a
//! [`NetLab`] at an address of its own, clustered with `cluster_partition_handling =
//! pause_minority`; ingest runs in the test process (the root namespace) with `AMQP_URL`
//! listing the three (each through a [`TcpProxy`] of the test's, for scenario 3), and posts
//! signed events at `RATE` while, in turn:
//!
//! 1. **ingest's node is cut off from the other two** (ingest still reaches it): that node
//!    pauses, ingest moves to the majority and must get 200s there within 30 s; then the
//!    partition heals and the node rejoins. A channel ingest opens on the majority side before
//!    the work queue's new leader is elected often confirms nothing in time, ever (RabbitMQ
//!    3.10): ingest must replace that link. Count a confirm that comes after its request gave
//!    up as progress again (`AwaitedConfirm`'s drop in `shared/src/broker/link.rs`) and ingest
//!    stays on it, answering 503 to everything, and this scenario fails (two runs of two);
//! 2. **ingest is cut off from every node for `OUTAGE`**: 503s (no confirm, no 200), then 200s
//!    again after the heal, within `RECOVERY`;
//! 3. **the link between ingest and its node gets 100 ms of latency each way and loses 5 % of
//!    its packets each way** (200 ms more per round trip, added by the proxy, and random drops
//!    by nftables in the node's namespace: the kernel CI runs on has no `netem`): answers slow
//!    down (their p99 is printed), none is a 200 without a confirm.
//!
//! The events are applied afterwards by a worker (the Postgres on 127.0.0.1, a database of the
//! test's own). Invariants: every event answered 200 is applied exactly once (so no 200 was
//! given for a message a majority did not store), every request is answered 200 or 503,
//! nothing is dead-lettered.
//!
//! **Postgres.** A worker reaches Postgres through a [`TcpProxy`] that forwards a batch's
//! `COMMIT` (in clear: `sslmode=disable`) and loses its answer, as a partition starting at that
//! moment does: the commit lands, the worker cannot know. It gives up after
//! `DATABASE_TRANSACTION_TIMEOUT`, closes the session and retries the batch later; the retry
//! finds the event applied and counts it as a duplicate. Nothing is applied twice, nothing is
//! lost. Without that timeout the batch waits for the answer for good, and this test fails.
//!
//! Everything is torn down when the test ends, also when it fails: the lab kills every process
//! in its namespaces and deletes them. Without root (no namespaces) the broker test fails; it
//! never skips.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ingest::TestIngest;
use common::steady::{self, Answer, SteadyLoad};
use shared::settings::{Settings, WorkerSettings};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::netns::Peer;
use testkit::{NetLab, RabbitCluster, TcpProxy, TestBroker, TestDb};
use tokio_util::sync::CancellationToken;

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Events posted per second.
const RATE: u64 = 20;
/// Orders seeded: more than the load of the three scenarios can use.
const ORDERS: usize = 4000;
/// Load before a fault starts, and after the service is back.
const STEADY: Duration = Duration::from_secs(2);
/// Scenario 2: how long ingest is cut off from every node.
const OUTAGE: Duration = Duration::from_secs(10);
/// Scenario 2: deadline for the first 200 after the heal.
const RECOVERY: Duration = Duration::from_secs(30);
/// Scenario 3: how long the link is slow, and how slow each way.
const DEGRADED_FOR: Duration = Duration::from_secs(10);
const LATENCY: Duration = Duration::from_millis(100);
/// Scenario 3: share of the packets lost each way, in percent.
const LOSS: f64 = 5.0;
/// Deadline of every other condition waited on.
const WAIT: Duration = Duration::from_secs(60);
/// Erlang notices a silent peer after 1 to 1.25 `net_ticktime`s (60 s by default).
const NODE_CONFIG: &str = "cluster_partition_handling = pause_minority\nnet_ticktime = 5";

/// What one scenario's answers came to.
struct Figures {
    events: usize,
    ok: usize,
    unavailable: usize,
    /// Longest time between two consecutive 200s.
    gap: Duration,
    p99: Duration,
    slowest: Duration,
}

fn figures(answers: &[Answer]) -> Figures {
    let mut oks: Vec<Instant> = answers.iter().filter(|a| a.status == Some(200)).map(Answer::answered_at).collect();
    oks.sort();
    let mut took: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    took.sort();
    let p99 = took.get((took.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default();
    Figures {
        events: answers.len(),
        ok: oks.len(),
        unavailable: answers.iter().filter(|a| a.status == Some(503)).count(),
        gap: oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default(),
        p99,
        slowest: took.last().copied().unwrap_or_default(),
    }
}

/// A binary's settings from `vars`.
fn load<S: Settings>(vars: &[(String, String)]) -> S {
    S::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).expect("valid settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_of_a_pause_minority_cluster_lose_no_acknowledged_event() {
    testkit::init_logs();
    let started = Instant::now();
    // Declared first, dropped last: whatever runs in its namespaces dies with it.
    let lab = NetLab::new(3);
    let cluster = RabbitCluster::start_in(&lab, NODE_CONFIG).await;
    let formed = started.elapsed();
    let db = TestDb::create().await;
    let prefix = testkit::unique("t");
    // Ingest reaches node i through proxies[i] (the workers go direct).
    let mut proxies = Vec::new();
    for node in &cluster.nodes {
        proxies.push(TcpProxy::start(node.amqp_addr()).await);
    }
    let ingest_urls =
        proxies.iter().map(|p| format!("amqp://guest:guest@{}/%2f", p.addr())).collect::<Vec<_>>().join(",");
    let vars_from = |first: usize| -> Vec<(String, String)> {
        [
            ("AMQP_URL", cluster.amqp_urls_from(first)),
            ("AMQP_PREFIX", prefix.clone()),
            ("DATABASE_URL", db.url.clone()),
            ("INGEST_ADDR", "127.0.0.1:0".into()),
            ("INGEST_METRICS_ADDR", "127.0.0.1:0".into()),
            ("WORKER_ADDR", "127.0.0.1:0".into()),
            ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET.into()),
            ("PUBLISH_TIMEOUT", "2s".into()),
            ("RETRY_DELAYS", "200ms,1s".into()),
            ("RETRY_MAX_ATTEMPTS", "30".into()),
            ("SHUTDOWN_TIMEOUT", "10s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let worker_settings: WorkerSettings = load(&vars_from(1));
    worker::store::migrate::migrate(&worker_settings.database).await.expect("migrations apply");
    let sql = db.client().await;
    steady::seed_orders(&sql, "pt", ORDERS).await;
    // The queues are declared through node 0, ingest's first node: the work queue's leader
    // starts on the node that scenario 1 cuts off.
    let connection = lapin::Connection::connect(&cluster.nodes[0].amqp_url(), Default::default()).await.unwrap();
    worker::Worker::topology(&worker_settings).declare(&connection).await.unwrap();
    let _ = connection.close(200, "declared".into()).await;

    let mut ingest_vars = vars_from(0);
    ingest_vars[0].1 = ingest_urls;
    let ingest = TestIngest::spawn(load(&ingest_vars)).await;
    let next_order = Arc::new(AtomicUsize::new(1));
    let mut rows = Vec::new();
    let mut accepted = Vec::new();

    // 1. Ingest's node cut off from the other two; ingest still reaches it.
    let load1 = SteadyLoad::start(&ingest, "pt", RATE, PUBLISH_TIMEOUT * 8, next_order.clone(), ORDERS);
    tokio::time::sleep(STEADY).await;
    let node = ingest.state.broker.current_node().expect("ingest is connected");
    let others: Vec<Peer> = (0..3).filter(|i| *i != node).map(Peer::Host).collect();
    let cut_at = Instant::now();
    lab.isolate(Peer::Host(node), &others);
    let paused_addr = cluster.nodes[node].amqp_addr();
    testkit::eventually("the minority node paused (its AMQP listener closed)", WAIT, || async move {
        let probe = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(paused_addr)).await;
        matches!(probe, Ok(Err(_))).then_some(())
    })
    .await;
    let paused_after = cut_at.elapsed();
    let moved = testkit::eventually("ingest on a majority node", WAIT, || async {
        ingest.state.broker.current_node().filter(|n| *n != node)
    })
    .await;
    let before = load1.so_far().len();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let after = load1.so_far();
        if after[before..].iter().filter(|a| a.status == Some(200)).count() >= RATE as usize {
            break;
        }
        if Instant::now() > until {
            let majority = &cluster.nodes[moved];
            for args in [
                &["list_queues", "name", "messages", "leader", "members", "online"][..],
                &["cluster_status"][..],
                &["list_channels", "name", "messages_unconfirmed", "confirm"][..],
            ] {
                eprintln!("{args:?} on {}:\n{}", majority.name, majority.try_ctl(args).await.unwrap_or_else(|e| e));
            }
            panic!("no 200 from the majority side within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lab.heal();
    let healed_at = Instant::now();
    cluster.nodes[node].ctl(&["await_startup", "--timeout", "90"]).await;
    let rejoined_after = healed_at.elapsed();
    tokio::time::sleep(STEADY).await;
    let answers = load1.finish().await;
    let f = figures(&answers);
    rows.push(format!(
        "| ingest's node cut off from the other two (`pause_minority`; ingest still reaches it) | {} | {} | {} | all (each once) | {:.2} s | {:.2} s; paused {:.1} s after the cut, ingest moved to node {moved}, the node rejoined {:.1} s after the heal |",
        f.events, f.ok, f.unavailable, f.gap.as_secs_f64(), f.slowest.as_secs_f64(), paused_after.as_secs_f64(), rejoined_after.as_secs_f64()
    ));
    accepted.extend(steady::accepted("ingest's node cut off", &answers));

    // 2. Ingest cut off from every node for OUTAGE.
    let load2 = SteadyLoad::start(&ingest, "pt", RATE, PUBLISH_TIMEOUT * 8, next_order.clone(), ORDERS);
    tokio::time::sleep(STEADY).await;
    lab.isolate(Peer::Root, &[Peer::Host(0), Peer::Host(1), Peer::Host(2)]);
    let cut_at = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    lab.heal();
    let healed_at = Instant::now();
    let back = testkit::eventually("a 200 after the heal", RECOVERY, || async {
        load2.so_far().iter().filter(|a| a.status == Some(200) && a.sent >= healed_at).map(Answer::answered_at).min()
    })
    .await;
    tokio::time::sleep(STEADY).await;
    let answers = load2.finish().await;
    let f = figures(&answers);
    let during: Vec<&Answer> = answers.iter().filter(|a| a.sent >= cut_at && a.answered_at() <= healed_at).collect();
    let ok_during = during.iter().filter(|a| a.status == Some(200)).count();
    rows.push(format!(
        "| ingest cut off from every node for {} s | {} | {} | {} | all (each once) | {:.2} s | {:.2} s; first `200` {:.2} s after the heal |",
        OUTAGE.as_secs(), f.events, f.ok, f.unavailable, f.gap.as_secs_f64(), f.slowest.as_secs_f64(), (back - healed_at).as_secs_f64()
    ));
    assert_eq!(ok_during, 0, "no 200 without a confirm while ingest reached no node");
    accepted.extend(steady::accepted("ingest cut off from every node", &answers));

    // 3. A slow link between ingest and its node.
    let node = ingest.state.broker.current_node().expect("ingest is connected");
    let load3 = SteadyLoad::start(&ingest, "pt", RATE, PUBLISH_TIMEOUT * 8, next_order.clone(), ORDERS);
    tokio::time::sleep(STEADY).await;
    proxies[node].delay(LATENCY);
    lab.lose(node, Peer::Root, LOSS);
    let degraded_from = Instant::now();
    tokio::time::sleep(DEGRADED_FOR).await;
    proxies[node].delay(Duration::ZERO);
    lab.lose(node, Peer::Root, 0.0);
    let dropped = lab.dropped();
    assert!(dropped > 0, "the lossy link dropped packets");
    let degraded_to = Instant::now();
    tokio::time::sleep(STEADY).await;
    let answers = load3.finish().await;
    let slow: Vec<Answer> =
        answers.iter().filter(|a| a.sent >= degraded_from && a.sent < degraded_to).cloned().collect();
    let f = figures(&slow);
    let all = figures(&answers);
    rows.push(format!(
        "| ingest ↔ its node {} ms more each way and {LOSS} % of packets lost each way (a delaying proxy; random drops by nftables) for {} s | {} ({} during) | {} ({} during) | {} | all (each once) | {:.2} s | answer p99 {:.2} s, slowest {:.2} s while degraded ({dropped} packets dropped); p99 {:.3} s once healthy |",
        LATENCY.as_millis(), DEGRADED_FOR.as_secs(), all.events, f.events, all.ok, f.ok, all.unavailable, all.gap.as_secs_f64(),
        f.p99.as_secs_f64(), f.slowest.as_secs_f64(), figures(&answers.iter().filter(|a| a.sent >= degraded_to + Duration::from_secs(1)).cloned().collect::<Vec<_>>()).p99.as_secs_f64()
    ));
    accepted.extend(steady::accepted("slow link", &answers));
    ingest.stop().await;

    // Every 200 applied exactly once, by a worker started once the network is whole again.
    let stop_worker = CancellationToken::new();
    let worker = worker::Worker::build(worker_settings).await.expect("worker builds");
    let worker = tokio::spawn(worker.run(stop_worker.clone()));
    let drain_from = Instant::now();
    let paid = steady::assert_applied_once(&sql, "pt", &accepted, WAIT).await;
    let drained_in = drain_from.elapsed();
    assert!(next_order.load(Ordering::SeqCst) <= ORDERS, "more events posted than orders seeded");
    let dead: i64 =
        sql.query_one("SELECT count(*) FROM webhook_events WHERE status = 'dead'", &[]).await.unwrap().get(0);
    assert_eq!(dead, 0, "nothing dead-lettered");
    let connection = lapin::Connection::connect(&cluster.nodes[1].amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let dead_queue = channel
        .queue_declare(
            format!("{prefix}.dead").as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(dead_queue.message_count(), 0, "nothing in the dead-letter queue");
    let _ = connection.close(200, "checked".into()).await;
    stop_worker.cancel();
    let _ = worker.await;

    eprintln!(
        "partitions: cluster formed in {:.1} s; {} events answered 200, all applied once ({} orders paid in all, \
         503s whose message was stored all the same included; drained in {:.1} s); whole test {:.1} s\n\
         | fault | events | `200` | `503` | applied | longest stretch without a `200` | notes |\n{}",
        formed.as_secs_f64(),
        accepted.len(),
        paid,
        drained_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        rows.join("\n")
    );
    drop(proxies);
    drop(cluster);
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_given_up_and_its_retry_applies_nothing_twice() {
    testkit::init_logs();
    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(common::postgres_addr(&db.url)).await;
    let vars = [("DATABASE_TRANSACTION_TIMEOUT", "2s"), ("RETRY_DELAYS", "200ms,1s")];
    let direct: WorkerSettings = broker.settings(Some(&db.url), &vars);
    worker::store::migrate::migrate(&direct.database).await.expect("migrations apply");
    let sql = db.client().await;
    const EVENTS: usize = 10;
    sql.batch_execute(&format!(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {EVENTS}) RETURNING id)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT 'lc-' || row_number() OVER (), id, 'stripe', 100, 'usd' FROM b"
    ))
    .await
    .unwrap();
    // In clear, so that the proxy sees the COMMIT.
    let through_proxy = format!("{}?sslmode=disable", db.url_via(proxy.addr()));
    let worker = common::TestWorker::spawn(broker.settings(Some(&through_proxy), &vars)).await;
    let ingest = TestIngest::spawn(broker.settings(None, &vars)).await;
    let post = |order: usize| {
        let ingest = &ingest;
        async move {
            let body = stripe_session_event(
                &format!("evt_lc_{order}"),
                "checkout.session.completed",
                &format!("lc-{order}"),
                "paid",
                100,
                "usd",
            );
            let status = ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await.status();
            assert_eq!(status, 200, "event {order} accepted");
        }
    };
    let inbox = |order: usize| {
        let sql = &sql;
        async move {
            sql.query_opt(
                "SELECT status, duplicates FROM webhook_events WHERE event_key = $1",
                &[&format!("evt_lc_{order}")],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
        }
    };

    // A first event, with the worker's sessions open.
    post(1).await;
    testkit::eventually("event 1 applied", WAIT, || async { inbox(1).await.filter(|(s, _)| s == "applied") }).await;

    // The next commit reaches Postgres; its answer never comes back.
    proxy.swallow_answers_after(b"COMMIT");
    let posted_at = Instant::now();
    post(2).await;
    testkit::eventually("a COMMIT forwarded with its answer lost", WAIT, || async {
        proxy.answers_swallowed().then_some(())
    })
    .await;
    testkit::eventually("event 2 applied by the commit the worker never heard of", WAIT, || async {
        inbox(2).await.filter(|(s, _)| s == "applied")
    })
    .await;
    let (_, duplicates) = testkit::eventually(
        "the worker gave up on the commit, and its retry found event 2 applied (a duplicate)",
        WAIT,
        || async { inbox(2).await.filter(|(_, duplicates)| *duplicates >= 1) },
    )
    .await;
    let retried_after = posted_at.elapsed();
    // The partition ends with the connection torn down; the worker goes on on fresh ones.
    proxy.cut();
    proxy.restore();
    for order in 3..=EVENTS {
        post(order).await;
    }
    let applied_sql = "SELECT count(*) FROM webhook_events WHERE status = 'applied'";
    testkit::eventually("every event applied", WAIT, || async {
        let n: i64 = sql.query_one(applied_sql, &[]).await.unwrap().get(0);
        (n == EVENTS as i64).then_some(())
    })
    .await;
    let count = |query: &'static str| {
        let sql = &sql;
        async move { sql.query_one(query, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, EVENTS as i64);
    assert_eq!(count("SELECT count(*) FROM notifications").await, EVENTS as i64, "one notification per event");
    assert_eq!(count("SELECT count(DISTINCT payment_id) FROM notifications").await, EVENTS as i64);
    assert_eq!(count("SELECT count(*) FROM webhook_events WHERE status = 'dead'").await, 0);
    assert_eq!(broker.count(&format!("{}.dead", broker.prefix)).await, 0, "nothing in the dead-letter queue");
    eprintln!(
        "lost commit answer: event 2 applied once, its retried copy counted as {duplicates} duplicate(s), {:.1} s after it was posted \
         (DATABASE_TRANSACTION_TIMEOUT 2s, first retry tier 200ms); {EVENTS} events applied once each, none dead-lettered",
        retried_after.as_secs_f64()
    );
    worker.stop().await;
    ingest.stop().await;
}
