-- The runtime role. The worker and hookctl connect as a login role that is a member of
-- webhooks_runtime: it reads and writes rows and cannot change the schema (no DROP, ALTER,
-- CREATE, TRUNCATE). Migrations keep running as the owner of the tables (`worker migrate`);
-- deploy/postgres/create-login-role.sql makes the login role (compose's postgres-setup
-- service runs it).
--
-- Roles belong to the whole cluster, and several databases of one cluster may migrate at the
-- same moment (tests do): the role is made only when it is missing, and one made by a
-- concurrent migration meanwhile is not an error. Where the migration's user may not create
-- roles (some managed databases), an administrator creates it first
-- (CREATE ROLE webhooks_runtime NOLOGIN) and this migration only grants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'webhooks_runtime') THEN
        CREATE ROLE webhooks_runtime NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- created by a concurrent migration
END
$$;

-- Rows of every table, now and later: the default privileges cover tables and sequences the
-- owner (the role running migrations) creates in later migrations.
GRANT USAGE ON SCHEMA public TO webhooks_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO webhooks_runtime;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO webhooks_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO webhooks_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO webhooks_runtime;

-- Except the migrations' own history, which only `worker migrate` writes.
REVOKE ALL ON refinery_schema_history FROM webhooks_runtime;

-- PostgreSQL 15 and later no longer let every role create objects in the public schema;
-- a database created by an older version still does, and the runtime role would inherit it.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
