//! A publisher that writes AMQP 0-9-1 frames itself, for messages no client library would send:
//! a `headers` table nested as deeply as the broker's frame size allows. Every AMQP library
//! at hand (lapin's serializer included) encodes a field table recursively, so it would
//! overflow its own stack before the broker ever saw such a message; a hostile publisher has
//! no such trouble. Only what publishing one message needs: PLAIN login, one channel,
//! publisher confirms.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use lapin::uri::AMQPUri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
/// Everything but the table in one level of nesting: an empty field name (its length byte),
/// the type `F` and the inner table's length.
const LEVEL_BYTES: usize = 6;

/// A `headers` table of the long-string entries `top` and one more, named by the empty string,
/// that holds a table that holds a table … `depth` levels in all (the headers table is the
/// first), as deep as the broker's frame size allows: 6 bytes a level, so 21,840 levels in a
/// frame of 128 KiB (RabbitMQ's default `frame_max`). Built from the inside out, without
/// recursion.
pub fn nested_headers(depth: usize, top: &[(&str, &str)]) -> Vec<u8> {
    let mut table: Vec<u8> = 0u32.to_be_bytes().to_vec(); // the innermost, empty table
    for _ in 1..depth.max(1) {
        let mut outer = Vec::with_capacity(table.len() + 4 + LEVEL_BYTES);
        outer.extend_from_slice(&((table.len() + 2) as u32).to_be_bytes());
        outer.extend_from_slice(&[0, b'F']);
        outer.extend_from_slice(&table);
        table = outer;
    }
    if top.is_empty() {
        return table;
    }
    let mut entries = Vec::new();
    for (name, value) in top {
        short_string(&mut entries, name);
        entries.push(b'S');
        entries.extend_from_slice(&(value.len() as u32).to_be_bytes());
        entries.extend_from_slice(value.as_bytes());
    }
    // The nested entry of `table`, after the top ones.
    entries.extend_from_slice(&table[4..]);
    let mut headers = (entries.len() as u32).to_be_bytes().to_vec();
    headers.extend_from_slice(&entries);
    headers
}

/// The deepest nesting ([`nested_headers`] without top entries) whose content header fits a
/// frame of `frame_max` bytes.
pub fn deepest_nesting(frame_max: u32) -> usize {
    // Frame overhead (8), class, weight, body size, flags (14), the innermost table's length
    // (4), the delivery mode (1); then a level for every 6 bytes, over the innermost one.
    (frame_max as usize - 8 - 14 - 4 - 1) / LEVEL_BYTES + 1
}

/// Publishes one persistent message with `headers` (an encoded field table, see
/// [`nested_headers`]) and `body` to `exchange` with `routing_key` on the broker at `url`, and
/// waits for its confirm (mandatory: a message no queue takes is an error). Returns the frame
/// size the broker offered (`frame_max`) once the message is confirmed; an error if the broker
/// returned or refused it, or closed the channel.
pub async fn publish_with_headers(
    url: &str,
    exchange: &str,
    routing_key: &str,
    headers: &[u8],
    body: &[u8],
) -> anyhow::Result<u32> {
    let uri: AMQPUri = url.parse().map_err(|e| anyhow::anyhow!("AMQP URL: {e}"))?;
    let address = format!("{}:{}", uri.authority.host, uri.authority.port);
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&address))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect to {address}"))?;
    let mut link = Link { stream };
    tokio::time::timeout(Duration::from_secs(30), async {
        link.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        link.expect(0, 10, 10).await?; // connection.start

        let mut start_ok = method(10, 11);
        start_ok.extend_from_slice(&0u32.to_be_bytes()); // no client properties
        short_string(&mut start_ok, "PLAIN");
        let response = format!("\0{}\0{}", uri.authority.userinfo.username, uri.authority.userinfo.password);
        start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
        start_ok.extend_from_slice(response.as_bytes());
        short_string(&mut start_ok, "en_US");
        link.send(METHOD, 0, &start_ok).await?;

        let tune = link.expect(0, 10, 30).await?; // connection.tune: channel max, frame max, heartbeat
        ensure!(tune.len() >= 8, "short connection.tune");
        let frame_max = u32::from_be_bytes(tune[2..6].try_into().expect("4 bytes"));
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&tune[0..2]);
        tune_ok.extend_from_slice(&frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats for one publish
        link.send(METHOD, 0, &tune_ok).await?;

        let mut open = method(10, 40);
        short_string(&mut open, &uri.vhost);
        open.extend_from_slice(&[0, 0]); // reserved short string, reserved bit
        link.send(METHOD, 0, &open).await?;
        link.expect(0, 10, 41).await?;

        let mut channel_open = method(20, 10);
        channel_open.push(0);
        link.send(METHOD, 1, &channel_open).await?;
        link.expect(1, 20, 11).await?;
        let mut select = method(85, 10);
        select.push(0);
        link.send(METHOD, 1, &select).await?;
        link.expect(1, 85, 11).await?;

        let mut publish = method(60, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        short_string(&mut publish, exchange);
        short_string(&mut publish, routing_key);
        publish.push(1); // mandatory: an unroutable message comes back
        link.send(METHOD, 1, &publish).await?;
        let mut header = Vec::with_capacity(headers.len() + 15);
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&(0x2000u16 | 0x1000).to_be_bytes()); // headers, delivery mode
        header.extend_from_slice(headers);
        header.push(2); // persistent
        link.send(HEADER, 1, &header).await?;
        link.send(BODY, 1, body).await?;
        let (class, method_id, arguments) = link.next_method(1).await?;
        if (class, method_id) == (60, 50) {
            bail!("the broker returned the message: {}", reply_text(&arguments));
        }
        ensure!((class, method_id) == (60, 80), "the broker did not confirm the message: method {class}.{method_id}");

        let mut close = method(10, 50);
        close.extend_from_slice(&200u16.to_be_bytes());
        short_string(&mut close, "done");
        close.extend_from_slice(&[0, 0, 0, 0]);
        link.send(METHOD, 0, &close).await?;
        let _ = link.expect(0, 10, 51).await;
        Ok(frame_max)
    })
    .await
    .context("the raw publish did not finish within 30 s")?
}

