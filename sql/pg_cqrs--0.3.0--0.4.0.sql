/* sql/pg_cqrs--0.3.0--0.4.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.4.0'" to load this file. \quit

--
-- 0.4.0: the privilege model (README, "Security model").  Every function
-- checks what PostgreSQL would check for the equivalent plain SQL; the log
-- is written only through cqrs.append; a projection belongs to its owner;
-- the outbox emits nothing a role without the publish right wrote.
--

--
-- The event log: appending and reading.
--

--
-- Projections.
--

--
-- The outbox and change capture.
--
