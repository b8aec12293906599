//! How long the console's pages take on the server with a million events: a database of its
//! own is loaded with 1,000,000 `webhook_events` rows (200,000 orders with five events each,
//! their payments, bookings and notifications, 2,000 trainers), then each page is requested
//! through the console's own router in this process (no network: the time from handing the
//! request to the router until its whole answer is collected, database round trips included)
//! and the percentiles are printed.
//!
//!     cargo bench -p console --bench order_page            # against TEST_DATABASE_URL
//!     cargo bench -p console --bench order_page -- 200000  # a smaller table
//!
//! A benchmark, not a test: it asserts nothing about time (the machine may be busy); it
//! prints what it measured, and fails only if a page does not answer 200 (or 303 for a search).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use console::auth::session::Identity;
use console::auth::users::Role;
use testkit::TestDb;

const EVENTS_PER_ORDER: i64 = 5;
const TRAINERS: i64 = 2_000;
const SAMPLES: usize = 500;
const WARM_UP: usize = 20;

/// The path of the `i`-th request of a page.
type PathOf = Box<dyn Fn(usize) -> String>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: i64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let orders = events / EVENTS_PER_ORDER;
    let db = TestDb::create().await;
    let settings =
        <console::PipelineSettings as shared::settings::Settings>::from_vars([("DATABASE_URL", db.url.as_str())])?;
    worker::store::migrate::migrate(&settings.database).await?;
    let sql = db.client().await;
    let started = Instant::now();
    println!("loading {events} events for {orders} orders into database {} ...", db.name);
    load(&sql, orders).await?;
    let count: i64 = sql.query_one("SELECT count(*) FROM webhook_events", &[]).await?.get(0);
    println!("loaded {count} webhook_events rows in {:.0?}", started.elapsed());

    let console_settings = console::ConsoleSettings::from_vars([("CONSOLE_ADDR", "127.0.0.1:0")])?;
    let app = console::Console::build(settings, console_settings).await?;
    let state = app.state();
    let session =
        state.sessions.create(Some(Identity { user: "bench".into(), role: Role::Operator, via_proxy: false }));
    let cookie = format!("console_session={}", session.token);
    let router = console::app::router(state);
    let peer: SocketAddr = "127.0.0.1:9".parse()?;

    let pick = move |i: usize| 1 + (i as i64 * 7919) % orders;
    let pages: Vec<(&str, PathOf)> = vec![
        ("order page", Box::new(move |i| format!("/orders/order_{}", pick(i)))),
        ("search by request id", Box::new(move |i| format!("/search?q=req_{}_3", pick(i)))),
        ("search by payment key", Box::new(move |i| format!("/search?q=pi_{}", pick(i)))),
        ("events, newest page", Box::new(|_| "/events".to_string())),
        ("events, status=dead", Box::new(|_| "/events?status=dead".to_string())),
        (
            "events, status=ignored, page 20",
            Box::new(move |i| format!("/events?status=ignored&before={}", events - 1000 - i as i64)),
        ),
        ("unverified", Box::new(|_| "/unverified".to_string())),
    ];
    println!(
        "\n{:<34} {:>9} {:>9} {:>9} {:>9}   (server time per request, {SAMPLES} requests)",
        "page", "p50", "p90", "p99", "max"
    );
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(SAMPLES);
        for i in 0..(SAMPLES + WARM_UP) {
            let request = http::Request::get(path(i)).header("cookie", &cookie).body(Body::empty())?;
            let begun = Instant::now();
            let response = console::app::call(router.clone(), request, peer).await;
            let took = begun.elapsed();
            let status = response.status().as_u16();
            anyhow::ensure!(status == 200 || status == 303, "{name} {}: answered {status}", path(i));
            if i >= WARM_UP {
                times.push(took);
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "{name:<34} {:>9} {:>9} {:>9} {:>9}",
            ms(at(0.5)),
            ms(at(0.9)),
            ms(at(0.99)),
            ms(*times.last().unwrap())
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Bookings, payments (paid), five events per order (the first applied, the others
/// duplicates the state machine ignored, as retries and out-of-order copies are), one
/// notification per payment, a thousand dead events and a thousand unverified ones; then
/// ANALYZE, as autovacuum would.
async fn load(sql: &tokio_postgres::Client, orders: i64) -> anyhow::Result<()> {
    let payload = format!(
        "'{{\"id\":\"evt_' || o || '_' || k || '\",\"object\":\"event\",\"api_version\":\"2024-06-20\",\"created\":1719800000,\
         \"type\":\"checkout.session.completed\",\"data\":{{\"object\":{{\"id\":\"cs_test_' || o || '\",\"object\":\"checkout.session\",\
         \"mode\":\"payment\",\"status\":\"complete\",\"payment_status\":\"paid\",\"client_reference_id\":\"order_' || o || '\",\
         \"metadata\":{{\"order_id\":\"order_' || o || '\"}},\"payment_intent\":\"pi_' || o || '\",\"amount_total\":3000,\
         \"currency\":\"usd\",\"livemode\":false,\"customer_details\":{{\"email\":\"someone@example.com\",\"name\":\"{}\"}}}}}}}}'",
        "x".repeat(400)
    );
    sql.batch_execute(&format!(
        "CREATE TEMP TABLE o AS
            SELECT o, gen_random_uuid() AS booking_id, md5('trainer' || (o % {TRAINERS}))::uuid AS trainer_id
              FROM generate_series(1, {orders}) o;
         INSERT INTO bookings (id, trainer_id) SELECT booking_id, trainer_id FROM o;
         INSERT INTO payments (order_id, booking_id, provider, amount, currency, payment_status, provider_payment_id, paid_at)
              SELECT 'order_' || o, booking_id, 'stripe', 3000, 'usd', 'paid', 'pi_' || o, now() FROM o;
         INSERT INTO webhook_events (provider, event_key, event_type, order_id, status, detail, attempts, verification,
                                     payload, request_id, received_at, processed_at)
              SELECT 'stripe', 'evt_' || o || '_' || k, 'checkout.session.completed', 'order_' || o,
                     CASE WHEN k = 1 THEN 'applied' ELSE 'ignored' END,
                     CASE WHEN k = 1 THEN 'pending -> paid' ELSE 'already paid' END, 1, 'signature',
                     {payload}, 'req_' || o || '_' || k,
                     now() - interval '30 days' + (o * interval '1 second') + (k * interval '1 minute'),
                     now() - interval '30 days' + (o * interval '1 second') + (k * interval '1 minute')
                FROM o, generate_series(1, {EVENTS_PER_ORDER}) k;
         UPDATE webhook_events SET status = 'dead', last_error = 'gave up after 8 attempts'
          WHERE status = 'ignored' AND id % 1000 = 0;
         UPDATE webhook_events SET status = 'unverified', verification = 'none'
          WHERE status = 'ignored' AND id % 1000 = 1;
         INSERT INTO notifications (user_id, title, message, type, link, payment_id)
              SELECT o.trainer_id, 'Payment received', 'The booking has been paid (3000 USD).', 'payment.paid',
                     '/bookings/' || o.booking_id, p.id
                FROM o JOIN payments p ON p.order_id = 'order_' || o.o;
         ANALYZE;"
    ))
    .await?;
    Ok(())
}
