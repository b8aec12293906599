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

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use deadpool_postgres::{Client, GenericClient};
use shared::envelope::EventEnvelope;
use tokio_postgres::Row;

use crate::domain::decide::{decide_batch, Candidate, LockedPayment, NewNotification, Trust};
use crate::domain::event::{Confirmed, IncomingEvent, Intent, PaymentRef};
use crate::domain::outcome::{HandleError, Outcome};
use crate::store::outbox::Claim;

use super::columns::{InboxColumns, NotificationColumns, PaymentColumns};
use super::sql::{INSERT_NOTIFICATIONS, INSERT_OUTBOX, LOCK_PAYMENTS, READ_FINAL, UPDATE_PAYMENTS, UPSERT_INBOX};

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
    pub(super) fn event_type(&self) -> &str {
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
        tx.execute(
            &notify,
            &[&n.id, &n.user_id, &n.title, &n.message, &n.kind, &n.link, &n.payment_id, &n.payload_sha256],
        )
        .await
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
