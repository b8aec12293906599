//! One delivery of a batch, as it goes through the pipeline: what was read from it, what was
//! confirmed about it, then its outcome, its settlement and the label it is counted under.

use lapin::message::Delivery;
use shared::envelope::{header_str, EnvelopeError, EventEnvelope};
use shared::traces;
use shared::verify::message::{check_message, WebhookSecrets};
use shared::Provider;

use super::conclude::Counted;
use super::settle::Settlement;
use crate::domain::event::{Confirmed, IncomingEvent};
use crate::domain::ordering::believed_time;
use crate::domain::outcome::{HandleError, Outcome};
use crate::domain::screen::screen;
use crate::store::write::{Entry, Work};

/// One delivery of the batch.
pub struct Item {
    pub delivery: Delivery,
    /// `Err`: the headers do not describe a webhook; it is dead-lettered, nothing is recorded.
    pub envelope: Result<EventEnvelope, EnvelopeError>,
    pub event: Result<IncomingEvent, HandleError>,
    pub confirmed: Confirmed,
    /// The order the event names, kept when confirming it failed.
    pub order_id: Option<String>,
    /// An earlier delivery of the same event in this batch; this one follows its outcome.
    pub copy_of: Option<usize>,
    pub copies: i32,
    /// The delivery's span: its log lines, and its part of the trace ingest started.
    pub span: tracing::Span,
    /// That trace, to carry on to the notification it causes (when traces are exported).
    pub traceparent: Option<String>,
    /// What the attempt produced, once the batch's transaction is done.
    pub outcome: Option<Result<Outcome, HandleError>>,
    /// What to do with the delivery, once concluded.
    pub settlement: Option<Settlement>,
    /// The `worker_events_total` outcome it is counted under once it is settled as asked.
    pub counted: Option<Counted>,
}

impl Item {
    /// Reads a delivery and checks what its bytes prove ([`check_message`]): nothing in its
    /// headers is believed that the body and the configured secrets do not confirm. Then
    /// screens it for hostile bytes ([`screen`]), which win over unverifiable: such a message is
    /// recorded (with its values escaped) as well as dead-lettered.
    pub fn read(delivery: Delivery, secrets: &WebhookSecrets) -> Self {
        let mut envelope = EventEnvelope::from_amqp(&delivery.properties, &delivery.data);
        let mut confirmed = Confirmed::default();
        let mut event = match &envelope {
            Ok(envelope) => match check_message(envelope, secrets) {
                Ok(checked) => {
                    confirmed.signature = checked.signed;
                    confirmed.fetched = checked.fetched;
                    IncomingEvent::parse(envelope).map_err(|e| HandleError::Permanent(e.0))
                }
                Err(unverifiable) => Err(HandleError::Unverifiable(unverifiable.0)),
            },
            Err(error) => Err(HandleError::Permanent(error.to_string())),
        };
        // Before anything of the delivery is used: a control character in an identifier
        // would make Postgres refuse the whole batch.
        let order_id = screen(&mut envelope, &mut event);
        if let (Ok(envelope), Ok(event)) = (&envelope, &event) {
            warn_of_a_date_from_the_future(envelope, event);
        }
        let span = match &envelope {
            Ok(envelope) => tracing::info_span!(
                "delivery",
                provider = envelope.provider.as_str(),
                event_id = %envelope.event_key,
                event_type = %envelope.event_type,
                request_id = %envelope.request_id,
                attempt = envelope.attempt + 1,
            ),
            Err(_) => tracing::info_span!("delivery"),
        };
        let headers = delivery.properties.headers().as_ref();
        if let Some(parent) = headers.and_then(|h| header_str(h, traces::TRACEPARENT)) {
            traces::continue_trace(&span, &parent);
        }
        let traceparent = traces::traceparent(&span);
        Self {
            delivery,
            envelope,
            event,
            confirmed,
            order_id,
            copy_of: None,
            copies: 0,
            span,
            traceparent,
            outcome: None,
            settlement: None,
            counted: None,
        }
    }

    pub fn attempt(&self) -> u32 {
        self.envelope.as_ref().map_or(0, |e| e.attempt) + 1
    }

    /// The envelope of a message whose key and type its body proved; an unverifiable message
    /// has none, so it never touches the inbox nor stands for another delivery of "its" key.
    pub fn proven_envelope(&self) -> Option<&EventEnvelope> {
        match (&self.envelope, &self.event) {
            (Ok(_), Err(HandleError::Unverifiable(_))) => None,
            (Ok(envelope), _) => Some(envelope),
            (Err(_), _) => None,
        }
    }

    /// Its part in the batch's transaction: every proven event that is not a copy of an
    /// earlier one in the batch.
    pub fn entry(&self) -> Option<Entry<'_>> {
        if self.copy_of.is_some() {
            return None;
        }
        let envelope = self.proven_envelope()?;
        let work = match &self.event {
            Ok(event) => Work::Decide { event, confirmed: &self.confirmed },
            Err(error) => Work::Failed { event_type: &envelope.event_type, order_id: self.order_id.as_deref(), error },
        };
        Some(Entry { envelope, work, copies: self.copies, traceparent: self.traceparent.as_deref() })
    }

    /// An unsigned Toss payment event, not a copy: the Toss API is asked before it applies.
    pub fn wants_fetch_back(&self) -> bool {
        self.copy_of.is_none()
            && !self.confirmed.signature
            && self.envelope.as_ref().is_ok_and(|e| e.provider == Provider::Toss)
            && self.event.as_ref().is_ok_and(|e| e.unsigned_payment_event)
    }
}

/// An event dated further after its receipt than clocks differ is decided as one without a
/// date ([`believed_time`]); said here, outside the transaction, once per delivery.
fn warn_of_a_date_from_the_future(envelope: &EventEnvelope, event: &IncomingEvent) {
    if let Some(time) = event.provider_time {
        if believed_time(Some(time), envelope.received_at).is_none() {
            let received_at = envelope.received_at;
            tracing::warn!(event_id = %envelope.event_key, %time, %received_at, "event dated after it was received; its date is not used to order it");
        }
    }
}
