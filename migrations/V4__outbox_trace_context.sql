-- The W3C trace context of the event that caused a notification, so a notification published
-- by the relay (after its worker died) still joins that event's trace.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text;
