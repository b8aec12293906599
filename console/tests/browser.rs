//! The console in a real browser (Debian's headless Chromium through chromedriver), against a
//! real worker, Postgres and RabbitMQ. Each test leaves screenshots in `target/screenshots/`.

mod common;

use std::time::Duration;

use common::browser::{Browser, DESK, PHONE};
use common::{Env, OPERATOR, VIEWER};
use fantoccini::Locator;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn logged_out_a_page_leads_to_the_login_and_back_after_it() {
    let env = Env::new().await;
    env.seed_payment("order-back", "stripe", 1200, "usd").await;
    let console = env.console(&[]).await;
    let browser = Browser::start("login_redirect", DESK).await;
    browser.goto(&console.url("/orders/order-back")).await;
    assert_eq!(browser.path().await, "/login", "not logged in: the login page");
    browser.screenshot("login").await;
    browser.log_in(OPERATOR).await;
    assert_eq!(browser.path().await, "/orders/order-back", "back where the visit began");
    assert!(browser.text().await.contains("pending"));
    browser.close().await;
    console.stop().await;
}

#[tokio::test]
async fn an_operator_searches_an_order_and_sees_its_events() {
    let env = Env::new().await;
    env.seed_payment("order-story", "stripe", 4200, "usd").await;
    let worker = env.worker(&[]).await;
    env.publish_stripe("evt_story_1", "checkout.session.completed", "order-story", 4200).await;
    env.wait_count(
        "applied",
        "SELECT count(*) FROM payments WHERE order_id = 'order-story' AND payment_status = 'paid'",
        1,
    )
    .await;
    let console = env.console(&[("CONSOLE_WORKER_ADDRS", &worker.addr.to_string())]).await;
    let browser = Browser::start("search_order", DESK).await;
    browser.goto(&console.url("/")).await;
    browser.log_in(OPERATOR).await;
    let text = browser.text().await;
    assert!(text.contains("Queues") && text.contains(".work") && text.contains("ready"), "{text}");
    browser.screenshot("overview").await;

    let search = browser.client.find(Locator::Id("q")).await.unwrap();
    search.send_keys("order-story").await.unwrap();
    search.send_keys("\u{E007}").await.unwrap();
    testkit::eventually("the order page", WAIT, || async {
        (browser.path().await == "/orders/order-story").then_some(())
    })
    .await;
    let text = browser.text().await;
    for expected in
        ["paid", "evt_story_1", "checkout.session.completed", "applied", "signature", "req-evt_story_1", "payment.paid"]
    {
        assert!(text.contains(expected), "the order page shows {expected}:\n{text}");
    }
    browser.screenshot("order").await;
    // The payload opens without script (a <details> element) and is pretty-printed.
    browser.client.find(Locator::Css("details.payload summary")).await.unwrap().click().await.unwrap();
    let payload = browser.client.find(Locator::Css("details.payload pre")).await.unwrap().text().await.unwrap();
    assert!(payload.contains("\"client_reference_id\": \"order-story\""), "{payload}");
    browser.screenshot("order-payload").await;
    // By event id and by request id, the same order.
    for query in ["evt_story_1", "req-evt_story_1"] {
        browser.goto(&console.url(&format!("/search?q={query}"))).await;
        assert_eq!(browser.path().await, "/orders/order-story", "{query}");
    }
    browser.close().await;
    console.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn an_operator_replays_a_dead_letter_and_the_order_page_shows_it_applied() {
    let env = Env::new().await;
    let worker = env.worker(&[("RETRY_MAX_ATTEMPTS", "1")]).await;
    // No payment row yet: the event fails, and with one attempt it is parked at once.
    env.publish_stripe("evt_replay_b", "checkout.session.completed", "order-replay-b", 3000).await;
    env.wait_dead_letters(1).await;
    let console = env.console(&[]).await;
    let browser = Browser::start("replay", DESK).await;
    browser.goto(&console.url("/dead")).await;
    browser.log_in(OPERATOR).await;
    assert_eq!(browser.path().await, "/dead");
    let text = browser.text().await;
    assert!(text.contains("evt_replay_b") && text.contains("gave up after 1 attempts"), "{text}");
    browser.screenshot("dead-letters").await;

    // The cause is fixed: the app created the payment. Replay it.
    env.seed_payment("order-replay-b", "stripe", 3000, "usd").await;
    browser.client.find(Locator::Css("button[name='one'][value='evt_replay_b']")).await.unwrap().click().await.unwrap();
    browser.wait_path_not("/dead").await;
    let text = browser.text().await;
    assert!(text.contains("1 message(s) moved back to work"), "{text}");
    browser.screenshot("replayed").await;

    browser.goto(&console.url("/orders/order-replay-b")).await;
    testkit::eventually("the order page shows the event applied", WAIT, || async {
        browser.client.refresh().await.ok()?;
        let text = browser.text().await;
        (text.contains("applied") && text.contains("paid")).then_some(())
    })
    .await;
    browser.screenshot("order-after-replay").await;
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0);
    browser.close().await;
    console.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn a_viewer_sees_no_replay_button_and_a_forged_post_is_refused() {
    let env = Env::new().await;
    let worker = env.worker(&[("RETRY_MAX_ATTEMPTS", "1")]).await;
    env.publish_stripe("evt_viewer_b", "checkout.session.completed", "order-viewer-b", 3000).await;
    env.wait_dead_letters(1).await;
    let console = env.console(&[]).await;
    let browser = Browser::start("viewer", DESK).await;
    browser.goto(&console.url("/dead")).await;
    browser.log_in(VIEWER).await;
    assert!(browser.text().await.contains("evt_viewer_b"));
    assert!(browser.client.find_all(Locator::Css("form[action='/dead/replay'] button")).await.unwrap().is_empty());
    assert!(browser.client.find_all(Locator::Css("form[action='/dead/purge']")).await.unwrap().is_empty());
    browser.screenshot("dead-letters").await;

    // A forged POST with the browser's own session cookie: without the form token it is
    // refused; with it, a viewer is still refused.
    let cookie = browser.client.get_named_cookie("console_session").await.expect("the session cookie");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let forged = client
        .post(console.url("/dead/purge"))
        .header("cookie", format!("console_session={}", cookie.value()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("kind=events&confirm=yes")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    env.wait_dead_letters(1).await;
    browser.close().await;
    console.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn on_a_phone_the_pages_fit_the_screen() {
    let env = Env::new().await;
    env.seed_payment("order-phone", "stripe", 990, "usd").await;
    let worker = env.worker(&[]).await;
    env.publish_stripe("evt_phone", "checkout.session.completed", "order-phone", 990).await;
    env.wait_count(
        "applied",
        "SELECT count(*) FROM webhook_events WHERE event_key = 'evt_phone' AND status = 'applied'",
        1,
    )
    .await;
    let console = env.console(&[]).await;
    let browser = Browser::start("phone", PHONE).await;
    browser.goto(&console.url("/")).await;
    browser.screenshot("login").await;
    browser.log_in(OPERATOR).await;
    for (path, step) in [("/", "overview"), ("/orders/order-phone", "order")] {
        browser.goto(&console.url(path)).await;
        // Wide tables scroll inside their own box; the page itself never scrolls sideways.
        let overflow = browser
            .client
            .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap() <= 0, "{path} is wider than the phone by {overflow} px");
        browser.screenshot(step).await;
    }
    browser.close().await;
    console.stop().await;
    worker.stop().await;
}
