--
-- security_log.sql: the event log's privilege model (issue 10, the event
-- log's part): reads check SELECT and honour row-level security, appends
-- check INSERT before anything else, append is the only way in, the size
-- limits have no holes, and a read-only transaction is told so by append.
--
-- Roles: a writer (USAGE on cqrs, INSERT on the log), a reader (USAGE,
-- SELECT), a stranger (USAGE only), and a projection owner whose handlers
-- write the log.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP SCHEMA IF EXISTS regress_cqrs_owner_s CASCADE;
DROP ROLE IF EXISTS regress_cqrs_writer, regress_cqrs_reader, regress_cqrs_stranger,
    regress_cqrs_owner;
RESET client_min_messages;

CREATE ROLE regress_cqrs_writer;
CREATE ROLE regress_cqrs_reader;
CREATE ROLE regress_cqrs_stranger;
CREATE ROLE regress_cqrs_owner;

--
-- The upgrade from 0.3.0 closes the door and keeps the rows.  In 0.3.0 a
-- role with INSERT on the log (as the README recipe grants it) could write
-- any position, version and id directly.
--
CREATE EXTENSION pg_cqrs VERSION '0.3.0';
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_writer;
GRANT SELECT, INSERT ON cqrs.events TO regress_cqrs_writer;
SELECT version FROM cqrs.append('order-1', 'OrderPlaced', '{"n": 1}');
SET ROLE regress_cqrs_writer;
INSERT INTO cqrs.events (position, stream, version, id, type, data)
VALUES (1000000, 'order-1', 7, gen_random_uuid(), 'Forged', '{}');
RESET ROLE;
CREATE TEMP TABLE before_update AS SELECT * FROM cqrs.events;
ALTER EXTENSION pg_cqrs UPDATE TO '0.4.0';
SELECT count(*) AS rows_changed_by_update
  FROM (SELECT * FROM before_update EXCEPT ALL SELECT * FROM cqrs.events) d;
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'cqrs.events'::regclass AND tgname LIKE 'events_forbid%' ORDER BY tgname;
SET ROLE regress_cqrs_writer;
SELECT try($$INSERT INTO cqrs.events (position, stream, version, id, type, data)
             VALUES (2000000, 'order-1', 8, gen_random_uuid(), 'Forged', '{}')$$);
-- the recipe's grant is still the right to append
SELECT version FROM cqrs.append('order-2', 'OrderPlaced', '{"n": 2}');
RESET ROLE;
DROP TABLE before_update;
DROP EXTENSION pg_cqrs;

--
-- A fresh 0.4.0 install.
--
CREATE EXTENSION pg_cqrs;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_writer, regress_cqrs_reader, regress_cqrs_stranger;
GRANT INSERT ON cqrs.events TO regress_cqrs_writer;
GRANT SELECT ON cqrs.events TO regress_cqrs_reader;
SELECT version FROM cqrs.append('order-1', 'OrderPlaced', '{"n": 1}',
                                id => '00000000-0000-4000-8000-000000000001');
SELECT version FROM cqrs.append('order-1', 'OrderPaid', '{"n": 2}');
SELECT version FROM cqrs.append('secret-1', 'Salary', '{"n": 3}', '{"tenant": "hr"}');
SELECT version FROM cqrs.append('order-2', 'OrderPlaced', '{"n": 4}', '{"tenant": "hr"}');
SELECT version FROM cqrs.append('secret-1', 'Salary', '{"n": 5}', '{"tenant": "hr"}');
SELECT version FROM cqrs.append('order-1', 'OrderShipped', '{"n": 6}');

