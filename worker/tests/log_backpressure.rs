//! Logging never stalls the worker. The `worker` binary runs with its stdout and stderr on
//! pipes that nobody reads once it has started (a log shipper that stopped reading), logging
//! every statement, frame and step (`RUST_LOG=trace` with `tokio_postgres` and `lapin` at
//! `trace` too), and applies a stream of signed Stripe events: far more is logged than the pipe
//! (64 KiB) and the log buffer (16 MiB) hold. Every event is still applied, and `/metrics`
//! counts the log lines dropped.
//!
//! To see it fail, make the log writer's `append` wait for room instead of dropping
//! (`shared/src/telemetry/writer.rs`): once the buffer is full the worker's tokio workers block
//! in logging, some inside a batch's transaction, and the events stop being applied.

mod common;

use std::time::Duration;

use common::Env;
use futures_util::stream::{self, StreamExt};
use shared::Provider;
use testkit::events::{stripe_session_event, STRIPE_SECRET};
use testkit::UnreadProcess;

/// Each event logs some 10 KiB at `trace` (its statements with their parameters, lapin's frames,
/// the batch's lines): three thousand are about twice what the pipe and the buffer hold.
const EVENTS: i64 = 3_000;
const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_applies_every_event_while_nobody_reads_its_log() {
    let env = Env::new().await;
    env.sql
        .execute(
            "WITH booking AS (
                 INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, $1::bigint) RETURNING id
             )
             INSERT INTO payments (order_id, booking_id, provider, amount, currency)
             SELECT 'unread-' || row_number() OVER (), id, 'stripe', 100, 'usd' FROM booking",
            &[&EVENTS],
        )
        .await
        .unwrap();
    env.declare(&env.settings(&[])).await;
    let vars = env.env_vars(&[
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "trace,lapin=trace,tokio_postgres=trace"),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
    ]);
    let (_worker, listening) =
        UnreadProcess::spawn(env!("CARGO_BIN_EXE_worker"), &vars, &["worker health and metrics listening"]).await;
    let addr = UnreadProcess::addr_of(&listening[0]);

    stream::iter(1..=EVENTS)
        .for_each_concurrent(8, |i| {
            let env = &env;
            async move {
                let key = format!("evt_unread_{i}");
                let body = stripe_session_event(
                    &key,
                    "checkout.session.completed",
                    &format!("unread-{i}"),
                    "paid",
                    100,
                    "usd",
                );
                env.publish(Provider::Stripe, "checkout.session.completed", &key, &body).await;
            }
        })
        .await;
    env.wait_count("every event applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", EVENTS, WAIT)
        .await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, EVENTS);

    let metrics = testkit::metrics::scrape(&format!("http://{addr}/metrics")).await;
    let dropped = metrics.value("log_lines_dropped_total", &[]);
    println!("log lines dropped: {dropped}");
    assert!(dropped > 0.0, "more was logged than the pipe and the buffer hold: lines were dropped ({dropped})");
}
