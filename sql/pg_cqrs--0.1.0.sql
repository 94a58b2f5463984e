/* sql/pg_cqrs--0.1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pg_cqrs" to load this file. \quit

-- The schema belongs to the extension (the control file names pg_catalog, as
-- pg_cron does), so DROP EXTENSION removes it and nothing is left behind.
CREATE SCHEMA cqrs;
COMMENT ON SCHEMA cqrs IS 'pg_cqrs: event log, projections and outbox';

--
-- The event log.
--
-- position comes from a sequence that must keep CACHE 1: the safe-read
-- horizon of read_all (src/horizon.c) relies on positions being handed out
-- in real-time order across all backends, which per-backend caching breaks.
--
CREATE SEQUENCE cqrs.events_position_seq AS bigint CACHE 1 NO CYCLE;

CREATE TABLE cqrs.events (
    "position"  bigint      NOT NULL DEFAULT pg_catalog.nextval('cqrs.events_position_seq'),
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    id          uuid        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT events_pkey PRIMARY KEY ("position"),
    CONSTRAINT events_stream_version_key UNIQUE (stream, version),
    CONSTRAINT events_id_key UNIQUE (id)
);
-- No CHECK constraints: cqrs.append validates every field in C before it
-- writes, and a CHECK would be evaluated a second time on the hottest path.
ALTER SEQUENCE cqrs.events_position_seq OWNED BY cqrs.events."position";

COMMENT ON TABLE cqrs.events IS 'pg_cqrs event log: one row per event, append-only';

-- The log and its position counter are user data: pg_dump must keep them.
SELECT pg_catalog.pg_extension_config_dump('cqrs.events', '');
SELECT pg_catalog.pg_extension_config_dump('cqrs.events_position_seq', '');

--
-- Append-only: UPDATE, DELETE and TRUNCATE are refused.  ENABLE ALWAYS so
-- that session_replication_role = replica does not switch the guard off.
-- INSERT stays possible because pg_restore loads the log with COPY.
--
CREATE FUNCTION cqrs.forbid_change()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_forbid_change'
LANGUAGE C;

CREATE TRIGGER events_forbid_update_delete
    BEFORE UPDATE OR DELETE ON cqrs.events
    FOR EACH STATEMENT EXECUTE FUNCTION cqrs.forbid_change();
CREATE TRIGGER events_forbid_truncate
    BEFORE TRUNCATE ON cqrs.events
    FOR EACH STATEMENT EXECUTE FUNCTION cqrs.forbid_change();
ALTER TABLE cqrs.events ENABLE ALWAYS TRIGGER events_forbid_update_delete;
ALTER TABLE cqrs.events ENABLE ALWAYS TRIGGER events_forbid_truncate;

--
-- Streams and categories.
--
CREATE FUNCTION cqrs.category(stream text)
RETURNS text
AS 'MODULE_PATHNAME', 'cqrs_category'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION cqrs.category(text) IS
    'the category of a stream: its name up to the first "-"';

--
-- Appending.  Not STRICT: a NULL argument is an error, not an empty result.
--
CREATE FUNCTION cqrs.append(stream text, type text, data jsonb,
                            metadata jsonb DEFAULT NULL,
                            expected_version bigint DEFAULT NULL,
                            id uuid DEFAULT NULL)
RETURNS TABLE (version bigint, "position" bigint)
AS 'MODULE_PATHNAME', 'cqrs_append'
LANGUAGE C VOLATILE ROWS 1;

COMMENT ON FUNCTION cqrs.append(text, text, jsonb, jsonb, bigint, uuid) IS
    'append one event to a stream, optionally at an expected version';

CREATE FUNCTION cqrs.append_events(stream text, events jsonb,
                                   expected_version bigint DEFAULT NULL)
RETURNS TABLE (version bigint, "position" bigint)
AS 'MODULE_PATHNAME', 'cqrs_append_events'
LANGUAGE C VOLATILE ROWS 1;

COMMENT ON FUNCTION cqrs.append_events(text, jsonb, bigint) IS
    'append a JSON array of events to a stream atomically';

--
-- Reading.
--
CREATE FUNCTION cqrs.stream_version(stream text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_stream_version'
LANGUAGE C STABLE;

CREATE FUNCTION cqrs.read_stream(stream text, from_version bigint DEFAULT 1,
                                 max_count integer DEFAULT NULL)
RETURNS SETOF cqrs.events
AS 'MODULE_PATHNAME', 'cqrs_read_stream'
LANGUAGE C STABLE ROWS 100;

CREATE FUNCTION cqrs.read_all(after_position bigint DEFAULT 0,
                              max_count integer DEFAULT 1000,
                              categories text[] DEFAULT NULL,
                              types text[] DEFAULT NULL)
RETURNS SETOF cqrs.events
AS 'MODULE_PATHNAME', 'cqrs_read_all'
LANGUAGE C VOLATILE ROWS 1000;

COMMENT ON FUNCTION cqrs.read_all(bigint, integer, text[], text[]) IS
    'events after a position, in position order, never past an in-flight append';

CREATE FUNCTION cqrs.safe_position()
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_safe_position'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cqrs.safe_position() IS
    'the highest position below which every event is committed or gone for good';
