--
-- projection_deferred.sql: deferred projections -- the worker, catch-up,
-- process_projections, filters, failures, resume, skip_event,
-- wait_for_projection and projection_status
--
-- The cluster runs the pg_cqrs worker.  Where an exact count matters, the
-- projection is paused, or created, resumed and processed in one
-- transaction, so the worker cannot get there first; where the worker is
-- tested, we wait for it with wait_for_projection or wait_until.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- One read table per projection, counting applications per position (a
-- double application shows as n = 2).  The handler refuses the events whose
-- data has "poison" naming its table.
CREATE FUNCTION make_projection_table(tab text) RETURNS void LANGUAGE plpgsql AS $body$
BEGIN
    EXECUTE format('CREATE TABLE %I (position bigint PRIMARY KEY, stream text NOT NULL,
                                     type text NOT NULL, n int NOT NULL DEFAULT 1)', tab);
    EXECUTE format($f$
        CREATE FUNCTION %I(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $h$
        BEGIN
            IF e.data->>'poison' = %L THEN
                RAISE EXCEPTION 'poisoned event %% of %%', e.version, e.stream
                    USING ERRCODE = 'data_exception';
            END IF;
            INSERT INTO %I (position, stream, type) VALUES (e.position, e.stream, e.type)
            ON CONFLICT (position) DO UPDATE SET n = %I.n + 1;
        END
        $h$ $f$, tab || '_handler', tab, tab, tab);
END
$body$;
SELECT make_projection_table(t)
  FROM unnest(ARRAY['w1', 'w2', 'd', 'a_ok', 'b_fail', 'c_gone']) t;

SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{}');
SELECT position FROM cqrs.append('order-1', 'ItemAdded', '{}');
SELECT position FROM cqrs.append('customer-1', 'CustomerRegistered', '{}');

--
-- the worker: a new deferred projection is not applied by create_projection
-- but caught up after commit, and later appends follow
--
BEGIN;
SELECT cqrs.create_projection('w1', 'w1_handler', 'deferred', '{w1}');
SELECT cqrs.create_projection('w2', 'w2_handler', 'deferred', '{w2}');
SELECT count(*) FROM w1;
SELECT name, mode, state, position, lag_events, lag_seconds > 0 AS lagging
  FROM cqrs.projection_status ORDER BY name;
COMMIT;
SELECT cqrs.wait_for_projection('w1', 3, '60 s'), cqrs.wait_for_projection('w2', 3, '60 s');
SELECT position, stream, type, n FROM w1 ORDER BY position;
SELECT position FROM cqrs.append('order-1', 'OrderPaid', '{}') \gset
SELECT cqrs.wait_for_projection('w1', :position, '60 s');
SELECT position, stream, type, n FROM w1 WHERE position = :position;

-- the worker stops a projection at a failing event: failed, the position
-- just before it, the error; later events are kept; the others go on
SELECT position AS poison FROM cqrs.append('order-2', 'OrderPlaced', '{"poison": "w1"}') \gset
SELECT position AS after FROM cqrs.append('order-2', 'ItemAdded', '{}') \gset
SELECT wait_until($$(SELECT state = 'failed' FROM cqrs.projections WHERE name = 'w1')$$);
SELECT cqrs.wait_for_projection('w2', :after, '60 s');
SELECT name, state, position = :poison - 1 AS before_poison, error_position = :poison AS at_poison,
       last_error, lag_events
  FROM cqrs.projection_status WHERE name = 'w1';
SELECT count(*) FROM w1 WHERE position >= :poison;
SELECT count(*) FROM cqrs.events WHERE position >= :poison;
SELECT name, state, position = :after AS at_head FROM cqrs.projection_status WHERE name = 'w2';
SELECT count(*), max(n) FROM w2;
-- a failed projection is not waited for in vain: false on timeout
SELECT cqrs.wait_for_projection('w1', :poison, '0');
-- skipping the event puts the worker back to work
SELECT cqrs.skip_event('w1', :poison);
SELECT cqrs.wait_for_projection('w1', :after, '60 s');
SELECT position - :poison AS after_poison, stream, type, n FROM w1 WHERE position >= :poison;
SELECT projection, position = :poison AS poison, error, skipped_at <= now() AS recorded
  FROM cqrs.skipped_events;
SELECT name, state, position = :after AS at_head, last_error, error_position
  FROM cqrs.projection_status WHERE name = 'w1';
SELECT count(*) AS events, sum(n) AS applications FROM w1;
-- from here on, the worker is kept out of the way
SELECT cqrs.drop_projection('w1'), cqrs.drop_projection('w2');
-- the skipped events of a dropped projection go with it
SELECT count(*) FROM cqrs.skipped_events;

--
-- process_projections: in the caller's transaction, what the worker would
-- do; max_events bounds the events applied
--
BEGIN;
SELECT cqrs.create_projection('d', 'd_handler', 'deferred', '{d}');
SELECT max(position) AS head FROM cqrs.events \gset
SELECT state, position, lag_events = :head AS whole_log_to_go FROM cqrs.projection_status WHERE name = 'd';
SELECT cqrs.process_projections('d', 2);
SELECT position, stream, n FROM d ORDER BY position;
SELECT state, position, lag_events = :head - 2 AS rest_to_go FROM cqrs.projection_status WHERE name = 'd';
SELECT cqrs.process_projections('d', 0);
SELECT cqrs.process_projections(name => 'd', max_events => 1);
SELECT position FROM cqrs.projections WHERE name = 'd';
SELECT cqrs.process_projections('d') = :head - 3 AS applied_the_rest;
SELECT cqrs.process_projections('d');
SELECT position = :head AS at_head, lag_events, lag_seconds FROM cqrs.projection_status WHERE name = 'd';
SELECT count(*) = :head AS all_events, max(n) FROM d;
SELECT cqrs.pause_projection('d');
COMMIT;

-- paused: nothing is applied, by the worker or on demand; the status shows
-- the backlog
SELECT position FROM cqrs.append('order-3', 'OrderPlaced', '{}');
SELECT position FROM cqrs.append('order-3', 'ItemAdded', '{}');
SELECT position AS head FROM cqrs.append('order-3', 'OrderPaid', '{}') \gset
SELECT cqrs.process_projections('d'), cqrs.process_projections();
SELECT count(*) FROM d WHERE stream = 'order-3';
SELECT name, mode, state, position = :head - 3 AS checkpoint, lag_events,
       lag_seconds > 0 AS lagging, last_error, error_position
  FROM cqrs.projection_status WHERE name = 'd';

--
-- wait_for_projection: true once every event up to up_to is applied,
-- false on timeout, after having waited
--
SELECT cqrs.wait_for_projection('d', :head - 3, '0') AS applied_already;
SELECT cqrs.wait_for_projection('d', 0, '0') AS nothing_to_wait_for;
SELECT cqrs.wait_for_projection('d', :head, '0') AS no_time;
SELECT cqrs.wait_for_projection('d', :head, '-1 s') AS negative_time;
SELECT clock_timestamp() AS t0 \gset
SELECT cqrs.wait_for_projection('d', :head, '100 ms') AS in_100ms;
SELECT clock_timestamp() - :'t0' >= interval '100 ms' AS waited;
SELECT try($$SELECT cqrs.wait_for_projection('nope', 1)$$);

-- resume and process in one transaction: the backlog, each event once
BEGIN;
SELECT cqrs.resume_projection('d');
SELECT state FROM cqrs.projections WHERE name = 'd';
SELECT cqrs.process_projections('d');
SELECT cqrs.wait_for_projection('d', :head, '0');
SELECT position - :head AS from_head, stream, type, n FROM d WHERE stream = 'order-3' ORDER BY position;
SELECT cqrs.pause_projection('d');
COMMIT;
SELECT count(*) = :head AS all_events, max(n) FROM d;

--
-- filters: checked before the handler, on demand as for the worker; the
-- checkpoint moves past the events filtered out
--
CREATE TABLE orders_d (position bigint PRIMARY KEY);
CREATE FUNCTION orders_d_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cqrs.category(e.stream) <> 'order' THEN
        RAISE EXCEPTION 'orders_d got an event of %', e.stream;
    END IF;
    INSERT INTO orders_d VALUES (e.position);
END
$$;
CREATE TABLE paid_d (position bigint PRIMARY KEY);
CREATE FUNCTION paid_d_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type <> 'OrderPaid' THEN
        RAISE EXCEPTION 'paid_d got a %', e.type;
    END IF;
    INSERT INTO paid_d VALUES (e.position);
END
$$;
BEGIN;
SELECT cqrs.create_projection('orders_d', 'orders_d_handler', 'deferred', '{orders_d}',
                              categories => '{order}');
SELECT cqrs.create_projection('paid_d', 'paid_d_handler', 'deferred', '{paid_d}',
                              types => '{OrderPaid}');
SELECT cqrs.process_projections('orders_d') AS orders, cqrs.process_projections('paid_d') AS paid;
SELECT count(*) AS differences FROM (
    (SELECT position FROM cqrs.events WHERE cqrs.category(stream) = 'order'
     EXCEPT SELECT position FROM orders_d)
    UNION ALL
    (SELECT position FROM orders_d
     EXCEPT SELECT position FROM cqrs.events WHERE cqrs.category(stream) = 'order')) d;
SELECT e.stream, e.type FROM paid_d JOIN cqrs.events e USING (position) ORDER BY position;
SELECT name, position = :head AS at_head, lag_events FROM cqrs.projection_status
 WHERE name IN ('orders_d', 'paid_d') ORDER BY name;
SELECT cqrs.pause_projection('orders_d'), cqrs.pause_projection('paid_d');
COMMIT;
-- events of other categories and types still move the checkpoint
SELECT position AS head FROM cqrs.append('customer-2', 'CustomerRegistered', '{}') \gset
BEGIN;
SELECT cqrs.resume_projection('orders_d'), cqrs.resume_projection('paid_d');
SELECT cqrs.process_projections();
SELECT name, position = :head AS at_head, lag_events FROM cqrs.projection_status
 WHERE name IN ('orders_d', 'paid_d') ORDER BY name;
SELECT cqrs.drop_projection('orders_d'), cqrs.drop_projection('paid_d');
COMMIT;

--
-- failures: a projection stops at the failing event, the others go on
--
BEGIN;
SELECT cqrs.create_projection('a_ok', 'a_ok_handler', 'deferred', '{a_ok}');
SELECT cqrs.create_projection('b_fail', 'b_fail_handler', 'deferred', '{b_fail}');
SELECT cqrs.process_projections() = 2 * (SELECT count(*) FROM cqrs.events) AS both_caught_up;
SELECT cqrs.pause_projection('a_ok'), cqrs.pause_projection('b_fail');
COMMIT;
SELECT position AS good1 FROM cqrs.append('order-4', 'OrderPlaced', '{}') \gset
SELECT position AS good2 FROM cqrs.append('order-4', 'ItemAdded', '{}') \gset
SELECT position AS poison FROM cqrs.append('order-4', 'ItemAdded', '{"poison": "b_fail"}') \gset
SELECT position AS good3 FROM cqrs.append('order-4', 'OrderPaid', '{}') \gset
BEGIN;
SELECT cqrs.resume_projection('a_ok'), cqrs.resume_projection('b_fail');
-- a_ok applies 4, b_fail the 2 before the poison
SELECT cqrs.process_projections();
SELECT name, state, position - :head AS position, error_position - :head AS error_position,
       last_error, lag_events
  FROM cqrs.projection_status WHERE name IN ('a_ok', 'b_fail') ORDER BY name;
SELECT position - :head AS position, type, n FROM b_fail WHERE stream = 'order-4' ORDER BY position;
SELECT position - :head AS position, type, n FROM a_ok WHERE stream = 'order-4' ORDER BY position;
-- a failed projection is left alone
SELECT cqrs.process_projections('b_fail');
SELECT cqrs.pause_projection('a_ok');
COMMIT;
-- the failure was committed with the batch before it
SELECT name, state, position - :head AS position, error_position - :head AS error_position, last_error
  FROM cqrs.projections WHERE name = 'b_fail';
SELECT count(*) FROM b_fail WHERE stream = 'order-4';

-- pausing a failed projection keeps its error; resume retries, and a
-- handler that still fails fails again at the same event
SELECT cqrs.pause_projection('b_fail');
SELECT state, error_position - :head AS error_position, last_error FROM cqrs.projections
 WHERE name = 'b_fail';
BEGIN;
SELECT cqrs.resume_projection('b_fail');
SELECT state, position - :head AS position, error_position, last_error FROM cqrs.projection_status
 WHERE name = 'b_fail';
SELECT cqrs.process_projections('b_fail');
SELECT state, position - :head AS position, error_position - :head AS error_position, last_error
  FROM cqrs.projection_status WHERE name = 'b_fail';
COMMIT;

--
-- skip_event: only the event a failed deferred projection stopped at
--
CREATE FUNCTION sync_noop(e cqrs.events) RETURNS void LANGUAGE sql AS '';
SELECT cqrs.create_projection('s', 'sync_noop');
SELECT label, try(cmd) FROM (VALUES
    ('not failed (paused)',  format('SELECT cqrs.skip_event(%L, %s)', 'a_ok', :poison)),
    ('position after',       format('SELECT cqrs.skip_event(%L, %s)', 'b_fail', :poison + 1)),
    ('position before',      format('SELECT cqrs.skip_event(%L, %s)', 'b_fail', :poison - 1)),
    ('position 0',           format('SELECT cqrs.skip_event(%L, %s)', 'b_fail', 0)),
    ('sync projection',      format('SELECT cqrs.skip_event(%L, %s)', 's', :poison)),
    ('unknown projection',   format('SELECT cqrs.skip_event(%L, %s)', 'nope', :poison))
) AS t(label, cmd);
SELECT count(*) FROM cqrs.skipped_events;
SELECT cqrs.drop_projection('s');
-- the skip records the event and its error, moves past it, and resumes
BEGIN;
SELECT cqrs.skip_event('b_fail', :poison);
SELECT projection, position - :head AS position, error, skipped_at = now() AS skipped_now
  FROM cqrs.skipped_events;
SELECT state, position - :head AS position, last_error, error_position FROM cqrs.projection_status
 WHERE name = 'b_fail';
SELECT cqrs.process_projections('b_fail');
SELECT position - :head AS position, type, n FROM b_fail WHERE stream = 'order-4' ORDER BY position;
SELECT state, position = :good3 AS at_head, lag_events FROM cqrs.projection_status WHERE name = 'b_fail';
-- skipping twice is refused: the projection is running again
SELECT try(format('SELECT cqrs.skip_event(%L, %s)', 'b_fail', :poison));
SELECT cqrs.pause_projection('b_fail');
COMMIT;

-- a later failure mid-batch, fixed in the handler: resume applies it
SELECT position AS head FROM cqrs.events ORDER BY position DESC LIMIT 1 \gset
SELECT position FROM cqrs.append('order-5', 'OrderPlaced', '{}');
SELECT position FROM cqrs.append('order-5', 'ItemAdded', '{"poison": "b_fail"}');
SELECT position FROM cqrs.append('order-5', 'OrderPaid', '{}');
BEGIN;
SELECT cqrs.resume_projection('b_fail');
SELECT cqrs.process_projections('b_fail');
SELECT state, position - :head AS position, error_position - :head AS error_position, last_error
  FROM cqrs.projection_status WHERE name = 'b_fail';
COMMIT;
CREATE OR REPLACE FUNCTION b_fail_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO b_fail (position, stream, type) VALUES (e.position, e.stream, e.type)
    ON CONFLICT (position) DO UPDATE SET n = b_fail.n + 1
$$;
BEGIN;
SELECT cqrs.resume_projection('b_fail');
SELECT cqrs.process_projections('b_fail');
SELECT state, position - :head AS position, last_error, error_position FROM cqrs.projection_status
 WHERE name = 'b_fail';
SELECT position - :head AS position, type, n FROM b_fail WHERE stream = 'order-5' ORDER BY position;
SELECT cqrs.pause_projection('b_fail');
COMMIT;
-- the earlier skipped event stays skipped
SELECT count(*) FROM b_fail WHERE position = :poison;
SELECT count(*) AS events, max(n) FROM b_fail;

--
-- a handler that is gone: the projection fails at the first event it would
-- have applied, whatever ran before in this session.  (Dropping it is
-- refused while a projection uses it; renamed, it is gone as well.)
--
BEGIN;
SELECT cqrs.create_projection('c_gone', 'c_gone_handler', 'deferred', '{c_gone}',
                              categories => '{gone}');
SELECT cqrs.process_projections('c_gone');
SELECT cqrs.pause_projection('c_gone');
COMMIT;
SELECT try('DROP FUNCTION c_gone_handler(cqrs.events)');
ALTER FUNCTION c_gone_handler(cqrs.events) RENAME TO c_gone_renamed;
SELECT position AS head FROM cqrs.events ORDER BY position DESC LIMIT 1 \gset
SELECT position FROM cqrs.append('other-1', 'Noise', '{}');
SELECT position FROM cqrs.append('gone-1', 'Wanted', '{}');
SELECT position FROM cqrs.append('other-1', 'Noise', '{}');
BEGIN;
SELECT cqrs.resume_projection('a_ok'), cqrs.resume_projection('c_gone');
-- a_ok runs first (name order) and sees every event
SELECT cqrs.process_projections();
SELECT name, state, position - :head AS position, error_position - :head AS error_position, last_error
  FROM cqrs.projection_status WHERE name IN ('a_ok', 'c_gone') ORDER BY name;
SELECT cqrs.pause_projection('a_ok');
COMMIT;

--
-- the status view: one row per projection, every column
--
SELECT * FROM cqrs.projection_status WHERE false;
SELECT name, mode, state, lag_events >= 0 AS lag_ok, lag_seconds >= 0 AS seconds_ok,
       updated_at <= now() AS updated_ok
  FROM cqrs.projection_status ORDER BY name;
SELECT (SELECT count(*) FROM cqrs.projection_status) = (SELECT count(*) FROM cqrs.projections)
       AS one_row_each;

SELECT cqrs.drop_projection(name) FROM cqrs.projections;
SELECT count(*) FROM cqrs.skipped_events;
DROP TABLE w1, w2, d, a_ok, b_fail, c_gone, orders_d, paid_d;
DROP FUNCTION w1_handler(cqrs.events), w2_handler(cqrs.events), d_handler(cqrs.events),
    a_ok_handler(cqrs.events), b_fail_handler(cqrs.events), orders_d_handler(cqrs.events),
    paid_d_handler(cqrs.events), sync_noop(cqrs.events), make_projection_table(text),
    c_gone_renamed(cqrs.events);
DROP EXTENSION pg_cqrs;
