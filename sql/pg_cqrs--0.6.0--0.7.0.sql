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

-- == Stream lifecycle: delete, truncate, erase; the audit catalog ==

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
