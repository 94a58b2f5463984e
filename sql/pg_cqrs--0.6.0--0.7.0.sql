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

-- A sync projection rebuilt by cqrs.replay(name, concurrently => true) is
-- 'catching up' until its appliers have rebuilt it and switched it back to
-- in-append application (src/apply.c).
ALTER TABLE cqrs.projections DROP CONSTRAINT projections_state_check;
ALTER TABLE cqrs.projections ADD CONSTRAINT projections_state_check
    CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'paused', 'failed', 'catching up']));

-- An overload rather than a defaulted parameter, so that cqrs.replay(text)
-- stays what it was (and its grants with it).
CREATE FUNCTION cqrs.replay(name text, concurrently boolean)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_replay_concurrently'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.replay(text, boolean) IS
    'pg_cqrs: rebuild a projection; concurrently => true: a sync one is rebuilt by its appliers without holding appends (returns NULL)';
-- like cqrs.replay(text): for projection owners the administrator grants it to
REVOKE EXECUTE ON FUNCTION cqrs.replay(text, boolean) FROM PUBLIC;

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
-- (src/lifecycle.c; system events "$..." are the extension's own)

CREATE FUNCTION cqrs.delete_stream(stream text, expected_version bigint DEFAULT NULL,
                                   hard boolean DEFAULT false)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_delete_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.delete_stream(text, bigint, boolean) IS
    'pg_cqrs: append a $StreamDeleted tombstone to a stream (hard: and delete its events); returns the tombstone''s position';

CREATE FUNCTION cqrs.truncate_stream(stream text, before_version bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_truncate_stream'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION cqrs.truncate_stream(text, bigint) IS
    'pg_cqrs: delete a stream''s events below a version (never its head), append $StreamTruncated; returns the events removed';

CREATE FUNCTION cqrs.erase_stream(stream text, from_version bigint DEFAULT 1,
                                  to_version bigint DEFAULT NULL,
                                  keep_metadata boolean DEFAULT false)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_erase_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.erase_stream(text, bigint, bigint, boolean) IS
    'pg_cqrs: overwrite the data (and metadata) of a stream''s events with {"$erased": true}, append $StreamErased; returns the events changed';

-- the functions check the table rights themselves (DELETE or UPDATE, with
-- SELECT and INSERT, on cqrs.events); EXECUTE is granted by choice as well
REVOKE EXECUTE ON FUNCTION cqrs.delete_stream(text, bigint, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.truncate_stream(text, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.erase_stream(text, bigint, bigint, boolean) FROM PUBLIC;

-- == Retention and archiving ==

-- One rule per category (src/retention.c).  scan_position and
-- age_position are where the rule's two scans have got to; the pass
-- resumes there, and a changed rule starts them again at 0.
CREATE TABLE cqrs.retention_rules (
    category       text        PRIMARY KEY,
    max_age        interval,
    max_count      bigint,
    scan_position  bigint      NOT NULL DEFAULT 0,
    age_position   bigint      NOT NULL DEFAULT 0,
    removed        bigint      NOT NULL DEFAULT 0,  -- events removed so far
    set_by         name        NOT NULL,
    set_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_run_at    timestamptz,
    CONSTRAINT retention_rules_limit_check
        CHECK (max_age IS NOT NULL OR max_count IS NOT NULL),
    CONSTRAINT retention_rules_max_count_check
        CHECK (max_count OPERATOR(pg_catalog.>) 0),
    CONSTRAINT retention_rules_max_age_check
        CHECK (max_age OPERATOR(pg_catalog.>) '0'::pg_catalog.interval)
);
COMMENT ON TABLE cqrs.retention_rules IS
    'pg_cqrs retention rules: how much of each stream of a category the log keeps';
SELECT pg_catalog.pg_extension_config_dump('cqrs.retention_rules', '');
REVOKE ALL ON cqrs.retention_rules FROM PUBLIC;
GRANT SELECT ON cqrs.retention_rules TO pg_monitor;

CREATE FUNCTION cqrs.set_retention(category text,
                                   max_age interval DEFAULT NULL,
                                   max_count bigint DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_set_retention'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.set_retention(text, interval, bigint) IS
    'keep only the last max_count events, or those younger than max_age, of each stream of a category';

CREATE FUNCTION cqrs.drop_retention(category text)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_drop_retention'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.drop_retention(text) IS 'remove the retention rule of a category';

CREATE FUNCTION cqrs.apply_retention(category text DEFAULT NULL,
                                     max_events bigint DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_apply_retention'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.apply_retention(text, bigint) IS
    'run retention rules now, in this transaction; returns the number of events removed';

-- Rules remove events: only roles granted EXECUTE (and DELETE on the log,
-- which the functions check) may use them.
REVOKE ALL ON FUNCTION cqrs.set_retention(text, interval, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION cqrs.drop_retention(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cqrs.apply_retention(text, bigint) FROM PUBLIC;

-- == Security leftovers (issue 10) ==

-- The causation guard (cqrs.max_causation_depth, apply.c) and the bound on
-- idle lifecycle transactions (cqrs.lifecycle_idle_timeout, catalog.c) are
-- library code and settings: no catalog change.

-- Row-level security on the log, carried through pg_dump (log_security.c):
-- pg_dump writes neither ENABLE ROW LEVEL SECURITY nor the policies of an
-- extension's table.  The log's security is recorded here, a configuration
-- table pg_dump carries, and put back when a restore loads it.
CREATE TABLE cqrs.log_security (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    captured_at        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    row_security       boolean     NOT NULL,
    force_row_security boolean     NOT NULL,
    policies           jsonb       NOT NULL
);
COMMENT ON TABLE cqrs.log_security IS
    'pg_cqrs: the row-level security of cqrs.events, kept so that pg_dump carries it';
SELECT pg_catalog.pg_extension_config_dump('cqrs.log_security', '');
SELECT pg_catalog.pg_extension_config_dump('cqrs.log_security_id_seq', '');
REVOKE ALL ON cqrs.log_security FROM PUBLIC;

CREATE FUNCTION cqrs.log_security_restore()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_log_security_restore'
LANGUAGE C;
CREATE TRIGGER log_security_restore
    AFTER INSERT ON cqrs.log_security
    FOR EACH ROW EXECUTE FUNCTION cqrs.log_security_restore();
ALTER TABLE cqrs.log_security ENABLE ALWAYS TRIGGER log_security_restore;

CREATE FUNCTION cqrs.log_security_capture()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cqrs_log_security_capture'
LANGUAGE C;
CREATE EVENT TRIGGER cqrs_log_security_capture ON ddl_command_end
    WHEN TAG IN ('CREATE POLICY', 'ALTER POLICY', 'DROP POLICY', 'ALTER TABLE')
    EXECUTE FUNCTION cqrs.log_security_capture();

CREATE FUNCTION cqrs.save_log_security()
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_save_log_security'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION cqrs.save_log_security() FROM PUBLIC;
-- a log secured before 0.7.0
SELECT cqrs.save_log_security();
