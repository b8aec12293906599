//! The worker against real Postgres and RabbitMQ: exactly-once effects, ordering, checks.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use shared::Provider;
use testkit::events::{stripe_payment_failed, stripe_session_event, toss_payment_status_changed};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_same_event_five_times_changes_the_payment_once() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-dup", "stripe", Some(3000), Some("usd")).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let body = stripe_session_event("evt_dup", "checkout.session.completed", "order-dup", "paid", 3000, "usd");
    for _ in 0..5 {
        env.publish(Provider::Stripe, "checkout.session.completed", "evt_dup", &body).await;
    }
    env.wait_count(
        "4 duplicates recorded",
        "SELECT duplicates::bigint FROM webhook_events WHERE event_key = 'evt_dup'",
        4,
        WAIT,
    )
    .await;
    assert_eq!(env.status("order-dup").await, "paid");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    let (status, _, _) = env.inbox("evt_dup").await.unwrap();
    assert_eq!(status, "applied");
    worker.stop().await;
}

#[tokio::test]
async fn out_of_order_events_end_in_the_right_state() {
    let env = Env::new().await;
    let toss = env.seed_payment("order-cancel-first", "toss", Some(37400), Some("KRW")).await;
    let failed = env.seed_payment("order-failed-late", "stripe", Some(500), Some("usd")).await;
    let expired = env.seed_payment("order-expired-late", "stripe", Some(500), Some("usd")).await;
    // Order, not verification, is under test here (verification: toss_verification.rs, trust.rs).
    let worker = TestWorker::spawn(env.settings(&[("TOSS_ALLOW_UNVERIFIED", "true")])).await;

    // Toss: CANCELED arrives before DONE.
    let canceled = toss_payment_status_changed("order-cancel-first", "pk_1", "CANCELED", 37400);
    let done = toss_payment_status_changed("order-cancel-first", "pk_1", "DONE", 37400);
    let cancel_key = env.publish_toss(&canceled).await;
    env.wait_count(
        "cancel applied",
        &format!("SELECT count(*) FROM webhook_events WHERE event_key = '{cancel_key}' AND status = 'applied'"),
        1,
        WAIT,
    )
    .await;
    let done_key = env.publish_toss(&done).await;

    // Stripe: paid, then a late failure; paid, then a late expiry.
    for (order, late_key, late) in [
        ("order-failed-late", "evt_late_fail", stripe_payment_failed("evt_late_fail", "order-failed-late", 500, "usd")),
        (
            "order-expired-late",
            "evt_late_exp",
            stripe_session_event(
                "evt_late_exp",
                "checkout.session.expired",
                "order-expired-late",
                "unpaid",
                500,
                "usd",
            ),
        ),
    ] {
        let paid_key = format!("evt_paid_{order}");
        let paid = stripe_session_event(&paid_key, "checkout.session.completed", order, "paid", 500, "usd");
        env.publish(Provider::Stripe, "checkout.session.completed", &paid_key, &paid).await;
        env.wait_count(
            "paid applied",
            &format!("SELECT count(*) FROM webhook_events WHERE event_key = '{paid_key}' AND status = 'applied'"),
            1,
            WAIT,
        )
        .await;
        let event_type =
            if late_key == "evt_late_fail" { "payment_intent.payment_failed" } else { "checkout.session.expired" };
        env.publish(Provider::Stripe, event_type, late_key, &late).await;
    }
    env.wait_count(
        "late events recorded as ignored",
        &format!("SELECT count(*) FROM webhook_events WHERE event_key IN ('{done_key}', 'evt_late_fail', 'evt_late_exp') AND status = 'ignored'"),
        3,
        WAIT,
    )
    .await;
    assert_eq!(env.status("order-cancel-first").await, "canceled");
    assert_eq!(env.status("order-failed-late").await, "paid");
    assert_eq!(env.status("order-expired-late").await, "paid");
    // One notification per applied change, none for the ignored ones.
    assert_eq!(env.notifications_for(toss.trainer_id).await, 1);
    assert_eq!(env.notifications_for(failed.trainer_id).await, 1);
    assert_eq!(env.notifications_for(expired.trainer_id).await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn an_event_for_an_order_that_appears_two_seconds_later_is_retried_then_applied() {
    let env = Env::new().await;
    let worker = TestWorker::spawn(env.settings(&[("RETRY_DELAYS", "500ms,1s"), ("RETRY_MAX_ATTEMPTS", "10")])).await;
    let body = stripe_session_event("evt_late_order", "checkout.session.completed", "order-late", "paid", 3000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_late_order", &body).await;
    env.wait_count(
        "a retry recorded",
        "SELECT count(*) FROM webhook_events WHERE event_key = 'evt_late_order' AND status = 'retrying'",
        1,
        WAIT,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seeded = env.seed_payment("order-late", "stripe", Some(3000), Some("usd")).await;
    env.wait_count(
        "applied after the order appeared",
        "SELECT count(*) FROM payments WHERE order_id = 'order-late' AND payment_status = 'paid'",
        1,
        WAIT,
    )
    .await;
    let (status, attempts, _) = env.inbox("evt_late_order").await.unwrap();
    assert_eq!(status, "applied");
    assert!(attempts >= 2, "attempts {attempts}");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn an_event_for_an_order_that_never_appears_is_dead_lettered_after_the_configured_attempts() {
    let env = Env::new().await;
    let worker = TestWorker::spawn(env.settings(&[("RETRY_DELAYS", "100ms,200ms"), ("RETRY_MAX_ATTEMPTS", "4")])).await;
    let body = stripe_session_event("evt_never", "checkout.session.completed", "order-never", "paid", 3000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_never", &body).await;
    let dead = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    assert_eq!(dead.delivery.data, body, "the original body is parked");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = shared::envelope::header_str(&headers, "x-dead-reason").unwrap();
    assert!(reason.contains("gave up after 4 attempts") && reason.contains("order-never"), "{reason}");
    assert_eq!(shared::envelope::header_int(&headers, "x-attempt"), Some(4));
    let (status, attempts, last_error) = env.inbox("evt_never").await.unwrap();
    assert_eq!((status.as_str(), attempts), ("dead", 4));
    assert!(last_error.unwrap().contains("gave up after 4 attempts"));
    worker.stop().await;
}

#[tokio::test]
async fn amount_mismatch_and_unparseable_payloads_go_straight_to_the_dead_letters() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-amount", "stripe", Some(3000), Some("usd")).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let wrong = stripe_session_event("evt_amount", "checkout.session.completed", "order-amount", "paid", 1, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_amount", &wrong).await;
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_garbage", b"{not json").await;

    let first = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let second = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let mut reasons: Vec<String> = [first, second]
        .iter()
        .map(|m| {
            shared::envelope::header_str(m.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap()
        })
        .collect();
    reasons.sort();
    assert!(reasons[0].starts_with("permanent: amount mismatch"), "{reasons:?}");
    assert!(reasons[1].starts_with("permanent: unparseable Stripe payload"), "{reasons:?}");
    assert_eq!(env.status("order-amount").await, "pending");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 0);
    for key in ["evt_amount", "evt_garbage"] {
        let (status, attempts, _) = env.inbox(key).await.unwrap();
        assert_eq!((status.as_str(), attempts), ("dead", 1), "{key}: no retries for permanent failures");
    }
    worker.stop().await;
}