--
-- 1. Reads need SELECT on cqrs.events, as SELECT does.
--
SET ROLE regress_cqrs_stranger;
SELECT label, try(cmd) FROM (VALUES
    ('SELECT',         $$SELECT count(*) FROM cqrs.events$$),
    ('read_stream',    $$SELECT count(*) FROM cqrs.read_stream('order-1')$$),
    ('read_all',       $$SELECT count(*) FROM cqrs.read_all()$$),
    ('stream_version', $$SELECT cqrs.stream_version('order-1')$$),
    ('safe_position',  $$SELECT cqrs.safe_position()$$)
) AS t(label, cmd);
RESET ROLE;
-- with SELECT they read
SET ROLE regress_cqrs_reader;
SELECT cqrs.stream_version('order-1') AS order_1, cqrs.stream_version('secret-1') AS secret_1;
SELECT count(*) FROM cqrs.read_stream('order-1');
SELECT count(*) FROM cqrs.read_all();
SELECT cqrs.safe_position() >= 6 AS safe_position_covers_log;
RESET ROLE;
-- column privileges on every column are as good as the table's, as for SELECT *
GRANT SELECT (position, stream, version, id, type, data, metadata, recorded_at)
   ON cqrs.events TO regress_cqrs_stranger;
SET ROLE regress_cqrs_stranger;
SELECT count(*) FROM cqrs.read_stream('order-1');
RESET ROLE;
REVOKE SELECT (position, stream, version, id, type, data, metadata, recorded_at)
    ON cqrs.events FROM regress_cqrs_stranger;
GRANT SELECT (stream, version) ON cqrs.events TO regress_cqrs_stranger;
SET ROLE regress_cqrs_stranger;
SELECT try($$SELECT count(*) FROM cqrs.read_stream('order-1')$$);
RESET ROLE;
REVOKE SELECT (stream, version) ON cqrs.events FROM regress_cqrs_stranger;

--
-- 1. Row-level security: the readers return the rows a SELECT returns.
-- The reader may see neither the secret streams nor the hr tenant's events.
--
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_sees_public ON cqrs.events FOR SELECT TO regress_cqrs_reader
    USING (stream NOT LIKE 'secret-%' AND coalesce(metadata->>'tenant', '') <> 'hr');
SET ROLE regress_cqrs_reader;
SELECT position, stream, version, type FROM cqrs.events ORDER BY position;
SELECT position, stream, version, type FROM cqrs.read_all();
SELECT position, stream, version, type FROM cqrs.read_all(1, 1);
SELECT position, stream, type FROM cqrs.read_all(categories => '{order,secret}');
SELECT position, stream, type FROM cqrs.read_all(types => '{Salary,OrderShipped}');
SELECT position, stream, type FROM cqrs.read_all(0, 10, '{order}', '{OrderPlaced,OrderShipped}');
SELECT version, type FROM cqrs.read_stream('order-1');
SELECT version, type FROM cqrs.read_stream('order-1', 2, 1);
SELECT count(*) AS secret_rows FROM cqrs.read_stream('secret-1');
SELECT count(*) AS hr_rows FROM cqrs.read_stream('order-2');
SELECT cqrs.stream_version('order-1') AS order_1, cqrs.stream_version('secret-1') AS secret_1,
       cqrs.stream_version('order-2') AS order_2;
-- whole rows, both ways
SELECT count(*) AS read_all_only FROM
    (SELECT * FROM cqrs.read_all() EXCEPT ALL SELECT * FROM cqrs.events) d;
SELECT count(*) AS select_only FROM
    (SELECT * FROM cqrs.events EXCEPT ALL SELECT * FROM cqrs.read_all()) d;
-- with row_security = off the functions fail as the SELECT does
SET row_security = off;
SELECT label, try(cmd) FROM (VALUES
    ('SELECT',         $$SELECT count(*) FROM cqrs.events$$),
    ('read_stream',    $$SELECT count(*) FROM cqrs.read_stream('order-1')$$),
    ('read_all',       $$SELECT count(*) FROM cqrs.read_all()$$),
    ('stream_version', $$SELECT cqrs.stream_version('order-1')$$)
) AS t(label, cmd);
RESET row_security;
-- the functions do not change the reader's search_path
SELECT current_setting('search_path') AS search_path;
RESET ROLE;
-- the table's owner is not subject to its policies, nor a superuser
SELECT count(*) AS owner_sees FROM cqrs.read_all();
SELECT cqrs.stream_version('secret-1') AS owner_secret_1;
DROP POLICY reader_sees_public ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

