//! A batch from the work queue, end to end: read every delivery, confirm unsigned Toss events
//! with the Toss API where configured, apply the batch in one transaction ([`crate::store::write`]),
//! settle every delivery ([`crate::pipeline::settle`]: ack, delay tier or dead letter), then publish the
//! batch's notifications ([`crate::store::outbox`]). Every event's outcome is logged and counted
//! once, in the `conclude` submodule.
//!
//! Failures stay with their event. An unparseable body, an amount mismatch or a refused
//! deposit secret is decided for that event alone, inside the batch's transaction. A database
//! error on the batch (a constraint, a trigger, a lock timeout on one payment) rolls it back and
//! each event is then applied on its own, so a bad event costs its neighbours one retry at most.
//! An outage (no connection) fails the whole batch into the delay tiers, as any single event
//! would. A fault in the worker's own SQL halts the worker ([`crate::pipeline::halt`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use lapin::message::Delivery;
use shared::envelope::{header_int, header_str, EnvelopeError, EventEnvelope};
use shared::traces;
use shared::verify::message::{check_message, WebhookSecrets};
use shared::Provider;

use crate::deps::Deps;
use crate::domain::decide::Trust;
use crate::domain::event::{Confirmed, IncomingEvent};
use crate::domain::outcome::{HandleError, Outcome};
use crate::domain::screen::screen;
use crate::pipeline::consumer::Batch;
use crate::pipeline::halt::PROBE_EVERY;
use crate::pipeline::settle::settle;
use crate::store::db::{classify, describe_pool_error, DbErrorClass};
use crate::store::outbox::{self, Claim, Message};
use crate::store::write::{self, Committed, Entry, Work, WriteError};

use super::conclude::{conclude, count_event};

/// How long recording a failed attempt may take after the batch failed; the database may be
/// the reason it failed.
const RECORD_FAILURE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One delivery of the batch.
pub(super) struct Item {
    pub(super) delivery: Delivery,
    /// `Err`: the headers do not describe a webhook; it is dead-lettered, nothing is recorded.
    pub(super) envelope: Result<EventEnvelope, EnvelopeError>,
    pub(super) event: Result<IncomingEvent, HandleError>,
    pub(super) confirmed: Confirmed,
    /// The order the event names, kept when confirming it failed.
    pub(super) order_id: Option<String>,
    /// An earlier delivery of the same event in this batch; this one follows its outcome.
    pub(super) copy_of: Option<usize>,
    pub(super) copies: i32,
    /// The delivery's span: its log lines, and its part of the trace ingest started.
    pub(super) span: tracing::Span,
    /// That trace, to carry on to the notification it causes (when traces are exported).
    pub(super) traceparent: Option<String>,
}

impl Item {
    /// Reads a delivery and checks what its bytes prove ([`check_message`]): nothing in its
    /// headers is believed that the body and the configured secrets do not confirm. Then
    /// screens it for hostile bytes ([`screen`]), which win over unverifiable: such a message is
    /// recorded (with its values escaped) as well as dead-lettered.
    fn read(delivery: Delivery, secrets: &WebhookSecrets) -> Self {
        let mut envelope = EventEnvelope::from_amqp(&delivery.properties, &delivery.data);
        let mut confirmed = Confirmed::default();
        let mut event = match &envelope {
            Ok(envelope) => match check_message(envelope, secrets) {
                Ok(checked) => {
                    confirmed.signature = checked.signed;
                    IncomingEvent::parse(envelope).map_err(|e| HandleError::Permanent(e.0))
                }
                Err(unverifiable) => Err(HandleError::Unverifiable(unverifiable.0)),
            },
            Err(error) => Err(HandleError::Permanent(error.to_string())),
        };
        // Before anything of the delivery is used: a control character in an identifier
        // would make Postgres refuse the whole batch.
        let order_id = screen(&mut envelope, &mut event);
        let span = match &envelope {
            Ok(envelope) => tracing::info_span!(
                "delivery",
                provider = envelope.provider.as_str(),
                event_id = %envelope.event_key,
                event_type = %envelope.event_type,
                request_id = %envelope.request_id,
                attempt = envelope.attempt + 1,
            ),
            Err(_) => tracing::info_span!("delivery"),
        };
        let headers = delivery.properties.headers().as_ref();
        if let Some(parent) = headers.and_then(|h| header_str(h, traces::TRACEPARENT)) {
            traces::continue_trace(&span, &parent);
        }
        let traceparent = traces::traceparent(&span);
        let (copy_of, copies) = (None, 0);
        Self { delivery, envelope, event, confirmed, order_id, copy_of, copies, span, traceparent }
    }

