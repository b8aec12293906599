//! Toss webhooks: every documented body shape is queued with the right provider, type and
//! dedupe key; signed event types need a valid signature; the source allow-list holds.

mod common;

use std::time::Duration;

use common::{error_code, TestIngest};
use shared::envelope::{header_str, H_EVENT_KEY, H_EVENT_TYPE, H_PROVIDER, H_VERIFICATION};
use shared::verify::toss::sign_toss_payload;
use testkit::events::{
    toss_deposit_callback, toss_headers, toss_payment_status_changed, toss_payout_changed, TOSS_SECRET,
};
use testkit::TestBroker;

/// The key of an unsigned Toss body: a SHA-256 of its content without `secret` members, keys
/// sorted and without whitespace (computed here independently of the parser).
fn sha_key(body: &[u8]) -> String {
    use sha2::Digest;
    fn strip(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                    map.into_iter().filter(|(k, _)| k != "secret").map(|(k, v)| (k, strip(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(strip).collect()),
            other => other,
        }
    }
    let canonical = strip(serde_json::from_slice(body).unwrap()).to_string();
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(canonical.as_bytes())))
}

#[tokio::test]
async fn every_documented_body_shape_is_queued_with_provider_type_and_key() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[("TOSS_WEBHOOK_SECRET", TOSS_SECRET)])).await;
    let wrapped = toss_payment_status_changed("order-w", "pk_w", "DONE", 37400);
    let deposit = toss_deposit_callback("order-d", "DONE", "ps_secret");
    let guide = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"test_order_id","status":"DONE"}"#.to_vec();
    let payout = toss_payout_changed("payout-evt-1");
    let cases = [
        (wrapped.clone(), None, "PAYMENT_STATUS_CHANGED", sha_key(&wrapped), "unsigned"),
        (deposit.clone(), None, "DEPOSIT_CALLBACK", sha_key(&deposit), "unsigned"),
        (guide.clone(), None, "PAYMENT_STATUS_CHANGED", sha_key(&guide), "unsigned"),
        (payout.clone(), Some(TOSS_SECRET), "payout.changed", "payout-evt-1".to_string(), "signature"),
    ];
    let queue = format!("{}.work", broker.prefix);
    for (body, key, event_type, event_key, verification) in cases {
        let response = ingest.post(ingest::TOSS_ROUTE, &body, &toss_headers(&body, key)).await;
        assert_eq!(response.status(), 200, "{event_type}");
        let message = broker.wait_get(&queue, Duration::from_secs(5)).await;
        let headers = message.delivery.properties.headers().clone().unwrap();
        assert_eq!(message.delivery.data, body);
        assert_eq!(header_str(&headers, H_PROVIDER).as_deref(), Some("toss"));
        assert_eq!(header_str(&headers, H_EVENT_TYPE).as_deref(), Some(event_type));
        assert_eq!(header_str(&headers, H_EVENT_KEY), Some(event_key));
        assert_eq!(header_str(&headers, H_VERIFICATION).as_deref(), Some(verification));
        assert!(header_str(&headers, "tosspayments-webhook-transmission-id").is_some());
    }
    ingest.stop().await;
}

#[tokio::test]
async fn signed_event_types_need_a_valid_signature() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[("TOSS_WEBHOOK_SECRET", TOSS_SECRET)])).await;
    let payout = toss_payout_changed("payout-bad");
    for (case, headers) in
        [("wrong key", toss_headers(&payout, Some("not-the-key"))), ("unsigned", toss_headers(&payout, None))]
    {
        let response = ingest.post(ingest::TOSS_ROUTE, &payout, &headers).await;
        assert_eq!(response.status(), 400, "{case}");
        assert_eq!(error_code(response).await, "invalid_signature");
    }
    // A signature on a payment event is checked too when present.
    let payment = toss_payment_status_changed("o", "pk", "DONE", 100);
    let response = ingest.post(ingest::TOSS_ROUTE, &payment, &toss_headers(&payment, Some("not-the-key"))).await;
    assert_eq!(response.status(), 400);
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 0);
    ingest.stop().await;
}

