//! A dead letter as read from its queue, and what is shown of it: control characters escaped,
//! Toss's payment `secret` masked ([`crate::shown`]).

use chrono::{DateTime, Utc};
use lapin::message::BasicGetMessage;
use lapin::types::{AMQPValue, FieldTable};
use shared::envelope::{
    header_int, header_str, headers_out_of_bounds, H_ATTEMPT, H_DEAD_AT, H_DEAD_REASON, H_EVENT_KEY, H_EVENT_TYPE,
    H_PROVIDER,
};
use shared::providers::escape_controls;

use super::{DeadLetter, DeadLetterDetail};
use crate::shown;

/// A message read and not yet acknowledged, with what is shown of it.
pub(super) struct Read {
    pub(super) message: BasicGetMessage,
    pub(super) letter: DeadLetter,
}

impl Read {
    pub(super) fn new(message: BasicGetMessage) -> Self {
        // Read where they are: only the top level is looked at. A copy of headers out of
        // bounds (nested thousands deep by someone who may publish) is what would not do.
        let empty = FieldTable::default();
        let headers = message.delivery.properties.headers().as_ref().unwrap_or(&empty);
        let message_id = message.delivery.properties.message_id().as_ref().map(|m| m.to_string());
        let text = |name| header_str(headers, name).map(|v| escape_controls(&v).into_owned());
        let id = text(H_EVENT_KEY)
            .or_else(|| message_id.as_deref().map(|m| escape_controls(m).into_owned()))
            .unwrap_or_else(|| format!("#{}", message.delivery.delivery_tag));
        let reason = text(H_DEAD_REASON).unwrap_or_else(|| death_reason(headers));
        let letter = DeadLetter {
            id,
            provider: text(H_PROVIDER).unwrap_or_default(),
            event_type: text(H_EVENT_TYPE)
                .or_else(|| {
                    message.delivery.properties.kind().as_ref().map(|k| escape_controls(k.as_str()).into_owned())
                })
                .unwrap_or_default(),
            dead_at: header_str(headers, H_DEAD_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            attempts: header_int(headers, H_ATTEMPT).unwrap_or(0),
            reason,
        };
        Self { message, letter }
    }

    pub(super) fn matches_id(&self, id: &str) -> bool {
        let message_id = self.message.delivery.properties.message_id();
        self.letter.id == id
            || message_id.as_ref().is_some_and(|m| m.as_str() == id || escape_controls(m.as_str()) == id)
    }

    pub(super) fn detail(&self) -> DeadLetterDetail {
        let delivery = &self.message.delivery;
        if let Some(why) = headers_out_of_bounds(&delivery.properties) {
            // Shown as text, headers nested that deep would be megabytes of brackets (and
            // formatting them recursion again).
            let headers = vec![("(headers)".to_string(), format!("not shown: {why}"))];
            return DeadLetterDetail { letter: self.letter.clone(), headers, body: shown::body(&delivery.data) };
        }
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|headers| {
                headers
                    .inner()
                    .iter()
                    .map(|(k, v)| {
                        let shown = match v {
                            AMQPValue::LongString(s) => {
                                escape_controls(&String::from_utf8_lossy(s.as_bytes())).into_owned()
                            }
                            other => format!("{other:?}"),
                        };
                        (escape_controls(k.as_str()).into_owned(), shown)
                    })
                    .collect()
            })
            .unwrap_or_default();
        DeadLetterDetail { letter: self.letter.clone(), headers, body: shown::body(&delivery.data) }
    }
}

/// Messages parked by the broker itself (delivery limit) carry `x-death`, not our reason.
fn death_reason(headers: &FieldTable) -> String {
    match headers.inner().get("x-death") {
        Some(_) => "delivery limit exceeded (the message crashed or stalled every worker)".into(),
        None => "unknown".into(),
    }
}
