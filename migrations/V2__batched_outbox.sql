-- Outbox rows are published by the worker that committed them, under a lease, and swept up by
-- any worker's relay once the lease ran out; no row lock is held while the broker confirms.
-- The payload is kept as the exact text that is published, so a republished message (after a
-- crash between confirm and delete) is byte for byte the first one.

ALTER TABLE outbox ALTER COLUMN payload TYPE text USING payload::text;
-- Until then the row belongs to the worker that committed it (or claimed it last).
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_until timestamptz NOT NULL DEFAULT now();
-- Set after OUTBOX_MAX_ATTEMPTS refused publishes; the relay leaves such a row alone and
-- `hookctl dead list --notifications` shows it.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS dead_at timestamptz;
DROP INDEX IF EXISTS outbox_created;
CREATE INDEX IF NOT EXISTS outbox_claimable ON outbox (claimed_until) WHERE dead_at IS NULL;

-- An outbox row is written in the same transaction as its notification and deleted once the
-- broker confirmed it. The foreign key only added a lookup per notification (planned once per
-- connection, while the table was small, it became a scan of every notification).
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_notification_id_fkey;

-- Payloads and payment metadata are a few KiB of JSON, compressed when stored; lz4 does that
-- several times faster than the default pglz. Servers built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE webhook_events ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE payments ALTER COLUMN payment_metadata SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 compression is not available; keeping pglz';
END $$;
