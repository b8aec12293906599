//! The overview says where reconciliation against the providers' APIs stands: nothing before it
//! has run, then each provider's last completed run, how far Stripe's is caught up, and which
//! worker holds a current lease.

mod common;

use common::{Env, VIEWER, WAIT};

#[tokio::test]
async fn the_overview_shows_where_reconciliation_stands() {
    let env = Env::new().await;
    let console = env.console(&[]).await;
    let mut viewer = console.login(VIEWER).await;
    let page = viewer.page("/").await;
    assert!(page.contains("No reconciliation has run"), "{page}");

    // As workers leave it: Stripe running now on worker-a, caught up to 10:00; Toss's lease
    // ran out (its holder died) and no run has completed.
    env.sql
        .batch_execute(
            "INSERT INTO reconcile_state (provider, holder, lease_until, watermark, last_success_at) VALUES
               ('stripe', 'worker-a', now() + interval '1 minute', '2026-12-01 10:00:00+00', '2026-12-01 10:05:00+00'),
               ('toss', 'worker-b', now() - interval '1 minute', NULL, NULL)",
        )
        .await
        .unwrap();
    // The overview's numbers are kept for a few seconds.
    let deadline = tokio::time::Instant::now() + WAIT;
    let page = loop {
        let page = viewer.page("/").await;
        if !page.contains("No reconciliation has run") {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "the overview never showed reconciliation:\n{page}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let stripe =
        page.split("<th scope=\"row\">stripe</th>").nth(1).expect("a stripe row").split("</tr>").next().unwrap();
    assert!(stripe.contains("2026-12-01 10:05:00 UTC"), "last completed run: {stripe}");
    assert!(stripe.contains("2026-12-01 10:00:00 UTC"), "caught up to: {stripe}");
    assert!(stripe.contains("<code>worker-a</code>"), "running now: {stripe}");
    let toss = page.split("<th scope=\"row\">toss</th>").nth(1).expect("a toss row").split("</tr>").next().unwrap();
    assert!(toss.contains("never") && toss.contains("idle") && !toss.contains("worker-b"), "{toss}");
    console.stop().await;
}
