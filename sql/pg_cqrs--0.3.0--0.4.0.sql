/* sql/pg_cqrs--0.3.0--0.4.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.4.0'" to load this file. \quit

--
-- 0.4.0: the privilege model (README, "Security model").  Every function
-- checks what PostgreSQL would check for the equivalent plain SQL; the log
-- is written only through cqrs.append; a projection belongs to its owner;
-- the outbox emits nothing a role without the publish right wrote.
--

--
-- The event log: appending and reading.
--
-- The append right is INSERT on cqrs.events, as the README has always told
-- DBAs to grant it; cqrs.append and cqrs.append_events (EXECUTE stays with
-- PUBLIC) check it themselves before anything else, and the readers check
-- SELECT and honour row-level security (src/append.c, src/read.c).  What
-- changes here: INSERT on the log no longer opens a door around append.
-- A statement-level BEFORE INSERT trigger (COPY FROM fires it too) refuses
-- every INSERT but append's own, except for superusers and the log's owner,
-- who restore dumps (src/guard.c).  ENABLE ALWAYS, like the other guards,
-- so that session_replication_role = replica does not switch it off.  The
-- rows already in the log are kept as they are.
--
CREATE FUNCTION cqrs.forbid_direct_insert()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_forbid_direct_insert'
LANGUAGE C;

COMMENT ON FUNCTION cqrs.forbid_direct_insert() IS
    'trigger: INSERT and COPY into cqrs.events only through cqrs.append (or as its owner, for restores)';

-- only the log's triggers need it: nobody else may attach it
REVOKE EXECUTE ON FUNCTION cqrs.forbid_direct_insert() FROM PUBLIC;

CREATE TRIGGER events_forbid_direct_insert
    BEFORE INSERT ON cqrs.events
    FOR EACH STATEMENT EXECUTE FUNCTION cqrs.forbid_direct_insert();
ALTER TABLE cqrs.events ENABLE ALWAYS TRIGGER events_forbid_direct_insert;

COMMENT ON TABLE cqrs.events IS
    'pg_cqrs event log: one row per event, append-only, written only through cqrs.append';

--
-- Projections.
--

--
-- The outbox and change capture.
--
