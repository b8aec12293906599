//! Operating ingest: metrics that move, and SIGTERM during a stream of requests.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestIngest;
use shared::envelope::header_str;
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::metrics::scrape;
use testkit::{LoggedProcess, TestBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_each_answer() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    let before = scrape(&ingest.metrics_url()).await;
    assert_eq!(before.value("amqp_connected", &[]), 1.0);
    assert_eq!(before.value("ingest_requests_total", &[("code", "200"), ("provider", "stripe")]), 0.0);

    let body = stripe_session_event("evt_metrics", "checkout.session.completed", "o", "paid", 100, "usd");
    assert_eq!(ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await.status(), 200);
    assert_eq!(ingest.post_stripe(&body, Some("t=1,v1=00")).await.status(), 400);
    assert_eq!(ingest.client.get(ingest.url("/nowhere")).send().await.unwrap().status(), 404);

    let after = scrape(&ingest.metrics_url()).await;
    let route = ingest::STRIPE_ROUTE;
    assert_eq!(after.value("ingest_requests_total", &[("provider", "stripe"), ("route", route), ("code", "200")]), 1.0);
    assert_eq!(after.value("ingest_requests_total", &[("provider", "stripe"), ("route", route), ("code", "400")]), 1.0);
    assert_eq!(after.value("ingest_requests_total", &[("route", "other"), ("code", "404")]), 1.0);
    assert_eq!(after.value("amqp_publish_total", &[("outcome", "confirmed")]), 1.0);
    assert_eq!(
        after.value("ingest_request_duration_seconds", &[("provider", "stripe")]),
        2.0,
        "two webhook requests timed"
    );
    assert!(after.has("ingest_inflight_requests"));
    ingest.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_and_the_webhook_port_answers_404() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    assert_ne!(ingest.metrics_addr, ingest.addr);
    // Serving `/metrics` from `route` in ingest/src/lib.rs again makes this a 200.
    let public = ingest.client.get(ingest.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "the public webhook port does not serve metrics");
    assert_eq!(common::error_code(public).await, "not_found");

    let scraped = ingest.client.get(ingest.metrics_url()).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("ingest_requests_total"));
    // The metrics listener serves nothing else: no webhooks, no probes.
    for path in ["/healthz", ingest::STRIPE_ROUTE] {
        let other = ingest.client.get(format!("http://{}{path}", ingest.metrics_addr)).send().await.unwrap();
        assert_eq!(other.status(), 404, "{path} on the metrics listener");
    }
    let post = ingest.client.post(ingest.metrics_url()).send().await.unwrap();
    assert_eq!(post.status(), 405);
    // Load balancers keep probing the webhook port.
    assert_eq!(ingest.client.get(ingest.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(ingest.client.get(ingest.url("/readyz")).send().await.unwrap().status(), 200);
    ingest.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_stream_answers_every_request_truthfully_and_exits_in_time() {
    let broker = TestBroker::new().await;
    let _ = broker.settings::<shared::IngestSettings>(None, &[]); // registers the prefix's queues for clean-up
    let vars: Vec<(String, String)> = [
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", broker.prefix.clone()),
        ("INGEST_ADDR", "127.0.0.1:0".into()),
        ("INGEST_METRICS_ADDR", "127.0.0.1:0".into()),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET.into()),
        ("TOSS_WEBHOOK_SECRET", "toss-secret-never-logged".into()),
        ("SHUTDOWN_TIMEOUT", "5s".into()),
        ("LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut process = LoggedProcess::spawn(env!("CARGO_BIN_EXE_ingest"), &[], &vars);
    let addr = process.logged_addr("ingest listening").await;
    let client = reqwest::Client::new();
    testkit::eventually("ingest ready", Duration::from_secs(20), || async {
        let r = client.get(format!("http://{addr}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // A request whose body is still arriving when SIGTERM comes.
    let slow_body = stripe_session_event("evt_inflight", "checkout.session.completed", "o", "paid", 100, "usd");
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nstripe-signature: {}\r\ncontent-length: {}\r\n\r\n",
        stripe_signature(&slow_body, STRIPE_SECRET),
        slow_body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let half = slow_body.len() / 2;
    slow.write_all(&slow_body[..half]).await.unwrap();

    // A stream of requests, some before and some after the signal.
    let mut tasks = Vec::new();
    for i in 0..120 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            let key = format!("evt_stream_{i}");
            let body = stripe_session_event(&key, "checkout.session.completed", "o", "paid", 100, "usd");
            let answer = client
                .post(format!("http://{addr}/api/webhooks/stripe"))
                .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET))
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16());
            (key, answer)
        }));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    process.terminate();
    let signalled = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.write_all(&slow_body[half..]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = slow.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "the in-flight request got its real answer: {answer}");

    let status = process.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "clean exit: {status}");
    assert!(signalled.elapsed() < Duration::from_secs(7), "exited within the shutdown deadline");

    let mut accepted = HashSet::new();
    accepted.insert("evt_inflight".to_string());
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (key, Ok(200)) => {
                accepted.insert(key);
            }
            (_, Ok(code)) => assert!(code == 503, "only 200 or 503 are true answers here, got {code}"),
            (_, Err(_)) => refused += 1, // connection refused once the listener closed
        }
    }
    assert!(accepted.len() > 1, "some requests were answered before the signal");
    assert!(refused > 0 || accepted.len() == 121, "requests after the signal were not accepted");
    let queued: HashSet<String> = broker
        .drain(&format!("{}.work", broker.prefix))
        .await
        .iter()
        .map(|m| header_str(m.delivery.properties.headers().as_ref().unwrap(), "x-event-key").unwrap())
        .collect();
    let missing: Vec<&String> = accepted.difference(&queued).collect();
    assert!(missing.is_empty(), "answered 200 but not queued: {missing:?}");

    // Logs: JSON lines, no secret in them.
    let lines = process.lines();
    assert!(lines.iter().any(|l| l.contains("[Stripe Webhook] Event received")));
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for secret in [STRIPE_SECRET, "toss-secret-never-logged"] {
            assert!(!line.contains(secret), "secret in a log line: {line}");
        }
    }
}

