-- The worker prunes final inbox rows (applied, ignored, dead) once they are older than
-- EVENT_RETENTION by processed_at (worker/src/retention.rs). This partial index holds exactly
-- those rows in processed_at order, so each batch reads the oldest prunable rows from the
-- index instead of scanning the table; retrying and processing rows are not in it.
--
-- A plain CREATE INDEX blocks writes to webhook_events while it builds. On a large existing
-- table, build it beforehand with
--   CREATE INDEX CONCURRENTLY webhook_events_prunable ON webhook_events (processed_at)
--       WHERE status IN ('applied', 'ignored', 'dead');
-- and this migration then finds it and does nothing.
CREATE INDEX IF NOT EXISTS webhook_events_prunable ON webhook_events (processed_at)
    WHERE status IN ('applied', 'ignored', 'dead');
