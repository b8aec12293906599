//! One event, one Postgres transaction: inbox row (dedupe), payment row lock, checks, state
//! machine, payment update, notification and outbox row, inbox status; commit. The caller acks
//! only after this returns.

use chrono::Utc;
use deadpool_postgres::{Pool, Transaction};
use rust_decimal::Decimal;
use shared::envelope::EventEnvelope;
use shared::status::PaymentStatus;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::event::{webhook_metadata, IncomingEvent, Intent, PaymentRef};
use crate::notification::{booking_link, wording, NotificationMessage, PaymentSummary, MESSAGE_VERSION};
use crate::outcome::{HandleError, Outcome, Verification};
use crate::state_machine::{decide, Transition};

/// Facts established before the transaction (Toss fetch-back).
#[derive(Debug, Clone, Default)]
pub struct Confirmed {
    /// The status and amount come from the provider's API, not from the webhook.
    pub fetched: bool,
    /// The payment's `secret` as the provider's API reported it.
    pub fetched_secret: Option<String>,
    /// Set when the API shows an earlier state than the webhook claims (the API lagging, or
    /// a forged webhook); says what disagrees.
    pub api_behind: Option<String>,
}

/// The locked payment row.
#[derive(Debug)]
struct PaymentRow {
    id: Uuid,
    order_id: String,
    status: PaymentStatus,
    booking_id: Option<Uuid>,
    provider: Option<String>,
    amount: Option<Decimal>,
    currency: Option<String>,
    deposit_secret: Option<String>,
}

const INSERT_INBOX: &str = "
    INSERT INTO webhook_events (provider, event_key, event_type, order_id, status, attempts, payload, request_id, received_at)
    VALUES ($1, $2, $3, $4, 'processing', $5, $6, $7, $8)
    ON CONFLICT (provider, event_key) DO UPDATE SET
        duplicates = webhook_events.duplicates
            + CASE WHEN webhook_events.status IN ('applied', 'ignored') THEN 1 ELSE 0 END,
        attempts = CASE WHEN webhook_events.status IN ('applied', 'ignored') THEN webhook_events.attempts
                        ELSE GREATEST(webhook_events.attempts, EXCLUDED.attempts) END,
        updated_at = now()
    RETURNING status";

const PAYMENT_COLUMNS: &str = "id, order_id, payment_status, booking_id, provider, amount, currency, deposit_secret";

const FINISH_INBOX: &str = "
    UPDATE webhook_events
       SET status = $3, detail = $4, order_id = COALESCE($5, order_id), verification = $6,
           last_error = NULL, processed_at = now(), updated_at = now()
     WHERE provider = $1 AND event_key = $2";

