//! Retention: final inbox rows older than `EVENT_RETENTION` (by `processed_at`) go, in small
//! batches, through the partial index; everything younger, and every event still in flight,
//! stays; `EVENT_RETENTION=0` keeps everything.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Env, TestWorker};
use tokio_util::sync::CancellationToken;
use worker::store::retention::{prune_batch, prune_expired, run_pruner, PRUNE_BATCH, PRUNE_SQL};

const WAIT: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// One row per status and age; `processed_at` is `age` days ago (NULL for rows never processed).
async fn seed_ages(env: &Env) {
    for status in ["applied", "ignored", "dead", "unverified", "retrying", "processing"] {
        for age in [0, 1, 29, 31, 400] {
            let processed = if status == "processing" { None } else { Some(age) };
            env.sql
                .execute(
                    "INSERT INTO webhook_events (provider, event_key, event_type, status, payload, received_at, processed_at)
                     VALUES ('stripe', $1, 'checkout.session.completed', $2, '{}',
                             now() - make_interval(days => $3), now() - make_interval(days => $4))",
                    &[&format!("evt_{status}_{age}"), &status, &age, &processed],
                )
                .await
                .unwrap();
        }
    }
}

async fn keys(env: &Env) -> BTreeSet<String> {
    env.sql.query("SELECT event_key FROM webhook_events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// What must be left after pruning with 30 days: every row but the final and unverified ones
/// older than that.
fn expected_after_30_days() -> BTreeSet<String> {
    let mut expected = BTreeSet::new();
    for status in ["applied", "ignored", "dead", "unverified", "retrying", "processing"] {
        for age in [0, 1, 29, 31, 400] {
            let prunable = matches!(status, "applied" | "ignored" | "dead" | "unverified");
            if !(prunable && age > 30) {
                expected.insert(format!("evt_{status}_{age}"));
            }
        }
    }
    expected
}

#[tokio::test]
async fn only_final_and_unverified_rows_older_than_the_retention_are_pruned() {
    let env = Env::new().await;
    seed_ages(&env).await;
    let settings = env.settings(&[]);
    let pool = worker::store::Store::new(
        worker::store::db::pool(&settings.database).unwrap(),
        settings.worker.database_transaction_timeout,
    );
    let pruned = prune_expired(&pool, 30 * DAY, &CancellationToken::new()).await.unwrap();
    assert_eq!(pruned, 8, "applied, ignored, dead and unverified rows of 31 and 400 days");
    assert_eq!(keys(&env).await, expected_after_30_days());
    // Nothing is left to prune: a second run deletes nothing.
    assert_eq!(prune_expired(&pool, 30 * DAY, &CancellationToken::new()).await.unwrap(), 0);
    // A longer retention keeps what a shorter one would prune.
    let client = env.db.client().await;
    assert_eq!(prune_batch(&client, 1000 * DAY, PRUNE_BATCH).await.unwrap(), 0);
    assert_eq!(prune_batch(&client, 7 * DAY, PRUNE_BATCH).await.unwrap(), 4, "the 29-day final and unverified rows");
}

#[tokio::test]
async fn a_backlog_goes_in_batches_of_the_batch_size() {
    let env = Env::new().await;
    let backlog = 2 * PRUNE_BATCH + 37;
    env.sql
        .execute(
            "INSERT INTO webhook_events (provider, event_key, event_type, status, payload, received_at, processed_at)
             SELECT 'toss', 'old_' || n, 'PAYMENT_STATUS_CHANGED', 'applied', '{}', now() - interval '90 days',
                    now() - interval '90 days' + n * interval '1 second'
               FROM generate_series(1, $1::bigint) AS n",
            &[&backlog],
        )
        .await
        .unwrap();
    let client = env.db.client().await;
    assert_eq!(prune_batch(&client, 30 * DAY, PRUNE_BATCH).await.unwrap(), PRUNE_BATCH as u64);
    // Oldest first: the rows left are the youngest ones.
    let oldest_left: String = env
        .sql
        .query_one("SELECT event_key FROM webhook_events ORDER BY processed_at LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(oldest_left, format!("old_{}", PRUNE_BATCH + 1));
    let settings = env.settings(&[]);
    let pool = worker::store::Store::new(
        worker::store::db::pool(&settings.database).unwrap(),
        settings.worker.database_transaction_timeout,
    );
    let rest = prune_expired(&pool, 30 * DAY, &CancellationToken::new()).await.unwrap();
    assert_eq!(rest, (backlog - PRUNE_BATCH) as u64);
    assert_eq!(env.count("SELECT count(*) FROM webhook_events").await, 0);
}

#[tokio::test]
async fn the_prune_query_reads_the_partial_index() {
    let env = Env::new().await;
    seed_ages(&env).await;
    let client = env.db.client().await;
    client.batch_execute("ANALYZE webhook_events; SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {PRUNE_SQL}"), &[&(30 * DAY).as_secs_f64(), &PRUNE_BATCH])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("webhook_events_prunable_v5"), "the prune query uses the retention index:\n{plan}");
}

#[tokio::test]
async fn the_running_worker_prunes_with_the_default_retention() {
    let env = Env::new().await;
    seed_ages(&env).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;
    testkit::eventually("expired rows pruned by the worker", WAIT, || async {
        (keys(&env).await == expected_after_30_days()).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_retention_of_zero_keeps_everything() {
    let env = Env::new().await;
    seed_ages(&env).await;
    let before = keys(&env).await;
    let worker = worker::Worker::build(env.settings(&[("EVENT_RETENTION", "0")])).await.unwrap();
    let stop = CancellationToken::new();
    // With 0 the pruner has nothing to do and returns at once, without touching a row; with
    // any retention it would run until stopped.
    tokio::time::timeout(WAIT, run_pruner(worker.pruner(), stop.clone()))
        .await
        .expect("the pruner returns at once with EVENT_RETENTION=0");
    assert_eq!(keys(&env).await, before);
    assert!(before.contains("evt_applied_400"));

    // The same rows with the default retention: the pruner removes the expired ones.
    let worker = worker::Worker::build(env.settings(&[])).await.unwrap();
    let pruner = tokio::spawn(run_pruner(worker.pruner(), stop.clone()));
    testkit::eventually("expired rows pruned", WAIT, || async {
        (keys(&env).await == expected_after_30_days()).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(WAIT, pruner).await.expect("the pruner stops when told").unwrap();
}