--
-- 2. Append checks the right to append before it looks anything up: a
-- refused call learns no version, no stream holding an id, and burns no
-- position.
--
SELECT last_value AS last_position FROM cqrs.events_position_seq \gset
SET ROLE regress_cqrs_reader;
SELECT label, try(cmd) FROM (VALUES
    ('id of another stream', $$SELECT cqrs.append('order-9', 'T', '{}',
                                 id => '00000000-0000-4000-8000-000000000001')$$),
    ('id, idempotent path',  $$SELECT cqrs.append('order-1', 'OrderPlaced', '{"n": 1}',
                                 id => '00000000-0000-4000-8000-000000000001')$$),
    ('wrong version',        $$SELECT cqrs.append('order-1', 'T', '{}', expected_version => 1)$$),
    ('new stream',           $$SELECT cqrs.append('order-9', 'T', '{}')$$),
    ('bad input',            $$SELECT cqrs.append('order-9', '', '{}')$$),
    ('batch, recorded id',   $$SELECT cqrs.append_events('order-9',
                                 '[{"type": "T", "data": {}, "id": "00000000-0000-4000-8000-000000000001"}]')$$),
    ('batch, wrong version', $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}}]', 1)$$)
) AS t(label, cmd);
RESET ROLE;
SELECT last_value = :last_position AS no_position_burnt FROM cqrs.events_position_seq;

--
-- 3. Append is the only door: a writer's INSERT and COPY are refused,
-- whatever they write; its appends go through.
--
SET ROLE regress_cqrs_writer;
INSERT INTO cqrs.events (position, stream, version, id, type, data)
VALUES (1000000, 'order-1', 99, gen_random_uuid(), 'Forged', '{}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT label, try(cmd) FROM (VALUES
    ('INSERT with defaults',  $$INSERT INTO cqrs.events (stream, version, id, type, data)
                                VALUES ('order-1', 4, gen_random_uuid(), 'Forged', '{}')$$),
    ('INSERT no rows',        $$INSERT INTO cqrs.events (stream, version, id, type, data)
                                SELECT 'order-1', 4, gen_random_uuid(), 'Forged', '{}' WHERE false$$),
    ('INSERT ON CONFLICT',    $$INSERT INTO cqrs.events (stream, version, id, type, data)
                                VALUES ('order-1', 4, gen_random_uuid(), 'Forged', '{}')
                                ON CONFLICT DO NOTHING$$),
    ('INSERT in a CTE',       $$WITH a AS (SELECT * FROM cqrs.append('order-1', 'T', '{}'))
                                INSERT INTO cqrs.events (stream, version, id, type, data)
                                SELECT 'order-1', a.version + 1, gen_random_uuid(), 'Forged', '{}'
                                  FROM a$$)
) AS t(label, cmd);
COPY cqrs.events (position, stream, version, id, type, data) FROM stdin;
3000000	order-1	50	00000000-0000-4000-8000-0000000000ff	Forged	{}
\.
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- even with session_replication_role = replica (not that it may set it)
SELECT try($$SET session_replication_role = replica$$);
-- a refused append, then an INSERT in the same transaction: still refused
BEGIN;
SAVEPOINT s;
SELECT cqrs.append('order-1', 'T', '{}', expected_version => 1);
ROLLBACK TO SAVEPOINT s;
SELECT try($$INSERT INTO cqrs.events (stream, version, id, type, data)
             VALUES ('order-1', 4, gen_random_uuid(), 'Forged', '{}')$$);
COMMIT;
SELECT version FROM cqrs.append('order-1', 'OrderDelivered', '{"n": 7}');
SELECT version FROM cqrs.append_events('order-3', '[{"type": "OrderPlaced", "data": {}},
                                                    {"type": "OrderPaid", "data": {}}]');
RESET ROLE;
SELECT count(*) AS forged FROM cqrs.events WHERE type = 'Forged';
-- the owner and superusers may INSERT (pg_restore, data-only or whole)
INSERT INTO cqrs.events (position, stream, version, id, type, data)
VALUES (500, 'restored-1', 1, '00000000-0000-4000-8000-000000000500', 'Restored', '{}');
COPY cqrs.events (position, stream, version, id, type, data) FROM stdin;
501	restored-1	2	00000000-0000-4000-8000-000000000501	Restored	{}
\.
SELECT position, stream, version FROM cqrs.events WHERE stream = 'restored-1' ORDER BY position;

