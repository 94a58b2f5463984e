/* pg_cqrs 0.5.0 -> 0.6.0: beyond one server (issue 12) */

\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.6.0'" to load this file. \quit

--
-- No catalog change.  What 0.6.0 adds lives in the library: the append
-- floors reach hot standbys through WAL (src/standby.c), so read_all,
-- safe_position and wait_for_projection work there; the launcher wakes
-- only the database that asked; the output plugin can end each
-- transaction with a commit line.  The script exists so that the
-- extension's version says which library behaviour a database expects.
--
