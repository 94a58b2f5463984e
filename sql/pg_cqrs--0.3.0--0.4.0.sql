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
-- A projection belongs to the role that owns its handler, the one role that
-- can change the code run with the owner's rights (src/catalog.c); that
-- role must own the read tables, and only its members administer the
-- projection (42501 for anybody else).  Dropping a handler or a read table
-- is refused while a projection uses it.
--
CREATE FUNCTION cqrs.projection_dropped()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cqrs_projection_dropped'
LANGUAGE C;

CREATE EVENT TRIGGER cqrs_projection_dropped ON sql_drop
    EXECUTE FUNCTION cqrs.projection_dropped();

-- Who a projection belongs to: the owner of its handler (src/catalog.c).
CREATE FUNCTION cqrs.projection_owner(name text)
RETURNS regrole
AS 'MODULE_PATHNAME', 'cqrs_projection_owner'
LANGUAGE C STABLE STRICT;

-- Status: readable by everyone, showing each role the projections it may
-- follow (CqrsCheckProjectionStatusAccess): its own (as a member of the
-- owner role), those whose read tables it may read, and, for pg_monitor,
-- all; the last error, which may quote event data, only to the owner's
-- members.  The filter sits in a fenced subquery (OFFSET 0), so that
-- projection_position never runs for a row the caller may not see.
CREATE OR REPLACE VIEW cqrs.projection_status AS
SELECT p.name,
       p.mode,
       p.state,
       a.applied AS "position",
       GREATEST(h.head OPERATOR(pg_catalog.-) a.applied, 0) AS lag_events,
       COALESCE(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()
                OPERATOR(pg_catalog.-) (SELECT e.recorded_at FROM cqrs.events e
                     WHERE e."position" OPERATOR(pg_catalog.>) a.applied
                     ORDER BY e."position" LIMIT 1)), 0)::double precision AS lag_seconds,
       CASE WHEN p.is_owner THEN p.last_error END AS last_error,
       p.error_position,
       p.updated_at
  FROM (SELECT v.*, pg_catalog.pg_has_role(o.owner, 'USAGE') AS is_owner
          FROM cqrs.projections v
         CROSS JOIN LATERAL (SELECT cqrs.projection_owner(v.name) AS owner) o
         WHERE pg_catalog.pg_has_role(o.owner, 'USAGE')
            OR pg_catalog.pg_has_role('pg_monitor', 'USAGE')
            OR EXISTS (SELECT FROM pg_catalog.unnest(v.tables) t
                        WHERE pg_catalog.has_table_privilege(t::pg_catalog.oid, 'SELECT'))
        OFFSET 0) p
 CROSS JOIN LATERAL (SELECT cqrs.projection_position(p.name) AS applied) a
 CROSS JOIN (SELECT COALESCE(pg_catalog.max(e."position"), 0) AS head FROM cqrs.events e) h;
GRANT SELECT ON cqrs.projection_status TO PUBLIC;

-- Projections created under 0.3.0's rules that 0.4.0's would refuse keep
-- their rows but are paused, each with a WARNING saying why: their
-- creator does not have the privileges of the handler's owner (whose rights
-- the handler now runs with), or a read table is not the handler owner's.
-- A paused sync projection records the head of the log, as
-- pause_projection does; the SHARE lock keeps appends out meanwhile.
DO $$
DECLARE
    r record;
BEGIN
    LOCK TABLE cqrs.projections IN SHARE MODE;
    FOR r IN
        SELECT p.name, p.mode, p.state, f.proowner::pg_catalog.regrole AS handler_owner,
               p.owner AS creator,
               NOT pg_catalog.pg_has_role(p.owner, f.proowner, 'USAGE') AS foreign_handler,
               (SELECT pg_catalog.string_agg(t::pg_catalog.text, ', ')
                  FROM pg_catalog.unnest(p.tables) t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t
                 WHERE NOT pg_catalog.pg_has_role(f.proowner, c.relowner, 'USAGE')) AS foreign_tables
          FROM cqrs.projections p
          JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure(p.handler)
         WHERE p.state OPERATOR(pg_catalog.<>) 'paused'
    LOOP
        CONTINUE WHEN NOT r.foreign_handler AND r.foreign_tables IS NULL;
        UPDATE cqrs.projections
           SET state = 'paused',
               "position" = CASE WHEN r.mode OPERATOR(pg_catalog.=) 'sync' AND r.state OPERATOR(pg_catalog.=) 'running'
                                 THEN (SELECT COALESCE(pg_catalog.max(e."position"), 0) FROM cqrs.events e)
                                 ELSE "position" END,
               updated_at = pg_catalog.now()
         WHERE name OPERATOR(pg_catalog.=) r.name;
        RAISE WARNING 'pg_cqrs 0.4.0 paused projection "%"', r.name
            USING DETAIL = CASE WHEN r.foreign_handler
                                THEN pg_catalog.format('Its handler belongs to %s, whose rights it would now run with, and its creator %s does not have them.', r.handler_owner, r.creator)
                                ELSE pg_catalog.format('Its read tables %s are not owned by %s, the owner of its handler.', r.foreign_tables, r.handler_owner) END,
                  HINT = 'Give the handler and the read tables to one role, then resume the projection as that role, or drop it.';
    END LOOP;
    -- the owner column names who the projection runs as
    UPDATE cqrs.projections p SET owner = f.proowner::pg_catalog.regrole
      FROM pg_catalog.pg_proc f
     WHERE f.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure(p.handler)
       AND p.owner::pg_catalog.oid OPERATOR(pg_catalog.<>) f.proowner;
END
$$;

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
