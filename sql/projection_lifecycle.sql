--
-- projection_lifecycle.sql: create_projection's validation and defaults,
-- drop/pause/resume, the catalog, and errors of every lifecycle function
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- a read table and a handler that counts how often it saw each event
CREATE TABLE seen (position bigint PRIMARY KEY, stream text NOT NULL, n int NOT NULL DEFAULT 1);
CREATE FUNCTION seen_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen (position, stream) VALUES (e.position, e.stream)
    ON CONFLICT (position) DO UPDATE SET n = seen.n + 1
$$;
CREATE FUNCTION noop(e cqrs.events) RETURNS void LANGUAGE sql AS '';

--
-- handler validation: exactly one cqrs.events argument, returns void, a
-- plain function
--
CREATE FUNCTION h_text(e text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION h_int(e cqrs.events) RETURNS integer LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION h_setof(e cqrs.events) RETURNS SETOF void LANGUAGE sql AS '';
CREATE FUNCTION h_table(e cqrs.events) RETURNS TABLE (x int) LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION h_two(e cqrs.events, extra int) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION h_default(e cqrs.events, extra int DEFAULT 1) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION h_none() RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION h_array(e cqrs.events[]) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION h_out(e cqrs.events, OUT x int) LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE h_proc(e cqrs.events) LANGUAGE sql AS '';
CREATE AGGREGATE h_agg(cqrs.events) (sfunc = array_append, stype = cqrs.events[]);
CREATE FUNCTION h_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
SELECT label, try(cmd) FROM (VALUES
    ('text argument',       $$SELECT cqrs.create_projection('p', 'h_text')$$),
    ('returns integer',     $$SELECT cqrs.create_projection('p', 'h_int')$$),
    ('returns setof void',  $$SELECT cqrs.create_projection('p', 'h_setof')$$),
    ('returns table',       $$SELECT cqrs.create_projection('p', 'h_table')$$),
    ('two arguments',       $$SELECT cqrs.create_projection('p', 'h_two')$$),
    ('defaulted 2nd arg',   $$SELECT cqrs.create_projection('p', 'h_default')$$),
    ('no argument',         $$SELECT cqrs.create_projection('p', 'h_none')$$),
    ('array argument',      $$SELECT cqrs.create_projection('p', 'h_array')$$),
    ('OUT parameter',       $$SELECT cqrs.create_projection('p', 'h_out')$$),
    ('procedure',           $$SELECT cqrs.create_projection('p', 'h_proc')$$),
    ('aggregate',           $$SELECT cqrs.create_projection('p', 'h_agg')$$),
    ('trigger function',    $$SELECT cqrs.create_projection('p', 'h_trigger')$$),
    ('unknown name',        $$SELECT cqrs.create_projection('p', 'no_such_handler')$$),
    ('unknown OID',         $$SELECT cqrs.create_projection('p', 0)$$),
    ('dangling OID',        $$SELECT cqrs.create_projection('p', 4000000000::oid::regproc)$$),
    ('NULL handler',        $$SELECT cqrs.create_projection('p', NULL)$$)
) AS t(label, cmd);
-- the message and hint in full
SELECT cqrs.create_projection('p', 'h_int');
-- none of that left a projection behind
SELECT count(*) FROM cqrs.projections;

--
-- name and mode
--
SELECT label, try(cmd) FROM (VALUES
    ('NULL name',           $$SELECT cqrs.create_projection(NULL, 'seen_handler')$$),
    ('empty name',          $$SELECT cqrs.create_projection('', 'seen_handler')$$),
    ('mode async',          $$SELECT cqrs.create_projection('p', 'seen_handler', 'async')$$),
    ('mode SYNC',           $$SELECT cqrs.create_projection('p', 'seen_handler', 'SYNC')$$),
    ('mode empty',          $$SELECT cqrs.create_projection('p', 'seen_handler', '')$$),
    ('mode with space',     $$SELECT cqrs.create_projection('p', 'seen_handler', 'sync ')$$)
) AS t(label, cmd);
SELECT cqrs.create_projection('p', 'seen_handler', 'eventually');
SELECT count(*) FROM cqrs.projections;

--
-- read tables: each must be a table with a primary key
--
CREATE TABLE no_pk (a int);
CREATE TABLE unique_only (a int UNIQUE NOT NULL);
CREATE VIEW a_view AS SELECT 1 AS a;
CREATE MATERIALIZED VIEW a_matview AS SELECT 1 AS a;
CREATE SEQUENCE a_sequence;
CREATE TYPE a_composite AS (a int);
CREATE TABLE parted (a int PRIMARY KEY) PARTITION BY RANGE (a);
CREATE TABLE other_read (k text PRIMARY KEY, v int);
-- A composite type or an index is refused by PostgreSQL's table_open()
-- before our own check, in words that differ between versions (15: "is a
-- composite type"; 17 and later: "cannot open relation ... This operation
-- is not supported for composite types"): only their SQLSTATE is shown.
SELECT label, CASE WHEN label IN ('composite type', 'index') THEN split_part(r, ':', 1)
                   ELSE r END AS try
  FROM (SELECT label, try(cmd) AS r FROM (VALUES
    ('no primary key',      $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{no_pk}')$$),
    ('unique, not pk',      $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{unique_only}')$$),
    ('second lacks pk',     $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{seen,no_pk}')$$),
    ('view',                $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{a_view}')$$),
    ('materialized view',   $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{a_matview}')$$),
    ('sequence',            $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{a_sequence}')$$),
    ('composite type',      $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{a_composite}')$$),
    ('index',               $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{seen_pkey}')$$),
    ('NULL element',        $$SELECT cqrs.create_projection('p', 'seen_handler', tables => ARRAY[NULL]::regclass[])$$),
    ('dangling OID',        $$SELECT cqrs.create_projection('p', 'seen_handler', tables => ARRAY[4000000000::oid::regclass])$$),
    ('unknown name',        $$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{no_such_table}')$$)
) AS t(label, cmd)) AS s;
SELECT cqrs.create_projection('p', 'seen_handler', tables => '{no_pk}');
SELECT count(*) FROM cqrs.projections;

--
-- defaults: mode sync, tables '{}', no filters; owner, search_path and
-- handler recorded; a new sync projection catches up at once
--
SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{}');
SELECT position FROM cqrs.append('order-1', 'OrderPaid', '{}');
SELECT now() AS t0 \gset
SELECT cqrs.create_projection('p', 'seen_handler');
SELECT name, handler, owner = current_user::regrole AS owner_is_creator, mode, tables,
       categories, types, search_path = current_setting('search_path') AS pinned_path,
       state, position, last_error, error_position,
       updated_at BETWEEN :'t0' AND now() AS updated_now
  FROM cqrs.projections;
SELECT * FROM seen ORDER BY position;
-- named arguments as the contract spells them; a partitioned read table
-- with a primary key is fine, and so are several tables
SELECT cqrs.create_projection(name => 'q', handler => 'noop', mode => 'deferred',
                              tables => '{parted,other_read}', categories => '{order}',
                              types => '{OrderPlaced,OrderPaid}');
SELECT name, handler, mode, tables, categories, types, state FROM cqrs.projections ORDER BY name;
SELECT cqrs.drop_projection('q');
-- NULL tables take the default; a NULL mode is an error, not a silent 'sync'
SELECT try($$SELECT cqrs.create_projection('r', 'noop', NULL, NULL)$$);
SELECT cqrs.create_projection('r', 'noop', 'sync', NULL);
SELECT name, mode, tables FROM cqrs.projections WHERE name = 'r';
SELECT cqrs.drop_projection('r');

-- a handler named with its signature (regprocedure), as an overloaded name
-- needs; the plain overloaded name is ambiguous before we even see it
CREATE FUNCTION overloaded(e cqrs.events) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION overloaded(e text) RETURNS void LANGUAGE sql AS '';
SELECT try($$SELECT cqrs.create_projection('o', 'overloaded')$$);
SELECT cqrs.create_projection('o', 'overloaded(cqrs.events)'::regprocedure);
SELECT handler FROM cqrs.projections WHERE name = 'o';
SELECT cqrs.drop_projection('o');
-- a schema-qualified handler is stored schema-qualified
CREATE SCHEMA lifecycle_s;
CREATE FUNCTION lifecycle_s.h(e cqrs.events) RETURNS void LANGUAGE sql AS '';
SELECT cqrs.create_projection('s', 'lifecycle_s.h');
SELECT handler FROM cqrs.projections WHERE name = 's';
SELECT cqrs.drop_projection('s');

--
-- duplicates, for either mode
--
SELECT label, try(cmd) FROM (VALUES
    ('same name',           $$SELECT cqrs.create_projection('p', 'seen_handler')$$),
    ('same name, deferred', $$SELECT cqrs.create_projection('p', 'seen_handler', 'deferred')$$)
) AS t(label, cmd);
SELECT count(*) FROM cqrs.projections;

--
-- unknown projections, NULL and empty names, for every function taking one
--
SELECT label, try(cmd) FROM (VALUES
    ('drop unknown',        $$SELECT cqrs.drop_projection('nope')$$),
    ('pause unknown',       $$SELECT cqrs.pause_projection('nope')$$),
    ('resume unknown',      $$SELECT cqrs.resume_projection('nope')$$),
    ('skip unknown',        $$SELECT cqrs.skip_event('nope', 1)$$),
    ('process unknown',     $$SELECT cqrs.process_projections('nope')$$),
    ('wait unknown',        $$SELECT cqrs.wait_for_projection('nope', 1, '0')$$),
    ('position unknown',    $$SELECT cqrs.projection_position('nope')$$),
    ('drop NULL',           $$SELECT cqrs.drop_projection(NULL)$$),
    ('pause NULL',          $$SELECT cqrs.pause_projection(NULL)$$),
    ('resume NULL',         $$SELECT cqrs.resume_projection(NULL)$$),
    ('skip NULL name',      $$SELECT cqrs.skip_event(NULL, 1)$$),
    ('skip NULL position',  $$SELECT cqrs.skip_event('p', NULL)$$),
    ('wait NULL name',      $$SELECT cqrs.wait_for_projection(NULL, 1, '0')$$),
    ('wait NULL up_to',     $$SELECT cqrs.wait_for_projection('p', NULL, '0')$$),
    ('drop empty',          $$SELECT cqrs.drop_projection('')$$),
    ('pause empty',         $$SELECT cqrs.pause_projection('')$$),
    ('resume empty',        $$SELECT cqrs.resume_projection('')$$),
    ('skip empty',          $$SELECT cqrs.skip_event('', 1)$$),
    ('wait empty',          $$SELECT cqrs.wait_for_projection('', 1, '0')$$),
    ('process negative',    $$SELECT cqrs.process_projections('p', -1)$$)
) AS t(label, cmd);
-- names are case-sensitive text, not identifiers
SELECT try($$SELECT cqrs.pause_projection('P')$$);

--
-- pause and resume: state and checkpoint
--
SELECT position FROM cqrs.append('order-2', 'OrderPlaced', '{}');
SELECT cqrs.pause_projection('p');
SELECT name, state, position, last_error, error_position FROM cqrs.projections;
-- pausing twice is harmless and keeps the checkpoint (the events appended
-- in between are still to be applied)
SELECT position FROM cqrs.append('order-2', 'OrderPaid', '{}');
SELECT cqrs.pause_projection('p');
SELECT state, position FROM cqrs.projections WHERE name = 'p';
SELECT cqrs.resume_projection('p');
SELECT state, position FROM cqrs.projections WHERE name = 'p';
-- resuming a running projection is harmless too, and applies nothing twice
SELECT cqrs.resume_projection('p');
SELECT position, stream, n FROM seen ORDER BY position;

-- updated_at follows each change
SELECT updated_at AS before FROM cqrs.projections WHERE name = 'p' \gset
SELECT pg_sleep(0.01);
SELECT cqrs.pause_projection('p');
SELECT updated_at > :'before' AS moved FROM cqrs.projections WHERE name = 'p';
SELECT cqrs.resume_projection('p');

--
-- lifecycle calls are transactional
--
BEGIN;
SELECT cqrs.create_projection('t', 'noop', 'deferred');
SELECT cqrs.pause_projection('p');
SELECT cqrs.drop_projection('p');
SELECT name FROM cqrs.projections;
ROLLBACK;
SELECT name, state FROM cqrs.projections;

--
-- a handler in use cannot be dropped; one renamed away is reported by the
-- next append as a missing handler, and picked up again when it is back --
-- with the body its owner gives it, also by a session that had already
-- used the old one
--
SELECT position FROM cqrs.append('order-3', 'OrderPlaced', '{}');
SELECT try($$DROP FUNCTION seen_handler(cqrs.events)$$);
ALTER FUNCTION seen_handler(cqrs.events) RENAME TO seen_handler_away;
SELECT try($$SELECT cqrs.append('order-3', 'OrderPaid', '{}')$$);
ALTER FUNCTION seen_handler_away(cqrs.events) RENAME TO seen_handler;
CREATE OR REPLACE FUNCTION seen_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen (position, stream) VALUES (e.position, e.stream || ' (new)')
    ON CONFLICT (position) DO UPDATE SET n = seen.n + 1
$$;
SELECT position FROM cqrs.append('order-3', 'OrderPaid', '{}');
SELECT position, stream, n FROM seen ORDER BY position;
SELECT cqrs.stream_version('order-3');

--
-- drop: the projection and its bookkeeping go, its read tables stay
--
SELECT cqrs.drop_projection('p');
SELECT count(*) FROM cqrs.projections;
SELECT count(*) FROM seen;
SELECT position FROM cqrs.append('order-4', 'OrderPlaced', '{}');
SELECT count(*) FROM seen;
SELECT try($$SELECT cqrs.drop_projection('p')$$);
-- the name can be used again; the new projection catches up from scratch
TRUNCATE seen;
SELECT cqrs.create_projection('p', 'seen_handler', categories => '{order}');
SELECT count(*), sum(n) FROM seen;
SELECT cqrs.drop_projection('p');

-- a projection's read tables and handler are the user's: dropping them is
-- not blocked, and dropping the extension does not need CASCADE
DROP TABLE seen, no_pk, unique_only, parted, other_read;
DROP VIEW a_view;
DROP MATERIALIZED VIEW a_matview;
DROP SEQUENCE a_sequence;
DROP TYPE a_composite;
DROP FUNCTION seen_handler(cqrs.events), noop(cqrs.events), h_text(text), h_int(cqrs.events), h_setof(cqrs.events),
    h_table(cqrs.events), h_two(cqrs.events, int), h_default(cqrs.events, int), h_none(),
    h_array(cqrs.events[]), h_out(cqrs.events), h_trigger(), overloaded(cqrs.events),
    overloaded(text), lifecycle_s.h(cqrs.events);
DROP PROCEDURE h_proc(cqrs.events);
DROP AGGREGATE h_agg(cqrs.events);
DROP SCHEMA lifecycle_s;
DROP EXTENSION pg_cqrs;
