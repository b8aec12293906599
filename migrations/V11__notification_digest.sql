-- The SHA-256 of the message the worker wrote for each notification (the outbox payload, byte
-- for byte). Notification delivery signs a message only if its body has this digest: the
-- broker is not a trust boundary, and a field-by-field comparison leaves the fields the table
-- does not hold (amount, currency, previous status, time) and any added member unchecked.
-- Rows written before this migration have none; theirs are checked field by field only.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS payload_sha256 bytea;