#[tokio::test]
async fn a_signature_whose_transmission_time_is_not_recent_is_refused() {
    let broker = TestBroker::new().await;
    let ingest =
        TestIngest::spawn(broker.settings(None, &[("TOSS_WEBHOOK_SECRET", TOSS_SECRET), ("TOSS_TOLERANCE", "300s")]))
            .await;
    let payout = toss_payout_changed("payout-replayed");
    let kst = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    // Signed genuinely, at a time of its own.
    let sent_at = |offset: chrono::Duration| {
        let time = (chrono::Utc::now() + offset).with_timezone(&kst).format("%Y-%m-%dT%H:%M:%S%:z").to_string();
        let signature = sign_toss_payload(&payout, &time, TOSS_SECRET);
        vec![
            ("tosspayments-webhook-transmission-time".to_string(), time),
            ("tosspayments-webhook-signature".to_string(), format!("v1:{signature}")),
        ]
    };
    // (Pass `Freshness::Any` in ingest's `verify_toss` to see these two queued.)
    for (case, offset, detail) in [
        ("captured an hour ago", chrono::Duration::hours(-1), "transmission time is older than the tolerance (300s)"),
        (
            "from the future",
            chrono::Duration::minutes(10),
            "transmission time is in the future beyond the tolerance (300s)",
        ),
    ] {
        let response = ingest.post(ingest::TOSS_ROUTE, &payout, &sent_at(offset)).await;
        assert_eq!(response.status(), 400, "{case}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_signature", "{case}");
        assert_eq!(answer["detail"], detail, "{case}");
    }
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 0);
    // Within the tolerance, either way, it is queued.
    for offset in [chrono::Duration::minutes(-4), chrono::Duration::minutes(4)] {
        assert_eq!(ingest.post(ingest::TOSS_ROUTE, &payout, &sent_at(offset)).await.status(), 200);
    }
    assert_eq!(broker.count(&format!("{}.work", broker.prefix)).await, 2);
    ingest.stop().await;
}

#[tokio::test]
async fn signed_event_types_are_refused_when_no_key_is_configured() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    let payout = toss_payout_changed("payout-nokey");
    let response = ingest.post(ingest::TOSS_ROUTE, &payout, &toss_headers(&payout, Some(TOSS_SECRET))).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "signature_unverifiable");
    ingest.stop().await;
}

#[tokio::test]
async fn unrecognisable_bodies_get_400() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    for body in [&b"not json"[..], b"[]", b"{}", br#"{"orderId":"x"}"#] {
        let response = ingest.post(ingest::TOSS_ROUTE, body, &[]).await;
        assert_eq!(response.status(), 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(error_code(response).await, "malformed_body");
    }
    ingest.stop().await;
}

#[tokio::test]
async fn with_an_allow_list_only_listed_sources_are_queued() {
    let broker = TestBroker::new().await;
    let queue = format!("{}.work", broker.prefix);
    let body = toss_payment_status_changed("order-ip", "pk_ip", "DONE", 1000);

    // Directly connected: the peer address decides. 127.0.0.1 is not listed.
    let ingest = TestIngest::spawn(broker.settings(None, &[("TOSS_ALLOWED_IPS", "toss")])).await;
    let response = ingest.post(ingest::TOSS_ROUTE, &body, &toss_headers(&body, None)).await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "forbidden_source");
    ingest.stop().await;

    // Behind one trusted proxy (the test client plays it): X-Forwarded-For's last entry decides.
    let ingest = TestIngest::spawn(broker.settings(
        None,
        &[("TOSS_ALLOWED_IPS", "toss"), ("TRUSTED_PROXY_HOPS", "1"), ("TRUSTED_PROXIES", "127.0.0.1")],
    ))
    .await;
    let with_xff = |xff: &str| {
        let mut h = toss_headers(&body, None);
        h.push(("x-forwarded-for".to_string(), xff.to_string()));
        h
    };
    // A listed address passes.
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, &body, &with_xff("13.124.18.147")).await.status(), 200);
    // A spoofed listed address in front of the real client does not.
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, &body, &with_xff("13.124.18.147, 203.0.113.9")).await.status(), 403);
    // Nor does a request without the header a trusted proxy would have added.
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, &body, &toss_headers(&body, None)).await.status(), 403);
    ingest.stop().await;

    // Through more proxies than configured: the extra proxy's address decides, and it is not listed.
    let ingest = TestIngest::spawn(broker.settings(
        None,
        &[("TOSS_ALLOWED_IPS", "toss"), ("TRUSTED_PROXY_HOPS", "1"), ("TRUSTED_PROXIES", "127.0.0.1")],
    ))
    .await;
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, &body, &with_xff("13.124.18.147, 10.9.9.9")).await.status(), 403);
    ingest.stop().await;

    // Reaching ingest directly (not through the trusted proxy), the header is not believed.
    let ingest = TestIngest::spawn(broker.settings(
        None,
        &[("TOSS_ALLOWED_IPS", "toss"), ("TRUSTED_PROXY_HOPS", "1"), ("TRUSTED_PROXIES", "10.0.0.0/8")],
    ))
    .await;
    assert_eq!(ingest.post(ingest::TOSS_ROUTE, &body, &with_xff("13.124.18.147")).await.status(), 403);
    ingest.stop().await;

    let queued = broker.drain(&queue).await;
    assert_eq!(queued.len(), 1, "only the listed request is queued");
}