struct Link {
    stream: TcpStream,
}

impl Link {
    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next method frame on `channel` (heartbeats and other channels skipped): its class,
    /// method and arguments.
    async fn next_method(&mut self, channel: u16) -> anyhow::Result<(u16, u16, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.context("the broker closed the connection")?;
            let size = u32::from_be_bytes(head[3..7].try_into().expect("4 bytes")) as usize;
            ensure!(size <= 1 << 20, "a frame of {size} bytes from the broker");
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await?;
            ensure!(payload.pop() == Some(FRAME_END), "a frame without its end marker");
            let on = u16::from_be_bytes([head[1], head[2]]);
            if head[0] != METHOD || (on != channel && on != 0) {
                continue;
            }
            ensure!(payload.len() >= 4, "a short method frame");
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method_id = u16::from_be_bytes([payload[2], payload[3]]);
            if (class, method_id) == (10, 50) || (class, method_id) == (20, 40) {
                bail!(
                    "the broker closed the {}: {}",
                    if class == 10 { "connection" } else { "channel" },
                    reply_text(&payload[4..])
                );
            }
            return Ok((class, method_id, payload[4..].to_vec()));
        }
    }

    async fn expect(&mut self, channel: u16, class: u16, method_id: u16) -> anyhow::Result<Vec<u8>> {
        let (got_class, got_method, arguments) = self.next_method(channel).await?;
        ensure!(
            (got_class, got_method) == (class, method_id),
            "expected method {class}.{method_id}, got {got_class}.{got_method}"
        );
        Ok(arguments)
    }
}

fn method(class: u16, method_id: u16) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method_id.to_be_bytes());
    payload
}

fn short_string(out: &mut Vec<u8>, text: &str) {
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// The reply text of a `close` (after its reply code).
fn reply_text(arguments: &[u8]) -> String {
    let Some(&len) = arguments.get(2) else { return String::new() };
    String::from_utf8_lossy(arguments.get(3..3 + len as usize).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use lapin::protocol::basic::parse_properties;
    use lapin::types::AMQPValue;

    use super::*;

    #[test]
    fn nested_headers_are_what_amq_protocol_reads_as_tables_in_tables() {
        for depth in [1, 2, 6] {
            let mut encoded = 0x2000u16.to_be_bytes().to_vec(); // property flags: headers only
            encoded.extend_from_slice(&nested_headers(depth, &[]));
            let (rest, properties) = parse_properties(encoded.as_slice()).expect("parses");
            assert!(rest.is_empty());
            let mut table = properties.headers().clone().expect("headers");
            let mut levels = 0;
            while let Some(AMQPValue::FieldTable(inner)) = table.inner().get("").cloned() {
                assert_eq!(table.inner().len(), 1);
                table = inner;
                levels += 1;
            }
            assert!(table.inner().is_empty(), "the innermost table is empty");
            assert_eq!(levels + 1, depth, "the headers table and those it nests");
        }
        let mut encoded = 0x2000u16.to_be_bytes().to_vec();
        encoded.extend_from_slice(&nested_headers(3, &[("x-event-key", "evt_1"), ("x-dead-reason", "why")]));
        let (rest, properties) = parse_properties(encoded.as_slice()).expect("parses");
        assert!(rest.is_empty());
        let headers = properties.headers().clone().expect("headers");
        assert_eq!(headers.inner().len(), 3);
        assert_eq!(shared::envelope::header_str(&headers, "x-event-key").as_deref(), Some("evt_1"));
        assert!(matches!(headers.inner().get(""), Some(AMQPValue::FieldTable(_))));
    }

    #[test]
    fn the_deepest_nesting_fills_a_frame_and_one_more_level_would_not_fit() {
        let header_frame = |depth: usize| 8 + 14 + nested_headers(depth, &[]).len() + 1;
        for frame_max in [4096, 131_072] {
            let depth = deepest_nesting(frame_max);
            assert!(header_frame(depth) <= frame_max as usize);
            assert!(header_frame(depth + 1) > frame_max as usize);
        }
    }
}
