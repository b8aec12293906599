//! Several webhooks in one message: a version byte and the count, then each webhook's AMQP
//! properties (encoded as AMQP content headers encode them, by `amq-protocol`) and its body,
//! one after another, each behind its length (4 bytes, big-endian).

use lapin::protocol::basic::{gen_properties, parse_properties};

use crate::envelope::{MAX_HEADERS_BYTES, MAX_HEADER_NESTING};
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

/// Longest AMQP properties one webhook of a bundle may carry, and its headers nest at most
/// [`MAX_HEADER_NESTING`] deep, as any message's may. amq-protocol's parser follows nesting by
/// recursion, so deeper nesting, a few bytes a level, would overflow a thread's stack: it is
/// refused before that parser sees it.
pub const MAX_PROPERTIES_BYTES: usize = MAX_HEADERS_BYTES;

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
        if encoded.len() > MAX_PROPERTIES_BYTES || !headers_nest_within(encoded, MAX_HEADER_NESTING) {
            return None;
        }
        let (rest, properties) = parse_properties(encoded).ok()?;
        if !rest.is_empty() {
            return None;
        }
        let body = take(&mut data)?;
        entries.push((properties, body.to_vec()));
    }
    data.is_empty().then_some(entries)
}

/// Whether the headers table of these encoded basic properties (if any) nests tables and
/// arrays at most `max` deep; `false` for anything malformed on the way. Reads without
/// recursion: the AMQP field types as amq-protocol and RabbitMQ read them.
fn headers_nest_within(properties: &[u8], max: usize) -> bool {
    const CONTENT_TYPE: u16 = 0x8000;
    const CONTENT_ENCODING: u16 = 0x4000;
    const HEADERS: u16 = 0x2000;
    fn long_len(data: &mut &[u8]) -> Option<usize> {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        *data = &data[4..];
        Some(len)
    }
    fn split<'a>(data: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        let part = data.get(..len)?;
        *data = &data[len..];
        Some(part)
    }
    let scan = || -> Option<bool> {
        let mut data = properties;
        let flags = u16::from_be_bytes(split(&mut data, 2)?.try_into().ok()?);
        for flag in [CONTENT_TYPE, CONTENT_ENCODING] {
            if flags & flag != 0 {
                let len = usize::from(*split(&mut data, 1)?.first()?);
                split(&mut data, len)?;
            }
        }
        if flags & HEADERS == 0 {
            return Some(true);
        }
        let len = long_len(&mut data)?;
        // Each level: what is left of it, and whether its entries are named (a table).
        let mut levels: Vec<(&[u8], bool)> = vec![(split(&mut data, len)?, true)];
        while let Some((rest, named)) = levels.last_mut() {
            if rest.is_empty() {
                levels.pop();
                continue;
            }
            let named = *named;
            let mut here: &[u8] = rest;
            if named {
                let len = usize::from(*split(&mut here, 1)?.first()?);
                split(&mut here, len)?;
            }
            let kind = *split(&mut here, 1)?.first()?;
            let nested = match kind {
                b'V' => None,
                b't' | b'b' | b'B' => split(&mut here, 1).map(|_| None)?,
                b's' | b'U' | b'u' => split(&mut here, 2).map(|_| None)?,
                b'I' | b'i' | b'f' => split(&mut here, 4).map(|_| None)?,
                b'D' => split(&mut here, 5).map(|_| None)?,
                b'L' | b'l' | b'd' | b'T' => split(&mut here, 8).map(|_| None)?,
                b'S' | b'x' => {
                    let len = long_len(&mut here)?;
                    split(&mut here, len).map(|_| None)?
                }
                b'A' | b'F' => {
                    let len = long_len(&mut here)?;
                    Some((split(&mut here, len)?, kind == b'F'))
                }
                _ => return Some(false),
            };
            *rest = here;
            if let Some(inner) = nested {
                if levels.len() >= max {
                    return Some(false);
                }
                levels.push(inner);
            }
        }
        Some(true)
    };
    scan().unwrap_or(false)
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

    /// A bundle of one webhook whose properties are `size` bytes: a header table holding
    /// arrays nested as deep as fits (5 bytes a level), the worst a parser following them by
    /// recursion can meet.
    fn nested(size: usize) -> Vec<u8> {
        let levels = (size - 2 - 4 - 2) / 5;
        let mut value = Vec::new(); // the innermost array's content: nothing
        for _ in 0..levels {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
            outer.extend_from_slice(&value);
            value = outer;
        }
        let mut entry = vec![1, b'x'];
        entry.extend_from_slice(&value);
        let mut properties = 0x2000u16.to_be_bytes().to_vec(); // headers only
        properties.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        properties.extend_from_slice(&entry);
        properties.resize(size, 0);
        let mut bundle = vec![VERSION];
        bundle.extend_from_slice(&1u32.to_be_bytes());
        bundle.extend_from_slice(&(properties.len() as u32).to_be_bytes());
        bundle.extend_from_slice(&properties);
        bundle.extend_from_slice(&0u32.to_be_bytes());
        bundle
    }

    #[test]
    fn headers_nested_deeper_than_a_worker_threads_stack_takes_are_refused_unparsed() {
        // As deep as fits the size cap: without the nesting check, parsing this overflows a
        // 2 MiB stack (Tokio's worker threads have 2 MiB) and the process aborts.
        let deepest = nested(MAX_PROPERTIES_BYTES);
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || assert_eq!(decode(&deepest), None, "refused before it is parsed"))
            .unwrap()
            .join()
            .expect("refused without overflowing the stack");
        assert_eq!(decode(&nested(MAX_PROPERTIES_BYTES + 1)), None, "properties past the size cap");
    }

    #[test]
    fn headers_nested_within_the_limit_are_decoded() {
        use lapin::types::{AMQPValue, FieldArray, FieldTable};
        let mut value = AMQPValue::LongString("inner".into());
        for level in 0..MAX_HEADER_NESTING - 1 {
            value = if level % 2 == 0 {
                AMQPValue::FieldArray(FieldArray::from(vec![value, AMQPValue::Boolean(true), AMQPValue::Double(1.5)]))
            } else {
                let mut table = FieldTable::default();
                table.insert("t".into(), value);
                table.insert("n".into(), AMQPValue::LongLongInt(-1));
                AMQPValue::FieldTable(table)
            };
        }
        let mut headers = FieldTable::default();
        headers.insert("deep".into(), value.clone());
        headers.insert("flat".into(), AMQPValue::ShortInt(7));
        let within = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(headers)
            .with_message_id("m".into());
        let decoded = decode(&encode(&[(within.clone(), b"{}")])).expect("within the limit");
        assert_eq!(decoded[0].0, within);
        let mut deeper = FieldTable::default();
        deeper.insert("deeper".into(), AMQPValue::FieldArray(FieldArray::from(vec![value])));
        let past = BasicProperties::default().with_headers(deeper);
        assert_eq!(decode(&encode(&[(past, b"{}")])), None, "one level more");
    }

    #[test]
    fn the_largest_properties_ingest_can_build_fit_the_cap() {
        use crate::envelope::{EventEnvelope, DELIVERY_HEADERS, MAX_DELIVERY_HEADER_LEN};
        use crate::providers::{MAX_EVENT_KEY_LEN, MAX_EVENT_TYPE_LEN};
        let envelope = EventEnvelope {
            provider: Provider::Stripe,
            event_type: "t".repeat(MAX_EVENT_TYPE_LEN),
            event_key: "k".repeat(MAX_EVENT_KEY_LEN),
            verification: IngestVerification::Signature,
            received_at: chrono::Utc::now(),
            request_id: "r".repeat(64),
            attempt: u32::MAX,
            delivery_headers: DELIVERY_HEADERS
                .iter()
                .map(|n| (n.to_string(), "v".repeat(MAX_DELIVERY_HEADER_LEN)))
                .collect(),
            body: Vec::new(),
        };
        // A bundle of one webhook with an empty body is its properties and 13 bytes.
        let size = encode(&[(envelope.properties(), b"")]).len() - 13;
        assert!(size <= MAX_PROPERTIES_BYTES / 2, "{size} bytes of properties");
    }
}