-- row-level security WITH CHECK applies to appends: the writer needs an
-- INSERT policy, and may append only what it allows
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY writer_appends_own ON cqrs.events FOR INSERT TO regress_cqrs_writer
    WITH CHECK (metadata->>'tenant' = 'sales');
SET ROLE regress_cqrs_writer;
SELECT try($$SELECT cqrs.append('order-4', 'OrderPlaced', '{}', '{"tenant": "hr"}')$$);
SELECT version FROM cqrs.append('order-4', 'OrderPlaced', '{}', '{"tenant": "sales"}');
RESET ROLE;
DROP POLICY writer_appends_own ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

-- Handlers: a handler that appends through cqrs.append works; one that
-- INSERTs into the log directly is refused, although it runs while
-- cqrs.append's own INSERT is in progress.
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_owner;
GRANT INSERT ON cqrs.events TO regress_cqrs_owner;
GRANT EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean),
    cqrs.drop_projection(text) TO regress_cqrs_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON cqrs.projections, cqrs.skipped_events TO regress_cqrs_owner;
CREATE SCHEMA regress_cqrs_owner_s AUTHORIZATION regress_cqrs_owner;
SET ROLE regress_cqrs_owner;
CREATE TABLE regress_cqrs_owner_s.seen (position bigint PRIMARY KEY);
CREATE FUNCTION regress_cqrs_owner_s.audit(e cqrs.events) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_cqrs_owner_s.seen VALUES (e.position);
    PERFORM cqrs.append('audit-' || e.stream, 'Audited', jsonb_build_object('of', e.position));
END $$;
CREATE FUNCTION regress_cqrs_owner_s.forge(e cqrs.events) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cqrs.events (position, stream, version, id, type, data)
    VALUES (e.position + 1000000, e.stream, e.version + 1, gen_random_uuid(), 'Forged', '{}');
END $$;
SELECT cqrs.create_projection('audit', 'regress_cqrs_owner_s.audit',
                              tables => '{regress_cqrs_owner_s.seen}', categories => '{cmd}');
SELECT cqrs.create_projection('forge', 'regress_cqrs_owner_s.forge', categories => '{forge}');
RESET ROLE;
SET ROLE regress_cqrs_writer;
SELECT version FROM cqrs.append('cmd-1', 'Ordered', '{}');
SELECT regexp_replace(try_ctx($$SELECT cqrs.append('forge-1', 'Ordered', '{}')$$),
                      ' applying .*', '') AS refused;
RESET ROLE;
SELECT stream, version, type FROM cqrs.events
 WHERE stream IN ('cmd-1', 'audit-cmd-1', 'forge-1') ORDER BY position;
SET ROLE regress_cqrs_owner;
SELECT cqrs.drop_projection('audit'), cqrs.drop_projection('forge');
RESET ROLE;
DROP SCHEMA regress_cqrs_owner_s CASCADE;
REVOKE SELECT, INSERT, UPDATE, DELETE ON cqrs.projections, cqrs.skipped_events FROM regress_cqrs_owner;

-- Change capture appends as the captured table's owner: it needs the
-- append right like anyone, and its events are not "direct" INSERTs.
CREATE TABLE public.regress_cqrs_accounts (id int PRIMARY KEY, balance int NOT NULL);
ALTER TABLE public.regress_cqrs_accounts OWNER TO regress_cqrs_owner;
SET ROLE regress_cqrs_owner;
SELECT cqrs.capture('public.regress_cqrs_accounts');
INSERT INTO public.regress_cqrs_accounts VALUES (1, 10);
RESET ROLE;
REVOKE INSERT ON cqrs.events FROM regress_cqrs_owner;
SET ROLE regress_cqrs_owner;
SELECT try($$UPDATE public.regress_cqrs_accounts SET balance = 20$$);
RESET ROLE;
SELECT stream, version, type FROM cqrs.events WHERE stream LIKE 'regress_cqrs_accounts-%';
DROP TABLE public.regress_cqrs_accounts;

