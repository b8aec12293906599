//! The message envelope decoder (`EventEnvelope::from_amqp`), two ways:
//! - any headers (names from the envelope's own and arbitrary ones, values of every AMQP type,
//!   nested) and body: decoded or refused without a panic;
//! - any envelope ingest could build: its AMQP properties decode back to the same envelope
//!   (or, with headers past `MAX_HEADERS_BYTES`, which ingest's caps never reach, are refused).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use chrono::{DateTime, SubsecRound, Utc};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;
use shared::envelope::*;
use shared::Provider;

/// Header names the decoder looks for; arbitrary names are mixed in.
const NAMES: [&str; 14] = [
    H_VERSION,
    H_PROVIDER,
    H_EVENT_TYPE,
    H_EVENT_KEY,
    H_VERIFICATION,
    H_RECEIVED_AT,
    H_REQUEST_ID,
    H_ATTEMPT,
    "stripe-signature",
    "tosspayments-webhook-transmission-id",
    "tosspayments-webhook-transmission-time",
    "tosspayments-webhook-transmission-retried-count",
    "tosspayments-webhook-signature",
    "x-death",
];

#[derive(Arbitrary, Debug)]
enum Value {
    Text(String),
    Bytes(Vec<u8>),
    Short(String),
    LongLong(i64),
    Long(i32),
    ULong(u32),
    ShortInt(i16),
    UShortInt(u16),
    Tiny(i8),
    UTiny(u8),
    Bool(bool),
    Double(f64),
    Timestamp(u64),
    Array(Vec<Value>),
    Table(Vec<(Name, Value)>),
    Void,
    /// Values the decoder takes: a provider, a verification level, a time.
    Known(u8),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

impl Name {
    fn get(&self) -> Option<ShortString> {
        match self {
            Name::Known(i) => Some(NAMES[usize::from(*i) % NAMES.len()].into()),
            Name::Other(s) => ShortString::try_new(s.clone()).ok(),
        }
    }
}

fn amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Text(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Bytes(b) => AMQPValue::LongString(LongString::from(b.clone())),
        Value::Short(s) => ShortString::try_new(s.clone()).map(AMQPValue::ShortString).unwrap_or(AMQPValue::Void),
        Value::LongLong(v) => AMQPValue::LongLongInt(*v),
        Value::Long(v) => AMQPValue::LongInt(*v),
        Value::ULong(v) => AMQPValue::LongUInt(*v),
        Value::ShortInt(v) => AMQPValue::ShortInt(*v),
        Value::UShortInt(v) => AMQPValue::ShortUInt(*v),
        Value::Tiny(v) => AMQPValue::ShortShortInt(*v),
        Value::UTiny(v) => AMQPValue::ShortShortUInt(*v),
        Value::Bool(v) => AMQPValue::Boolean(*v),
        Value::Double(v) => AMQPValue::Double(*v),
        Value::Timestamp(v) => AMQPValue::Timestamp(*v),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(items.iter().map(amqp).collect::<Vec<_>>())),
        Value::Table(entries) => AMQPValue::FieldTable(table(entries)),
        Value::Void => AMQPValue::Void,
        Value::Known(i) => {
            let text =
                ["stripe", "toss", "signature", "unsigned", "2026-01-02T05:46:59.123456Z", "2026-01-02T14:46:59+09:00"]
                    [usize::from(*i) % 6];
            long_string(text)
        }
    }
}

fn table(entries: &[(Name, Value)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        if let Some(name) = name.get() {
            table.insert(name, amqp(value));
        }
    }
    table
}

/// An envelope as ingest builds one.
fn envelope(u: &mut Unstructured<'_>) -> arbitrary::Result<EventEnvelope> {
    let micros = u.int_in_range(0..=253_402_300_799_999_999i64)?; // up to 9999-12-31
    let received_at = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default().trunc_subsecs(6);
    let mut delivery_headers = BTreeMap::new();
    for name in DELIVERY_HEADERS {
        if u.arbitrary()? {
            delivery_headers.insert(name.to_string(), u.arbitrary::<String>()?);
        }
    }
    Ok(EventEnvelope {
        provider: if u.arbitrary()? { Provider::Stripe } else { Provider::Toss },
        event_type: u.arbitrary()?,
        event_key: u.arbitrary()?,
        verification: if u.arbitrary()? { IngestVerification::Signature } else { IngestVerification::Unsigned },
        received_at,
        request_id: u.arbitrary()?,
        attempt: u.arbitrary()?,
        delivery_headers,
        body: u.arbitrary()?,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(round_trip) = u.arbitrary::<bool>() else { return };
    if round_trip {
        let Ok(envelope) = envelope(&mut u) else { return };
        let properties = envelope.properties();
        let decoded = EventEnvelope::from_amqp(&properties, &envelope.body);
        // Ingest's caps keep its headers within the bounds; arbitrary lengths may pass them.
        match headers_out_of_bounds(&properties) {
            None => assert_eq!(decoded.as_ref(), Ok(&envelope), "what ingest publishes, the worker reads back"),
            Some(_) => assert!(decoded.is_err(), "headers past the bounds are no envelope"),
        }
    } else {
        let Ok(headers) = u.arbitrary::<Option<Vec<(Name, Value)>>>() else { return };
        let body = u.take_rest();
        let mut properties = BasicProperties::default();
        if let Some(entries) = &headers {
            properties = properties.with_headers(table(entries));
        }
        if let Ok(envelope) = EventEnvelope::from_amqp(&properties, body) {
            assert_eq!(envelope.body, body);
        }
    }
});
