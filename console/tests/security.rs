//! Each security property of the console, at the HTTP level, against a console with real
//! Postgres and RabbitMQ behind it. Each test names the line that, deleted, makes it fail.

mod common;

use common::{Env, OPERATOR, VIEWER};

/// The audit rows of one action, `(actor, result, detail)`.
async fn audited(env: &Env, action: &str) -> Vec<(String, String, String)> {
    env.audit().await.into_iter().filter(|(_, a, _, _)| a == action).map(|(who, _, r, d)| (who, r, d)).collect()
}

/// Parks one signed event in the dead letters (its payment does not exist; one attempt).
async fn one_dead_letter(env: &Env, event_id: &str, order_id: &str) -> common::TestWorker {
    let worker = env.worker(&[("RETRY_MAX_ATTEMPTS", "1")]).await;
    env.publish_stripe(event_id, "checkout.session.completed", order_id, 1000).await;
    env.wait_dead_letters(1).await;
    worker
}

#[tokio::test]
async fn logged_out_requests_go_to_the_login_page_and_change_nothing() {
    let env = Env::new().await;
    let worker = one_dead_letter(&env, "evt_anon", "order-anon").await;
    let console = env.console(&[]).await;
    let mut http = console.anonymous();
    for path in ["/", "/dead", "/audit", "/orders/order-anon", "/events?status=dead"] {
        let response = http.get(path).await;
        assert_eq!(response.status(), 303, "{path}");
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with("/login"), "{path} → {location}");
    }
    let response = http.get("/orders/order-anon").await;
    assert_eq!(response.headers()["location"], "/login?next=/orders/order-anon");
    // A POST without a session is refused before any handler (no session, so no form token).
    let response = http.post("/dead/purge", &[("kind", "events"), ("confirm", "yes"), ("csrf", "x")]).await;
    assert_eq!(response.status(), 403);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 1, "nothing was purged");
    console.stop().await;
    worker.stop().await;
}

/// Delete `.http_only(true)` or `.same_site(SameSite::Strict)` in `auth::session_cookie`, or
/// make `cookie_secure` always false, and this fails.
#[tokio::test]
async fn the_session_cookie_is_httponly_samesite_strict_and_secure_off_loopback() {
    let env = Env::new().await;
    for (addr, secure_setting, secure) in
        [("127.0.0.1:0", "auto", false), ("0.0.0.0:0", "auto", true), ("127.0.0.1:0", "true", true)]
    {
        let console = env.console(&[("CONSOLE_ADDR", addr), ("CONSOLE_COOKIE_SECURE", secure_setting)]).await;
        let mut http = console.anonymous();
        let response = http.login(OPERATOR.0, OPERATOR.1).await;
        assert_eq!(response.status(), 303);
        let cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("Path=/"), "{cookie}");
        assert_eq!(cookie.contains("Secure"), secure, "{addr} {secure_setting}: {cookie}");
        assert_eq!(cookie.starts_with("__Host-"), secure, "{cookie}");
        assert!(!cookie.contains("Domain"), "{cookie}");
        console.stop().await;
    }
}

