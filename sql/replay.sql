--
-- replay.sql: cqrs.replay, cqrs.reconcile and cqrs.verify -- every drift
-- kind, composite keys, NULLs, types without equality, empty tables,
-- errors, repair idempotence, sync and deferred projections
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- order_lines: a composite key, NULLs, a type without equality (point)
CREATE TABLE order_lines (
    order_id  text    NOT NULL,
    line      int     NOT NULL,
    sku       text,
    qty       int     NOT NULL,
    spot      point,
    PRIMARY KEY (order_id, line)
);
CREATE FUNCTION order_lines_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE e.type
    WHEN 'LineAdded' THEN
        INSERT INTO order_lines VALUES (e.stream, (e.data->>'line')::int, e.data->>'sku',
                                        (e.data->>'qty')::int, point(e.version, 0));
    WHEN 'LineChanged' THEN
        UPDATE order_lines SET qty = (e.data->>'qty')::int
         WHERE order_id = e.stream AND line = (e.data->>'line')::int;
    WHEN 'LineRemoved' THEN
        DELETE FROM order_lines WHERE order_id = e.stream AND line = (e.data->>'line')::int;
    ELSE
    END CASE;
END
$$;
-- totals: a one-column key, deferred
CREATE TABLE totals (stream text PRIMARY KEY, events int NOT NULL);
CREATE FUNCTION totals_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO totals VALUES (e.stream, 1)
    ON CONFLICT (stream) DO UPDATE SET events = totals.events + 1
