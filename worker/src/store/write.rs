//! One Postgres transaction per batch, set-based and prepared:
//!
//! 1. lock every payment the batch names, in id order (two workers with overlapping batches
//!    wait for each other instead of deadlocking), with the booking's trainer;
//! 2. read which events of the batch the inbox already holds as applied or ignored. This runs
//!    after the locks, in a snapshot of its own: a concurrent copy of an event that changed one
//!    of these payments has committed by now and is seen, so it is not applied twice;
//! 3. decide every event in delivery order ([`crate::domain::decide`]);
//! 4. update the payments, insert the notifications and their outbox rows, and write every
//!    event's inbox row (in key order, again so concurrent batches cannot deadlock), one
//!    statement each, pipelined; commit.
//!
//! Four round trips per batch, whatever its size. Statements are prepared once per
//! connection (deadpool's statement cache); lock and statement timeouts are session settings
//! of the pool ([`crate::store::db`]). The caller acks only after [`apply`] returned.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, GenericClient};
use shared::envelope::EventEnvelope;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::domain::decide::{decide_batch, Candidate, LockedPayment, NewNotification, Trust};
use crate::domain::event::{Confirmed, IncomingEvent, Intent, PaymentRef};
use crate::domain::outcome::{HandleError, Outcome, Verification};
use crate::domain::retry::dispose;
use crate::store::outbox::Claim;

use super::sql::{INSERT_NOTIFICATIONS, INSERT_OUTBOX, LOCK_PAYMENTS, READ_FINAL, UPDATE_PAYMENTS, UPSERT_INBOX};
use super::stored;

/// One delivery's part in the transaction.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub envelope: &'a EventEnvelope,
    pub work: Work<'a>,
    /// Further copies of this event in the same batch: counted as duplicates once it is handled.
    pub copies: i32,
    /// The event's trace, carried on to the notification it causes.
    pub traceparent: Option<&'a str>,
}

/// What the transaction does with an entry.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// Decide it against the locked payment.
    Decide { event: &'a IncomingEvent, confirmed: &'a Confirmed },
    /// It already failed (unparseable, refused by the provider's API): record the failure.
    Failed { event_type: &'a str, order_id: Option<&'a str>, error: &'a HandleError },
}

impl Entry<'_> {
    fn event_type(&self) -> &str {
        match self.work {
            Work::Decide { event, .. } => &event.event_type,
            Work::Failed { event_type, .. } => event_type,
        }
    }
}

/// What a committed batch did.
#[derive(Debug)]
pub struct Committed {
    /// One per entry, in order.
    pub results: Vec<Result<Outcome, HandleError>>,
    /// To publish now; their outbox rows are this worker's, under the claim the batch was
    /// applied with, for the lease.
    pub notifications: Vec<NewNotification>,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// What the transaction found contradicts what it decided (another worker finished an
    /// event in between); rolled back, the event is worth another try.
    #[error("{0}")]
    Conflict(String),
}

