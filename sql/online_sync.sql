--
-- online_sync.sql: sync projections created online, and rebuilt with
-- cqrs.replay(name, concurrently => true): the 'catching up' state, its
-- steps in the foreground (process_projections), failures, what is refused,
-- and who may ask (only the projection's owner)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP ROLE IF EXISTS regress_online_tenant, regress_online_nobody;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

CREATE TABLE seen ("position" bigint PRIMARY KEY, stream text NOT NULL,
                   times int NOT NULL DEFAULT 1);
-- fails on the event whose data says so while fail_on is set
CREATE TABLE fail_on (v boolean);
CREATE FUNCTION record(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ? 'poison' AND EXISTS (SELECT FROM public.fail_on WHERE v) THEN
        RAISE EXCEPTION 'poisoned event %', e.data->>'poison';
    END IF;
    INSERT INTO public.seen VALUES (e."position", e.stream)
    ON CONFLICT ("position") DO UPDATE SET times = seen.times + 1;
END $$;
-- the read table against the log, both ways: nothing missing, nothing twice
CREATE FUNCTION drift() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM (
      (SELECT "position", stream, 1 FROM cqrs.events EXCEPT ALL SELECT "position", stream, times FROM seen)
      UNION ALL
      (SELECT "position", stream, times FROM seen EXCEPT ALL SELECT "position", stream, 1 FROM cqrs.events)) d
$$;

SELECT count(*) FROM (SELECT cqrs.append('acct-' || (i % 7), 'T', jsonb_build_object('i', i))
                        FROM generate_series(1, 2500) i) s;
SELECT cqrs.append('acct-x', 'T', '{"poison": 1}') IS NOT NULL AS appended;
SELECT count(*) FROM (SELECT cqrs.append('acct-' || (i % 7), 'T', jsonb_build_object('i', i))
                        FROM generate_series(1, 100) i) s;

-- created online: longer than a batch (cqrs.batch_size), so in several
SELECT cqrs.create_projection('p', 'record', 'sync', '{seen}');
SELECT count(*), max(times), drift() FROM seen;
SELECT cqrs.append('acct-1', 'T', '{}') IS NOT NULL AS appended;
SELECT count(*), drift() FROM seen;
SELECT matches FROM cqrs.verify('p');

-- at REPEATABLE READ it catches up under the lock, with the same result
CREATE TABLE seen2 (LIKE seen INCLUDING ALL);
CREATE FUNCTION record2(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.seen2 VALUES (e."position", e.stream)
$$;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT cqrs.create_projection('p2', 'record2', 'sync', '{seen2}');
COMMIT;
SELECT (SELECT count(*) FROM seen2) = (SELECT count(*) FROM cqrs.events) AS complete;
SELECT cqrs.drop_projection('p2');

-- an error in the handler during the online catch-up leaves nothing behind
CREATE TABLE seen3 (LIKE seen INCLUDING ALL);
CREATE FUNCTION record3(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ? 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
    INSERT INTO public.seen3 VALUES (e."position", e.stream);
END $$;
SELECT try_ctx($$SELECT cqrs.create_projection('p3', 'record3', 'sync', '{seen3}')$$);
SELECT count(*) FROM cqrs.projections WHERE name = 'p3';
SELECT count(*) FROM seen3;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'seen3'::regclass;

--
-- cqrs.replay(name, concurrently)
--
-- false: the one-transaction replay, as cqrs.replay(name)
SELECT cqrs.replay('p', concurrently => false) = (SELECT count(*) FROM cqrs.events) AS replayed;
SELECT try($$SELECT cqrs.replay('p', concurrently => NULL)$$);
-- true, in one transaction so that the worker cannot see it before we look:
-- the mark, then the steps in the foreground
BEGIN;
SELECT cqrs.replay('p', concurrently => true);
SELECT name, mode, state, "position", lag_events > 0 AS lagging FROM cqrs.projection_status;
SELECT cqrs.wait_for_projection('p', 1, '0');
SELECT try($$SELECT cqrs.pause_projection('p')$$);
UPDATE seen SET times = 5 WHERE "position" = 1;   -- drift, which the rebuild repairs
SELECT cqrs.process_projections('p') = (SELECT count(*) FROM cqrs.events) AS rebuilt;
SELECT name, mode, state, lag_events FROM cqrs.projection_status;
COMMIT;
SELECT count(*), max(times), drift() FROM seen;
SELECT matches FROM cqrs.verify('p');
SELECT cqrs.append('acct-2', 'T', '{}') IS NOT NULL AS appended;
SELECT drift();

-- a handler error while catching up fails it, as a deferred projection
-- fails; resume puts it back to catching up
BEGIN;
INSERT INTO fail_on VALUES (true);
SELECT cqrs.replay('p', concurrently => true);
SELECT cqrs.process_projections('p');
SELECT name, state, "position", last_error, error_position = (SELECT "position" FROM cqrs.events WHERE data ? 'poison') AS at_poison
  FROM cqrs.projection_status;
-- the rebuild was rolled back whole: the old rows are still there
SELECT count(*), drift() FROM seen;
SELECT try($$SELECT cqrs.skip_event('p', 1)$$);
SELECT cqrs.resume_projection('p');
SELECT name, state, last_error FROM cqrs.projection_status;
DELETE FROM fail_on;
SELECT cqrs.process_projections('p') > 0 AS rebuilt;
SELECT name, state, last_error FROM cqrs.projection_status;
COMMIT;
SELECT count(*), drift() FROM seen;

-- refused: a paused projection, a projection without tables, snapshot isolation
SELECT cqrs.pause_projection('p');
SELECT try($$SELECT cqrs.replay('p', concurrently => true)$$);
SELECT cqrs.resume_projection('p');
CREATE FUNCTION nothing(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT cqrs.create_projection('empty', 'nothing');
SELECT try($$SELECT cqrs.replay('empty', concurrently => true)$$);
SELECT cqrs.drop_projection('empty');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT try($$SELECT cqrs.replay('p', concurrently => true)$$);
COMMIT;
SELECT try($$SELECT cqrs.replay('nosuch', concurrently => true)$$);

-- a deferred projection: the ordinary replay, which never holds appends
CREATE TABLE seen4 (LIKE seen INCLUDING ALL);
CREATE FUNCTION record4(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.seen4 VALUES (e."position", e.stream)
$$;
BEGIN;
SELECT cqrs.create_projection('d', 'record4', 'deferred', '{seen4}');
SELECT cqrs.replay('d', concurrently => true) = (SELECT count(*) FROM cqrs.events) AS replayed;
SELECT name, mode, state FROM cqrs.projection_status WHERE name = 'd';
COMMIT;
SELECT cqrs.drop_projection('d');

--
-- privileges: the new overload is not PUBLIC (42501 without EXECUTE), and
-- only the projection's owner may use it (42501 for another tenant, before
-- anything is locked; a name that does not exist is 42704, as for the other
-- lifecycle functions)
--
CREATE ROLE regress_online_tenant;
CREATE ROLE regress_online_nobody;
GRANT USAGE ON SCHEMA cqrs TO regress_online_tenant, regress_online_nobody;
GRANT EXECUTE ON FUNCTION cqrs.replay(text, boolean), cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean)
   TO regress_online_tenant;
SELECT has_function_privilege('public', 'cqrs.replay(text, boolean)', 'EXECUTE') AS public_may;
SET ROLE regress_online_nobody;
SELECT sqlstate($$SELECT cqrs.replay('p', concurrently => true)$$);
RESET ROLE;
SET ROLE regress_online_tenant;
SELECT try($$SELECT cqrs.replay('p', concurrently => true)$$);
SELECT try($$SELECT cqrs.replay('nosuch', concurrently => true)$$);
RESET ROLE;
SELECT name, state FROM cqrs.projection_status;

DROP FUNCTION drift();
SET client_min_messages = warning;
DROP EXTENSION pg_cqrs CASCADE;
RESET client_min_messages;
DROP TABLE seen, seen2, seen3, seen4, fail_on;
DROP ROLE regress_online_tenant, regress_online_nobody;
