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

--
-- Projections.
--

--
-- The outbox and change capture.
--

-- Publishing is a right: EXECUTE on cqrs.publish, given by the DBA.  The
-- output plugin emits only messages that cqrs.publish authenticated for
-- their transaction (src/outbox.c), so calling pg_logical_emit_message()
-- with the prefix "pg_cqrs" no longer gets anything out.  Messages that
-- 0.3.0 published and no slot has decoded yet carry no authentication
-- code: the new library skips them with a WARNING (README, "Upgrading").
REVOKE EXECUTE ON FUNCTION cqrs.publish(text, jsonb, text) FROM PUBLIC;

-- cqrs.outbox_status is for operators: pg_monitor, and whom the DBA grants
-- SELECT on it (and USAGE on the schema, which pg_monitor is given here:
-- every function of the schema checks its caller's rights itself).
-- cqrs.outbox_delivered, which the view calls with its reader's rights,
-- stays executable by PUBLIC and itself requires SELECT on the view or on
-- cqrs.events.
GRANT USAGE ON SCHEMA cqrs TO pg_monitor;
GRANT SELECT ON cqrs.outbox_status TO pg_monitor;
