/* sql/pg_cqrs--0.2.0--0.3.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.3.0'" to load this file. \quit

--
-- Replay, reconcile and verify: read models rebuilt from the log and
-- checked against it (API.md section 3).
--



--
-- Change capture: write-model tables as sources of events (API.md
-- section 4).
--
-- cqrs.captures is user configuration (dumped with the extension); the
-- triggers themselves are ordinary triggers on the captured tables, dumped
-- with them and created by pg_restore after their data, so a restore
-- appends nothing.  source is a regclass (kept by pg_dump and pg_upgrade).
-- type_prefix is the table's name when it was captured: the event types
-- stay the same when the table is renamed.
--
CREATE TABLE cqrs.captures (
    source          regclass    NOT NULL,
    category        text        NOT NULL,
    type_prefix     text        NOT NULL,
    captured_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT captures_pkey PRIMARY KEY (source),
    CONSTRAINT captures_category_key UNIQUE (category)
);
COMMENT ON TABLE cqrs.captures IS 'pg_cqrs change capture: captured tables and their categories';
SELECT pg_catalog.pg_extension_config_dump('cqrs.captures', '');
-- like pg_trigger, readable by all: it is what makes a table's writes append
GRANT SELECT ON cqrs.captures TO PUBLIC;

-- The row trigger (and the TRUNCATE guard) of captured tables.  EXECUTE
-- stays with PUBLIC: capture() and pg_restore create the triggers with the
-- caller's rights, and the function refuses tables cqrs.captures does not
-- list, so a hand-made trigger can do nothing.
CREATE FUNCTION cqrs.capture_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_capture_trigger'
LANGUAGE C;

-- Not STRICT: a NULL argument is an error, not a silent no-op.  Authorised
-- by ownership of the table, as CREATE TRIGGER is.
CREATE FUNCTION cqrs.capture(source regclass, category text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_capture'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cqrs.capture(regclass, text) IS
    'append an event for every INSERT, UPDATE and DELETE of a table';

CREATE FUNCTION cqrs.uncapture(source regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_uncapture'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cqrs.uncapture(regclass) IS
    'stop capturing the changes of a table';

-- DROP TABLE forgets the table's capture.
CREATE FUNCTION cqrs.capture_dropped()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cqrs_capture_dropped'
LANGUAGE C;

CREATE EVENT TRIGGER cqrs_capture_dropped ON sql_drop
    EXECUTE FUNCTION cqrs.capture_dropped();



--
-- Outbox: the output plugin's SQL side, published messages and slot
-- status (API.md section 5).
--
