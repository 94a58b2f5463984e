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

-- == Stream lifecycle: delete, truncate, erase; the audit catalog ==

-- == Retention and archiving ==

-- == Security leftovers (issue 10) ==
