//! Stripe catch-up: list the events of the types the pipeline applies, newest first, from a
//! little before the watermark; publish, oldest first, every one the inbox lacks (the oldest
//! `RECONCILE_MAX_HELD` of them, the next run going on from there); move the watermark past
//! each confirmed chunk.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use futures_util::future::join_all;
use shared::envelope::IngestVerification;
use shared::providers::StripeEventType;
use shared::Provider;
use strum::IntoEnumIterator;
use tokio_util::sync::CancellationToken;

use super::{Found, Outgoing, Reconciler, Report, RunError, RunOptions};
use crate::provider_api::stripe::{EventsQuery, ListedEvent};
use crate::store::reconcile::Lease;

/// How far before the watermark a run starts listing: `created` has one-second resolution,
/// events of one second can straddle a run, and Stripe's list may show an event a moment
/// after its `created`. Events seen again are in the inbox and cost nothing.
pub const OVERLAP: Span = Span::minutes(5);

/// Stripe keeps events for 30 days; listing from further back is refused.
const STRIPE_RETENTION: Span = Span::days(30);

/// Publishes in flight at once, and how often the watermark moves.
const PUBLISH_CHUNK: usize = 100;

/// Inbox keys checked per statement.
const INBOX_CHUNK: usize = 1000;

/// The events a process published lately, by id, with when. A run lists again the last
/// [`OVERLAP`] before the watermark, and an event published by the previous run may still be
/// queued, not yet in the inbox, when the next one starts (the work queue's backlog can
/// outlast `RECONCILE_INTERVAL`): it is not counted missed, nor published, a second time.
/// Kept for twice the overlap, ids only.
#[derive(Default)]
pub struct Published(Mutex<HashMap<String, Instant>>);

impl Published {
    fn remember<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut published = self.0.lock().expect("published lock");
        published.retain(|_, at| now.duration_since(*at) < KEEP_PUBLISHED);
        published.extend(ids.into_iter().map(|id| (id.to_string(), now)));
    }

    fn lately(&self, id: &str) -> bool {
        self.0.lock().expect("published lock").get(id).is_some_and(|at| at.elapsed() < KEEP_PUBLISHED)
    }
}

/// How long [`Published`] keeps an id.
const KEEP_PUBLISHED: std::time::Duration = std::time::Duration::from_secs(2 * 5 * 60);

/// Unix seconds as a time (the epoch for values out of range, which no Stripe event has).
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().unwrap_or_default()
}

/// Where a run starts listing: `since`, else the watermark less [`OVERLAP`], else the horizon;
/// never before Stripe's retention.
pub fn list_from(
    since: Option<DateTime<Utc>>,
    watermark: Option<DateTime<Utc>>,
    horizon: std::time::Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let horizon = Span::from_std(horizon).unwrap_or(STRIPE_RETENTION);
    let from = since.or(watermark.map(|w| w - OVERLAP)).unwrap_or(now - horizon);
    from.max(now - STRIPE_RETENTION)
}

/// What a run's listing came to.
struct Listed {
    /// The events the inbox lacks, oldest first: the oldest `RECONCILE_MAX_HELD`.
    missed: Vec<ListedEvent>,
    /// More were missed than that; the newer ones were let go.
    more: bool,
    /// Events listed (each once).
    examined: usize,
    /// `created` of the newest event listed.
    newest: Option<i64>,
}

/// A missed event, ordered by `created`, then id: the order events are published in.
struct Held(ListedEvent);