/// Delete the `csrf_matches` check in `auth::csrf::check` and this fails.
#[tokio::test]
async fn a_form_without_its_token_is_refused_and_audited() {
    let env = Env::new().await;
    let worker = one_dead_letter(&env, "evt_csrf", "order-csrf").await;
    let console = env.console(&[]).await;
    let mut ann = console.login(OPERATOR).await;
    ann.page("/dead").await;
    let mut other = console.login(VIEWER).await;
    other.page("/").await;
    let foreign_token = other.csrf.clone().unwrap();
    for (what, token) in [("no token", None), ("another session's token", Some(foreign_token.as_str()))] {
        let mut fields = vec![("kind", "events"), ("confirm", "yes")];
        if let Some(token) = token {
            fields.push(("csrf", token));
        }
        let response = ann.post("/dead/purge", &fields).await;
        assert_eq!(response.status(), 403, "{what}");
    }
    // Not a form at all.
    let response = ann
        .client
        .post(format!("{}/dead/purge", ann.base))
        .header("cookie", ann.cookie.clone().unwrap())
        .json(&serde_json::json!({"kind": "events", "confirm": "yes", "csrf": ann.csrf}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 1, "nothing was purged");
    let refusals = audited(&env, "form").await;
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert!(refusals.iter().all(|(who, result, _)| who == OPERATOR.0 && result == "refused"), "{refusals:?}");
    // With its token, the same form works.
    let response = ann.post_with_token("/dead/purge", &[("kind", "events"), ("confirm", "yes")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0);
    console.stop().await;
    worker.stop().await;
}

/// Give the router a `get(...)` for `/dead/replay`, `/dead/purge` or `/logout` and this fails.
#[tokio::test]
async fn a_get_changes_nothing() {
    let env = Env::new().await;
    let worker = one_dead_letter(&env, "evt_get", "order-get").await;
    let console = env.console(&[]).await;
    let mut ann = console.login(OPERATOR).await;
    let token = ann.csrf.clone().unwrap();
    for path in [
        format!("/dead/replay?kind=events&one=evt_get&csrf={token}"),
        format!("/dead/purge?kind=events&confirm=yes&csrf={token}"),
        format!("/unverified/recheck?scope=all&csrf={token}"),
        format!("/logout?csrf={token}"),
    ] {
        let response = ann.get(&path).await;
        assert_eq!(response.status(), 405, "{path}");
    }
    assert_eq!(env.broker.count(&env.dead_queue()).await, 1, "the dead letter is still there");
    assert_eq!(ann.get("/").await.status(), 200, "still logged in");
    // Listing the dead letters reads them and puts every one back.
    let page = ann.page("/dead").await;
    assert!(page.contains("evt_get"), "{page}");
    env.wait_dead_letters(1).await;
    console.stop().await;
    worker.stop().await;
}

/// Delete the `state.limiter.attempt(...)` check in `routes::login::submit` and this fails.
#[tokio::test]
async fn login_attempts_are_limited_per_account_and_per_address() {
    let env = Env::new().await;
    let console = env.console(&[]).await;
    let mut http = console.anonymous();
    for _ in 0..console::auth::limiter::PER_ACCOUNT_PER_MINUTE {
        assert_eq!(http.login(OPERATOR.0, "wrong").await.status(), 401);
    }
    // The right password, too late: the account's attempts are spent for now.
    let response = http.login(OPERATOR.0, OPERATOR.1).await;
    assert_eq!(response.status(), 429);
    assert!(response.text().await.unwrap().contains("Too many attempts"));
    // Another account from this address still has attempts, up to the address's limit.
    let mut used = console::auth::limiter::PER_ACCOUNT_PER_MINUTE + 1;
    assert_eq!(http.login(VIEWER.0, VIEWER.1).await.status(), 303);
    used += 1;
    let mut http = console.anonymous();
    while used < console::auth::limiter::PER_ADDRESS_PER_MINUTE {
        assert_eq!(http.login(&format!("nobody{used}"), "x").await.status(), 401);
        used += 1;
    }
    assert_eq!(http.login(VIEWER.0, VIEWER.1).await.status(), 429, "the address's attempts are spent");
    let logins = audited(&env, "login").await;
    let limited: Vec<_> = logins.iter().filter(|(_, r, d)| r == "refused" && d.starts_with("rate limited")).collect();
    assert_eq!(limited.len(), 2, "{logins:?}");
    assert!(limited[0].2.contains("account") && limited[1].2.contains("address"), "{limited:?}");
    console.stop().await;
}

/// Delete the `audit::record` call of a login, a logout, a replay or a purge and this fails.
#[tokio::test]
async fn every_action_and_every_refusal_is_in_the_audit_trail() {
    let env = Env::new().await;
    let worker = one_dead_letter(&env, "evt_audit", "order-audit").await;
    let console = env.console(&[]).await;
    let mut http = console.anonymous();
    assert_eq!(http.login(OPERATOR.0, "wrong").await.status(), 401);
    let mut ann = console.login(OPERATOR).await;
    ann.page("/dead").await;
    env.seed_payment("order-audit", "stripe", 1000, "usd").await;
    let response = ann.post_with_token("/dead/replay", &[("kind", "events"), ("one", "evt_audit")]).await;
    assert_eq!(response.status(), 200);
    env.wait_count(
        "applied",
        "SELECT count(*) FROM webhook_events WHERE event_key = 'evt_audit' AND status = 'applied'",
        1,
    )
    .await;
    let response = ann.post_with_token("/dead/purge", &[("kind", "events"), ("confirm", "yes")]).await;
    assert_eq!(response.status(), 200);
    let response = ann.post_with_token("/unverified/recheck", &[("scope", "all")]).await;
    assert_eq!(response.status(), 409, "no fetch-back configured: nothing to verify with");
    let mut bob = console.login(VIEWER).await;
    bob.page("/").await;
    assert_eq!(bob.post_with_token("/dead/purge", &[("kind", "events"), ("confirm", "yes")]).await.status(), 403);
    assert_eq!(ann.post_with_token("/logout", &[]).await.status(), 303);

    let rows = env.audit().await;
    let has = |actor: &str, action: &str, result: &str| {
        rows.iter().any(|(w, a, r, _)| w == actor && a == action && r == result)
    };
    assert!(has(OPERATOR.0, "login", "refused"), "{rows:?}");
    assert!(has(OPERATOR.0, "login", "ok"), "{rows:?}");
    assert!(has(OPERATOR.0, "replay", "ok"), "{rows:?}");
    assert!(has(OPERATOR.0, "purge", "ok"), "{rows:?}");
    assert!(has(OPERATOR.0, "recheck", "refused"), "{rows:?}");
    assert!(has(VIEWER.0, "operator-action", "refused"), "{rows:?}");
    assert!(has(OPERATOR.0, "logout", "ok"), "{rows:?}");
    let replay = rows.iter().find(|(_, a, _, _)| a == "replay").unwrap();
    assert!(replay.3.contains("replayed 1"), "{replay:?}");
    // The audit page shows them.
    let page = bob.page("/audit").await;
    for word in ["replay", "purge", "logout", "refused"] {
        assert!(page.contains(word), "the audit page shows {word}");
    }
    console.stop().await;
    worker.stop().await;
}

/// Delete the `if !from_proxy { … return FORBIDDEN }` branch in `auth::authenticate` and the
/// header from an untrusted address logs in: this fails.
#[tokio::test]
async fn the_proxys_identity_header_is_believed_only_from_the_trusted_proxies() {
    let env = Env::new().await;
    // The console trusts a proxy elsewhere, not this client.
    let console = env.console(&[("CONSOLE_TRUSTED_PROXIES", "192.0.2.10/32")]).await;
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(console.url("/"))
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-role", "operator")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let refused = audited(&env, "login-header").await;
    assert_eq!(
        refused,
        vec![(
            "mallory".into(),
            "refused".into(),
            "identity header from an address that is not a trusted proxy".into()
        )]
    );
    console.stop().await;

    // From a trusted proxy, the header is the login, with its role.
    let console = env.console(&[("CONSOLE_TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(console.url("/")).header("x-forwarded-user", "carol").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = response.text().await.unwrap();
    assert!(page.contains("carol") && page.contains("(viewer)"), "no role header: a viewer");
    // The proxy's session holds only while the proxy vouches for each request.
    let response = client.get(console.url("/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(response.status(), 303, "the cookie alone, without the header, is not a login");
    console.stop().await;
}

/// Delete the role check in `auth::Operator::from_request_parts` and this fails.
#[tokio::test]
async fn a_viewer_is_refused_every_operator_action_and_sees_no_action_button() {
    let env = Env::new().await;
    let worker = one_dead_letter(&env, "evt_viewer", "order-viewer").await;
    let console = env.console(&[("TOSS_FETCH_BACK", "true")]).await;
    let mut bob = console.login(VIEWER).await;
    let page = bob.page("/dead").await;
    assert!(page.contains("evt_viewer"));
    assert!(!page.contains(">Replay<") && !page.contains("Purge"), "no action for a viewer:\n{page}");
    for (path, fields) in [
        ("/dead/replay", vec![("kind", "events"), ("one", "evt_viewer")]),
        ("/dead/replay", vec![("kind", "events"), ("scope", "listed")]),
        ("/dead/purge", vec![("kind", "events"), ("confirm", "yes")]),
        ("/unverified/recheck", vec![("scope", "all")]),
    ] {
        let response = bob.post_with_token(path, &fields).await;
        assert_eq!(response.status(), 403, "{path}");
    }
    env.wait_dead_letters(1).await;
    let refusals = audited(&env, "operator-action").await;
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    console.stop().await;
    worker.stop().await;
}

/// Delete a header in `security::headers` and this fails.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let env = Env::new().await;
    let console = env.console(&[]).await;
    let mut http = console.anonymous();
    for path in ["/login", "/", "/static/console.css", "/no-such-page"] {
        let response = http.get(path).await;
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
    }
    // No inline script or style anywhere in a page.
    let page = http.page("/login").await;
    assert!(!page.contains("<script") && !page.contains("style="), "{page}");
    console.stop().await;
}
