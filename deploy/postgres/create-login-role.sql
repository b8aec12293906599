-- Creates the login role the worker and hookctl connect as, or sets its password if it
-- exists, and makes it a member of webhooks_runtime (migration V8): it reads and writes rows
-- and cannot change the schema. Run it as the owner of the tables, after `worker migrate`,
-- with psql 15 or later (for \getenv); compose's postgres-setup service does, at every start:
--
--   DATABASE_LOGIN_ROLE=webhooks_app DATABASE_LOGIN_PASSWORD="$(openssl rand -hex 24)" \
--     psql -v ON_ERROR_STOP=1 -d webhooks -f deploy/postgres/create-login-role.sql
--
-- DATABASE_LOGIN_GROUP picks the group role: webhooks_runtime (default; the worker and
-- hookctl) or webhooks_console (migration V9; the console, which reads every table and writes
-- only its audit table).
--
-- The password comes from the environment, never from a command line. The server stores it
-- hashed (SCRAM); a server that logs every statement (log_statement = 'all' or 'ddl') would
-- log this ALTER ROLE with it, as any password change.
\getenv login_role DATABASE_LOGIN_ROLE
\getenv login_password DATABASE_LOGIN_PASSWORD
\getenv login_group DATABASE_LOGIN_GROUP
\if :{?login_group}
\else
  \set login_group webhooks_runtime
\endif
SELECT :'login_group' IN ('webhooks_runtime', 'webhooks_console') AS known_group \gset
\if :known_group
\else
  DO $$ BEGIN RAISE EXCEPTION 'DATABASE_LOGIN_GROUP must be webhooks_runtime or webhooks_console'; END $$;
\endif
\if :{?login_role}
\else
  \set login_role webhooks_app
\endif
\if :{?login_password}
\else
  \set login_password ''
\endif
SELECT :'login_password' <> '' AS has_password \gset
\if :has_password
\else
  DO $$ BEGIN RAISE EXCEPTION 'DATABASE_LOGIN_PASSWORD is required: the password of the login role (openssl rand -hex 24)'; END $$;
\endif

-- A superuser, or a role that owns tables, could change the schema whatever it is a member
-- of: refuse it (say, the owner given by mistake).
SELECT EXISTS (SELECT FROM pg_tables WHERE tableowner = :'login_role')
    OR EXISTS (SELECT FROM pg_roles WHERE rolname = :'login_role' AND rolsuper) AS too_powerful \gset
\if :too_powerful
  DO $$ BEGIN RAISE EXCEPTION 'the login role is a superuser or owns tables, so it could change the schema: give DATABASE_LOGIN_ROLE a role of its own'; END $$;
\endif

SELECT format('CREATE ROLE %I LOGIN', :'login_role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'login_role') \gexec
ALTER ROLE :"login_role" WITH LOGIN PASSWORD :'login_password';
GRANT :"login_group" TO :"login_role";
\echo 'login role' :"login_role" 'is a member of' :"login_group"