impl Held {
    fn key(&self) -> (i64, &str) {
        (self.0.created, &self.0.id)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The oldest `limit` missed events of a listing that runs from newest to oldest: once more
/// are held, the newest is let go (the next run finds it again).
struct Oldest {
    heap: BinaryHeap<Held>,
    limit: usize,
    more: bool,
}

impl Oldest {
    fn new(limit: usize) -> Self {
        Self { heap: BinaryHeap::new(), limit: limit.max(1), more: false }
    }

    fn hold(&mut self, event: ListedEvent) {
        self.heap.push(Held(event));
        if self.heap.len() > self.limit {
            self.heap.pop();
            self.more = true;
        }
    }

    /// Oldest first.
    fn into_sorted(self) -> (Vec<ListedEvent>, bool) {
        (self.heap.into_sorted_vec().into_iter().map(|held| held.0).collect(), self.more)
    }
}

impl Reconciler {
    /// One Stripe run; with `leased`, under that lease and from (and moving) its watermark.
    pub(super) async fn reconcile_stripe(
        &self,
        options: RunOptions,
        leased: Option<(&Lease, Option<DateTime<Utc>>)>,
        shutdown: &CancellationToken,
    ) -> Result<Report, RunError> {
        let source = self.stripe.as_ref().ok_or(RunError::NotConfigured("STRIPE_API_KEY"))?;
        let lease = leased.map(|(lease, _)| lease);
        let watermark = leased.and_then(|(_, watermark)| watermark);
        let from = list_from(options.since, watermark, self.settings.reconcile_horizon, Utc::now());
        let mut report = Report::new(Provider::Stripe);
        report.watermark = watermark;

        let Listed { missed, more, examined, newest } = self.list_missed(from, lease, shutdown).await?;
        report.examined = examined;
        report.more = more;
        self.metrics.missed.with_label_values(&[Provider::Stripe.as_str()]).inc_by(missed.len() as u64);
        report.found = missed
            .iter()
            .map(|e| Found {
                event_key: e.id.clone(),
                event_type: e.event_type.clone(),
                detail: at(e.created).to_rfc3339(),
            })
            .collect();
        if options.dry_run {
            return Ok(report);
        }

        let request_id = format!("reconcile-{}", uuid::Uuid::new_v4().simple());
        for chunk in missed.chunks(PUBLISH_CHUNK) {
            if shutdown.is_cancelled() {
                return Err(RunError::Stopped);
            }
            self.wait_for_room(lease, shutdown).await?;
            let publishes = chunk.iter().map(|event| {
                let mac = source.mac.sign(Provider::Stripe, &event.id, &event.body);
                let request_id = &request_id;
                async move {
                    let event = Outgoing {
                        provider: Provider::Stripe,
                        event_type: &event.event_type,
                        event_key: &event.id,
                        verification: IngestVerification::Fetched,
                        body: &event.body,
                        mac: Some(&mac),
                    };
                    self.publish_with_retries(event, request_id).await
                }
            });
            let results = join_all(publishes).await;
            report.published += results.iter().filter(|r| r.is_ok()).count();
            source
                .published
                .remember(chunk.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(e, _)| e.id.as_str()));
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
            // Every event listed before the chunk's last is now in the inbox or confirmed.
            let upto = chunk.last().map(|e| at(e.created));
            self.advance(lease, upto, &mut report).await?;
        }
        // Nothing unconfirmed is left: the newest event listed is the watermark. Unless events
        // were let go: then it stays at the newest published, and the next run finds them.
        if !more {
            self.advance(lease, newest.map(at), &mut report).await?;
        }
        Ok(report)
    }

    /// Every page of the list from `from`, keeping only the events the inbox lacks (so a run
    /// holds the bodies of missed events only, not of everything it lists), and of those the
    /// oldest `RECONCILE_MAX_HELD`, sorted oldest first (ties by id), each once. Renews the
    /// lease after each page.
    async fn list_missed(
        &self,
        from: DateTime<Utc>,
        lease: Option<&Lease>,
        shutdown: &CancellationToken,
    ) -> Result<Listed, RunError> {
        let source = self.stripe.as_ref().ok_or(RunError::NotConfigured("STRIPE_API_KEY"))?;
        let types: Vec<&'static str> = StripeEventType::iter().map(<&'static str>::from).collect();
        let (mut examined, mut newest) = (0, None);
        let mut held = Oldest::new(self.settings.reconcile_max_held);
        let mut seen = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                return Err(RunError::Stopped);
            }
            let query = EventsQuery { types: &types, created_gte: from.timestamp(), starting_after: after.as_deref() };
            let (api, query) = (&source.api, &query);
            let page = self.call(Provider::Stripe, shutdown, move || api.list_events(query)).await?;
            after = page.events.last().map(|e| e.id.clone());
            let fresh: Vec<ListedEvent> = page.events.into_iter().filter(|e| seen.insert(e.id.clone())).collect();
            examined += fresh.len();
            newest = newest.max(fresh.iter().map(|e| e.created).max());
            let mut known = HashSet::new();
            for chunk in fresh.chunks(INBOX_CHUNK) {
                let keys: Vec<&str> = chunk.iter().map(|e| e.id.as_str()).collect();
                known.extend(self.store.known_event_keys(Provider::Stripe, &keys).await?);
            }
            for event in fresh {
                if !known.contains(&event.id) && !source.published.lately(&event.id) {
                    held.hold(event);
                }
            }
            if let Some(lease) = lease {
                if !self.store.advance_watermark(lease, None).await? {
                    return Err(RunError::LeaseLost);
                }
            }
            if !page.has_more {
                break;
            }
        }
        let (missed, more) = held.into_sorted();
        Ok(Listed { missed, more, examined, newest })
    }

    /// Moves the watermark to `to` under `lease` (and renews it); nothing without a lease.
    async fn advance(
        &self,
        lease: Option<&Lease>,
        to: Option<DateTime<Utc>>,
        report: &mut Report,
    ) -> Result<(), RunError> {
        let (Some(lease), Some(to)) = (lease, to) else { return Ok(()) };
        if !self.store.advance_watermark(lease, Some(to)).await? {
            return Err(RunError::LeaseLost);
        }
        report.watermark = report.watermark.max(Some(to));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, created: i64) -> ListedEvent {
        ListedEvent { id: id.into(), event_type: "checkout.session.completed".into(), created, body: Vec::new() }
    }

    #[test]
    fn a_listing_holds_the_oldest_missed_events_and_says_it_let_newer_ones_go() {
        let mut held = Oldest::new(3);
        // Newest first, as pages come; ties on `created` ordered by id.
        for (id, created) in [("e", 50), ("d", 40), ("c2", 30), ("c1", 30), ("b", 20), ("a", 10)] {
            held.hold(event(id, created));
        }
        let (missed, more) = held.into_sorted();
        let ids: Vec<&str> = missed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c1"]);
        assert!(more);

        let mut held = Oldest::new(3);
        for (id, created) in [("b", 20), ("a", 10)] {
            held.hold(event(id, created));
        }
        let (missed, more) = held.into_sorted();
        assert_eq!(missed.len(), 2);
        assert!(!more, "nothing let go");
    }

    #[test]
    fn published_events_are_remembered_for_twice_the_overlap() {
        assert_eq!(Span::from_std(KEEP_PUBLISHED).unwrap(), OVERLAP * 2);
        let published = Published::default();
        published.remember(["evt_1"]);
        assert!(published.lately("evt_1") && !published.lately("evt_2"));
    }

    #[test]
    fn a_run_lists_from_before_the_watermark_and_never_past_stripes_retention() {
        let now = at(1_800_000_000);
        let week = std::time::Duration::from_secs(7 * 24 * 3600);
        let watermark = at(1_799_990_000);
        assert_eq!(list_from(None, Some(watermark), week, now), watermark - OVERLAP);
        assert_eq!(list_from(None, None, week, now), now - Span::days(7));
        assert_eq!(list_from(Some(at(1_799_000_000)), Some(watermark), week, now), at(1_799_000_000));
        assert_eq!(list_from(Some(at(0)), None, week, now), now - STRIPE_RETENTION);
    }
}