    pub(super) fn attempt(&self) -> u32 {
        self.envelope.as_ref().map_or(0, |e| e.attempt) + 1
    }

    /// The envelope of a message whose key and type its body proved; an unverifiable message
    /// has none, so it never touches the inbox nor stands for another delivery of "its" key.
    fn proven_envelope(&self) -> Option<&EventEnvelope> {
        match (&self.envelope, &self.event) {
            (Ok(_), Err(HandleError::Unverifiable(_))) => None,
            (Ok(envelope), _) => Some(envelope),
            (Err(_), _) => None,
        }
    }
}

/// Handles a batch and settles every delivery in it.
pub async fn process_batch(deps: Arc<Deps>, batch: Batch) {
    let started = Instant::now();
    let Batch { deliveries, acks } = batch;
    deps.metrics.batch_size.observe(deliveries.len() as f64);
    let mut items: Vec<Item> = deliveries.into_iter().map(|d| Item::read(d, &deps.secrets)).collect();
    record_last_chance(&deps, &items).await;
    // Test hook: a message that crashes the process before it is acknowledged (a poison message).
    fail::fail_point!("process-delivery", |_| std::process::abort());
    mark_copies(&mut items);
    fetch_back(&deps, &mut items).await;

    let (positions, entries): (Vec<usize>, Vec<Entry<'_>>) = items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.copy_of.is_none())
        .filter_map(|(i, item)| {
            let envelope = item.proven_envelope()?;
            let work = match &item.event {
                Ok(event) => Work::Decide { event, confirmed: &item.confirmed },
                Err(error) => {
                    Work::Failed { event_type: &envelope.event_type, order_id: item.order_id.as_deref(), error }
                }
            };
            Some((i, Entry { envelope, work, copies: item.copies, traceparent: item.traceparent.as_deref() }))
        })
        .unzip();
    let read = started.elapsed();
    // Each event's trace shows the transaction that holds its effect.
    let transaction: Vec<tracing::Span> = if traces::exporting() {
        positions
            .iter()
            .map(|&i| tracing::info_span!(parent: &items[i].span, "transaction", events = entries.len()))
            .collect()
    } else {
        Vec::new()
    };
    // The batch's outbox rows are written under this claim, and published under it.
    let claim = Claim::new(deps.settings.outbox_lease);
    // Halted until shutdown: the deliveries stay unsettled and return to the queue.
    let Some(Committed { results, notifications }) = commit(&deps, &entries, &claim).await else { return };
    drop(transaction);
    let elapsed = started.elapsed();

    let mut outcomes: Vec<Option<Result<Outcome, HandleError>>> = vec![None; items.len()];
    for (position, result) in positions.into_iter().zip(results) {
        outcomes[position] = Some(result);
    }
    for i in 0..items.len() {
        if let Some(first) = items[i].copy_of {
            outcomes[i] = Some(match &outcomes[first] {
                Some(Ok(_)) => Ok(Outcome::Duplicate),
                Some(Err(error)) => Err(error.clone()),
                None => Err(HandleError::Permanent("unreadable message".into())),
            });
        } else if outcomes[i].is_none() {
            // Not in the transaction: it failed before (an unverifiable message).
            outcomes[i] = items[i].event.as_ref().err().map(|error| Err(error.clone()));
        }
    }

    let mut work = Vec::with_capacity(items.len());
    let mut labels = Vec::with_capacity(items.len());
    for (item, outcome) in items.iter().zip(outcomes) {
        let (settlement, label) = conclude(&deps, item, outcome, elapsed);
        work.push((&item.delivery, settlement));
        labels.push(label);
    }
    let settled = settle(&deps.broker, &acks, work).await;
    for ((item, label), done) in items.iter().zip(labels).zip(settled) {
        if let (Some(label), true) = (label, done) {
            count_event(&deps, item, label);
        }
    }

    let settled = started.elapsed();

    let messages: Vec<Message> = notifications.into_iter().map(Message::from).collect();
    if let (false, Some(pause)) = (messages.is_empty(), pause_before_publish()) {
        tokio::time::sleep(pause).await;
    }
    if let Err(error) = outbox::publish(&deps, &claim, &messages).await {
        tracing::warn!(%error, "notifications not published now; the outbox relay publishes them");
    }
    tracing::debug!(
        deliveries = items.len(),
        read_us = read.as_micros() as u64,
        commit_us = (elapsed - read).as_micros() as u64,
        settle_us = (settled - elapsed).as_micros() as u64,
        publish_us = (started.elapsed() - settled).as_micros() as u64,
        "batch done"
    );
}

/// Test hook: a pause between a batch's commit and the publish of its notifications, as long
/// as `FAILPOINTS=batch-before-publish=return(<milliseconds>)` says (`1*return(…)`: once), to
/// make a worker slower than its outbox lease. Without the `failpoints` feature this is `None`.
fn pause_before_publish() -> Option<std::time::Duration> {
    fail::fail_point!("batch-before-publish", |ms| {
        ms.and_then(|ms| ms.parse().ok()).map(std::time::Duration::from_millis)
    });
    None
}

/// A message the broker delivers for the last time before its delivery limit parks it (it
/// crashed or stalled every worker so far) is recorded as `dead` first, so that if this attempt
/// dies too, `hookctl events` tells the whole story. If it succeeds, its outcome replaces the
/// record. Redelivered messages come in batches of their own, so this is one statement for one
/// rare message.
async fn record_last_chance(deps: &Deps, items: &[Item]) {
    let limit = i64::from(deps.settings.delivery_limit);
    let last: Vec<(&EventEnvelope, i64)> = items
        .iter()
        .filter(|item| item.delivery.redelivered)
        .filter_map(|item| {
            let headers = item.delivery.properties.headers().as_ref()?;
            let count = header_int(headers, DELIVERY_COUNT)?;
            Some((item.proven_envelope()?, count)).filter(|_| count >= limit)
        })
        .collect();
    if last.is_empty() {
        return;
    }
    let error = HandleError::Permanent(LAST_CHANCE.to_string());
    let entries: Vec<Entry<'_>> = last
        .iter()
        .map(|(envelope, _)| Entry {
            envelope,
            work: Work::Failed { event_type: &envelope.event_type, order_id: None, error: &error },
            copies: 0,
            traceparent: None,
        })
        .collect();
    for (envelope, count) in &last {
        tracing::warn!(event_id = %envelope.event_key, delivery_count = count, "delivered for the last time before the delivery limit parks it; recorded as dead until it succeeds");
    }
    record_failures(deps, &entries, &error).await;
}

/// The header quorum queues count deliveries in.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// What a message parked by the delivery limit is recorded with.
const LAST_CHANCE: &str =
    "delivery limit reached: the message crashed or stalled every worker that took it (parked by the broker)";

/// Later deliveries of an event already in the batch follow its outcome (a provider retry,
/// or a redelivery, landing in the same batch). Their inbox row is the first one's.
fn mark_copies(items: &mut [Item]) {
    let mut first: HashMap<(Provider, String), usize> = HashMap::new();
    for i in 0..items.len() {
        let Some(envelope) = items[i].proven_envelope() else { continue };
        let key = (envelope.provider, envelope.event_key.clone());
        match first.get(&key) {
            Some(&j) => {
                items[i].copy_of = Some(j);
                items[j].copies += 1;
            }
            None => {
                first.insert(key, i);
            }
        }
    }
}

/// Confirms unsigned Toss payment events with the Toss API, all at once. A duplicate costs no
/// API call (a forged flood must not spend the merchant's quota).
async fn fetch_back(deps: &Deps, items: &mut [Item]) {
    let Some(api) = &deps.toss_api else { return };
    let wanted: Vec<usize> = (0..items.len())
        .filter(|&i| {
            let item = &items[i];
            item.copy_of.is_none()
                && !item.confirmed.signature
                && item.envelope.as_ref().is_ok_and(|e| e.provider == Provider::Toss)
                && item.event.as_ref().is_ok_and(|e| e.unsigned_payment_event)
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let keys: Vec<String> =
        wanted.iter().filter_map(|&i| items[i].envelope.as_ref().ok().map(|e| e.event_key.clone())).collect();
    let finals = match already_final(deps, &keys).await {
        Ok(finals) => finals,
        Err(error) => {
            for &i in &wanted {
                items[i].event = Err(error.clone());
            }
            return;
        }
    };
    let calls = wanted.into_iter().filter_map(|i| {
        let envelope = items[i].envelope.as_ref().ok()?;
        if finals.contains(&envelope.event_key) {
            return None;
        }
        let event = items[i].event.clone().ok()?;
        Some(async move { (i, api.confirm(event).await) })
    });
    for (i, result) in join_all(calls.collect::<Vec<_>>()).await {
        let item = &mut items[i];
        match result {
            // Never finalised on stale data: retried through the delay tiers like any
            // transient failure until the API agrees (or the attempts run out).
            Ok((_, confirmed)) if confirmed.api_behind.is_some() => {
                let disagreement = confirmed.api_behind.unwrap_or_default();
                item.event = Err(HandleError::Transient(format!("{disagreement}; waiting for the API to catch up")));
            }
            Ok((event, confirmed)) => {
                item.event = Ok(event);
                item.confirmed = Confirmed { signature: item.confirmed.signature, ..confirmed };
            }
            Err(error) => item.event = Err(error),
        }
    }
}

/// The Toss event keys among `keys` the inbox holds as applied or ignored.
async fn already_final(deps: &Deps, keys: &[String]) -> Result<HashSet<String>, HandleError> {
    let client = deps.pool.get().await?;
    let rows = client
        .query(
            "SELECT event_key FROM webhook_events
              WHERE provider = 'toss' AND event_key = ANY($1) AND status IN ('applied', 'ignored')",
            &[&keys],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How a batch failed.
enum Fault {
    /// No database to talk to: every event is retried later.
    Outage(String),
    /// The database rejected the worker's own SQL: halt.
    Broken(String),
    /// The database refused this batch (a constraint, a trigger, a lock timeout, a conflict).
    Rejected(HandleError),
}

/// Applies the entries in one transaction; on a refusal, each on its own; while the database
/// rejects the worker's SQL, halted (retried every few seconds). `None`: stopped while halted.
async fn commit(deps: &Deps, entries: &[Entry<'_>], claim: &Claim) -> Option<Committed> {
    loop {
        let fault = match try_commit(deps, entries, claim).await {
            Ok(committed) => {
                deps.metrics.halted.set(0);
                deps.halt.clear();
                return Some(committed);
            }
            Err(fault) => fault,
        };
        match fault {
            Fault::Broken(reason) => {
                deps.metrics.halted.set(1);
                deps.halt.trip(&reason);
                tokio::select! {
                    _ = deps.stopping.cancelled() => return None,
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
            }
            Fault::Outage(reason) => {
                let error = HandleError::Transient(reason);
                record_failures(deps, entries, &error).await;
                return Some(Committed { results: vec![Err(error); entries.len()], notifications: Vec::new() });
            }
            Fault::Rejected(error) if entries.len() > 1 => {
                tracing::warn!(%error, events = entries.len(), "the database refused the batch; applying its events one by one");
                let mut all = Committed { results: Vec::with_capacity(entries.len()), notifications: Vec::new() };
                for entry in entries {
                    let one = Box::pin(commit(deps, std::slice::from_ref(entry), claim)).await?;
                    all.results.extend(one.results);
                    all.notifications.extend(one.notifications);
                }
                return Some(all);
            }
            Fault::Rejected(error) => {
                record_failures(deps, entries, &error).await;
                return Some(Committed { results: vec![Err(error)], notifications: Vec::new() });
            }
        }
    }
}

async fn try_commit(deps: &Deps, entries: &[Entry<'_>], claim: &Claim) -> Result<Committed, Fault> {
    let mut client = deps.pool.get().await.map_err(|error| match &error {
        deadpool_postgres::PoolError::Backend(e) => fault_of(e),
        other => Fault::Outage(describe_pool_error(other)),
    })?;
    let settings = &deps.settings;
    let trust = Trust { allow_unverified: settings.toss_allow_unverified };
    let result = write::apply(&mut client, entries, trust, settings.retry_max_attempts, claim).await;
    result.map_err(|error| match error {
        WriteError::Db(e) => fault_of(&e),
        WriteError::Conflict(reason) => Fault::Rejected(HandleError::Transient(reason)),
    })
}

fn fault_of(error: &tokio_postgres::Error) -> Fault {
    let Some(db) = error.as_db_error() else {
        return Fault::Outage(format!("database unavailable: {error}"));
    };
    let text = format!("database error {}: {}", db.code().code(), db.message());
    match classify(error) {
        DbErrorClass::Broken => Fault::Broken(text),
        DbErrorClass::Permanent => Fault::Rejected(HandleError::Permanent(text)),
        DbErrorClass::Transient => Fault::Rejected(HandleError::Transient(text)),
    }
}

/// Records the failed attempt of every entry, outside the transaction that rolled back. Best
/// effort: the database may be why the batch failed.
async fn record_failures(deps: &Deps, entries: &[Entry<'_>], error: &HandleError) {
    let errors = vec![error.clone(); entries.len()];
    let recording = async {
        let client = deps.pool.get().await.map_err(|e| describe_pool_error(&e))?;
        write::record_failures(&client, entries, &errors, deps.settings.retry_max_attempts)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(RECORD_FAILURE_TIMEOUT, recording).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "could not record the failed attempts (database unavailable?)"),
        Err(_) => tracing::debug!("could not record the failed attempts in time (database unavailable?)"),
    }
}
