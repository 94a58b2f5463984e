/* pg_cqrs 0.6.0 -> 0.7.0: a log that lives for years (issue 13) */

\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.7.0'" to load this file. \quit

-- Sections, one per part of the release; each keeps to its own objects.

-- == The audit catalog, shared by every operation that takes events out
--    of the log or changes them (src/audit.c writes it) ==

CREATE TABLE cqrs.lifecycle_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    operation     text        NOT NULL,  -- e.g. delete_stream, erase_stream, retention
    target        text,                  -- the stream, category or rule acted upon
    events        bigint      NOT NULL,  -- how many events it removed or changed
    detail        jsonb       NOT NULL DEFAULT '{}',
    performed_by  name        NOT NULL,  -- the role whose rights were checked
    session_role  name        NOT NULL,  -- the session's login role
    xid           xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id()
);
COMMENT ON TABLE cqrs.lifecycle_log IS
    'pg_cqrs audit trail: who removed or changed which events of the log, when';
SELECT pg_catalog.pg_extension_config_dump('cqrs.lifecycle_log', '');
SELECT pg_catalog.pg_extension_config_dump('cqrs.lifecycle_log_id_seq', '');
REVOKE ALL ON cqrs.lifecycle_log FROM PUBLIC;
GRANT SELECT ON cqrs.lifecycle_log TO pg_monitor;

-- == Online sync projections ==

-- == Filtered reads ==

-- The filter indexes: read_all with categories or types, and deferred
-- projections with filters, scan them (src/filterscan.c) and pay for the
-- events they return, not for the whole log.  The library finds them by
-- name and falls back to the position index where one is missing, so
-- they can be dropped where appends matter more (drop_filter_indexes).
-- Building them reads the whole log: on a large log this update takes
-- as long as two CREATE INDEX on cqrs.events, and blocks appends while
-- it runs.  IF NOT EXISTS: a DBA may have built them beforehand with
-- CREATE INDEX CONCURRENTLY under these names, to keep the build out of
-- the update's window.
CREATE INDEX IF NOT EXISTS events_category_position_idx
    ON cqrs.events (cqrs.category(stream), "position");
CREATE INDEX IF NOT EXISTS events_type_position_idx ON cqrs.events (type, "position");

-- cqrs.category only ever returns a prefix of its argument, and never
-- fails on any input: LEAKPROOF, so that under row-level security the
-- planner may use it as an index condition below the policies' quals.
ALTER FUNCTION cqrs.category(text) LEAKPROOF;

-- Creating and dropping the filter indexes.  CREATE INDEX and DROP INDEX
-- check what they always check (ownership of cqrs.events); the functions
-- are for the log's owner only, and not granted to PUBLIC.
CREATE FUNCTION cqrs.create_filter_indexes()
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
CREATE INDEX IF NOT EXISTS events_category_position_idx
    ON cqrs.events (cqrs.category(stream), "position");
CREATE INDEX IF NOT EXISTS events_type_position_idx ON cqrs.events (type, "position");
$$;
COMMENT ON FUNCTION cqrs.create_filter_indexes() IS
    'create the indexes that make filtered reads cost what they return (reads the whole log)';
REVOKE ALL ON FUNCTION cqrs.create_filter_indexes() FROM PUBLIC;

CREATE FUNCTION cqrs.drop_filter_indexes()
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DROP INDEX IF EXISTS cqrs.events_category_position_idx;
DROP INDEX IF EXISTS cqrs.events_type_position_idx;
$$;
COMMENT ON FUNCTION cqrs.drop_filter_indexes() IS
    'drop the filter indexes: cheaper appends, filtered reads scan the log by position';
REVOKE ALL ON FUNCTION cqrs.drop_filter_indexes() FROM PUBLIC;

-- == Stream lifecycle: delete, truncate, erase; the audit catalog ==

-- == Retention and archiving ==

-- == Security leftovers (issue 10) ==
