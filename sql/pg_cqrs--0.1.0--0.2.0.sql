/* sql/pg_cqrs--0.1.0--0.2.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.2.0'" to load this file. \quit

--
-- Projections: read tables kept up to date from the log.
--
-- The catalog stores what it needs to re-resolve after pg_dump/restore and
-- pg_upgrade: the handler as its qualified signature (text, since pg_upgrade
-- refuses regprocedure columns), the owner as regrole and the read tables
-- as regclass (both kept by pg_upgrade), and the search_path the handler
-- runs with, pinned when the projection was created.
--
CREATE TABLE cqrs.projections (
    name            text        NOT NULL,
    handler         text        NOT NULL,
    owner           regrole     NOT NULL,
    mode            text        NOT NULL,
    tables          regclass[]  NOT NULL DEFAULT '{}',
    categories      text[],
    types           text[],
    search_path     text        NOT NULL,
    state           text        NOT NULL DEFAULT 'running',
    "position"      bigint      NOT NULL DEFAULT 0,
    last_error      text,
    error_position  bigint,
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT projections_pkey PRIMARY KEY (name),
    CONSTRAINT projections_mode_check
        CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['sync', 'deferred'])),
    CONSTRAINT projections_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'paused', 'failed']))
);
COMMENT ON TABLE cqrs.projections IS 'pg_cqrs projections: definitions and checkpoints';

CREATE TABLE cqrs.skipped_events (
    projection      text        NOT NULL
        REFERENCES cqrs.projections (name) ON DELETE CASCADE ON UPDATE CASCADE,
    "position"      bigint      NOT NULL,
    error           text,
    skipped_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (projection, "position")
);
COMMENT ON TABLE cqrs.skipped_events IS 'events a projection was told to skip with cqrs.skip_event';

-- A projection that may have become runnable (created, resumed, or
-- restored by pg_restore's COPY) needs a worker in its database: have the
-- launcher look when the transaction commits.  Not on checkpoint moves.
CREATE FUNCTION cqrs.projections_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_projections_changed'
LANGUAGE C;

CREATE TRIGGER projections_wake_launcher
    AFTER INSERT OR UPDATE OF state ON cqrs.projections
    FOR EACH STATEMENT EXECUTE FUNCTION cqrs.projections_changed();
ALTER TABLE cqrs.projections ENABLE ALWAYS TRIGGER projections_wake_launcher;

SELECT pg_catalog.pg_extension_config_dump('cqrs.projections', '');
SELECT pg_catalog.pg_extension_config_dump('cqrs.skipped_events', '');

--
-- Sync projections are applied by a statement-level trigger that sees the
-- statement's new events as a transition table, so a batch append calls
-- into each handler's machinery once, not once per row.
--
CREATE FUNCTION cqrs.apply_sync_projections()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_apply_sync_projections'
LANGUAGE C;

CREATE TRIGGER events_apply_sync_projections
    AFTER INSERT ON cqrs.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION cqrs.apply_sync_projections();

CREATE FUNCTION cqrs.create_projection(name text, handler regproc,
                                       mode text DEFAULT 'sync',
                                       tables regclass[] DEFAULT '{}',
                                       categories text[] DEFAULT NULL,
                                       types text[] DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_create_projection'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.drop_projection(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_drop_projection'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.pause_projection(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_pause_projection'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.resume_projection(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_resume_projection'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.skip_event(name text, event_position bigint)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_skip_event'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.process_projections(name text DEFAULT NULL,
                                         max_events integer DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_process_projections'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.wait_for_projection(name text, up_to bigint,
                                         timeout interval DEFAULT '5 seconds')
RETURNS boolean
AS 'MODULE_PATHNAME', 'cqrs_wait_for_projection'
LANGUAGE C VOLATILE;

--
-- Status.  Lag is measured in positions (one index probe for the head of
-- the log) and in seconds since the oldest event not yet applied (one more
-- probe), never by counting the log.
--
CREATE FUNCTION cqrs.projection_position(name text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_projection_position'
LANGUAGE C VOLATILE STRICT;

CREATE VIEW cqrs.projection_status AS
SELECT p.name,
       p.mode,
       p.state,
       a.applied AS "position",
       GREATEST(h.head OPERATOR(pg_catalog.-) a.applied, 0) AS lag_events,
       COALESCE(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()
                OPERATOR(pg_catalog.-) (SELECT e.recorded_at FROM cqrs.events e
                     WHERE e."position" OPERATOR(pg_catalog.>) a.applied
                     ORDER BY e."position" LIMIT 1)), 0)::double precision AS lag_seconds,
       p.last_error,
       p.error_position,
       p.updated_at
  FROM cqrs.projections p
 CROSS JOIN LATERAL (SELECT cqrs.projection_position(p.name) AS applied) a
 CROSS JOIN (SELECT COALESCE(pg_catalog.max(e."position"), 0) AS head FROM cqrs.events e) h;

-- Wake the launcher when this transaction commits, so that the database
-- gets a worker without waiting for the launcher's next scan.
CREATE FUNCTION cqrs.wake_launcher()
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_wake_launcher'
LANGUAGE C VOLATILE;
SELECT cqrs.wake_launcher();

-- Administering projections runs code as their owners on every append:
-- only roles granted these functions may do it.
REVOKE EXECUTE ON FUNCTION cqrs.wake_launcher() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.drop_projection(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.pause_projection(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.resume_projection(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.skip_event(text, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.process_projections(text, integer) FROM PUBLIC;
