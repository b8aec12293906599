//! The batch transaction's rows, column by column: each statement `unnest`s arrays, one per
//! column, so a batch of any size is one statement per table ([`super::write`]).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::stored;
use super::write::{Entry, Work};
use crate::domain::decide::{NewNotification, PaymentUpdate};
use crate::domain::notification::payload_digest;
use crate::domain::outcome::{HandleError, Outcome, Verification};
use crate::domain::retry::dispose;

/// The inbox rows of a batch, column by column (the statement `unnest`s them).
#[derive(Default)]
pub(super) struct InboxColumns<'a> {
    pub(super) provider: Vec<&'a str>,
    pub(super) event_key: Vec<&'a str>,
    pub(super) event_type: Vec<&'a str>,
    pub(super) order_id: Vec<Option<&'a str>>,
    pub(super) status: Vec<&'static str>,
    pub(super) detail: Vec<Option<String>>,
    pub(super) attempts: Vec<i32>,
    pub(super) duplicates: Vec<i32>,
    pub(super) last_error: Vec<Option<String>>,
    pub(super) verification: Vec<Option<&'static str>>,
    pub(super) payload: Vec<Cow<'a, str>>,
    pub(super) request_id: Vec<&'a str>,
    pub(super) received_at: Vec<DateTime<Utc>>,
}

impl<'a> InboxColumns<'a> {
    pub(super) fn from_results(
        entries: &'a [Entry<'a>],
        results: &'a [Result<Outcome, HandleError>],
        max_attempts: u32,
    ) -> Self {
        let mut c = Self::default();
        for (entry, result) in entries.iter().zip(results) {
            let envelope = entry.envelope;
            let attempt = envelope.attempt + 1;
            let order_from_event = match entry.work {
                Work::Decide { event, .. } => event.order_id(),
                Work::Failed { order_id, .. } => order_id,
            };
            let (status, detail, last_error, verification, order_id, duplicates) = match result {
                Ok(Outcome::Applied { from, to, order_id, verification, .. }) => (
                    "applied",
                    Some(format!("{from} -> {to}")),
                    None,
                    Some(verification.as_str()),
                    Some(order_id.as_str()),
                    entry.copies,
                ),
                Ok(Outcome::Ignored { reason, order_id, verification }) => (
                    "ignored",
                    Some(reason.clone()),
                    None,
                    Some(verification.as_str()),
                    order_id.as_deref().or(order_from_event),
                    entry.copies,
                ),
                Ok(Outcome::Unverified { reason, order_id }) => (
                    "unverified",
                    Some(reason.clone()),
                    None,
                    Some(Verification::None.as_str()),
                    order_id.as_deref().or(order_from_event),
                    entry.copies,
                ),
                // Already final: the statement keeps the row and counts this copy.
                Ok(Outcome::Duplicate) => ("ignored", None, None, None, order_from_event, entry.copies),
                Err(error) => {
                    let text = error.to_string();
                    let disposition = dispose(Some((error.failure(), &text)), attempt, max_attempts);
                    let (status, recorded) = disposition.inbox_record(&text).expect("a failure is not acked");
                    (status, None, Some(recorded.to_string()), None, order_from_event, 0)
                }
            };
            c.provider.push(envelope.provider.as_str());
            c.event_key.push(&envelope.event_key);
            c.event_type.push(entry.event_type());
            c.order_id.push(order_id);
            c.status.push(status);
            c.detail.push(detail.map(|d| stored::text(d).into_owned()));
            c.attempts.push(i32::try_from(attempt).unwrap_or(i32::MAX));
            c.duplicates.push(duplicates);
            c.last_error.push(last_error.map(|e| stored::text(e).into_owned()));
            c.verification.push(verification);
            c.payload.push(stored::inbox_payload(envelope.provider, &envelope.body));
            c.request_id.push(&envelope.request_id);
            c.received_at.push(envelope.received_at);
        }
        c
    }

    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 13] {
        [
            &self.provider,
            &self.event_key,
            &self.event_type,
            &self.order_id,
            &self.status,
            &self.detail,
            &self.attempts,
            &self.duplicates,
            &self.last_error,
            &self.verification,
            &self.payload,
            &self.request_id,
            &self.received_at,
        ]
    }
}

pub(super) struct PaymentColumns {
    pub(super) id: Vec<Uuid>,
    pub(super) status: Vec<&'static str>,
    pub(super) paid: Vec<bool>,
    pub(super) metadata: Vec<String>,
    pub(super) provider: Vec<Option<String>>,
    pub(super) provider_payment_id: Vec<Option<String>>,
    pub(super) deposit_secret: Vec<Option<String>>,
    pub(super) last_event_at: Vec<Option<DateTime<Utc>>>,
}

impl From<&Vec<PaymentUpdate>> for PaymentColumns {
    fn from(updates: &Vec<PaymentUpdate>) -> Self {
        Self {
            id: updates.iter().map(|u| u.id).collect(),
            status: updates.iter().map(|u| u.status.as_str()).collect(),
            paid: updates.iter().map(|u| u.paid).collect(),
            metadata: updates.iter().map(|u| stored::jsonb(&u.metadata).into_owned()).collect(),
            provider: updates.iter().map(|u| u.provider.clone()).collect(),
            provider_payment_id: updates.iter().map(|u| u.provider_payment_id.clone()).collect(),
            deposit_secret: updates.iter().map(|u| u.deposit_secret.clone()).collect(),
            last_event_at: updates.iter().map(|u| u.last_event_at).collect(),
        }
    }
}

pub(super) struct NotificationColumns<'a> {
    pub(super) id: Vec<Uuid>,
    pub(super) user_id: Vec<Uuid>,
    pub(super) title: Vec<Cow<'a, str>>,
    pub(super) message: Vec<Cow<'a, str>>,
    pub(super) kind: Vec<&'a str>,
    pub(super) link: Vec<&'a str>,
    pub(super) payment_id: Vec<Uuid>,
    pub(super) payload: Vec<&'a str>,
    /// Of each payload, for delivery to check the message it is handed against.
    pub(super) payload_sha256: Vec<Vec<u8>>,
    pub(super) traceparent: Vec<Option<&'a str>>,
}

impl<'a> From<&'a Vec<NewNotification>> for NotificationColumns<'a> {
    fn from(all: &'a Vec<NewNotification>) -> Self {
        Self {
            id: all.iter().map(|n| n.id).collect(),
            user_id: all.iter().map(|n| n.user_id).collect(),
            title: all.iter().map(|n| stored::text(n.title.as_str())).collect(),
            message: all.iter().map(|n| stored::text(n.message.as_str())).collect(),
            kind: all.iter().map(|n| n.kind.as_str()).collect(),
            link: all.iter().map(|n| n.link.as_str()).collect(),
            payment_id: all.iter().map(|n| n.payment_id).collect(),
            payload: all.iter().map(|n| n.payload.as_str()).collect(),
            payload_sha256: all.iter().map(|n| payload_digest(n.payload.as_bytes()).to_vec()).collect(),
            traceparent: all.iter().map(|n| n.traceparent.as_deref()).collect(),
        }
    }
}
