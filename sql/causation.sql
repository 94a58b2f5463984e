--
-- causation.sql: events appended by handlers record their cause, and a
-- projection that feeds itself stops at cqrs.max_causation_depth (issue 10)
--
-- The cluster runs the pg_cqrs worker: the deferred loop below is left to
-- it, and waited for.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- a handler that answers every event of its category with another one in
-- the same category: a projection on that category feeds itself
CREATE FUNCTION echo(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cqrs.append(e.stream, 'Echo', jsonb_build_object('of', e.version));
END
$$;

-- outside handlers, metadata is the caller's, untouched
SELECT position AS note FROM cqrs.append('note-1', 'Noted', '{}', '{"user": "ada"}') \gset
SELECT metadata FROM cqrs.events WHERE position = :note;

-- a sync projection feeding itself: the append fails at the limit (54001),
-- nothing is written, and the error names the projection
ALTER DATABASE contrib_regression SET cqrs.max_causation_depth = 5;
SET cqrs.max_causation_depth = 5;
SELECT cqrs.create_projection('sync_echo', 'echo', 'sync', categories => '{ping}');
SELECT try($$SELECT cqrs.append('ping-1', 'Ping', '{}')$$);
SELECT count(*) AS ping_events FROM cqrs.events WHERE stream = 'ping-1';
SELECT cqrs.drop_projection('sync_echo');

-- a deferred one: it fails at the event whose handler would go deeper,
-- after five generations of echoes, and the loop stops there.  A worker
-- left running by an earlier file has the old limit: end it, so that the
-- launcher starts one with the database's new setting.
SELECT count(pg_terminate_backend(pid)) >= 0 AS ended
  FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'pg_cqrs worker';
SELECT wait_until($$NOT EXISTS (SELECT FROM pg_stat_activity
    WHERE datname = current_database() AND backend_type = 'pg_cqrs worker')$$);
SELECT cqrs.create_projection('deferred_echo', 'echo', 'deferred', categories => '{pong}');
SELECT position AS first FROM cqrs.append('pong-1', 'Ping', '{}') \gset
SELECT wait_until($$(SELECT state = 'failed' FROM cqrs.projections WHERE name = 'deferred_echo')$$);
SELECT version, type, metadata->'$causation'->'depth' AS depth,
       metadata->'$causation'->>'projection' AS projection,
       metadata->'$causation'->>'id' = lag(id::text) OVER (ORDER BY version) AS caused_by_previous
  FROM cqrs.events WHERE stream = 'pong-1' ORDER BY version;
SELECT state, last_error, error_position = (SELECT max(position) FROM cqrs.events WHERE stream = 'pong-1') AS at_last
  FROM cqrs.projections WHERE name = 'deferred_echo';
-- and nothing more comes: the worker leaves a failed projection alone
SELECT pg_sleep(0.3);
SELECT count(*) AS pong_events FROM cqrs.events WHERE stream = 'pong-1';
SELECT cqrs.drop_projection('deferred_echo');

-- the same loop through change capture: the handler writes a captured
-- table whose events its projection consumes
CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO counters VALUES (1, 0);
SELECT cqrs.capture('counters', 'counter');
CREATE FUNCTION bump(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    UPDATE counters SET n = n + 1 WHERE id = 1
$$;
SELECT cqrs.create_projection('bumper', 'bump', 'deferred', categories => '{counter}');
UPDATE counters SET n = 1;
SELECT wait_until($$(SELECT state = 'failed' FROM cqrs.projections WHERE name = 'bumper')$$);
SELECT n AS counter, (SELECT count(*) FROM cqrs.events WHERE cqrs.category(stream) = 'counter') AS events
  FROM counters;
SELECT cqrs.drop_projection('bumper');
SELECT cqrs.uncapture('counters');
DROP TABLE counters;
DROP FUNCTION bump(cqrs.events);

-- a handler appending into a category it does not consume is one step deep
CREATE FUNCTION forward(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cqrs.append('audit-' || e.stream, 'Seen', '{}', '{"by": "forward", "$causation": "mine"}');
END
$$;
SELECT cqrs.create_projection('fwd', 'forward', 'sync', categories => '{order}');
SELECT position AS order_pos FROM cqrs.append('order-1', 'Placed', '{}') \gset
SELECT id AS order_id FROM cqrs.events WHERE position = :order_pos \gset
SELECT metadata->>'by' AS by, metadata->'$causation'->>'depth' AS depth,
       metadata->'$causation'->>'id' = :'order_id' AS caused_by_order
  FROM cqrs.events WHERE stream = 'audit-order-1';

-- a forged depth in a client's metadata cannot make a handler go deeper
-- than the limit, whatever it says
SELECT try($$SELECT cqrs.append('order-2', 'Placed', '{}', '{"$causation": {"depth": 1e9}}')$$);
SELECT try($$SELECT cqrs.append('order-3', 'Placed', '{}', '{"$causation": {"depth": "deep"}}')$$);
SELECT try($$SELECT cqrs.append('order-4', 'Placed', '{}', '{"$causation": {"depth": 4}}')$$);
SELECT stream FROM cqrs.events WHERE stream LIKE 'order-%' OR stream LIKE 'audit-%' ORDER BY position;

-- only a superuser sets the limit
CREATE ROLE causation_stranger;
SET ROLE causation_stranger;
SELECT sqlstate($$SET cqrs.max_causation_depth = 1000000$$);
RESET ROLE;
DROP ROLE causation_stranger;

ALTER DATABASE contrib_regression RESET cqrs.max_causation_depth;
SELECT cqrs.drop_projection('fwd');
DROP FUNCTION echo(cqrs.events), forward(cqrs.events);
DROP EXTENSION pg_cqrs;
