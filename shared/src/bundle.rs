//! Several webhooks in one message: a version byte and the count, then each webhook's AMQP
//! properties (encoded as AMQP content headers encode them, by `amq-protocol`) and its body,
//! one after another, each behind its length (4 bytes, big-endian).

use lapin::protocol::basic::{gen_properties, parse_properties};
pub use lapin::types::ShortString;
pub use lapin::BasicProperties;

/// The content type that marks a bundle.
pub const CONTENT_TYPE: &str = "application/x-webhook-bundle";

/// Most webhooks one bundle may carry. A worker's transaction holds up to
/// `WORKER_BATCH_SIZE` messages, so up to that many times this many webhooks.
pub const MAX_EVENTS: usize = 64;

pub fn is_bundle(properties: &BasicProperties) -> bool {
    properties.content_type().as_ref().is_some_and(|t| t.as_str() == CONTENT_TYPE)
}

/// The properties of a bundle message: persistent, marked as a bundle.
pub fn properties(count: usize) -> BasicProperties {
    let mut headers = lapin::types::FieldTable::default();
    headers.insert("x-bundle".into(), lapin::types::AMQPValue::LongLongInt(count as i64));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_app_id(ShortString::from("ingest"))
        .with_headers(headers)
}

/// The format's version, its first byte.
const VERSION: u8 = 1;

/// The message body of these webhooks.
pub fn encode<B: AsRef<[u8]>>(entries: &[(BasicProperties, B)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entries.iter().map(|(_, b)| b.as_ref().len() + 512).sum::<usize>());
    out.push(VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (properties, body) in entries {
        let encoded = cookie_factory::gen_simple(gen_properties(properties), Vec::new()).expect("properties encode");
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        let body = body.as_ref();
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// The webhooks of a bundle; `None` when the bytes are not exactly one well-formed bundle of
/// 1 to [`MAX_EVENTS`] webhooks.
pub fn decode(data: &[u8]) -> Option<Vec<(BasicProperties, Vec<u8>)>> {
    fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let end = len.checked_add(4)?;
        let part = data.get(4..end)?;
        *data = &data[end..];
        Some(part)
    }
    let (&version, rest) = data.split_first()?;
    let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if version != VERSION || count == 0 || count > MAX_EVENTS {
        return None;
    }
    let mut data = &rest[4..];
    let mut entries = Vec::with_capacity(count);
    while entries.len() < count {
        let encoded = take(&mut data)?;
        let (rest, properties) = parse_properties(encoded).ok()?;
        if !rest.is_empty() {
            return None;
        }
        let body = take(&mut data)?;
        entries.push((properties, body.to_vec()));
    }
    data.is_empty().then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EnvelopeHeaders;
    use crate::envelope::IngestVerification;
    use crate::Provider;
    use bytes::Bytes;

    fn event(key: &str, body: &[u8]) -> (BasicProperties, Bytes) {
        let properties = EnvelopeHeaders {
            provider: Provider::Stripe,
            event_type: "checkout.session.completed",
            event_key: key,
            verification: IngestVerification::Signature,
            received_at: chrono::Utc::now(),
            request_id: "req",
            attempt: 0,
        }
        .properties([("stripe-signature", "t=1,v1=ab")]);
        (properties, Bytes::copy_from_slice(body))
    }

    #[test]
    fn each_webhook_comes_back_with_its_own_properties_and_bytes() {
        let entries =
            vec![event("evt_1", b"{\"id\":\"evt_1\"}"), event("evt_2", b"\xff\x00 not utf-8"), event("evt_3", b"")];
        let decoded = decode(&encode(&entries)).expect("well-formed");
        assert_eq!(decoded.len(), 3);
        for ((properties, body), (sent_properties, sent_body)) in decoded.iter().zip(&entries) {
            assert_eq!(properties, sent_properties);
            assert_eq!(body.as_slice(), sent_body.as_ref());
        }
        assert!(is_bundle(&properties(3)) && !is_bundle(&entries[0].0));
    }

    #[test]
    fn anything_but_a_whole_bundle_is_refused() {
        let bytes = encode(&[event("evt_1", b"{}"), event("evt_2", b"{}")]);
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "a trailing byte");
        assert_eq!(decode(&[]), None, "empty");
        assert_eq!(decode(&[0xff; 64]), None, "a length past the end");
        let many: Vec<_> = (0..=MAX_EVENTS).map(|i| event(&format!("evt_{i}"), b"{}")).collect();
        assert_eq!(decode(&encode(&many)), None, "more than {MAX_EVENTS} webhooks");
        assert_eq!(decode(&encode(&many[..MAX_EVENTS])).map(|d| d.len()), Some(MAX_EVENTS));
    }
}