--
-- 7. Limits: stream and type have length caps, and cqrs.max_event_size
-- counts the stream, type, data and metadata.
--
SELECT label, try(cmd) FROM (VALUES
    ('stream of 1024 bytes',  $$SELECT cqrs.append(repeat('s', 1024), 'T', '{}')$$),
    ('stream of 1025 bytes',  $$SELECT cqrs.append(repeat('s', 1025), 'T', '{}')$$),
    ('stream of 3000 random bytes, no btree error',
                              $$SELECT cqrs.append((SELECT string_agg(md5(i::text), '')
                                                      FROM generate_series(1, 94) i), 'T', '{}')$$),
    ('batch, long stream',    $$SELECT cqrs.append_events(repeat('s', 2000), '[{"type": "T", "data": {}}]')$$),
    ('type of 256 bytes',     $$SELECT cqrs.append('long-1', repeat('t', 256), '{}')$$),
    ('type of 257 bytes',     $$SELECT cqrs.append('long-1', repeat('t', 257), '{}')$$),
    ('type of 20MB',          $$SELECT cqrs.append('long-1', repeat('t', 20 * 1024 * 1024), '{}')$$),
    ('batch, long type',      $$SELECT cqrs.append_events('long-1',
                                  jsonb_build_array(jsonb_build_object('type', repeat('t', 300), 'data', '{}'::jsonb)))$$),
    ('multibyte stream, 342 characters, 1026 bytes',
                              $$SELECT cqrs.append(repeat('€', 342), 'T', '{}')$$)
) AS t(label, cmd);
SET cqrs.max_event_size = '1kB';
SELECT label, try(cmd) FROM (VALUES
    ('900B data',             $$SELECT cqrs.append('long-2', 'T', jsonb_build_object('x', repeat('x', 900)))$$),
    ('900B data, 200B type',  $$SELECT cqrs.append('long-2', repeat('t', 200),
                                                   jsonb_build_object('x', repeat('x', 900)))$$),
    ('900B data, 200B stream', $$SELECT cqrs.append(repeat('s', 200), 'T',
                                                    jsonb_build_object('x', repeat('x', 900)))$$),
    ('batch: 900B data, 200B type', $$SELECT cqrs.append_events('long-2', jsonb_build_array(
                                  jsonb_build_object('type', repeat('t', 200),
                                                     'data', jsonb_build_object('x', repeat('x', 900)))))$$)
) AS t(label, cmd);
RESET cqrs.max_event_size;
SELECT left(stream, 8) AS stream, length(stream), version, length(type) FROM cqrs.events
 WHERE stream LIKE 'long-%' OR stream LIKE 'sss%' ORDER BY position;

-- JSON null metadata means none, like SQL NULL (the README says so)
SELECT position AS p FROM cqrs.append('meta-1', 'T', '{}', 'null') \gset
SELECT metadata FROM cqrs.events WHERE position = :p;
SELECT position AS p FROM cqrs.append_events('meta-1', '[{"type": "T", "data": {}, "metadata": null}]') \gset
SELECT metadata FROM cqrs.events WHERE position = :p;

--
-- Errors a user can act on: append in a read-only transaction names itself.
--
BEGIN READ ONLY;
SELECT cqrs.append('order-1', 'T', '{}');
ROLLBACK;
BEGIN READ ONLY;
SELECT label, try(cmd) FROM (VALUES
    ('append',        $$SELECT cqrs.append('order-1', 'T', '{}')$$),
    ('append_events', $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}}]')$$)
) AS t(label, cmd);
ROLLBACK;
SET default_transaction_read_only = on;
SELECT try($$SELECT cqrs.append('order-1', 'T', '{}')$$);
RESET default_transaction_read_only;

DROP EXTENSION pg_cqrs;
DROP ROLE regress_cqrs_writer, regress_cqrs_reader, regress_cqrs_stranger, regress_cqrs_owner;
