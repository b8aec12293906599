-- Who holds an outbox row. Every claim writes a fresh token: the committing worker's (with the
-- row, in the batch transaction) and each relay sweep's. Right before publishing, a worker
-- checks that the row still carries its token and that its lease has not run out, and it
-- deletes or marks only rows that still carry its token. A worker slower than its lease (a
-- long commit, a pause) therefore cannot publish a row that a relay has claimed and published
-- since. NULL: claimed by no one yet (rows written before this migration); the relay claims
-- them once their lease runs out, as any other.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claim_token uuid;
