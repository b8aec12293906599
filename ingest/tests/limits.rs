//! Answers for requests that are not webhooks, or that break the limits every input has.

mod common;

use std::time::{Duration, Instant};

use common::{error_code, TestIngest};
use testkit::events::{stripe_session_event, stripe_signature, toss_payment_status_changed, STRIPE_SECRET};
use testkit::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn bodies_over_the_limit_get_413_whether_declared_or_streamed() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[("MAX_BODY_BYTES", "1024")])).await;
    let big = vec![b'x'; 2048];
    let sig = stripe_signature(&big, STRIPE_SECRET);
    let response = ingest.post_stripe(&big, Some(&sig)).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "body_too_large");

    // Chunked, without Content-Length: cut off while streaming.
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    let head = format!(
        "POST /api/webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: {sig}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        stream.write_all(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes()).await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 0);
    ingest.stop().await;
}

#[tokio::test]
async fn toss_bodies_have_a_cap_of_their_own_while_stripe_keeps_max_body_bytes() {
    let broker = TestBroker::new().await;
    // A body timeout far away: a body that is read to its end would end in 408, not 413.
    let vars = [("TOSS_MAX_BODY_BYTES", "1024"), ("BODY_READ_TIMEOUT", "60s")];
    let ingest = TestIngest::spawn(broker.settings(None, &vars)).await;
    // A real Toss body, padded past the cap with a field nobody reads.
    let padded = |size: usize| {
        let mut body: serde_json::Value =
            serde_json::from_slice(&toss_payment_status_changed("o-cap", "pk", "DONE", 1000)).unwrap();
        body["data"]["padding"] = serde_json::Value::from("p".repeat(size));
        serde_json::to_vec(&body).unwrap()
    };
    let response = ingest.post(ingest::TOSS_ROUTE, &padded(2048), &[]).await;
    assert_eq!(response.status(), 413);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "body_too_large");
    assert_eq!(answer["detail"], "body exceeds 1024 bytes");
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, &padded(100), &[]).await.status(), 200, "under the cap");

    // Streamed without Content-Length, and never finished: refused as soon as the cap is
    // passed, without waiting for (or reading) the rest; under MAX_BODY_BYTES only, ingest would
    // wait for the rest until BODY_READ_TIMEOUT. (Make the Toss arm of the `limit` match in
    // ingest's `receive` read `max_body_bytes` to see the 2 KiB body above queued.)
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    let head = "POST /api/webhooks/toss HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        stream.write_all(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes()).await.unwrap();
    }
    let answer = tokio::time::timeout(Duration::from_secs(20), read_answer(&mut stream)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Stripe bodies of the same size are Stripe's business: MAX_BODY_BYTES (1 MiB) applies.
    let stripe = stripe_session_event("evt_big", "checkout.session.completed", &"o".repeat(2048), "paid", 1, "usd");
    assert!(stripe.len() > 2048);
    let signature = stripe_signature(&stripe, STRIPE_SECRET);
    assert_eq!(ingest.post_stripe(&stripe, Some(&signature)).await.status(), 200);
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 2, "the small Toss body and the Stripe one");
    ingest.stop().await;
}

