-- Reconciliation against the providers' APIs: one row per provider, holding the lease that
-- lets one worker at a time reconcile that provider, and how far reconciliation got.
--
-- The lease: `holder` (a worker's id) owns the row until `lease_until`; it renews the lease as
-- it goes and clears it when done. A holder that dies simply stops renewing, and any worker
-- takes the row once `lease_until` has passed.
--
-- The watermark (Stripe): the `created` time of the newest event whose publish the broker
-- confirmed, with every older one found in the same run confirmed too. The next run lists
-- events from a little before it (an overlap: Stripe's `created` has one-second resolution
-- and events of one second may straddle a page). Toss has no events list: its row holds the
-- lease and the time of the last successful run only.
CREATE TABLE IF NOT EXISTS reconcile_state (
    provider        text PRIMARY KEY CHECK (provider IN ('stripe', 'toss')),
    holder          text,
    lease_until     timestamptz,
    watermark       timestamptz,
    last_success_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The worker (and hookctl) read and write these rows; V8's default privileges cover tables
-- made by the same owner, and granting here covers an owner that differs.
GRANT SELECT, INSERT, UPDATE ON reconcile_state TO webhooks_runtime;
GRANT SELECT ON reconcile_state TO webhooks_console;
