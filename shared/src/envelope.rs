//! The message ingest publishes and the worker consumes: the provider's raw body,
//! byte-for-byte, as the AMQP payload, and everything known about it in AMQP headers.
//!
//! | header | meaning |
//! |---|---|
//! | `x-envelope-version` | `1` |
//! | `x-provider` | `stripe` / `toss` |
//! | `x-event-type` | provider event type |
//! | `x-event-key` | dedupe key (Stripe `evt_...`, Toss `eventId` or `sha256:<body hash>`) |
//! | `x-verification` | `signature` (verified at ingest), `unsigned`, or `fetched` (read from the provider's API by reconciliation) |
//! | `x-received-at` | RFC 3339 time ingest received the request |
//! | `x-request-id` | ingest's request id, also in its log lines |
//! | `x-attempt` | deliveries already tried (0 from ingest; the worker raises it on retry) |
//! | `x-dead-reason` | set on messages in the dead-letter queue |
//! | `stripe-signature`, `tosspayments-webhook-*` | the provider's delivery headers, verbatim |
//! | `x-source` | `reconciliation` on events found by the reconciler rather than delivered |
//! | `x-fetched-mac` | on `fetched` events: the MAC that proves the reconciler fetched them ([`crate::verify::fetched`]) |

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::providers::Provider;

mod copy;
pub use copy::copied;

pub const ENVELOPE_VERSION: i64 = 1;
pub const H_VERSION: &str = "x-envelope-version";
pub const H_PROVIDER: &str = "x-provider";
pub const H_EVENT_TYPE: &str = "x-event-type";
pub const H_EVENT_KEY: &str = "x-event-key";
pub const H_VERIFICATION: &str = "x-verification";
pub const H_RECEIVED_AT: &str = "x-received-at";
pub const H_REQUEST_ID: &str = "x-request-id";
pub const H_ATTEMPT: &str = "x-attempt";
pub const H_DEAD_REASON: &str = "x-dead-reason";
pub const H_DEAD_AT: &str = "x-dead-at";
pub const H_LAST_ERROR: &str = "x-last-error";

/// Provider headers carried along verbatim (lower-case names).
pub const DELIVERY_HEADERS: [&str; 6] = [
    "stripe-signature",
    "tosspayments-webhook-transmission-id",
    "tosspayments-webhook-transmission-time",
    "tosspayments-webhook-transmission-retried-count",
    "tosspayments-webhook-signature",
    "user-agent",
];

/// Longest delivery header value ingest carries into a message.
pub const MAX_DELIVERY_HEADER_LEN: usize = 1024;

/// Most bytes of headers a message may carry, and the deepest nesting of tables and arrays in
/// them (the headers table itself is 1). Ingest's headers are flat and under 8 KiB with every
/// delivery header at its cap (a test holds it so); a retry tier adds a few, and the broker's
/// `x-death`, 4 deep. A message past either was not sent by ingest, and its headers are
/// neither read nor copied ([`headers_out_of_bounds`]).
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;
pub const MAX_HEADER_NESTING: usize = 8;

/// Header a dead letter carries instead of headers that were out of bounds: why they were
/// dropped.
pub const H_HEADERS_DROPPED: &str = "x-headers-dropped";

/// Headers a reconciler sets on the events it found through a provider's API; read back into
/// [`EventEnvelope::delivery_headers`]. Ingest never copies them from a request.
pub const RECONCILE_HEADERS: [&str; 2] = [H_SOURCE, H_FETCHED_MAC];
/// Where an event came from when it was not delivered: `reconciliation`.
pub const H_SOURCE: &str = "x-source";
/// The MAC over a `fetched` event ([`crate::verify::fetched`]).
pub const H_FETCHED_MAC: &str = "x-fetched-mac";
/// The value of [`H_SOURCE`] on events the reconciler found.
pub const SOURCE_RECONCILIATION: &str = "reconciliation";

/// What ingest established about a request before queueing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestVerification {
    /// A provider signature was checked and matched.
    Signature,
    /// The provider does not sign this event type (Toss payment events); later checks decide.
    Unsigned,
    /// Read from the provider's API with our key by reconciliation (no webhook signature);
    /// believed only with a valid [`H_FETCHED_MAC`].
    Fetched,
}

