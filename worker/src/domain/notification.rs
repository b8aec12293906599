//! Notifications for a trainer whose booking's payment changed, and the versioned message the
//! outbox relay publishes for other services (push, email, chat).
//!
//! Message (`version` 1), routing key `payment.<status>` on `{prefix}.notifications`,
//! AMQP `message_id` = `notification_id`:
//!
//! ```json
//! {"type": "payment.paid", "version": 1, "notification_id": "…uuid…", "user_id": "…trainer uuid…",
//!  "title": "Payment received", "message": "…", "link": "/bookings/<booking id>",
//!  "payment": {"id": "…", "order_id": "…", "booking_id": "…", "provider": "stripe",
//!              "status": "paid", "previous_status": "pending", "amount": "3000", "currency": "usd"},
//!  "occurred_at": "2026-01-02T05:46:59.123Z"}
//! ```
//! Consumers dedupe by `notification_id`: a relay crash between publish and bookkeeping
//! republishes the same id, never a new one.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::status::PaymentStatus;
use uuid::Uuid;

pub const MESSAGE_VERSION: u32 = 1;

/// The published notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationMessage {
    /// `payment.<status>`, also the routing key.
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub notification_id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub message: String,
    pub link: String,
    pub payment: PaymentSummary,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSummary {
    pub id: Uuid,
    pub order_id: String,
    pub booking_id: Uuid,
    pub provider: String,
    pub status: PaymentStatus,
    pub previous_status: PaymentStatus,
    /// Decimal as text, in the provider's unit (Stripe minor units, Toss totalAmount).
    pub amount: Option<String>,
    pub currency: Option<String>,
}

/// Title, message and type of the `notifications` row for a status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wording {
    pub title: String,
    pub message: String,
    /// `notifications.type` and the message `type`: `payment.<status>`.
    pub kind: String,
}

/// Most characters of text from outside (a provider's failure message, a currency it names)
/// that a notification carries: enough for any real decline message, too little for a page of
/// text someone slipped into a body.
pub const MAX_OUTSIDE_TEXT: usize = 200;

/// Text from outside as a notification may carry it: control characters become spaces and it
/// is cut at [`MAX_OUTSIDE_TEXT`] characters (with `…`).
pub fn outside_text(text: &str) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX_OUTSIDE_TEXT).map(clean).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Words for a booking whose payment reached `status`.
pub fn wording(
    status: PaymentStatus,
    amount: Option<Decimal>,
    currency: Option<&str>,
    failure: Option<&str>,
) -> Wording {
    let money = match (amount, currency) {
        (Some(a), Some(c)) => format!(" ({} {})", a.normalize(), outside_text(&c.to_uppercase())),
        (Some(a), None) => format!(" ({})", a.normalize()),
        _ => String::new(),
    };
    let (title, message) = match status {
        PaymentStatus::Paid => ("Payment received", format!("The booking has been paid{money}.")),
        PaymentStatus::WaitingForDeposit => (
            "Waiting for deposit",
            format!("The customer chose a deferred payment{money}; the booking is paid once the deposit arrives."),
        ),
        PaymentStatus::Failed => (
            "Payment failed",
            match failure {
                Some(reason) => format!("The payment for the booking failed{money}: {}.", outside_text(reason)),
                None => format!("The payment for the booking failed{money}."),
            },
        ),
        PaymentStatus::Expired => {
            ("Payment expired", format!("The payment for the booking expired before it was completed{money}."))
        }
        PaymentStatus::Canceled => ("Payment canceled", format!("The payment for the booking was canceled{money}.")),
        PaymentStatus::PartiallyCanceled => {
            ("Payment partially canceled", format!("Part of the payment for the booking was canceled{money}."))
        }
        PaymentStatus::Pending => ("Payment pending", format!("The payment for the booking is pending{money}.")),
    };
    Wording { title: title.to_string(), message, kind: format!("payment.{status}") }
}

/// `/bookings/<id>`, the link the app's notification list opens.
pub fn booking_link(booking_id: Uuid) -> String {
    format!("/bookings/{booking_id}")
}

