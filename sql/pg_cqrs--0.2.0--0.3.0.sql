/* sql/pg_cqrs--0.2.0--0.3.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.3.0'" to load this file. \quit

--
-- Replay, reconcile and verify: read models rebuilt from the log and
-- checked against it (API.md section 3).
--

-- What each projection's handler wrote to each of its tables, summed per
-- key bucket (see src/digest.c): appliers append delta rows, compaction
-- folds them; a row with base marks the digest as established.  No foreign
-- key to cqrs.projections and no index: every sync append writes a delta
-- row, straight into the heap (src/digest.c), and compaction keeps the
-- table to a few rows per owned table.
CREATE TABLE cqrs.projection_digests (
    projection  text        NOT NULL,
    "table"     regclass    NOT NULL,
    base        boolean     NOT NULL DEFAULT false,
    buckets     integer[]   NOT NULL,
    counts      bigint[]    NOT NULL,
    sums        bigint[]    NOT NULL
);
COMMENT ON TABLE cqrs.projection_digests IS 'pg_cqrs: per-bucket digests of what projections wrote to their tables';
SELECT pg_catalog.pg_extension_config_dump('cqrs.projection_digests', '');

-- The row trigger on every table a projection owns (created by
-- create_projection, replay and reconcile).
CREATE FUNCTION cqrs.digest_row()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cqrs_digest_row'
LANGUAGE C;

-- Whether a projection keeps digests: on by default; off spares its
-- appliers the digest trigger (a row trigger per handler write and a delta
-- row per batch or sync append), at the price of cqrs.verify.
ALTER TABLE cqrs.projections ADD COLUMN digest boolean NOT NULL DEFAULT true;

DROP FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[]);
CREATE FUNCTION cqrs.create_projection(name text, handler regproc,
                                       mode text DEFAULT 'sync',
                                       tables regclass[] DEFAULT '{}',
                                       categories text[] DEFAULT NULL,
                                       types text[] DEFAULT NULL,
                                       digest boolean DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_create_projection'
LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean) FROM PUBLIC;

CREATE FUNCTION cqrs.replay(name text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_replay'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.reconcile(name text, repair boolean DEFAULT false)
RETURNS TABLE (table_name regclass, key jsonb, drift text, expected jsonb, actual jsonb)
AS 'MODULE_PATHNAME', 'cqrs_reconcile'
LANGUAGE C VOLATILE;

CREATE FUNCTION cqrs.verify(name text)
RETURNS TABLE (table_name regclass, "rows" bigint, expected_rows bigint,
               drifted_buckets integer, matches boolean)
AS 'MODULE_PATHNAME', 'cqrs_verify'
LANGUAGE C VOLATILE;

-- Replay and reconcile run handlers as projection owners and lock out
-- appends: administrators only, like the other lifecycle functions.
-- verify only reads (and folds digest rows).
REVOKE EXECUTE ON FUNCTION cqrs.replay(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.reconcile(text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cqrs.verify(text) FROM PUBLIC;



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
-- The output plugin itself needs no SQL: the library is the plugin
-- (pg_create_logical_replication_slot('outbox', 'pg_cqrs')).

-- A transactional message to outbox consumers, written to WAL only.
-- Not STRICT: a NULL topic or payload is an error, a NULL key is no key.
CREATE FUNCTION cqrs.publish(topic text, payload jsonb, key text DEFAULT NULL)
RETURNS pg_lsn
AS 'MODULE_PATHNAME', 'cqrs_publish'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cqrs.publish(text, jsonb, text) IS
    'publish a message to outbox consumers when this transaction commits';

-- The highest event position a slot's consumer is known to have received,
-- given the position it confirmed; NULL when unknown (see src/outbox.c).
CREATE FUNCTION cqrs.outbox_delivered(slot_name name, confirmed pg_lsn)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_outbox_delivered'
LANGUAGE C STABLE STRICT;

-- One row per logical slot using the pg_cqrs plugin, in any database;
-- lag_events only for the slots of this database.
CREATE VIEW cqrs.outbox_status AS
SELECT s.slot_name AS name,
       s.database,
       s.active,
       s.active_pid,
       s.confirmed_flush_lsn AS confirmed_lsn,
       pg_catalog.pg_wal_lsn_diff(
           CASE WHEN pg_catalog.pg_is_in_recovery()
                THEN pg_catalog.pg_last_wal_replay_lsn()
                ELSE pg_catalog.pg_current_wal_lsn() END,
           s.confirmed_flush_lsn)::bigint AS lag_bytes,
       -- NULL while the delivered position is unknown (GREATEST would
       -- turn that into 0)
       CASE WHEN s.database OPERATOR(pg_catalog.=) pg_catalog.current_database()
            THEN GREATEST(h.head, d.delivered) OPERATOR(pg_catalog.-) d.delivered
       END AS lag_events,
       s.wal_status,
       s.safe_wal_size
  FROM pg_catalog.pg_replication_slots s
 CROSS JOIN LATERAL (SELECT cqrs.outbox_delivered(s.slot_name, s.confirmed_flush_lsn)
                            AS delivered) d
 CROSS JOIN (SELECT COALESCE(pg_catalog.max(e."position"), 0) AS head
               FROM cqrs.events e) h
 WHERE s.plugin OPERATOR(pg_catalog.=) 'pg_cqrs'
   AND s.slot_type OPERATOR(pg_catalog.=) 'logical';

COMMENT ON VIEW cqrs.outbox_status IS
    'pg_cqrs outbox slots: how far each consumer got, in WAL bytes and in events';
