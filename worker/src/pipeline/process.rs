//! A batch from the work queue, end to end: read every delivery ([`Item::read`]), confirm
//! unsigned Toss events with the Toss API where configured, apply the batch in one transaction
//! ([`Store::apply`]), conclude every event ([`super::conclude`]: its log line, its metrics,
//! its settlement), settle every delivery ([`Settler`]: ack, delay tier or dead letter), then
//! publish the batch's notifications ([`Outbox::publish`]). Each [`Item`] carries its own
//! outcome and settlement from one step to the next.
//!
//! Failures stay with their event. An unparseable body, an amount mismatch or a refused
//! deposit secret is decided for that event alone, inside the batch's transaction. A database
//! error on the batch (a constraint, a trigger, a lock timeout on one payment) rolls it back and
//! each event is then applied on its own, so a bad event costs its neighbours one retry at most.
//! An outage (no connection) fails the whole batch into the delay tiers, as any single event
//! would. A fault in the worker's own SQL halts the worker ([`super::halt`]). A server that
//! takes no writes (a standby, or a primary demoted in a failover) is left: the batch is
//! applied again at once on a fresh connection, which only a server taking writes accepts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use lapin::message::Delivery;
use shared::envelope::{header_int, EventEnvelope};
use shared::traces;
use shared::verify::message::WebhookSecrets;
use shared::Provider;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;
use super::bundle::Bundle;
use super::consumer::Batch;
use super::halt::{Halt, PROBE_EVERY};
use super::item::Item;
use super::settle::{Settlement, Settler};
use crate::domain::decide::Trust;
use crate::domain::event::Confirmed;
use crate::domain::outcome::{HandleError, Outcome};
use crate::metrics::EventMetrics;
use crate::provider_api::toss::TossApi;
use crate::store::outbox::{Claim, Message, Outbox};
use crate::store::write::{Committed, Entry, Work};
use crate::store::{Fault, Store};

/// Everything a batch is processed with: the handles of the stages it drives, and the rules.
pub struct Processor {
    pub store: Store,
    pub outbox: Outbox,
    pub settler: Settler,
    /// Fetch-back of unsigned Toss events, when `TOSS_SECRET_KEY` is set.
    pub toss_api: Option<TossApi>,
    /// What every delivery is checked with again: the broker is not a trust boundary.
    pub secrets: WebhookSecrets,
    /// In force while the database rejects the worker's own SQL.
    pub halt: Arc<Halt>,
    /// Fires when the worker starts stopping (a halted batch stops waiting then).
    pub stopping: CancellationToken,
    pub metrics: EventMetrics,
    pub rules: Rules,
}

/// The settings a batch is decided by.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub trust: Trust,
    /// `RETRY_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// `DELIVERY_LIMIT`: a delivery counted this often is recorded before it is tried.
    pub delivery_limit: u32,
}

