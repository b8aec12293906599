//! Steady signed load for the fault tests: Stripe `checkout.session.completed` events posted
//! to ingest at a fixed rate, one request each (none waits for another's answer), every answer
//! recorded with when it was sent and how long it took; and the check that every event
//! answered 200 took effect exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::ingest::TestIngest;

/// One posted event and what ingest answered (`None`: no answer at all).
#[derive(Clone, Debug)]
pub struct Answer {
    pub order: usize,
    pub status: Option<u16>,
    pub sent: Instant,
    pub took: Duration,
}

impl Answer {
    pub fn answered_at(&self) -> Instant {
        self.sent + self.took
    }
}

/// Event `n` of a load tagged `tag`: key `evt_{tag}_{n}`, order `{tag}-{n}`.
pub fn event_key(tag: &str, n: usize) -> String {
    format!("evt_{tag}_{n}")
}

pub fn order_id(tag: &str, n: usize) -> String {
    format!("{tag}-{n}")
}

/// Events posted at `rate` a second, numbered from `next` (shared across loads, so that one
/// test's loads never reuse an order), up to and including `last`, or until stopped.
pub struct SteadyLoad {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyLoad {
    /// Starts posting; each request gives up after `request_timeout` (no answer: `None`).
    pub fn start(
        ingest: &TestIngest,
        tag: &'static str,
        rate: u64,
        request_timeout: Duration,
        next: Arc<AtomicUsize>,
        last: usize,
    ) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (client, url) = (ingest.client.clone(), ingest.url(ingest::STRIPE_ROUTE));
        let task = tokio::spawn({
            let (answers, stop) = (answers.clone(), stop.clone());
            async move {
                let mut pace = tokio::time::interval(Duration::from_secs(1) / rate as u32);
                let mut requests = Vec::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = pace.tick() => {}
                    }
                    let order = next.fetch_add(1, Ordering::SeqCst);
                    if order > last {
                        break;
                    }
                    let (client, url, answers) = (client.clone(), url.clone(), answers.clone());
                    requests.push(tokio::spawn(async move {
                        let body = stripe_session_event(
                            &event_key(tag, order),
                            "checkout.session.completed",
                            &order_id(tag, order),
                            "paid",
                            100,
                            "usd",
                        );
                        let sent = Instant::now();
                        let status = client
                            .post(url)
                            .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET))
                            .body(body)
                            .timeout(request_timeout)
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
            }
        });
        Self { answers, stop, task }
    }

    /// The answers received so far, in the order they came.
    pub fn so_far(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Stops posting, waits for the requests in flight; every answer, by order.
    pub async fn finish(self) -> Vec<Answer> {
        self.stop.cancel();
        self.done().await
    }

    /// Waits until the load has posted its `last` event and every answer is in; by order.
    pub async fn done(self) -> Vec<Answer> {
        self.task.await.expect("load task");
        let mut answers = std::mem::take(&mut *self.answers.lock().unwrap());
        answers.sort_by_key(|a| a.order);
        answers
    }
}

/// Pending Stripe payments (100 usd) for orders 1 to `n` of load `tag`, each of its own booking.
pub async fn seed_orders(sql: &Client, tag: &str, n: usize) {
    sql.batch_execute(&format!(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {n}) RETURNING id)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT '{tag}-' || row_number() OVER (), id, 'stripe', 100, 'usd' FROM b"
    ))
    .await
    .unwrap();
}

/// Every request was answered 200 or 503; returns the orders answered 200.
pub fn accepted(scenario: &str, answers: &[Answer]) -> Vec<usize> {
    let others: Vec<(usize, Option<u16>)> =
        answers.iter().filter(|a| !matches!(a.status, Some(200) | Some(503))).map(|a| (a.order, a.status)).collect();
    assert!(others.is_empty(), "{scenario}: answers other than 200 and 503: {others:?}");
    answers.iter().filter(|a| a.status == Some(200)).map(|a| a.order).collect()
}

/// Waits (up to `wait`) until every one of `orders` (of load `tag`) is applied, then checks
/// that each was paid once with one notification, and that no paid order has two; returns
/// how many orders are paid in all (events answered 503 whose message was stored all the
/// same included).
pub async fn assert_applied_once(sql: &Client, tag: &str, orders: &[usize], wait: Duration) -> usize {
    let keys: Vec<String> = orders.iter().map(|n| event_key(tag, *n)).collect();
    testkit::eventually("every acknowledged event applied", wait, || async {
        let applied: i64 = sql
            .query_one("SELECT count(*) FROM webhook_events WHERE status = 'applied' AND event_key = ANY($1)", &[&keys])
            .await
            .unwrap()
            .get(0);
        (applied as usize == keys.len()).then_some(())
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
    for n in orders {
        let order = order_id(tag, *n);
        assert_eq!(notifications.get(&order), Some(&1), "order {order}: paid once, one notification");
    }
    assert!(notifications.values().all(|n| *n == 1), "no event took effect twice");
    notifications.len()
}
