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
