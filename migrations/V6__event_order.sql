-- The provider's date (Stripe `created`, Toss `createdAt`) of the last event applied to each
-- payment. Events arrive in any order; one dated before this changes nothing, so a payment's
-- final status does not depend on the order its events were delivered in. NULL until an event
-- with a date is applied (and for payments changed before this column existed): then the
-- state machine alone decides, as before.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS last_event_at timestamptz;