/// Applies `entries` in one transaction. A failure rolls everything back. The outbox rows it
/// writes are held by `claim`.
pub async fn apply(
    client: &mut Client,
    entries: &[Entry<'_>],
    trust: Trust,
    max_attempts: u32,
    claim: &Claim,
) -> Result<Committed, WriteError> {
    let tx = client.transaction().await?;
    let (lock, read, update, notify, outbox, upsert) = tokio::try_join!(
        tx.prepare_cached(LOCK_PAYMENTS),
        tx.prepare_cached(READ_FINAL),
        tx.prepare_cached(UPDATE_PAYMENTS),
        tx.prepare_cached(INSERT_NOTIFICATIONS),
        tx.prepare_cached(INSERT_OUTBOX),
        tx.prepare_cached(UPSERT_INBOX),
    )?;

    let candidates: Vec<(usize, Candidate<'_>)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.work {
            Work::Decide { event, confirmed } => {
                Some((i, Candidate { envelope: e.envelope, event, confirmed, traceparent: e.traceparent }))
            }
            Work::Failed { .. } => None,
        })
        .collect();
    let (order_ids, payment_ids) = payment_refs(candidates.iter().map(|(_, c)| c.event));
    let (providers, keys): (Vec<&str>, Vec<&str>) = candidates.iter().map(|(_, c)| c.key()).unzip();
    // Pipelined: the read is sent with the lock but runs after it, in a snapshot of its own.
    let locking = async {
        if order_ids.is_empty() && payment_ids.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&lock, &[&order_ids, &payment_ids]).await
        }
    };
    let reading = async {
        if keys.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&read, &[&providers, &keys]).await
        }
    };
    let (locked, finals) = tokio::join!(locking, reading);
    let locked = locked?.iter().map(locked_payment).collect::<Result<Vec<_>, _>>()?;
    let already_final: HashSet<(String, String)> = finals?.iter().map(|r| (r.get(0), r.get(1))).collect();

    let now = Utc::now();
    let only: Vec<Candidate<'_>> = candidates.iter().map(|(_, c)| *c).collect();
    let plan = decide_batch(&only, &already_final, locked, trust, now);
    let mut results: Vec<Option<Result<Outcome, HandleError>>> = vec![None; entries.len()];
    for ((i, _), result) in candidates.iter().zip(plan.results) {
        results[*i] = Some(result);
    }
    let results: Vec<Result<Outcome, HandleError>> = entries
        .iter()
        .zip(results)
        .map(|(entry, decided)| match (entry.work, decided) {
            (_, Some(result)) => result,
            (Work::Failed { error, .. }, None) => Err(error.clone()),
            (Work::Decide { .. }, None) => unreachable!("every candidate is decided"),
        })
        .collect();

    let inbox = InboxColumns::from_results(entries, &results, max_attempts);
    let payments = PaymentColumns::from(&plan.payments);
    let notifications = NotificationColumns::from(&plan.notifications);
    let lease = claim.lease.as_secs_f64();
    let writing_payments = async {
        if payments.id.is_empty() {
            return Ok(0);
        }
        let p = &payments;
        tx.execute(
            &update,
            &[
                &p.id,
                &p.status,
                &p.paid,
                &p.metadata,
                &p.provider,
                &p.provider_payment_id,
                &p.deposit_secret,
                &p.last_event_at,
            ],
        )
        .await
    };
    let writing_notifications = async {
        if notifications.id.is_empty() {
            return Ok(0);
        }
        let n = &notifications;
        tx.execute(&notify, &[&n.id, &n.user_id, &n.title, &n.message, &n.kind, &n.link, &n.payment_id]).await
    };
    let writing_outbox = async {
        if notifications.id.is_empty() {
            return Ok(0);
        }
        let n = &notifications;
        tx.execute(&outbox, &[&n.id, &n.kind, &n.payload, &n.traceparent, &lease, &claim.token]).await
    };
    let writing_inbox = async { tx.query(&upsert, &inbox.params()).await };
    let (p, n, o, i) = tokio::join!(writing_payments, writing_notifications, writing_outbox, writing_inbox);
    p?;
    n?;
    o?;
    let stored = i?;
    let results = reconcile(entries, results, &stored)?;
    // Test hook: every write of the batch is done and the commit has not happened yet.
    fail::fail_point!("batch-before-commit");
    tx.commit().await?;
    Ok(Committed { results, notifications: plan.notifications })
}