impl IngestVerification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Unsigned => "unsigned",
            Self::Fetched => "fetched",
        }
    }
}

/// One queued webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    pub provider: Provider,
    pub event_type: String,
    pub event_key: String,
    pub verification: IngestVerification,
    pub received_at: DateTime<Utc>,
    pub request_id: String,
    pub attempt: u32,
    pub delivery_headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// A message whose headers do not describe a webhook; it cannot be processed, ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message header {header} is {problem}")]
pub struct EnvelopeError {
    pub header: &'static str,
    pub problem: &'static str,
}

/// The headers of one queued webhook, borrowed from the request: ingest builds the AMQP
/// properties from these without an envelope, map or string of its own per request.
/// [`EventEnvelope::properties`] goes through the same function, so the wire format is one.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeHeaders<'a> {
    pub provider: Provider,
    pub event_type: &'a str,
    pub event_key: &'a str,
    pub verification: IngestVerification,
    pub received_at: DateTime<Utc>,
    pub request_id: &'a str,
    pub attempt: u32,
}

impl EnvelopeHeaders<'_> {
    /// AMQP properties: persistent, JSON, message id `<provider>:<event key>`, every header,
    /// and the provider's `delivery_headers` (name, value) as they are.
    pub fn properties<'n, 'v>(
        &self,
        delivery_headers: impl IntoIterator<Item = (&'n str, &'v str)>,
    ) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            headers.insert(ShortString::from(k), v);
        };
        put(H_VERSION, AMQPValue::LongLongInt(ENVELOPE_VERSION));
        put(H_PROVIDER, long_string(self.provider.as_str()));
        put(H_EVENT_TYPE, long_string(self.event_type));
        put(H_EVENT_KEY, long_string(self.event_key));
        put(H_VERIFICATION, long_string(self.verification.as_str()));
        put(H_RECEIVED_AT, long_string(&self.received_at.to_rfc3339_opts(SecondsFormat::Micros, true)));
        put(H_REQUEST_ID, long_string(self.request_id));
        put(H_ATTEMPT, AMQPValue::LongLongInt(i64::from(self.attempt)));
        for (name, value) in delivery_headers {
            put(name, long_string(value));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_timestamp(self.received_at.timestamp().max(0) as u64)
            .with_app_id(ShortString::from("ingest"))
            .with_headers(headers);
        // A message id is a short string (255 bytes); keys are bounded well below that, and an
        // over-long one only loses this convenience copy (x-event-key always has it).
        let mut id = String::with_capacity(self.provider.as_str().len() + 1 + self.event_key.len());
        id.push_str(self.provider.as_str());
        id.push(':');
        id.push_str(self.event_key);
        match ShortString::try_new(id) {
            Ok(id) => properties.with_message_id(id),
            Err(_) => properties,
        }
    }
}

