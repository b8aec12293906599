-- Tables the original guide queries keep its names and columns (payments, notifications);
-- bookings tells a payment whom to notify; webhook_events is the inbox that makes each event
-- take effect once; outbox carries notifications to the broker after their transaction commits.

CREATE TABLE IF NOT EXISTS bookings (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    trainer_id  uuid NOT NULL,
    customer_id uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS payments (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id            text NOT NULL UNIQUE,
    booking_id          uuid REFERENCES bookings (id),
    provider            text CHECK (provider IN ('stripe', 'toss')),
    -- As the provider counts it: Stripe in minor units (cents), Toss as totalAmount.
    amount              numeric,
    currency            text,
    payment_status      text NOT NULL DEFAULT 'pending' CHECK (payment_status IN
                            ('pending', 'waiting_for_deposit', 'paid', 'failed', 'expired',
                             'canceled', 'partially_canceled')),
    -- payment_metadata->'webhook' holds the last applied webhook.
    payment_metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Stripe payment_intent id or Toss paymentKey, learned from events (or stored by the app).
    provider_payment_id text,
    -- Toss payment `secret`, compared with DEPOSIT_CALLBACK.secret.
    deposit_secret      text,
    paid_at             timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payments_provider_payment_id ON payments (provider_payment_id)
    WHERE provider_payment_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS notifications (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL,
    title       text NOT NULL,
    message     text NOT NULL,
    type        text NOT NULL,
    link        text,
    is_read     boolean NOT NULL DEFAULT false,
    payment_id  uuid REFERENCES payments (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user_id, created_at DESC);

CREATE TABLE IF NOT EXISTS webhook_events (
    id               bigserial PRIMARY KEY,
    provider         text NOT NULL,
    -- Stripe event.id; Toss eventId, else sha256 of the raw body.
    event_key        text NOT NULL,
    event_type       text NOT NULL,
    order_id         text,
    -- processing: inside an open transaction; retrying: failed transiently, will come back;
    -- applied / ignored: final, a later copy is a duplicate; dead: in the dead-letter queue.
    status           text NOT NULL CHECK (status IN ('processing', 'retrying', 'applied', 'ignored', 'dead')),
    detail           text,
    attempts         integer NOT NULL DEFAULT 0,
    duplicates       integer NOT NULL DEFAULT 0,
    last_error       text,
    -- signature | fetched | deposit_secret | amount_only | none
    verification     text,
    payload          text NOT NULL,
    request_id       text,
    received_at      timestamptz NOT NULL,
    processed_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_events_provider_event_key UNIQUE (provider, event_key)
);
CREATE INDEX IF NOT EXISTS webhook_events_order ON webhook_events (order_id, received_at DESC);
CREATE INDEX IF NOT EXISTS webhook_events_status ON webhook_events (status) WHERE status IN ('retrying', 'dead');

-- One row per notification not yet confirmed by the broker; the relay deletes it on confirm.
CREATE TABLE IF NOT EXISTS outbox (
    notification_id uuid PRIMARY KEY REFERENCES notifications (id),
    routing_key     text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at);