#[tokio::test]
async fn control_characters_in_identifiers_are_refused_naming_the_field() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    let toss = |data: &str| format!(r#"{{"eventType":"PAYMENT_STATUS_CHANGED","data":{{{data}}}}}"#).into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "Toss order id with NUL",
            toss(r#""orderId":"o\u0000","status":"DONE""#),
            "orderId contains a control character (U+0000)",
        ),
        (
            "Toss payment key with ESC",
            toss(r#""orderId":"o","paymentKey":"pk\u001b[2J","status":"DONE""#),
            "paymentKey contains a control character (U+001B)",
        ),
        (
            "Toss event type with DEL",
            br#"{"eventType":"PAYMENT\u007f","data":{"orderId":"o","status":"DONE"}}"#.to_vec(),
            "eventType contains a control character (U+007F)",
        ),
        (
            "Toss deposit secret with C1",
            "{\"secret\":\"ps_\u{85}\",\"status\":\"DONE\",\"orderId\":\"o\"}".into(),
            "secret contains a control character (U+0085)",
        ),
        (
            "Stripe event id with NUL",
            stripe_session_event("evt_\0x", "checkout.session.completed", "o", "paid", 1, "usd"),
            "id contains a control character (U+0000)",
        ),
        (
            "Stripe order id with newline",
            stripe_session_event("evt_1", "checkout.session.completed", "o\nforged log line", "paid", 1, "usd"),
            "data.object.client_reference_id contains a control character (U+000A)",
        ),
    ];
    // (Make `check_identifier` in shared/src/providers/identifier.rs always return `Ok` to see
    // the Toss ones queued.)
    for (case, body, detail) in cases {
        let response = match case.starts_with("Stripe") {
            true => ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await,
            false => ingest.post(ingest::TOSS_ROUTE, &body, &[]).await,
        };
        assert_eq!(response.status(), 400, "{case}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "malformed_body", "{case}");
        assert_eq!(answer["detail"], detail, "{case}");
    }
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 0, "nothing queued");
    ingest.stop().await;
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths_get_405_and_404() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    let get = ingest.client.get(ingest.url("/api/webhooks/stripe")).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(ingest.client.put(ingest.url("/api/webhooks/toss")).send().await.unwrap().status(), 405);
    assert_eq!(ingest.client.post(ingest.url("/healthz")).send().await.unwrap().status(), 405);
    let missing = ingest.client.post(ingest.url("/api/webhooks/paypal")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(error_code(missing).await, "not_found");
    assert_eq!(ingest.client.get(ingest.url("/")).send().await.unwrap().status(), 404);
    ingest.stop().await;
}

#[tokio::test]
async fn a_client_sending_headers_byte_by_byte_too_slowly_is_disconnected() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[("HEADER_READ_TIMEOUT", "1s")])).await;
    let stream = TcpStream::connect(ingest.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let request = b"POST /api/webhooks/stripe HTTP/1.1\r\nhost: slow\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let writer_task = tokio::spawn(async move {
        for byte in request {
            if writer.write_all(&[*byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true // sent everything: the server never cut us off
    });
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await;
    let elapsed = started.elapsed();
    match read {
        Ok(Ok(n)) => {
            // hyper may answer 408 before closing; either way the connection ends.
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "unexpected answer {text}");
        }
        Ok(Err(_)) => {}
        Err(_) => panic!("the server kept a slow client connected for 5 s"),
    }
    assert!(elapsed < Duration::from_secs(4), "disconnected only after {elapsed:?}");
    writer_task.abort();
    ingest.stop().await;
}

#[tokio::test]
async fn a_client_sending_its_body_too_slowly_gets_408() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[("BODY_READ_TIMEOUT", "1s")])).await;
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    stream
        .write_all(b"POST /api/webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: t=1,v1=00\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let answer =
        tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream)).await.expect("an answer within 5 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    ingest.stop().await;
}

async fn read_answer(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn hostile_identifiers_and_headers_are_refused_without_hurting_the_connection() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    // An unsigned Toss body with an event type longer than a routing key may be.
    let long_type = format!(r#"{{"eventType":"{}","data":{{"orderId":"o","status":"DONE"}}}}"#, "X".repeat(300));
    let response = ingest.post(ingest::TOSS_ROUTE, long_type.as_bytes(), &[]).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "malformed_body");

    // An oversized delivery header is not carried into the message (it would break the
    // broker connection every request shares); the event still queues.
    let body = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"DONE"}}"#;
    let huge = ("user-agent".to_string(), "u".repeat(20_000));
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, body, &[huge]).await.status(), 200);
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, body, &[]).await.status(), 200);
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("amqp_connects_total", &[]), 1.0, "the shared connection survived");
    let queued = broker.drain(&format!("{}.work", broker.prefix)).await;
    assert_eq!(queued.len(), 2);
    let headers = queued[0].delivery.properties.headers().clone().unwrap();
    assert!(!headers.inner().contains_key("user-agent"), "the oversized header was dropped");

    // A request head over the limit is refused by the HTTP layer.
    let giant = ("x-padding".to_string(), "p".repeat(100_000));
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, body, &[giant]).await.status(), 431);
    ingest.stop().await;
}