impl EventEnvelope {
    /// AMQP properties: persistent, JSON, message id `<provider>:<event key>`, all headers.
    pub fn properties(&self) -> BasicProperties {
        EnvelopeHeaders {
            provider: self.provider,
            event_type: &self.event_type,
            event_key: &self.event_key,
            verification: self.verification,
            received_at: self.received_at,
            request_id: &self.request_id,
            attempt: self.attempt,
        }
        .properties(self.delivery_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Reads an envelope back from a delivery.
    pub fn from_amqp(properties: &BasicProperties, body: &[u8]) -> Result<Self, EnvelopeError> {
        if let Some(problem) = headers_out_of_bounds(properties) {
            return Err(EnvelopeError { header: "table", problem });
        }
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let text = |h: &'static str| header_str(headers, h).ok_or(EnvelopeError { header: h, problem: "missing" });
        let provider = text(H_PROVIDER)?
            .parse()
            .map_err(|_| EnvelopeError { header: H_PROVIDER, problem: "not a known provider" })?;
        let verification = match text(H_VERIFICATION)?.as_str() {
            "signature" => IngestVerification::Signature,
            "unsigned" => IngestVerification::Unsigned,
            "fetched" => IngestVerification::Fetched,
            _ => return Err(EnvelopeError { header: H_VERIFICATION, problem: "not understood" }),
        };
        let received_at = DateTime::parse_from_rfc3339(&text(H_RECEIVED_AT)?)
            .map_err(|_| EnvelopeError { header: H_RECEIVED_AT, problem: "not RFC 3339" })?
            .with_timezone(&Utc);
        let delivery_headers = DELIVERY_HEADERS
            .iter()
            .chain(RECONCILE_HEADERS.iter())
            .filter_map(|h| header_str(headers, h).map(|v| (h.to_string(), v)))
            .collect();
        Ok(Self {
            provider,
            event_type: text(H_EVENT_TYPE)?,
            event_key: text(H_EVENT_KEY)?,
            verification,
            received_at,
            request_id: header_str(headers, H_REQUEST_ID).unwrap_or_default(),
            attempt: header_int(headers, H_ATTEMPT).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            delivery_headers,
            body: body.to_vec(),
        })
    }
}

/// An AMQP long string.
pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Why the headers of `properties` are past [`MAX_HEADER_NESTING`] or [`MAX_HEADERS_BYTES`], if
/// they are. Walks them without recursion: the recursive code that parses, copies, encodes and
/// drops field tables (amq-protocol's) would overflow a stack on headers nested deep enough.
/// The size counted is their encoded size, exactly for strings, tables and arrays, and 8 bytes
/// for any number or time (an upper bound: it may refuse a little early, never late).
pub fn headers_out_of_bounds(properties: &BasicProperties) -> Option<&'static str> {
    let headers = properties.headers().as_ref()?;
    // Each value still to look at, with the level of the table or array that holds it.
    let mut pending: Vec<(&AMQPValue, usize)> = Vec::new();
    // The outer table's length, and each entry's name (its length byte and bytes).
    let mut bytes = 4 + headers.inner().keys().map(|name| 1 + name.as_str().len()).sum::<usize>();
    pending.extend(headers.inner().values().map(|value| (value, 1)));
    while let Some((value, level)) = pending.pop() {
        bytes += 1; // the value's type
        bytes += match value {
            AMQPValue::FieldTable(table) => {
                if level + 1 > MAX_HEADER_NESTING {
                    return Some("nested more than 8 deep");
                }
                pending.extend(table.inner().values().map(|value| (value, level + 1)));
                4 + table.inner().keys().map(|name| 1 + name.as_str().len()).sum::<usize>()
            }
            AMQPValue::FieldArray(array) => {
                if level + 1 > MAX_HEADER_NESTING {
                    return Some("nested more than 8 deep");
                }
                pending.extend(array.as_slice().iter().map(|value| (value, level + 1)));
                4
            }
            AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
            AMQPValue::ByteArray(data) => 4 + data.as_slice().len(),
            AMQPValue::ShortString(text) => 1 + text.as_str().len(),
            _ => 8, // a number, a time, a decimal or void: at most 8 bytes
        };
        if bytes > MAX_HEADERS_BYTES {
            return Some("larger than 16 KiB");
        }
    }
    None
}

/// A header as text, whichever string type the sender used.
pub fn header_str(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A header as an integer, whichever integer type the sender used.
pub fn header_int(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Copy of `properties` with some headers replaced or added.
pub fn with_headers(
    properties: &BasicProperties,
    changes: impl IntoIterator<Item = (&'static str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (k, v) in changes {
        headers.insert(ShortString::from(k), v);
    }
    properties.clone().with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventEnvelope {
        EventEnvelope {
            provider: Provider::Toss,
            event_type: "PAYMENT_STATUS_CHANGED".into(),
            event_key: "sha256:ab".into(),
            verification: IngestVerification::Unsigned,
            received_at: DateTime::parse_from_rfc3339("2026-01-02T05:46:59.123456Z").unwrap().with_timezone(&Utc),
            request_id: "req-1".into(),
            attempt: 3,
            delivery_headers: [("tosspayments-webhook-transmission-id".to_string(), "whtrans_1".to_string())]
                .into_iter()
                .collect(),
            body: "{\"a\": 1,  \"한\":\"글\"}".as_bytes().to_vec(),
        }
    }

    #[test]
    fn round_trips_through_amqp_properties() {
        let e = sample();
        let props = e.properties();
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some("toss:sha256:ab"));
        assert_eq!(EventEnvelope::from_amqp(&props, &e.body).unwrap(), e);
    }

    #[test]
    fn a_fetched_event_round_trips_with_its_reconciliation_headers() {
        let mut e = sample();
        e.verification = IngestVerification::Fetched;
        e.delivery_headers.insert(H_SOURCE.into(), SOURCE_RECONCILIATION.into());
        e.delivery_headers.insert(H_FETCHED_MAC.into(), "ab".into());
        assert_eq!(EventEnvelope::from_amqp(&e.properties(), &e.body).unwrap(), e);
    }

    #[test]
    fn missing_headers_are_named() {
        let err = EventEnvelope::from_amqp(&BasicProperties::default(), b"{}").unwrap_err();
        assert_eq!(err.header, H_PROVIDER);
        let props = with_headers(&sample().properties(), [(H_PROVIDER, long_string("paypal"))]);
        assert_eq!(EventEnvelope::from_amqp(&props, b"{}").unwrap_err().header, H_PROVIDER);
    }

    /// Headers whose `x-junk` holds a table in a table … `depth` levels below the headers.
    fn nested(depth: usize) -> BasicProperties {
        let mut value = AMQPValue::FieldTable(FieldTable::default());
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert("n".into(), value);
            value = AMQPValue::FieldTable(outer);
        }
        with_headers(&sample().properties(), [("x-junk", value)])
    }

    #[test]
    fn headers_past_the_nesting_or_size_bound_are_out_of_bounds_and_no_envelope() {
        // The headers table is level 1: `x-junk` at level 2 holds `depth - 1` more.
        assert_eq!(headers_out_of_bounds(&sample().properties()), None);
        assert_eq!(headers_out_of_bounds(&nested(MAX_HEADER_NESTING - 1)), None);
        assert_eq!(headers_out_of_bounds(&nested(MAX_HEADER_NESTING)), Some("nested more than 8 deep"));
        // Far past the bound: found at level 9, without walking further.
        assert_eq!(headers_out_of_bounds(&nested(1_000)), Some("nested more than 8 deep"));
        let array = AMQPValue::FieldArray(vec![AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into())].into());
        assert_eq!(headers_out_of_bounds(&with_headers(&sample().properties(), [("x-list", array)])), None);

        let big = |len: usize| with_headers(&sample().properties(), [("x-big", long_string(&"x".repeat(len)))]);
        assert_eq!(headers_out_of_bounds(&big(MAX_HEADERS_BYTES / 2)), None);
        assert_eq!(headers_out_of_bounds(&big(MAX_HEADERS_BYTES)), Some("larger than 16 KiB"));
        let mut many = FieldTable::default();
        for i in 0..MAX_HEADERS_BYTES / 8 {
            many.insert(format!("k{i}").into(), AMQPValue::Boolean(true));
        }
        let wide = with_headers(&sample().properties(), [("x-many", AMQPValue::FieldTable(many))]);
        assert_eq!(headers_out_of_bounds(&wide), Some("larger than 16 KiB"), "names and types count");

        let err = EventEnvelope::from_amqp(&nested(MAX_HEADER_NESTING), b"{}").unwrap_err();
        assert_eq!(err.to_string(), "message header table is nested more than 8 deep");
    }