#[tokio::test]
async fn after_sigterm_readyz_answers_503_while_an_in_flight_request_finishes() {
    let broker = TestBroker::new().await;
    let (mut process, addr, metrics_addr) = common::spawn_ingest_process(&broker, &[("SHUTDOWN_TIMEOUT", "10s")]).await;

    // A request whose body is still arriving when SIGTERM comes.
    let (head, body) = common::raw_stripe_request("evt_draining");
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    slow.write_all(&body[..half]).await.unwrap();
    // The request has reached the handler once the in-flight gauge shows it.
    testkit::eventually("the request in flight", Duration::from_secs(10), || async {
        let metrics = scrape(&format!("http://{metrics_addr}/metrics")).await;
        (metrics.value("ingest_inflight_requests", &[]) >= 1.0).then_some(())
    })
    .await;
    process.terminate();

    // A load balancer's probe on a new connection hears "draining", not a refused connection.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let probe = testkit::eventually("a 503 from /readyz", Duration::from_secs(5), || async {
        let response = client.get(format!("http://{addr}/readyz")).send().await.ok()?;
        (response.status() == 503).then_some(response)
    })
    .await;
    let readiness: serde_json::Value = probe.json().await.unwrap();
    assert_eq!(readiness["draining"], true, "{readiness}");

    slow.write_all(&body[half..]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = slow.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "the in-flight request got its real answer: {answer}");
    let status = process.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status}");
    let queued = broker.drain(&format!("{}.work", broker.prefix)).await;
    assert_eq!(queued.len(), 1, "the request answered 200 is queued");
}
