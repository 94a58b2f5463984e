-- test/pgtap/read.sql: stream_version, read_stream, read_all, safe_position, category
-- The events to read are committed before the test transaction starts (the
-- database is a fresh one, thrown away after this file): read_all only
-- returns what no in-progress transaction can still precede.
DO $$
BEGIN
    PERFORM cqrs.append_events('order-1', '[{"type": "OrderPlaced", "data": {"n": 1}},
                                            {"type": "ItemAdded", "data": {"n": 2}}]');
    PERFORM cqrs.append('customer-1', 'CustomerRegistered', '{"n": 3}');
    PERFORM cqrs.append('order-2', 'OrderPlaced', '{"n": 4}');
    PERFORM cqrs.append('order-1', 'OrderPaid', '{"n": 5}');
    PERFORM cqrs.append('order', 'Configured', '{"n": 6}');
END
$$;

BEGIN;
SELECT plan(36);

SELECT is(cqrs.stream_version('order-9'), 0::bigint, 'an unknown stream is at version 0');
SELECT is_empty($$SELECT * FROM cqrs.read_stream('order-9')$$, 'an unknown stream reads empty');

-- p(n): the position of the event with data {"n": n}
CREATE FUNCTION pg_temp.p(n int) RETURNS bigint LANGUAGE sql AS
    $$ SELECT position FROM cqrs.events WHERE data = jsonb_build_object('n', n) $$;

SELECT is(cqrs.stream_version('order-1'), 3::bigint, 'stream_version is the last version');
SELECT is(cqrs.stream_version('order'), 1::bigint, 'stream_version of a stream without a category separator');

-- read_stream
SELECT results_eq($$SELECT version, type FROM cqrs.read_stream('order-1')$$,
                  $$VALUES (1::bigint, 'OrderPlaced'::text), (2, 'ItemAdded'), (3, 'OrderPaid')$$,
                  'read_stream returns the stream in version order');
SELECT results_eq($$SELECT version FROM cqrs.read_stream('order-1', 2)$$,
                  ARRAY[2, 3]::bigint[], 'read_stream from a version');
SELECT results_eq($$SELECT version FROM cqrs.read_stream('order-1', 1, 2)$$,
                  ARRAY[1, 2]::bigint[], 'read_stream with max_count');
SELECT results_eq($$SELECT version FROM cqrs.read_stream('order-1', 2, 1)$$,
                  ARRAY[2]::bigint[], 'read_stream from a version with max_count');
SELECT is_empty($$SELECT * FROM cqrs.read_stream('order-1', 4)$$, 'read_stream past the end is empty');
SELECT set_eq($$SELECT * FROM cqrs.read_stream('order-1')$$,
              $$SELECT * FROM cqrs.events WHERE stream = 'order-1'$$,
              'read_stream returns whole cqrs.events rows');

-- read_all
SELECT results_eq($$SELECT position FROM cqrs.read_all()$$,
                  $$SELECT position FROM cqrs.events ORDER BY position$$,
                  'read_all returns the log in position order');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all()$$,
                  ARRAY[1, 2, 3, 4, 5, 6], 'read_all in append order');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all(pg_temp.p(3))$$,
                  ARRAY[4, 5, 6], 'read_all after a position');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all(pg_temp.p(1), 2)$$,
                  ARRAY[2, 3], 'read_all with max_count');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all(categories => '{order}')$$,
                  ARRAY[1, 2, 4, 5, 6], 'read_all filtered by category');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all(categories => '{customer}')$$,
                  ARRAY[3], 'read_all filtered by another category');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all(types => '{OrderPlaced,OrderPaid}')$$,
                  ARRAY[1, 4, 5], 'read_all filtered by type');
SELECT results_eq($$SELECT (data->>'n')::int FROM cqrs.read_all(pg_temp.p(1), 1, '{order}', '{OrderPlaced,Configured}')$$,
                  ARRAY[4], 'read_all with every argument');
SELECT is_empty($$SELECT * FROM cqrs.read_all(pg_temp.p(6))$$, 'read_all after the last position is empty');
SELECT set_eq($$SELECT * FROM cqrs.read_all()$$, $$SELECT * FROM cqrs.events$$,
              'read_all returns whole cqrs.events rows');
SELECT throws_ok($$SELECT * FROM cqrs.read_all(-1)$$, '22023', NULL, 'a negative after_position: 22023');
SELECT throws_ok($$SELECT * FROM cqrs.read_all(0, -1)$$, '22023', NULL, 'a negative max_count: 22023');
SELECT ok(cqrs.safe_position() >= pg_temp.p(6), 'safe_position covers the committed log');
SELECT is_empty($$SELECT * FROM cqrs.read_all(cqrs.safe_position())$$,
                'nothing committed lies beyond safe_position');
SELECT throws_ok($$SELECT * FROM cqrs.read_stream(NULL)$$, '22004', NULL, 'read_stream of NULL: 22004');
SELECT throws_ok($$SELECT * FROM cqrs.read_stream('order-1', -1)$$, '22023', NULL,
                 'a negative from_version: 22023');
SELECT throws_ok($$SELECT * FROM cqrs.read_stream('order-1', 1, -1)$$, '22023', NULL,
                 'a negative max_count for read_stream: 22023');
SELECT throws_ok($$SELECT cqrs.stream_version(NULL)$$, '22004', NULL, 'stream_version of NULL: 22004');

-- a transaction sees its own appends in its streams
SELECT lives_ok($$SELECT cqrs.append('order-1', 'OrderShipped', '{"n": 7}')$$, 'appending in the test');
SELECT is(cqrs.stream_version('order-1'), 4::bigint, 'stream_version counts the transaction''s own append');
SELECT results_eq($$SELECT version FROM cqrs.read_stream('order-1', 3)$$, ARRAY[3, 4]::bigint[],
                  'read_stream returns the transaction''s own append');

-- category
SELECT is(cqrs.category('order-42'), 'order', 'category of order-42');
SELECT is(cqrs.category('order'), 'order', 'category of a stream without -');
SELECT is(cqrs.category('a-b-c'), 'a', 'category stops at the first -');
SELECT is(cqrs.category(''), '', 'category of the empty string');
SELECT is(cqrs.category(NULL), NULL, 'category of NULL');

SELECT * FROM finish();
ROLLBACK;
