-- An event nothing could verify (an unsigned Toss payment event without fetch-back or a matching
-- deposit secret) is recorded as `unverified`: payload kept, payment untouched, re-checked later
-- with `hookctl unverified recheck` once a verification means exists. It is not final: a later
-- copy or a re-check decides it again.
ALTER TABLE webhook_events DROP CONSTRAINT IF EXISTS webhook_events_status_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_status_check
    CHECK (status IN ('processing', 'retrying', 'applied', 'ignored', 'dead', 'unverified'));

-- `hookctl unverified list` and the console read them newest first.
CREATE INDEX IF NOT EXISTS webhook_events_unverified ON webhook_events (received_at)
    WHERE status = 'unverified';

-- Retention prunes unverified rows like the final ones (a flood of forged events must not grow
-- the table for ever), so the prunable index covers them too. As in V3, on a large existing table
-- build the new index beforehand with
--   CREATE INDEX CONCURRENTLY webhook_events_prunable_v5 ON webhook_events (processed_at)
--       WHERE status IN ('applied', 'ignored', 'dead', 'unverified');
-- and this migration then finds it and only drops the old one.
CREATE INDEX IF NOT EXISTS webhook_events_prunable_v5 ON webhook_events (processed_at)
    WHERE status IN ('applied', 'ignored', 'dead', 'unverified');
DROP INDEX IF EXISTS webhook_events_prunable;