    #[test]
    fn the_size_counted_is_the_encoded_size() {
        use lapin::protocol::basic::gen_properties;
        let mut table = FieldTable::default();
        table.insert("s".into(), long_string("abc"));
        table.insert("n".into(), AMQPValue::LongLongInt(7));
        let properties = BasicProperties::default().with_headers(table.clone());
        let encoded = cookie_factory::gen_simple(gen_properties(&properties), Vec::new()).unwrap();
        // Encoded: flags (2), then the table: length (4), `s` (1 + 1, type, 4 + 3), `n` (1 + 1, type, 8).
        assert_eq!(encoded.len(), 2 + 4 + (2 + 1 + 7) + (2 + 1 + 8));
        let just_under = |extra: usize| {
            let mut t = table.clone();
            t.insert("x".into(), long_string(&"y".repeat(extra)));
            BasicProperties::default().with_headers(t)
        };
        // 4 + 10 + 11 + (2 + 1 + 4 + extra) bytes of headers: at the bound, and one past it.
        let at = MAX_HEADERS_BYTES - (4 + 10 + 11 + 7);
        assert_eq!(headers_out_of_bounds(&just_under(at)), None);
        assert_eq!(headers_out_of_bounds(&just_under(at + 1)), Some("larger than 16 KiB"));
    }
}
