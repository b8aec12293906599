use super::*;
use chrono::Utc;
use shared::envelope::IngestVerification;
use PaymentStatus::*;

fn envelope(provider: Provider, body: &[u8]) -> EventEnvelope {
    EventEnvelope {
        provider,
        event_type: String::new(),
        event_key: "k".into(),
        verification: IngestVerification::Signature,
        received_at: Utc::now(),
        request_id: String::new(),
        attempt: 0,
        delivery_headers: Default::default(),
        body: body.to_vec(),
    }
}

fn stripe(body: &[u8]) -> IncomingEvent {
    IncomingEvent::parse(&envelope(Provider::Stripe, body)).unwrap()
}

fn toss(body: &[u8]) -> Result<IncomingEvent, Unprocessable> {
    IncomingEvent::parse(&envelope(Provider::Toss, body))
}

fn session(event_type: &str, payment_status: &str) -> Vec<u8> {
    format!(r#"{{"id":"evt","type":"{event_type}","data":{{"object":{{"object":"checkout.session","id":"cs_1","payment_status":"{payment_status}","client_reference_id":"o-1","payment_intent":"pi_1","amount_total":3000,"currency":"usd"}}}}}}"#).into_bytes()
}

fn set(order: &str, target: PaymentStatus) -> Intent {
    Intent::SetStatus { payment: PaymentRef::OrderId(order.into()), target }
}

#[test]
fn stripe_checkout_events_map_to_statuses() {
    assert_eq!(stripe(&session("checkout.session.completed", "paid")).intent, set("o-1", Paid));
    assert_eq!(stripe(&session("checkout.session.completed", "no_payment_required")).intent, set("o-1", Paid));
    assert_eq!(stripe(&session("checkout.session.completed", "unpaid")).intent, set("o-1", WaitingForDeposit));
    assert_eq!(stripe(&session("checkout.session.async_payment_succeeded", "paid")).intent, set("o-1", Paid));
    assert_eq!(stripe(&session("checkout.session.async_payment_failed", "unpaid")).intent, set("o-1", Failed));
    assert_eq!(stripe(&session("checkout.session.expired", "unpaid")).intent, set("o-1", Expired));
    let e = stripe(&session("checkout.session.completed", "paid"));
    assert_eq!(e.provider_payment_id.as_deref(), Some("pi_1"));
    assert_eq!(e.amount, Some(Decimal::from(3000)));
}

#[test]
fn stripe_payment_intent_failures_find_the_order_by_metadata_or_intent() {
    let with_meta = br#"{"id":"e","type":"payment_intent.payment_failed","data":{"object":{"object":"payment_intent","id":"pi_9","metadata":{"order_id":"o-9"},"last_payment_error":{"code":"card_declined"}}}}"#;
    let e = stripe(with_meta);
    assert_eq!(e.intent, set("o-9", Failed));
    assert_eq!(e.failure_reason.as_deref(), Some("card_declined"));
    let without = br#"{"id":"e","type":"payment_intent.payment_failed","data":{"object":{"object":"payment_intent","id":"pi_9","metadata":{}}}}"#;
    assert_eq!(
        stripe(without).intent,
        Intent::SetStatus { payment: PaymentRef::ProviderPaymentId("pi_9".into()), target: Failed }
    );
}

#[test]
fn other_stripe_events_are_ignored_not_failed() {
    let body = br#"{"id":"e","type":"customer.created","data":{"object":{"object":"customer"}}}"#;
    assert!(matches!(stripe(body).intent, Intent::Ignore(_)));
    let no_order = br#"{"id":"e","type":"checkout.session.expired","data":{"object":{"object":"checkout.session"}}}"#;
    assert!(matches!(stripe(no_order).intent, Intent::Ignore(_)));
}

#[test]
fn toss_statuses_map_including_the_guides_failed() {
    for (status, expected) in [
        ("DONE", Some(Paid)),
        ("WAITING_FOR_DEPOSIT", Some(WaitingForDeposit)),
        ("CANCELED", Some(Canceled)),
        ("PARTIAL_CANCELED", Some(PartiallyCanceled)),
        ("ABORTED", Some(Failed)),
        ("FAILED", Some(Failed)),
        ("EXPIRED", Some(Expired)),
        ("READY", None),
        ("IN_PROGRESS", None),
    ] {
        assert_eq!(toss_status(status), Ok(expected), "{status}");
    }
    assert!(toss_status("SOMETHING_NEW").is_err());
}

#[test]
fn toss_payment_events_become_status_changes() {
    let e = toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o-2","paymentKey":"pk","status":"DONE","totalAmount":37400,"currency":"KRW"}}"#).unwrap();
    assert_eq!(e.intent, set("o-2", Paid));
    assert!(e.unsigned_payment_event);
    assert_eq!(e.provider_payment_id.as_deref(), Some("pk"));
    let guide = toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"test_order_id","status":"DONE"}"#).unwrap();
    assert_eq!(guide.intent, set("test_order_id", Paid));
    let deposit = toss(br#"{"secret":"ps_1","status":"DONE","orderId":"o-3"}"#).unwrap();
    assert!(deposit.is_deposit_callback);
    assert_eq!(deposit.deposit_secret.as_deref(), Some("ps_1"));
    assert!(!deposit.data.to_json().contains("secret"), "secrets never reach stored metadata");
}

#[test]
fn events_carry_the_providers_time() {
    let body = br#"{"id":"e","type":"checkout.session.expired","created":1719800000,"data":{"object":{"object":"checkout.session","client_reference_id":"o"}}}"#;
    assert_eq!(stripe(body).provider_time, DateTime::from_timestamp(1_719_800_000, 0));
    assert_eq!(stripe(&session("checkout.session.completed", "paid")).provider_time, None);
    let wrapped = toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","createdAt":"2026-01-02T14:46:59.65327","data":{"orderId":"o","status":"DONE"}}"#).unwrap();
    let kst = "2026-01-02T14:46:59.65327+09:00".parse::<DateTime<Utc>>().unwrap();
    assert_eq!(wrapped.provider_time, Some(kst));
    let guide = toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"o","status":"DONE"}"#).unwrap();
    assert_eq!(guide.provider_time, None, "the guide's flat body carries no time");
}

#[test]
fn toss_events_that_cannot_be_applied() {
    assert!(toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o"}}"#).is_err());
    assert!(toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"status":"DONE"}}"#).is_err());
    assert!(toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"WEIRD"}}"#).is_err());
    let payout = toss(br#"{"eventType":"payout.changed","eventId":"x","entityBody":{}}"#).unwrap();
    assert!(matches!(payout.intent, Intent::Ignore(_)));
    assert!(!payout.unsigned_payment_event);
    let ready = toss(br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"READY"}}"#).unwrap();
    assert!(matches!(ready.intent, Intent::Ignore(_)));
}
