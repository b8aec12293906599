//! The bundle decoder (`shared::bundle::decode`), which the worker runs on every message marked
//! as a bundle (the broker is not a trust boundary), two ways:
//! - any bytes: refused or decoded without a panic, and what decodes holds 1 to `MAX_EVENTS`
//!   webhooks that encode and decode back to the same bytes;
//! - any webhooks ingest could bundle (properties with headers of every kind ingest writes,
//!   any bodies): they decode back to the same webhooks, and no proper prefix of the bundle nor
//!   the bundle with a byte more decodes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;
use shared::bundle::{decode, encode, MAX_EVENTS, MAX_PROPERTIES_BYTES};

#[derive(Arbitrary, Debug)]
struct Webhook {
    persistent: bool,
    content_type: Option<String>,
    message_id: Option<String>,
    headers: Vec<(String, Header)>,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Header {
    Text(Vec<u8>),
    Int(i64),
    Flag(bool),
}

fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s.to_owned()).ok()
}

impl Webhook {
    fn properties(&self) -> BasicProperties {
        let mut properties = BasicProperties::default();
        if self.persistent {
            properties = properties.with_delivery_mode(2);
        }
        if let Some(t) = self.content_type.as_deref().and_then(short) {
            properties = properties.with_content_type(t);
        }
        if let Some(id) = self.message_id.as_deref().and_then(short) {
            properties = properties.with_message_id(id);
        }
        if !self.headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in &self.headers {
                let Some(name) = short(name) else { continue };
                let value = match value {
                    Header::Text(bytes) => AMQPValue::LongString(LongString::from(bytes.clone())),
                    Header::Int(v) => AMQPValue::LongLongInt(*v),
                    Header::Flag(v) => AMQPValue::Boolean(*v),
                };
                table.insert(name, value);
            }
            properties = properties.with_headers(table);
        }
        properties
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(built) = u.arbitrary::<bool>() else { return };
    if built {
        let Ok(webhooks) = u.arbitrary::<Vec<Webhook>>() else { return };
        if webhooks.is_empty() || webhooks.len() > MAX_EVENTS {
            return;
        }
        let entries: Vec<(BasicProperties, Vec<u8>)> =
            webhooks.iter().map(|w| (w.properties(), w.body.clone())).collect();
        let bytes = encode(&entries);
        // A bundle of one webhook with an empty body is its properties and 13 bytes.
        let oversized = entries.iter().any(|(p, _)| encode(&[(p.clone(), b"")]).len() - 13 > MAX_PROPERTIES_BYTES);
        if oversized {
            assert_eq!(decode(&bytes), None, "properties past the cap are refused");
            return;
        }
        assert_eq!(decode(&bytes).as_ref(), Some(&entries), "what ingest bundles, the worker opens");
        let cut = u.int_in_range(0..=bytes.len() - 1).unwrap_or(0);
        assert_eq!(decode(&bytes[..cut]), None, "a bundle cut at {cut} of {} bytes", bytes.len());
        let mut longer = bytes;
        longer.push(u.arbitrary().unwrap_or(0));
        assert_eq!(decode(&longer), None, "a bundle with a byte after its end");
    } else {
        let Some(entries) = decode(u.take_rest()) else { return };
        assert!((1..=MAX_EVENTS).contains(&entries.len()));
        // Compared as bytes: a header may hold a NaN, which is not equal to itself.
        let again = encode(&entries);
        assert_eq!(decode(&again).map(|e| encode(&e)), Some(again));
    }
});