/// Records failed attempts (`retrying`, `dead`) outside a transaction that rolled back,
/// without touching an event that meanwhile became final.
pub async fn record_failures(
    client: &Client,
    entries: &[Entry<'_>],
    errors: &[HandleError],
    max_attempts: u32,
) -> Result<(), tokio_postgres::Error> {
    let results: Vec<Result<Outcome, HandleError>> = errors.iter().cloned().map(Err).collect();
    let inbox = InboxColumns::from_results(entries, &results, max_attempts);
    let upsert = client.prepare_cached(UPSERT_INBOX).await?;
    client.query(&upsert, &inbox.params()).await?;
    Ok(())
}

/// Checks what the inbox kept against what was decided. An event another worker finished
/// meanwhile is a duplicate, unless this batch changed a payment for it: then the batch is
/// rolled back and tried again (it cannot happen while the payment lock orders both workers,
/// and must never apply twice if it did).
fn reconcile(
    entries: &[Entry<'_>],
    results: Vec<Result<Outcome, HandleError>>,
    stored: &[Row],
) -> Result<Vec<Result<Outcome, HandleError>>, WriteError> {
    let kept: HashMap<(&str, &str), &str> = stored.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    entries
        .iter()
        .zip(results)
        .map(|(entry, result)| {
            let key = (entry.envelope.provider.as_str(), entry.envelope.event_key.as_str());
            let status = kept.get(&key).copied().unwrap_or_default();
            match result {
                Ok(Outcome::Applied { .. }) if status != "applied" => Err(WriteError::Conflict(format!(
                    "event {} was finished by another worker while this one applied it",
                    entry.envelope.event_key
                ))),
                Ok(Outcome::Ignored { .. }) | Ok(Outcome::Unverified { .. }) | Err(_) if status == "applied" => {
                    Ok(Ok(Outcome::Duplicate))
                }
                Ok(Outcome::Unverified { .. }) | Err(_) if status == "ignored" => Ok(Ok(Outcome::Duplicate)),
                other => Ok(other),
            }
        })
        .collect()
}

/// Order ids and provider payment ids the candidates name.
fn payment_refs<'a>(events: impl Iterator<Item = &'a IncomingEvent>) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut orders = Vec::new();
    let mut payment_ids = Vec::new();
    for event in events {
        if let Intent::SetStatus { payment, .. } = &event.intent {
            match payment {
                PaymentRef::OrderId(id) => orders.push(id.as_str()),
                PaymentRef::ProviderPaymentId(id) => payment_ids.push(id.as_str()),
            }
        }
    }
    (orders, payment_ids)
}

fn locked_payment(row: &Row) -> Result<LockedPayment, WriteError> {
    let status: &str = row.get("payment_status");
    Ok(LockedPayment {
        id: row.get("id"),
        order_id: row.get("order_id"),
        status: status.parse().map_err(WriteError::Conflict)?,
        booking_id: row.get("booking_id"),
        trainer_id: row.get("trainer_id"),
        provider: row.get("provider"),
        amount: row.get("amount"),
        currency: row.get("currency"),
        deposit_secret: row.get("deposit_secret"),
        provider_payment_id: row.get("provider_payment_id"),
        last_event_at: row.get("last_event_at"),
    })
}

/// The inbox rows of a batch, column by column (the statement `unnest`s them).
#[derive(Default)]
struct InboxColumns<'a> {
    provider: Vec<&'a str>,
    event_key: Vec<&'a str>,
    event_type: Vec<&'a str>,
    order_id: Vec<Option<&'a str>>,
    status: Vec<&'static str>,
    detail: Vec<Option<String>>,
    attempts: Vec<i32>,
    duplicates: Vec<i32>,
    last_error: Vec<Option<String>>,
    verification: Vec<Option<&'static str>>,
    payload: Vec<Cow<'a, str>>,
    request_id: Vec<&'a str>,
    received_at: Vec<DateTime<Utc>>,
}

