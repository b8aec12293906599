//! The `worker` binary's text log written to a file, as an operator or a log shipper reads it:
//! no colour codes off a terminal, and an order id carrying a newline and a whole forged log
//! line forges no line. (Such an order id is refused before it is used, see hostile_bytes.rs;
//! the text format escapes control characters in every field too, which its unit tests in
//! `shared/src/telemetry/text/tests.rs` show.)

mod common;

use std::time::Duration;

use common::Env;
use shared::Provider;
use testkit::events::{stripe_session_event, STRIPE_SECRET};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(60);

/// What an attacker who controls an order id (a checkout's `client_reference_id`) would like
/// to see as a line of its own.
const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO [Stripe Webhook] Payment updated order_id=\"victim\"";

/// To see the first assertion fail, remove `.with_ansi(colours())` in `telemetry::init`.
#[tokio::test]
async fn a_text_log_in_a_file_has_no_colour_codes_and_a_hostile_order_id_forges_no_line() {
    let env = Env::new().await;
    let order_id = format!("order-x\n{FORGED}");
    // No booking: the worker warns about it, naming the order.
    env.sql
        .execute(
            "INSERT INTO payments (order_id, provider, amount, currency) VALUES ($1, 'stripe', 3000, 'usd')",
            &[&order_id],
        )
        .await
        .unwrap();
    env.declare(&env.settings(&[])).await;
    let body = stripe_session_event("evt_hostile", "checkout.session.completed", &order_id, "paid", 3000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_hostile", &body).await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let file = std::fs::File::create(&log).unwrap();
    let vars = env.env_vars(&[("LOG_FORMAT", "text"), ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)]);
    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker"))
        .envs(vars)
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("worker starts");
    let text = testkit::eventually("the event refused and logged", WAIT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("Event dead-lettered").then_some(text)
    })
    .await;
    common::kill_hard(&mut worker).await;
    assert_eq!(env.status(&order_id).await, "pending");

    assert!(!text.contains('\u{1b}'), "no ANSI escape codes in a file:\n{text}");
    let forged: Vec<&str> = text.lines().filter(|line| line.starts_with(FORGED)).collect();
    assert!(forged.is_empty(), "a forged line: {forged:?}\n{text}");
    let refused = text.lines().find(|line| line.contains("Event dead-lettered")).unwrap();
    assert!(refused.contains("control character (U+000A)"), "the reason names the character, not the value: {refused}");
}