/// What the `notifications` row of a notification, and the payment it names, hold: what a
/// notification message is checked against before it is signed and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotification {
    pub user_id: Uuid,
    pub title: String,
    pub message: String,
    /// `notifications.type`.
    pub kind: String,
    pub link: Option<String>,
    pub payment_id: Option<Uuid>,
    pub order_id: Option<String>,
    pub provider: Option<String>,
    /// [`payload_digest`] of the message the worker wrote; `None` for rows written before the
    /// digest was kept.
    pub payload_sha256: Option<Vec<u8>>,
}

/// The digest kept with each notification of the message written for it.
pub fn payload_digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// The notification id a delivery's message id names, or why it names none. Only the form the
/// outbox writes (lower-case, hyphenated) names one: the message id is sent as the `webhook-id`
/// receivers dedupe by, and `{ID}` or `urn:uuid:id` would make a copy look like another.
pub fn notification_id(message_id: &str) -> Result<Uuid, String> {
    match message_id.parse::<Uuid>() {
        Ok(id) if id.hyphenated().to_string() == message_id => Ok(id),
        _ => Err("its message id is not a notification id".to_string()),
    }
}

/// Whether `body`, delivered as the notification `id` (its message id), is the notification
/// the database holds as `stored` (`None`: no such row). The broker is not a trust boundary:
/// whoever may publish to the notifications exchange could otherwise have the worker sign any
/// text, a "payment.paid" for a payment never paid among them.
///
/// A row keeps the digest of the message the worker wrote for it: the body must be those
/// bytes, and nothing else decides (the app may change its payment row since). A row written
/// before the digest was kept (migration V11) has none, and its message is checked field by
/// field: the id, recipient, words, type and link as the worker wrote them, the payment's id
/// and booking against them, its status against the type, and its order and provider against
/// the payment row (which the app owns: an order id it changes makes a later delivery
/// refused). Such a row does not hold a message's previous status, amount, currency and time,
/// so those are not checked.
pub fn check_delivery(id: Uuid, body: &[u8], stored: Option<&StoredNotification>) -> Result<(), String> {
    let stored = stored.ok_or_else(|| format!("no notification {id} in the database"))?;
    if let Some(digest) = &stored.payload_sha256 {
        return match digest.as_slice() == payload_digest(body) {
            true => Ok(()),
            false => Err(format!("notification {id} is not the message the worker wrote (its digest differs)")),
        };
    }
    let message: NotificationMessage =
        serde_json::from_slice(body).map_err(|e| format!("not a notification message: {e}"))?;
    if message.notification_id != id {
        return Err(format!("its message id {id} is not its notification_id {}", message.notification_id));
    }
    let payment = &message.payment;
    let differs = [
        ("version", message.version != MESSAGE_VERSION),
        ("user_id", message.user_id != stored.user_id),
        ("title", message.title != stored.title),
        ("message", message.message != stored.message),
        ("type", message.kind != stored.kind || message.kind != format!("payment.{}", payment.status)),
        ("link", stored.link.as_deref() != Some(message.link.as_str())),
        ("payment.id", stored.payment_id != Some(payment.id)),
        ("payment.order_id", stored.order_id.as_deref() != Some(payment.order_id.as_str())),
        // The link the worker wrote names the booking; the payment row's may be changed since.
        ("payment.booking_id", stored.link.as_deref() != Some(booking_link(payment.booking_id).as_str())),
        ("payment.provider", stored.provider.as_deref() != Some(payment.provider.as_str())),
    ];
    match differs.iter().filter(|(_, differs)| *differs).map(|(field, _)| *field).collect::<Vec<_>>() {
        fields if fields.is_empty() => Ok(()),
        fields => Err(format!("notification {id} differs from the database in {}", fields.join(", "))),
    }
}

