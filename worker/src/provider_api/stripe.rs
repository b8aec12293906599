//! Stripe's events list (`GET /v1/events`), read by reconciliation with a restricted key that
//! may read Events only. One call is one page; paging, retries and what is done with the
//! events are the reconciler's.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{read_limited, ApiError};

/// Largest page accepted: 100 events of up to ~64 KiB each, pretty-printed. Stripe's events are
/// a few KiB; anything near this is not an events list.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Events per page: Stripe's maximum, so a catch-up costs one call per 100 events.
pub const PAGE_LIMIT: u8 = 100;

/// A Stripe API client for the events list, with its own connection pool and deadlines.
pub struct StripeApi {
    client: reqwest::Client,
    base: reqwest::Url,
    /// `Bearer <key>`.
    authorization: SecretString,
    version: String,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

/// One page's request: events of `types`, created at or after `created_gte` (unix seconds),
/// after the event `starting_after` in the list's order (newest first).
#[derive(Debug, Clone)]
pub struct EventsQuery<'a> {
    pub types: &'a [&'static str],
    pub created_gte: i64,
    pub starting_after: Option<&'a str>,
}

/// One event of the list, its bytes as Stripe rendered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEvent {
    pub id: String,
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    pub body: Vec<u8>,
}

/// One page of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    pub events: Vec<ListedEvent>,
    pub has_more: bool,
}

impl StripeApi {
    pub fn new(base: &str, key: &SecretString, version: &str, timeout: Duration) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(base)?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent("webhooks-reconciler")
            .build()?;
        Ok(Self {
            client,
            base,
            authorization: SecretString::from(format!("Bearer {}", key.expose_secret())),
            version: version.to_string(),
        })
    }

    /// Fetches one page of the events list.
    pub async fn list_events(&self, query: &EventsQuery<'_>) -> Result<EventsPage, ApiError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ApiError::Malformed("STRIPE_API_BASE cannot carry a path".into()))?
            .pop_if_empty()
            .push("v1")
            .push("events");
        {
            let mut pairs = url.query_pairs_mut();
            for event_type in query.types {
                pairs.append_pair("types[]", event_type);
            }
            pairs.append_pair("created[gte]", &query.created_gte.to_string());
            pairs.append_pair("limit", &PAGE_LIMIT.to_string());
            if let Some(after) = query.starting_after {
                pairs.append_pair("starting_after", after);
            }
        }
        let response = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.expose_secret())
            .header("Stripe-Version", &self.version)
            .send()
            .await
            .map_err(|e| ApiError::of_send(&e))?;
        if !response.status().is_success() {
            return Err(ApiError::of_status(&response));
        }
        let body = read_limited(response, MAX_PAGE_BYTES).await?;
        parse_events_page(&body)
    }
}

#[derive(Deserialize)]
struct Page<'a> {
    object: String,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    has_more: bool,
}

#[derive(Deserialize)]
struct Head {
    id: String,
    object: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
}

/// Reads a page of `GET /v1/events`. Anything else (not JSON, not a list, an event without
/// `id`, `type` or `created`) is malformed: never taken for an empty or last page.
pub fn parse_events_page(body: &[u8]) -> Result<EventsPage, ApiError> {
    let page: Page<'_> = serde_json::from_slice(body).map_err(|e| ApiError::Malformed(format!("not a list: {e}")))?;
    if page.object != "list" {
        return Err(ApiError::Malformed(format!("object is {:?}, not \"list\"", page.object)));
    }
    let events = page
        .data
        .iter()
        .map(|raw| {
            let head: Head = serde_json::from_str(raw.get())
                .map_err(|e| ApiError::Malformed(format!("an item is not an event: {e}")))?;
            if head.object != "event" || head.id.is_empty() || head.event_type.is_empty() {
                return Err(ApiError::Malformed("an item is not an event".into()));
            }
            Ok(ListedEvent {
                id: head.id,
                event_type: head.event_type,
                created: head.created,
                body: raw.get().as_bytes().to_vec(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if page.has_more && events.is_empty() {
        return Err(ApiError::Malformed("has_more with no events to continue after".into()));
    }
    Ok(EventsPage { events, has_more: page.has_more })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_each_events_bytes() {
        let body = br#"{"object":"list","url":"/v1/events","has_more":true,"data":[
            {"id":"evt_2","object":"event","type":"checkout.session.completed","created":1700000001,"data":{"object":{}}},
            {"id":"evt_1","object":"event","type":"checkout.session.expired","created":1700000000,"data":{"object":{"a":"\u00e9"}}}]}"#;
        let page = parse_events_page(body).unwrap();
        assert!(page.has_more);
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[1].id, "evt_1");
        assert_eq!(page.events[1].created, 1_700_000_000);
        assert_eq!(
            page.events[1].body,
            br#"{"id":"evt_1","object":"event","type":"checkout.session.expired","created":1700000000,"data":{"object":{"a":"\u00e9"}}}"#
        );
    }

    #[test]
    fn a_malformed_page_is_an_error_never_the_end_of_the_list() {
        for body in [
            &b""[..],
            b"<html>",
            br#"{"object":"list","data":[]}"#,
            br#"{"object":"event","data":[],"has_more":false}"#,
            br#"{"object":"list","data":[{"id":"evt_1"}],"has_more":false}"#,
            br#"{"object":"list","data":[],"has_more":true}"#,
            br#"{"error":{"type":"api_error"}}"#,
        ] {
            let error = parse_events_page(body).unwrap_err();
            assert_eq!(error.kind(), "malformed", "{}", String::from_utf8_lossy(body));
        }
    }
}