/// Applies `event` once. A duplicate (an event already applied or ignored) changes nothing.
pub async fn apply_event(
    pool: &Pool,
    envelope: &EventEnvelope,
    event: &IncomingEvent,
    confirmed: &Confirmed,
) -> Result<Outcome, HandleError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Bounded waits: a stuck lock or query becomes a transient failure, retried later.
    tx.batch_execute("SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = '30s'").await?;

    let provider = envelope.provider.as_str();
    let payload = String::from_utf8_lossy(&envelope.body);
    let attempts = i32::try_from(envelope.attempt + 1).unwrap_or(i32::MAX);
    let inbox_status: String = tx
        .query_one(
            INSERT_INBOX,
            &[
                &provider,
                &envelope.event_key,
                &event.event_type,
                &event.order_id(),
                &attempts,
                &payload,
                &envelope.request_id,
                &envelope.received_at,
            ],
        )
        .await?
        .get(0);
    if inbox_status == "applied" || inbox_status == "ignored" {
        tx.commit().await?;
        return Ok(Outcome::Duplicate);
    }

    let (payment_ref, target) = match &event.intent {
        Intent::Ignore(reason) => {
            let verification = Verification::for_event(envelope, event, confirmed, false, false);
            finish(&tx, envelope, "ignored", reason, event.order_id(), verification).await?;
            tx.commit().await?;
            return Ok(Outcome::Ignored { reason: reason.clone(), order_id: None, verification });
        }
        Intent::SetStatus { payment, target } => (payment, *target),
    };

    let payment = lock_payment(&tx, payment_ref)
        .await?
        .ok_or_else(|| HandleError::NotFoundYet(format!("no payment for {payment_ref} yet")))?;
    let order_id = payment.order_id.clone();
    let checks = check(&payment, envelope, event, confirmed)?;
    let verification =
        Verification::for_event(envelope, event, confirmed, checks.deposit_secret_matched, checks.amount_matched);

    let transition = decide(payment.status, target);
    if let Transition::Ignore(reason) = transition {
        let detail = format!("{} ({} -> {target})", reason.as_str(), payment.status);
        finish(&tx, envelope, "ignored", &detail, Some(&order_id), verification).await?;
        tx.commit().await?;
        return Ok(Outcome::Ignored { reason: detail, order_id: Some(order_id), verification });
    }

    let metadata = webhook_metadata(envelope, event, verification.as_str());
    let learned_secret = confirmed
        .fetched_secret
        .clone()
        .or_else(|| event.deposit_secret.clone().filter(|_| checks.deposit_secret_matched));
    tx.execute(
        "UPDATE payments SET
             payment_status = $2,
             paid_at = CASE WHEN $2 = 'paid' THEN COALESCE(paid_at, now()) ELSE paid_at END,
             updated_at = now(),
             payment_metadata = jsonb_set(COALESCE(payment_metadata, '{}'::jsonb), '{webhook}', $3::jsonb),
             provider = COALESCE(provider, $4),
             provider_payment_id = COALESCE(provider_payment_id, $5),
             deposit_secret = COALESCE(deposit_secret, $6)
         WHERE id = $1",
        &[&payment.id, &target.as_str(), &metadata, &provider, &event.provider_payment_id, &learned_secret],
    )
    .await?;

    let notification = notify_trainer(&tx, &payment, target, event).await?;
    let detail = format!("{} -> {target}", payment.status);
    finish(&tx, envelope, "applied", &detail, Some(&order_id), verification).await?;
    tx.commit().await?;
    Ok(Outcome::Applied {
        payment_id: payment.id,
        order_id,
        from: payment.status,
        to: target,
        notified: notification,
        verification,
    })
}

async fn lock_payment(tx: &Transaction<'_>, payment: &PaymentRef) -> Result<Option<PaymentRow>, HandleError> {
    let (column, value) = match payment {
        PaymentRef::OrderId(id) => ("order_id", id),
        PaymentRef::ProviderPaymentId(id) => ("provider_payment_id", id),
    };
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE {column} = $1 LIMIT 1 FOR UPDATE");
    let Some(row) = tx.query_opt(&sql, &[value]).await? else { return Ok(None) };
    let status: String = row.get("payment_status");
    Ok(Some(PaymentRow {
        id: row.get("id"),
        order_id: row.get("order_id"),
        status: status.parse().map_err(HandleError::Permanent)?,
        booking_id: row.get("booking_id"),
        provider: row.get("provider"),
        amount: row.get("amount"),
        currency: row.get("currency"),
        deposit_secret: row.get("deposit_secret"),
    }))
}

struct Checks {
    amount_matched: bool,
    deposit_secret_matched: bool,
}

/// Facts that must agree before anything is applied; a disagreement is permanent.
fn check(
    payment: &PaymentRow,
    envelope: &EventEnvelope,
    event: &IncomingEvent,
    confirmed: &Confirmed,
) -> Result<Checks, HandleError> {
    if let Some(stored) = &payment.provider {
        if stored != envelope.provider.as_str() {
            return Err(HandleError::Permanent(format!(
                "payment {} is a {stored} payment; a {} event cannot change it",
                payment.order_id, envelope.provider
            )));
        }
    }
    let amount_matched = match (payment.amount, event.amount) {
        (Some(stored), Some(sent)) if stored != sent => {
            return Err(HandleError::Permanent(format!("amount mismatch: event says {sent}, payment is {stored}")));
        }
        (Some(_), Some(_)) => true,
        _ => false,
    };
    if let (Some(stored), Some(sent)) = (&payment.currency, &event.currency) {
        if !stored.eq_ignore_ascii_case(sent) {
            return Err(HandleError::Permanent(format!("currency mismatch: event says {sent}, payment is {stored}")));
        }
    }
    let known_secret = payment.deposit_secret.as_deref().or(confirmed.fetched_secret.as_deref());
    let deposit_secret_matched = match (event.is_deposit_callback, known_secret) {
        (true, Some(known)) => {
            let sent = event.deposit_secret.as_deref().unwrap_or("");
            if !bool::from(known.as_bytes().ct_eq(sent.as_bytes())) {
                return Err(HandleError::Permanent(
                    "DEPOSIT_CALLBACK secret does not match the payment's secret".into(),
                ));
            }
            true
        }
        _ => false,
    };
    Ok(Checks { amount_matched, deposit_secret_matched })
}