impl<'a> InboxColumns<'a> {
    fn from_results(entries: &'a [Entry<'a>], results: &'a [Result<Outcome, HandleError>], max_attempts: u32) -> Self {
        let mut c = Self::default();
        for (entry, result) in entries.iter().zip(results) {
            let envelope = entry.envelope;
            let attempt = envelope.attempt + 1;
            let order_from_event = match entry.work {
                Work::Decide { event, .. } => event.order_id(),
                Work::Failed { order_id, .. } => order_id,
            };
            let (status, detail, last_error, verification, order_id, duplicates) = match result {
                Ok(Outcome::Applied { from, to, order_id, verification, .. }) => (
                    "applied",
                    Some(format!("{from} -> {to}")),
                    None,
                    Some(verification.as_str()),
                    Some(order_id.as_str()),
                    entry.copies,
                ),
                Ok(Outcome::Ignored { reason, order_id, verification }) => (
                    "ignored",
                    Some(reason.clone()),
                    None,
                    Some(verification.as_str()),
                    order_id.as_deref().or(order_from_event),
                    entry.copies,
                ),
                Ok(Outcome::Unverified { reason, order_id }) => (
                    "unverified",
                    Some(reason.clone()),
                    None,
                    Some(Verification::None.as_str()),
                    order_id.as_deref().or(order_from_event),
                    entry.copies,
                ),
                // Already final: the statement keeps the row and counts this copy.
                Ok(Outcome::Duplicate) => ("ignored", None, None, None, order_from_event, entry.copies),
                Err(error) => {
                    let text = error.to_string();
                    let disposition = dispose(Some((error.failure(), &text)), attempt, max_attempts);
                    let (status, recorded) = disposition.inbox_record(&text).expect("a failure is not acked");
                    (status, None, Some(recorded.to_string()), None, order_from_event, 0)
                }
            };
            c.provider.push(envelope.provider.as_str());
            c.event_key.push(&envelope.event_key);
            c.event_type.push(entry.event_type());
            c.order_id.push(order_id);
            c.status.push(status);
            c.detail.push(detail.map(|d| stored::text(d).into_owned()));
            c.attempts.push(i32::try_from(attempt).unwrap_or(i32::MAX));
            c.duplicates.push(duplicates);
            c.last_error.push(last_error.map(|e| stored::text(e).into_owned()));
            c.verification.push(verification);
            c.payload.push(stored::inbox_payload(envelope.provider, &envelope.body));
            c.request_id.push(&envelope.request_id);
            c.received_at.push(envelope.received_at);
        }
        c
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 13] {
        [
            &self.provider,
            &self.event_key,
            &self.event_type,
            &self.order_id,
            &self.status,
            &self.detail,
            &self.attempts,
            &self.duplicates,
            &self.last_error,
            &self.verification,
            &self.payload,
            &self.request_id,
            &self.received_at,
        ]
    }
}

struct PaymentColumns {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    paid: Vec<bool>,
    metadata: Vec<String>,
    provider: Vec<Option<String>>,
    provider_payment_id: Vec<Option<String>>,
    deposit_secret: Vec<Option<String>>,
    last_event_at: Vec<Option<DateTime<Utc>>>,
}

impl From<&Vec<crate::domain::decide::PaymentUpdate>> for PaymentColumns {
    fn from(updates: &Vec<crate::domain::decide::PaymentUpdate>) -> Self {
        Self {
            id: updates.iter().map(|u| u.id).collect(),
            status: updates.iter().map(|u| u.status.as_str()).collect(),
            paid: updates.iter().map(|u| u.paid).collect(),
            metadata: updates.iter().map(|u| stored::jsonb(&u.metadata).into_owned()).collect(),
            provider: updates.iter().map(|u| u.provider.clone()).collect(),
            provider_payment_id: updates.iter().map(|u| u.provider_payment_id.clone()).collect(),
            deposit_secret: updates.iter().map(|u| u.deposit_secret.clone()).collect(),
            last_event_at: updates.iter().map(|u| u.last_event_at).collect(),
        }
    }
}

struct NotificationColumns<'a> {
    id: Vec<Uuid>,
    user_id: Vec<Uuid>,
    title: Vec<Cow<'a, str>>,
    message: Vec<Cow<'a, str>>,
    kind: Vec<&'a str>,
    link: Vec<&'a str>,
    payment_id: Vec<Uuid>,
    payload: Vec<&'a str>,
    traceparent: Vec<Option<&'a str>>,
}

impl<'a> From<&'a Vec<NewNotification>> for NotificationColumns<'a> {
    fn from(all: &'a Vec<NewNotification>) -> Self {
        Self {
            id: all.iter().map(|n| n.id).collect(),
            user_id: all.iter().map(|n| n.user_id).collect(),
            title: all.iter().map(|n| stored::text(n.title.as_str())).collect(),
            message: all.iter().map(|n| stored::text(n.message.as_str())).collect(),
            kind: all.iter().map(|n| n.kind.as_str()).collect(),
            link: all.iter().map(|n| n.link.as_str()).collect(),
            payment_id: all.iter().map(|n| n.payment_id).collect(),
            payload: all.iter().map(|n| n.payload.as_str()).collect(),
            traceparent: all.iter().map(|n| n.traceparent.as_deref()).collect(),
        }
    }
}