impl Processor {
    /// Handles a batch and settles every delivery in it.
    pub async fn process_batch(self: Arc<Self>, batch: Batch) {
        let started = Instant::now();
        let Batch { deliveries, acks } = batch;
        let mut events = Vec::with_capacity(deliveries.len());
        let mut again = Vec::new();
        for delivery in deliveries {
            match Bundle::of(delivery) {
                Bundle::Not(delivery) => events.push(*delivery),
                Bundle::First(parts) => {
                    self.metrics.bundles.with_label_values(&["opened"]).inc();
                    events.extend(parts);
                }
                Bundle::Again(parts) => again.push(parts),
            }
        }
        if !again.is_empty() {
            self.split(&acks, again).await;
            if events.is_empty() {
                return;
            }
        }
        // Webhooks, not messages: a bundle counts each of its own.
        self.metrics.batch_size.observe(events.len() as f64);
        let mut items: Vec<Item> = events.into_iter().map(|d| Item::read(d, &self.secrets)).collect();
        self.record_last_chance(&items).await;
        // Test hook: a message that crashes the process before it is acknowledged (a poison message).
        fail::fail_point!("process-delivery", |_| std::process::abort());
        mark_copies(&mut items);
        self.fetch_back(&mut items).await;
        let read = started.elapsed();

        // The batch's outbox rows are written under this claim, and published under it.
        let claim = self.outbox.claim();
        // Halted until shutdown: the deliveries stay unsettled and return to the queue.
        let Some(notifications) = self.apply(&mut items, &claim).await else { return };
        let elapsed = started.elapsed();

        for item in &mut items {
            item.conclude(&self, elapsed);
        }
        let work = items.iter().map(|item| (&item.delivery, item.settlement.clone().expect("concluded"))).collect();
        let settled = self.settler.settle(&acks, work).await;
        for (item, done) in items.iter().zip(settled) {
            if done {
                item.count_settled(&self.metrics);
            }
        }
        let settled = started.elapsed();

        let messages: Vec<Message> = notifications.into_iter().map(Message::from).collect();
        if let (false, Some(pause)) = (messages.is_empty(), pause_before_publish()) {
            tokio::time::sleep(pause).await;
        }
        if let Err(error) = self.outbox.publish(&claim, &messages).await {
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

    /// Bundles delivered again (a worker stopped or died holding them): each webhook goes back
    /// to the work queue as a message of its own before any is tried, then the bundle is
    /// acknowledged. So a webhook that makes the worker crash is counted against the delivery
    /// limit alone, and a dead letter is only ever one webhook.
    async fn split(&self, acks: &Acks, bundles: Vec<Vec<Delivery>>) {
        let queue = self.settler.topology().work_queue();
        let sizes: Vec<usize> = bundles.iter().map(Vec::len).collect();
        let parts: Vec<Delivery> = bundles.into_iter().flatten().collect();
        tracing::info!(webhooks = parts.len(), "bundles delivered again: split into messages of one webhook each");
        let work = parts.iter().map(|part| (part, Settlement::part(part, queue.clone()))).collect();
        let settled = self.settler.settle(acks, work).await;
        // Counted once split: a bundle whose split failed comes back and is counted then.
        let mut settled = settled.into_iter();
        for bundle in &sizes {
            let parts: Vec<bool> = settled.by_ref().take(*bundle).collect();
            if parts.iter().all(|done| *done) {
                self.metrics.bundles.with_label_values(&["split"]).inc();
            }
        }
    }

    /// Applies the batch's transaction and gives every item its outcome; returns the
    /// notifications to publish. `None`: stopped while halted.
    async fn apply(&self, items: &mut [Item], claim: &Claim) -> Option<Vec<crate::domain::decide::NewNotification>> {
        let committed = {
            let entries: Vec<Entry<'_>> = items.iter().filter_map(Item::entry).collect();
            // Each event's trace shows the transaction that holds its effect.
            let _transaction: Vec<tracing::Span> = if traces::exporting() {
                let events = entries.len();
                items
                    .iter()
                    .filter(|item| item.entry().is_some())
                    .map(|item| tracing::info_span!(parent: &item.span, "transaction", events))
                    .collect()
            } else {
                Vec::new()
            };
            self.commit(&entries, claim).await?
        };
        let Committed { results, notifications } = committed;
        let mut results = results.into_iter();
        for item in items.iter_mut().filter(|item| item.entry().is_some()) {
            item.outcome = results.next();
        }
        // Copies follow the event they copy; an item outside the transaction failed before it.
        for i in 0..items.len() {
            let outcome = match items[i].copy_of {
                Some(first) => Some(match &items[first].outcome {
                    Some(Ok(_)) => Ok(Outcome::Duplicate),
                    Some(Err(error)) => Err(error.clone()),
                    None => Err(HandleError::Permanent("unreadable message".into())),
                }),
                None if items[i].outcome.is_none() => items[i].event.as_ref().err().map(|error| Err(error.clone())),
                None => continue,
            };
            items[i].outcome = outcome;
        }
        Some(notifications)
    }

    /// A message the broker delivers for the last time before its delivery limit parks it (it
    /// crashed or stalled every worker so far) is recorded as `dead` first, so that if this
    /// attempt dies too, `hookctl events` tells the whole story. If it succeeds, its outcome
    /// replaces the record. Redelivered messages come in batches of their own, so this is one
    /// statement for one rare message.
    async fn record_last_chance(&self, items: &[Item]) {
        let limit = i64::from(self.rules.delivery_limit);
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
        self.store.record_failures(&entries, &error, self.rules.max_attempts).await;
    }

    /// Confirms unsigned Toss payment events with the Toss API, all at once. A duplicate costs
    /// no API call (a forged flood must not spend the merchant's quota).
    async fn fetch_back(&self, items: &mut [Item]) {
        let Some(api) = &self.toss_api else { return };
        let wanted: Vec<usize> = (0..items.len()).filter(|&i| items[i].wants_fetch_back()).collect();
        if wanted.is_empty() {
            return;
        }
        let keys: Vec<String> =
            wanted.iter().filter_map(|&i| items[i].envelope.as_ref().ok().map(|e| e.event_key.clone())).collect();
        let finals = match self.store.final_toss_events(&keys).await {
            Ok(finals) => finals,
            Err(error) => {
                for &i in &wanted {
                    items[i].event = Err(error.clone());
                }
                return;
            }
        };
        let budget = api.batch_budget();
        let deadline = tokio::time::Instant::now() + budget;
        let calls = wanted.into_iter().filter_map(|i| {
            let envelope = items[i].envelope.as_ref().ok()?;
            if finals.contains(&envelope.event_key) {
                return None;
            }
            let event = items[i].event.clone().ok()?;
            Some(async move {
                let answer = tokio::time::timeout_at(deadline, api.confirm(event)).await.unwrap_or_else(|_| {
                    Err(HandleError::Transient(format!(
                        "Toss API calls of this batch still waiting after {budget:?} (TOSS_API_CONCURRENCY at once)"
                    )))
                });
                (i, answer)
            })
        });
        for (i, result) in join_all(calls.collect::<Vec<_>>()).await {
            let item = &mut items[i];
            match result {
                // Never finalised on stale data: retried through the delay tiers like any
                // transient failure until the API agrees (or the attempts run out).
                Ok((_, confirmed)) if confirmed.api_behind.is_some() => {
                    let disagreement = confirmed.api_behind.unwrap_or_default();
                    item.event =
                        Err(HandleError::Transient(format!("{disagreement}; waiting for the API to catch up")));
                }
                Ok((event, confirmed)) => {
                    item.event = Ok(event);
                    item.confirmed = Confirmed { signature: item.confirmed.signature, ..confirmed };
                }
                Err(error) => item.event = Err(error),
            }
        }
    }

    /// Applies the entries in one transaction; on a refusal, each on its own; while the
    /// database rejects the worker's SQL, halted (retried every few seconds). `None`: stopped
    /// while halted.
    async fn commit(&self, entries: &[Entry<'_>], claim: &Claim) -> Option<Committed> {
        let Rules { trust, max_attempts, .. } = self.rules;
        let mut reconnects = 0;
        loop {
            let fault = match self.store.apply(entries, trust, max_attempts, claim).await {
                Ok(committed) => {
                    self.metrics.halted.set(0);
                    self.halt.clear();
                    return Some(committed);
                }
                Err(fault) => fault,
            };
            match fault {
                Fault::Broken(reason) => {
                    self.metrics.halted.set(1);
                    self.halt.trip(&reason);
                    tokio::select! {
                        _ = self.stopping.cancelled() => return None,
                        _ = tokio::time::sleep(PROBE_EVERY) => {}
                    }
                }
                Fault::ReadOnly(reason) if reconnects < READ_ONLY_RECONNECTS => {
                    reconnects += 1;
                    tracing::warn!(
                        %reason,
                        reconnects,
                        "the database server takes no writes (a standby, or a primary demoted in a failover): \
                         left its sessions; applying the batch again on a fresh connection"
                    );
                }
                Fault::Outage(reason) | Fault::ReadOnly(reason) => {
                    let error = HandleError::Transient(reason);
                    self.store.record_failures(entries, &error, max_attempts).await;
                    return Some(Committed { results: vec![Err(error); entries.len()], notifications: Vec::new() });
                }
                Fault::Rejected(error) if entries.len() > 1 => {
                    tracing::warn!(%error, events = entries.len(), "the database refused the batch; applying its events one by one");
                    let mut all = Committed { results: Vec::with_capacity(entries.len()), notifications: Vec::new() };
                    for entry in entries {
                        let one = Box::pin(self.commit(std::slice::from_ref(entry), claim)).await?;
                        all.results.extend(one.results);
                        all.notifications.extend(one.notifications);
                    }
                    return Some(all);
                }
                Fault::Rejected(error) => {
                    self.store.record_failures(entries, &error, max_attempts).await;
                    return Some(Committed { results: vec![Err(error)], notifications: Vec::new() });
                }
            }
        }
    }
}

/// How often one batch is applied again on a fresh connection after landing on a server that
/// takes no writes. New connections skip such servers, so one is normally enough; more would
/// mean servers changing roles under the worker, which is no longer a failover but an outage.
const READ_ONLY_RECONNECTS: u32 = 3;

/// Test hook: a pause between a batch's commit and the publish of its notifications, as long
/// as `FAILPOINTS=batch-before-publish=return(<milliseconds>)` says (`1*return(…)`: once), to
/// make a worker slower than its outbox lease. Without the `failpoints` feature this is `None`.
fn pause_before_publish() -> Option<std::time::Duration> {
    fail::fail_point!("batch-before-publish", |ms| {
        ms.and_then(|ms| ms.parse().ok()).map(std::time::Duration::from_millis)
    });
    None
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
