-- The web console (console/): its audit table, its database role, and the one index its
-- pages need that the pipeline's own indexes do not give.
--
-- Every action taken in the console (logins and logouts, replays, purges, re-checks, and
-- every refusal of one) is a row here: who, when, from where, what, on what, and how it went.
-- The console only appends; nobody's role may change or delete a row (the owner aside).
CREATE TABLE IF NOT EXISTS console_audit (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    -- The user name as configured (or as the trusted proxy's header gave it); '-' when unknown.
    actor   text NOT NULL,
    -- viewer | operator | '-' (before a login succeeded)
    role    text NOT NULL,
    -- The client's address as the console saw it.
    address text NOT NULL,
    -- login, logout, replay, purge, recheck, ...
    action  text NOT NULL,
    -- What it was done to: an event key, a queue, a selection.
    target  text NOT NULL DEFAULT '',
    -- ok | refused | failed
    result  text NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    detail  text NOT NULL DEFAULT ''
);

-- Search by request id (the id ingest logs and answers with). The other searches use
-- existing indexes: order id (webhook_events_order, payments' unique key), event key
-- (webhook_events_provider_event_key), payment key (payments_provider_payment_id).
-- As in V3, on a large existing table build it beforehand with
--   CREATE INDEX CONCURRENTLY webhook_events_request_id ON webhook_events (request_id)
--       WHERE request_id IS NOT NULL;
-- and this migration then finds it and does nothing.
CREATE INDEX IF NOT EXISTS webhook_events_request_id ON webhook_events (request_id)
    WHERE request_id IS NOT NULL;

-- The console's role: reads every table, writes only its audit table (append only). The
-- console's login role is a member of it (deploy/postgres/create-login-role.sql with
-- DATABASE_LOGIN_GROUP=webhooks_console). Made only when missing, as webhooks_runtime in V8.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'webhooks_console') THEN
        CREATE ROLE webhooks_console NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- created by a concurrent migration
END
$$;

GRANT USAGE ON SCHEMA public TO webhooks_console;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO webhooks_console;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO webhooks_console;
GRANT INSERT ON console_audit TO webhooks_console;
GRANT USAGE ON SEQUENCE console_audit_id_seq TO webhooks_console;
REVOKE ALL ON refinery_schema_history FROM webhooks_console;

-- V8's default privileges gave the worker's role every row privilege on this table too; it
-- has no business there: an audit trail the pipeline's credentials could rewrite proves little.
REVOKE ALL ON console_audit FROM webhooks_runtime;
REVOKE ALL ON SEQUENCE console_audit_id_seq FROM webhooks_runtime;
