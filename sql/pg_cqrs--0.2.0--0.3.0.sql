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
