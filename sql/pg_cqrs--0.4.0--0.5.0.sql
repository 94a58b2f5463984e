/* pg_cqrs 0.4.0 -> 0.5.0: the append path at scale (issue 14) */

\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.5.0'" to load this file. \quit

--
-- Sync projections are applied by the append itself (src/append.c), not by
-- a statement-level AFTER INSERT trigger with a transition table: an append
-- pays nothing for them while none runs, and appends made under
-- session_replication_role = replica reach them too (the trigger did not
-- fire there).  Rows written into the log other than through append (only
-- its owner or a superuser may, for restores) are not applied: their read
-- tables are restored with them.  The C function behind the old trigger
-- does nothing from this version's library on, so a 0.4.0 schema under it
-- does not apply events twice before this script runs.
--
DROP TRIGGER events_apply_sync_projections ON cqrs.events;
DROP FUNCTION cqrs.apply_sync_projections();

--
-- Bulk import (src/import.c): an aggregate, so any query feeds it, in the
-- order it gives.  The right to use it is the right to append, INSERT on
-- cqrs.events, which it checks first; EXECUTE stays with PUBLIC, as for
-- cqrs.append.  The step function takes internal, so it cannot be called
-- from SQL by itself.
--
CREATE FUNCTION cqrs.import_events_step(internal, text, text, jsonb, jsonb, uuid)
RETURNS internal
AS 'MODULE_PATHNAME', 'cqrs_import_events_step'
LANGUAGE C;

CREATE FUNCTION cqrs.import_events_final(internal)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_import_events_final'
LANGUAGE C;

CREATE AGGREGATE cqrs.import_events(stream text, type text, data jsonb,
                                    metadata jsonb, id uuid) (
    SFUNC = cqrs.import_events_step,
    STYPE = internal,
    FINALFUNC = cqrs.import_events_final,
    FINALFUNC_MODIFY = READ_WRITE
);

COMMENT ON AGGREGATE cqrs.import_events(text, text, jsonb, jsonb, uuid) IS
    'append one event per row, over any number of streams, in the order the rows come; returns the number appended (ids already recorded in their stream are skipped)';