/// Inserts the trainer's notification and its outbox row; `None` when the payment has no booking.
async fn notify_trainer(
    tx: &Transaction<'_>,
    payment: &PaymentRow,
    target: PaymentStatus,
    event: &IncomingEvent,
) -> Result<Option<(Uuid, Uuid)>, HandleError> {
    let Some(booking_id) = payment.booking_id else {
        tracing::warn!(order_id = %payment.order_id, "payment has no booking; no notification");
        return Ok(None);
    };
    let trainer: Option<Uuid> =
        tx.query_opt("SELECT trainer_id FROM bookings WHERE id = $1", &[&booking_id]).await?.map(|r| r.get(0));
    let Some(trainer_id) = trainer else {
        tracing::warn!(order_id = %payment.order_id, %booking_id, "booking not found; no notification");
        return Ok(None);
    };
    let amount = payment.amount.or(event.amount);
    let currency = payment.currency.as_deref().or(event.currency.as_deref());
    let words = wording(target, amount, currency, event.failure_reason.as_deref());
    let notification_id = Uuid::now_v7();
    let link = booking_link(booking_id);
    tx.execute(
        "INSERT INTO notifications (id, user_id, title, message, type, link, payment_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&notification_id, &trainer_id, &words.title, &words.message, &words.kind, &link, &payment.id],
    )
    .await?;
    let message = NotificationMessage {
        kind: words.kind.clone(),
        version: MESSAGE_VERSION,
        notification_id,
        user_id: trainer_id,
        title: words.title,
        message: words.message,
        link,
        payment: PaymentSummary {
            id: payment.id,
            order_id: payment.order_id.clone(),
            booking_id,
            provider: event.provider.as_str().to_string(),
            status: target,
            previous_status: payment.status,
            amount: amount.map(|a| a.normalize().to_string()),
            currency: currency.map(str::to_string),
        },
        occurred_at: Utc::now(),
    };
    let payload = serde_json::to_value(&message).expect("serialisable");
    tx.execute(
        "INSERT INTO outbox (notification_id, routing_key, payload) VALUES ($1, $2, $3)",
        &[&notification_id, &words.kind, &payload],
    )
    .await?;
    Ok(Some((notification_id, trainer_id)))
}

async fn finish(
    tx: &Transaction<'_>,
    envelope: &EventEnvelope,
    status: &str,
    detail: &str,
    order_id: Option<&str>,
    verification: Verification,
) -> Result<(), HandleError> {
    tx.execute(
        FINISH_INBOX,
        &[&envelope.provider.as_str(), &envelope.event_key, &status, &detail, &order_id, &verification.as_str()],
    )
    .await?;
    Ok(())
}

/// Records a failed attempt (`retrying`) or a parked event (`dead`) outside the rolled-back
/// transaction, without touching an event that meanwhile became final.
pub async fn record_failure(
    pool: &Pool,
    envelope: &EventEnvelope,
    event_type: &str,
    order_id: Option<&str>,
    status: &str,
    error: &str,
) -> Result<(), HandleError> {
    let client = pool.get().await?;
    let attempts = i32::try_from(envelope.attempt + 1).unwrap_or(i32::MAX);
    client
        .execute(
            "INSERT INTO webhook_events (provider, event_key, event_type, order_id, status, attempts, payload, request_id, received_at, last_error, processed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $5 = 'dead' THEN now() END)
             ON CONFLICT (provider, event_key) DO UPDATE SET
                 status = EXCLUDED.status,
                 attempts = GREATEST(webhook_events.attempts, EXCLUDED.attempts),
                 last_error = EXCLUDED.last_error,
                 order_id = COALESCE(webhook_events.order_id, EXCLUDED.order_id),
                 processed_at = EXCLUDED.processed_at,
                 updated_at = now()
             WHERE webhook_events.status NOT IN ('applied', 'ignored')",
            &[
                &envelope.provider.as_str(),
                &envelope.event_key,
                &event_type,
                &order_id,
                &status,
                &attempts,
                &String::from_utf8_lossy(&envelope.body),
                &envelope.request_id,
                &envelope.received_at,
                &error,
            ],
        )
        .await?;
    Ok(())
}