$$;
CREATE FUNCTION nothing_handler(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';

SELECT cqrs.append('order-1', 'LineAdded', '{"line": 1, "sku": "apple", "qty": 2}');
SELECT cqrs.append('order-1', 'LineAdded', '{"line": 2, "sku": null, "qty": 1}');
SELECT cqrs.append('order-2', 'LineAdded', '{"line": 1, "sku": "pear", "qty": 5}');
SELECT cqrs.append('order-1', 'LineChanged', '{"line": 1, "qty": 3}');
SELECT cqrs.append('order-3', 'LineAdded', '{"line": 1, "sku": "fig", "qty": 1}');
SELECT cqrs.append('order-3', 'LineRemoved', '{"line": 1}');

SELECT cqrs.create_projection('lines', 'order_lines_handler', 'sync', '{order_lines}');
-- (in one transaction, so that the worker cannot apply it first)
BEGIN;
SELECT cqrs.create_projection('totals', 'totals_handler', 'deferred', '{totals}');
SELECT cqrs.process_projections('totals');
COMMIT;
SELECT cqrs.create_projection('nothing', 'nothing_handler');
TABLE order_lines ORDER BY 1, 2;
TABLE totals ORDER BY 1;

-- the digest trigger is on the owned tables, ENABLE ALWAYS
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgname = 'cqrs_digest' ORDER BY 1;

-- no drift yet
SELECT * FROM cqrs.verify('lines');
SELECT * FROM cqrs.verify('totals');
SELECT * FROM cqrs.reconcile('lines');
SELECT * FROM cqrs.reconcile('totals');

--
-- each kind of drift
--
UPDATE order_lines SET qty = 99 WHERE order_id = 'order-1' AND line = 1;   -- changed
DELETE FROM order_lines WHERE order_id = 'order-2';                        -- missing
INSERT INTO order_lines VALUES ('order-9', 1, NULL, 1, NULL);              -- unexpected
UPDATE order_lines SET spot = point(7, 7) WHERE order_id = 'order-1' AND line = 2; -- changed, no equality
SELECT table_name, rows, expected_rows, drifted_buckets > 0 AS drifted, matches FROM cqrs.verify('lines');
SELECT table_name, key, drift, expected, actual FROM cqrs.reconcile('lines') ORDER BY key::text;
-- reconcile left the table alone
TABLE order_lines ORDER BY 1, 2;

-- repair applies exactly those differences; a second call finds nothing
SELECT key, drift FROM cqrs.reconcile('lines', repair => true) ORDER BY key::text;
SELECT * FROM cqrs.reconcile('lines', true);
SELECT * FROM cqrs.verify('lines');
TABLE order_lines ORDER BY 1, 2;

-- a deferred projection's table, compared as of its checkpoint: an event
-- the worker has not applied yet is not drift
SELECT cqrs.pause_projection('totals');
SELECT cqrs.append('order-4', 'LineAdded', '{"line": 1, "sku": "kiwi", "qty": 1}');
SELECT * FROM cqrs.reconcile('totals');
UPDATE totals SET events = 0 WHERE stream = 'order-1';
SELECT key, drift, expected->'events' AS expected, actual->'events' AS actual FROM cqrs.reconcile('totals');
SELECT matches FROM cqrs.verify('totals');

--
-- replay: rebuilds from the log, sets the checkpoint, returns events applied
--
SELECT cqrs.replay('totals');
TABLE totals ORDER BY 1;
SELECT name, state, position = (SELECT max(position) - 1 FROM cqrs.events) AS at_pause FROM cqrs.projection_status WHERE name = 'totals';
-- resumed and processed in one transaction: once the resume commits, the
-- worker may apply the pending event itself, and this call would find none
BEGIN;
SELECT cqrs.resume_projection('totals');
SELECT cqrs.process_projections('totals');
COMMIT;
SELECT * FROM cqrs.verify('totals');
UPDATE order_lines SET qty = 0;
SELECT cqrs.replay('lines');
TABLE order_lines ORDER BY 1, 2;
SELECT * FROM cqrs.verify('lines');
-- rolled back, a replay leaves the old contents
BEGIN;
DELETE FROM order_lines;
INSERT INTO order_lines VALUES ('x', 1, 'x', 1, NULL);
COMMIT;
BEGIN;
SELECT cqrs.replay('lines');
ROLLBACK;
TABLE order_lines;
SELECT cqrs.replay('lines');

-- appends after a replay keep the digest in step
SELECT cqrs.append('order-5', 'LineAdded', '{"line": 1, "sku": "lime", "qty": 4}');
SELECT cqrs.append('order-5', 'LineChanged', '{"line": 1, "qty": 6}');
SELECT * FROM cqrs.verify('lines');
-- a rolled-back append, or one rolled back to a savepoint, leaves no delta
BEGIN;
SELECT cqrs.append('order-6', 'LineAdded', '{"line": 1, "sku": "plum", "qty": 1}');
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT cqrs.append('order-6', 'LineAdded', '{"line": 1, "sku": "plum", "qty": 1}');
ROLLBACK TO s;
SELECT cqrs.append('order-7', 'LineAdded', '{"line": 1, "sku": "date", "qty": 1}');
COMMIT;
SELECT * FROM cqrs.verify('lines');
SELECT * FROM cqrs.reconcile('lines');

-- empty tables: nothing applied, nothing to compare
CREATE TABLE empty_rm (id int PRIMARY KEY);
CREATE FUNCTION empty_handler(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT cqrs.create_projection('empty', 'empty_handler', 'sync', '{empty_rm}');
SELECT * FROM cqrs.verify('empty');
SELECT * FROM cqrs.reconcile('empty');
SELECT cqrs.replay('empty') > 0 AS some_events_seen;
INSERT INTO empty_rm VALUES (1);
SELECT key, drift, expected, actual FROM cqrs.reconcile('empty');

--
-- errors
--
SELECT try($$SELECT cqrs.replay('nope')$$);
SELECT try($$SELECT * FROM cqrs.reconcile('nope')$$);
SELECT try($$SELECT * FROM cqrs.verify('nope')$$);
SELECT try($$SELECT cqrs.replay(NULL)$$);
SELECT try($$SELECT cqrs.replay('')$$);
SELECT try($$SELECT * FROM cqrs.reconcile('lines', NULL)$$);
SELECT try($$SELECT cqrs.replay('nothing')$$);
SELECT try($$SELECT * FROM cqrs.reconcile('nothing')$$);
SELECT try($$SELECT * FROM cqrs.verify('nothing')$$);
-- a table belongs to one projection at most
SELECT try($$SELECT cqrs.create_projection('lines2', 'order_lines_handler', 'sync', '{order_lines}')$$);
-- snapshot isolation cannot rebuild
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT try($$SELECT cqrs.replay('lines')$$);
ROLLBACK;
-- a handler error fails the replay and changes nothing
CREATE OR REPLACE FUNCTION order_lines_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'handler broken at %', e.version;
END
$$;
SELECT try_ctx($$SELECT cqrs.replay('lines')$$);
SELECT try_ctx($$SELECT * FROM cqrs.reconcile('lines')$$);
SELECT count(*) FROM order_lines;
-- reconcile inside an exception block unwinds its subtransactions
DO $$
BEGIN
    PERFORM * FROM cqrs.reconcile('lines');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'caught: %', SQLERRM;
END
$$;
SELECT count(*) FROM order_lines;

-- dropping a projection removes its triggers and digests, keeps its tables
SELECT cqrs.drop_projection('lines');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'order_lines'::regclass AND tgname = 'cqrs_digest';
SELECT count(*) FROM cqrs.projection_digests WHERE projection = 'lines';
SELECT count(*) FROM order_lines;

-- DROP EXTENSION takes the remaining triggers along (and, CASCADE, the
-- handlers, which take cqrs.events; dropping them alone is refused while
-- their projections exist)
SET client_min_messages = warning;
DROP EXTENSION pg_cqrs CASCADE;
RESET client_min_messages;
SELECT count(*) FROM pg_trigger WHERE tgname = 'cqrs_digest';
DROP TABLE order_lines, totals, empty_rm;

--
-- a projection without digests: no trigger, replay and reconcile work,
-- verify says why it cannot
--
CREATE EXTENSION pg_cqrs;
CREATE TABLE plain_rm (stream text PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION plain_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO plain_rm VALUES (e.stream, 1) ON CONFLICT (stream) DO UPDATE SET n = plain_rm.n + 1
$$;
SELECT cqrs.append('a-1', 'X', '{}'), cqrs.append('a-1', 'X', '{}'), cqrs.append('b-1', 'X', '{}');
SELECT cqrs.create_projection('plain', 'plain_handler', 'sync', '{plain_rm}', digest => false);
SELECT try($$SELECT cqrs.create_projection('plain2', 'plain_handler', digest => NULL)$$);
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'plain_rm'::regclass AND tgname = 'cqrs_digest';
SELECT cqrs.append('a-1', 'X', '{}');
SELECT count(*) AS digest_rows FROM cqrs.projection_digests WHERE projection = 'plain';
SELECT try($$SELECT * FROM cqrs.verify('plain')$$);
UPDATE plain_rm SET n = 0 WHERE stream = 'b-1';
SELECT key, drift, expected, actual FROM cqrs.reconcile('plain', repair => true);
SELECT cqrs.replay('plain');
TABLE plain_rm ORDER BY 1;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'plain_rm'::regclass AND tgname = 'cqrs_digest';
SELECT count(*) AS digest_rows FROM cqrs.projection_digests WHERE projection = 'plain';
SELECT cqrs.drop_projection('plain');
DROP FUNCTION plain_handler(cqrs.events);
DROP EXTENSION pg_cqrs;
DROP TABLE plain_rm;