/// Every `stage` of `notifications_total`: published (confirmed by the broker), unrouted
/// (confirmed, but no queue is bound), outbox_dead (refused too often, set aside), and the HTTP
/// delivery's delivered, retried, dead_lettered and unverifiable (not the notification the
/// database holds: dead-lettered unsigned, counted here only).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, strum::Display, strum::IntoStaticStr, strum::EnumIter, strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum NotificationStage {
    Published,
    Unrouted,
    OutboxDead,
    Delivered,
    Retried,
    DeadLettered,
    Unverifiable,
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn every_status_has_words_and_a_type() {
        for status in PaymentStatus::iter() {
            let w = wording(status, Some(Decimal::from(3000)), Some("usd"), None);
            assert_eq!(w.kind, format!("payment.{status}"));
            assert!(!w.title.is_empty());
            assert!(w.message.contains("3000 USD"), "{}", w.message);
        }
    }

    #[test]
    fn failures_say_why() {
        let w = wording(PaymentStatus::Failed, None, None, Some("card_declined"));
        assert!(w.message.ends_with("failed: card_declined."), "{}", w.message);
    }

    #[test]
    fn text_from_outside_is_capped_and_has_no_control_characters() {
        let long = "x".repeat(10 * MAX_OUTSIDE_TEXT);
        let w = wording(
            PaymentStatus::Failed,
            Some(Decimal::from(1)),
            Some("usd\nEVIL"),
            Some(&format!("declined\r\n{long}")),
        );
        assert!(!w.message.chars().any(char::is_control), "{}", w.message);
        assert!(w.message.chars().count() < 2 * MAX_OUTSIDE_TEXT + 100, "{} chars", w.message.chars().count());
        assert!(w.message.contains("declined  x") && w.message.contains('…'), "{}", w.message);
        assert_eq!(outside_text("card_declined"), "card_declined");
    }

    fn sample() -> (NotificationMessage, StoredNotification) {
        let (id, user, payment, booking) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let w = wording(PaymentStatus::Paid, Some(Decimal::from(3000)), Some("usd"), None);
        let message = NotificationMessage {
            kind: w.kind.clone(),
            version: MESSAGE_VERSION,
            notification_id: id,
            user_id: user,
            title: w.title.clone(),
            message: w.message.clone(),
            link: booking_link(booking),
            payment: PaymentSummary {
                id: payment,
                order_id: "order-1".into(),
                booking_id: booking,
                provider: "stripe".into(),
                status: PaymentStatus::Paid,
                previous_status: PaymentStatus::Pending,
                amount: Some("3000".into()),
                currency: Some("usd".into()),
            },
            occurred_at: Utc::now(),
        };
        let stored = StoredNotification {
            user_id: user,
            title: w.title,
            message: w.message,
            kind: w.kind,
            link: Some(booking_link(booking)),
            payment_id: Some(payment),
            order_id: Some("order-1".into()),
            provider: Some("stripe".into()),
            payload_sha256: Some(payload_digest(&serde_json::to_vec(&message).unwrap()).to_vec()),
        };
        (message, stored)
    }

    #[test]
    fn a_delivery_holds_only_as_the_notification_the_database_holds() {
        let (message, stored) = sample();
        // A row written before digests were kept, so every change shows field by field.
        let stored = StoredNotification { payload_sha256: None, ..stored };
        let id = message.notification_id;
        let body = |m: &NotificationMessage| serde_json::to_vec(m).unwrap();
        assert_eq!(check_delivery(id, &body(&message), Some(&stored)), Ok(()));

        let refused = |m: &NotificationMessage, id: &Uuid, stored: Option<&StoredNotification>| {
            check_delivery(*id, &body(m), stored).expect_err("refused")
        };
        assert!(refused(&message, &id, None).contains("no notification"));
        assert!(refused(&message, &Uuid::new_v4(), Some(&stored)).contains("is not its notification_id"));
        assert!(check_delivery(id, b"not json", Some(&stored)).unwrap_err().contains("not a notification message"));
        // A real notification turned into another.
        let mut paid = message.clone();
        paid.payment.order_id = "someone-elses-order".into();
        assert!(refused(&paid, &id, Some(&stored)).ends_with("in payment.order_id"));
        let mut status = message.clone();
        status.payment.status = PaymentStatus::Canceled;
        assert!(refused(&status, &id, Some(&stored)).ends_with("in type"));
        let mut words = message.clone();
        words.title = "Refund issued".into();
        words.user_id = Uuid::new_v4();
        assert!(refused(&words, &id, Some(&stored)).ends_with("in user_id, title"));
        let mut elsewhere = message.clone();
        elsewhere.payment.booking_id = Uuid::new_v4();
        elsewhere.payment.id = Uuid::new_v4();
        elsewhere.payment.provider = "toss".into();
        elsewhere.version = MESSAGE_VERSION + 1;
        assert!(refused(&elsewhere, &id, Some(&stored))
            .ends_with("in version, payment.id, payment.booking_id, payment.provider"));
        let mut link = message.clone();
        link.link = "/bookings/elsewhere".into();
        assert!(refused(&link, &id, Some(&stored)).ends_with("in link"));
        // A row without a payment (it names none) vouches for no payment.
        let detached = StoredNotification { payment_id: None, order_id: None, provider: None, ..stored.clone() };
        assert!(refused(&message, &id, Some(&detached)).ends_with("in payment.id, payment.order_id, payment.provider"));
        // The app may move the payment to another booking later: the worker's own link decides.
        assert_eq!(check_delivery(id, &body(&message), Some(&stored)), Ok(()));
    }

    #[test]
    fn a_delivery_must_be_the_bytes_the_worker_wrote() {
        let (message, stored) = sample();
        let id = message.notification_id;
        let written = serde_json::to_vec(&message).unwrap();
        assert_eq!(check_delivery(id, &written, Some(&stored)), Ok(()));
        let refused = |body: &[u8]| check_delivery(id, body, Some(&stored)).expect_err("refused");
        let not_written = "is not the message the worker wrote (its digest differs)";
        // Fields the table does not hold, changed.
        let mut amount = message.clone();
        amount.payment.amount = Some("1".into());
        let amount = serde_json::to_vec(&amount).unwrap();
        assert!(refused(&amount).ends_with(not_written), "{}", refused(&amount));
        let mut later = message.clone();
        later.occurred_at += chrono::Duration::days(1);
        later.payment.previous_status = PaymentStatus::Canceled;
        assert!(refused(&serde_json::to_vec(&later).unwrap()).ends_with(not_written));
        // A member added, which a field check would not see, and the same JSON spaced out.
        let mut added: serde_json::Value = serde_json::from_slice(&written).unwrap();
        added["refund"] = serde_json::Value::Bool(true);
        assert!(refused(&serde_json::to_vec(&added).unwrap()).ends_with(not_written));
        assert!(refused(&serde_json::to_vec_pretty(&message).unwrap()).ends_with(not_written));
        // Those the table does hold, too.
        let mut elsewhere = message.clone();
        elsewhere.payment.order_id = "someone-elses-order".into();
        assert!(refused(&serde_json::to_vec(&elsewhere).unwrap()).ends_with(not_written));
        // The app renaming the order or changing the provider since does not refuse the genuine one.
        let renamed = StoredNotification { order_id: Some("renamed".into()), provider: None, ..stored.clone() };
        assert_eq!(check_delivery(id, &written, Some(&renamed)), Ok(()));
        // A row from before the digest: what it does not hold, it cannot check.
        let older = StoredNotification { payload_sha256: None, ..stored.clone() };
        assert_eq!(check_delivery(id, &amount, Some(&older)), Ok(()));
    }

    #[test]
    fn only_the_outboxs_form_of_an_id_names_a_notification() {
        let id = Uuid::new_v4();
        assert_eq!(notification_id(&id.to_string()), Ok(id));
        let upper = id.to_string().to_uppercase();
        for other in [id.simple().to_string(), id.braced().to_string(), id.urn().to_string(), upper, "evt_1".into()] {
            assert!(notification_id(&other).unwrap_err().contains("not a notification id"), "{other}");
        }
    }

    #[test]
    fn the_message_serialises_with_the_documented_field_names() {
        let id = Uuid::nil();
        let m = NotificationMessage {
            kind: "payment.paid".into(),
            version: MESSAGE_VERSION,
            notification_id: id,
            user_id: id,
            title: "t".into(),
            message: "m".into(),
            link: booking_link(id),
            payment: PaymentSummary {
                id,
                order_id: "o".into(),
                booking_id: id,
                provider: "stripe".into(),
                status: PaymentStatus::Paid,
                previous_status: PaymentStatus::Pending,
                amount: Some("3000".into()),
                currency: Some("usd".into()),
            },
            occurred_at: DateTime::parse_from_rfc3339("2026-01-02T05:46:59Z").unwrap().with_timezone(&Utc),
        };
        let v = serde_json::to_value(&m).unwrap();
        for field in
            ["type", "version", "notification_id", "user_id", "title", "message", "link", "payment", "occurred_at"]
        {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["payment"]["status"], "paid");
        assert_eq!(v["payment"]["previous_status"], "pending");
        assert_eq!(v["link"], format!("/bookings/{id}"));
    }
}
