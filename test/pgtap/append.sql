-- test/pgtap/append.sql: cqrs.append and cqrs.append_events (API.md section 1)
BEGIN;
SELECT plan(35);

-- versions and positions
SELECT results_eq($$SELECT version FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}')$$,
                  ARRAY[1::bigint], 'the first append to a stream is version 1');
SELECT results_eq($$SELECT version FROM cqrs.append('order-1', 'ItemAdded', '{}')$$,
                  ARRAY[2::bigint], 'the next one is version 2');
SELECT results_eq($$SELECT version FROM cqrs.append('order-2', 'OrderPlaced', '{}')$$,
                  ARRAY[1::bigint], 'versions are per stream');
SELECT results_eq($$SELECT version, position FROM cqrs.append('order-1', 'ItemAdded', '{}')$$,
                  $$SELECT 3::bigint, last_value FROM cqrs.events_position_seq$$,
                  'append returns the version and the position it took');
SELECT results_eq($$SELECT version, position FROM cqrs.events WHERE stream = 'order-1' ORDER BY version$$,
                  $$SELECT version, position FROM cqrs.events WHERE stream = 'order-1' ORDER BY position$$,
                  'positions increase with versions');
SELECT is((SELECT metadata FROM cqrs.events WHERE stream = 'order-2'), '{}'::jsonb,
          'metadata NULL is stored as {}');
SELECT lives_ok($$SELECT cqrs.append('order-2', 'Noted', '{"n": 1}', '{"user": "alice"}', 1,
                                     'c0000000-0000-4000-8000-000000000001')$$,
                'append with metadata, expected_version and id');
SELECT row_eq($$SELECT version, id, type, data, metadata FROM cqrs.events
                WHERE id = 'c0000000-0000-4000-8000-000000000001'$$,
              ROW(2::bigint, 'c0000000-0000-4000-8000-000000000001'::uuid, 'Noted'::text,
                  '{"n": 1}'::jsonb, '{"user": "alice"}'::jsonb),
              'the event is stored as given');

-- expected_version
SELECT lives_ok($$SELECT cqrs.append('order-3', 'OrderPlaced', '{}', expected_version => 0)$$,
                'expected_version 0 on a new stream');
SELECT lives_ok($$SELECT cqrs.append('order-3', 'ItemAdded', '{}', expected_version => 1)$$,
                'expected_version n on a stream at version n');
SELECT lives_ok($$SELECT cqrs.append('order-3', 'ItemAdded', '{}', expected_version => NULL)$$,
                'expected_version NULL appends at any version');
SELECT throws_ok($$SELECT cqrs.append('order-3', 'ItemAdded', '{}', expected_version => 0)$$,
                 '40001', 'wrong expected version for stream "order-3"',
                 'expected_version 0 on an existing stream: 40001');
SELECT throws_ok($$SELECT cqrs.append('order-3', 'ItemAdded', '{}', expected_version => 2)$$,
                 '40001', 'wrong expected version for stream "order-3"',
                 'a stale expected_version: 40001');
SELECT throws_ok($$SELECT cqrs.append('order-4', 'ItemAdded', '{}', expected_version => 1)$$,
                 '40001', 'wrong expected version for stream "order-4"',
                 'expected_version 1 on a new stream: 40001');
SELECT throws_ok($$SELECT cqrs.append('order-3', 'ItemAdded', '{}', expected_version => -1)$$,
                 '22023', NULL, 'a negative expected_version: 22023');
SELECT is(cqrs.stream_version('order-3'), 3::bigint, 'the refused appends wrote nothing');
SELECT is(cqrs.stream_version('order-4'), 0::bigint, 'nor created a stream');

-- the mismatch detail names both versions
CREATE FUNCTION pg_temp.error_of(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE msg text; det text;
BEGIN
    EXECUTE cmd;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    RETURN msg || ' / ' || det;
END $$;
SELECT is(pg_temp.error_of($$SELECT cqrs.append('order-3', 'T', '{}', expected_version => 1)$$),
          'wrong expected version for stream "order-3" / '
          'Expected version 1, but the stream is at version 3.', 'the message and detail of a mismatch');

-- bad input
SELECT throws_ok($$SELECT cqrs.append(NULL, 'T', '{}')$$, '22004', NULL, 'NULL stream: 22004');
SELECT throws_ok($$SELECT cqrs.append('order-5', NULL, '{}')$$, '22004', NULL, 'NULL type: 22004');
SELECT throws_ok($$SELECT cqrs.append('order-5', 'T', NULL)$$, '22004', NULL, 'NULL data: 22004');
SELECT throws_ok($$SELECT cqrs.append('order-5', 'T', 'null')$$, '22004', NULL, 'JSON null data: 22004');
SELECT throws_ok($$SELECT cqrs.append('', 'T', '{}')$$, '22023', NULL, 'empty stream: 22023');
SELECT throws_ok($$SELECT cqrs.append('order-5', '', '{}')$$, '22023', NULL, 'empty type: 22023');
SELECT throws_ok($$SELECT cqrs.append('order-5', 'T', '{}', '[]')$$, '22023', NULL,
                 'metadata an array: 22023');
SELECT throws_ok($$SELECT cqrs.append('order-5', 'T', '{}', '"m"')$$, '22023', NULL,
                 'metadata a string: 22023');
SELECT is(cqrs.stream_version('order-5'), 0::bigint, 'bad input wrote nothing');

-- the size limit
SET LOCAL cqrs.max_event_size = '1kB';
SELECT throws_ok($$SELECT cqrs.append('order-5', 'T', jsonb_build_object('x', repeat('x', 2048)))$$,
                 '54000', NULL, 'data over cqrs.max_event_size: 54000');
SELECT throws_ok($$SELECT cqrs.append('order-5', 'T', jsonb_build_object('x', repeat('x', 600)),
                                      jsonb_build_object('x', repeat('x', 600)))$$,
                 '54000', NULL, 'data and metadata together over cqrs.max_event_size: 54000');
SELECT lives_ok($$SELECT cqrs.append('order-5', 'T', jsonb_build_object('x', repeat('x', 400)),
                                     jsonb_build_object('x', repeat('x', 400)))$$,
                'data and metadata under cqrs.max_event_size');
RESET cqrs.max_event_size;

-- idempotency
SELECT results_eq(
    $$SELECT version, position FROM cqrs.append('order-2', 'Noted', '{"n": 1}', NULL, 0,
                                                'c0000000-0000-4000-8000-000000000001')$$,
    $$SELECT version, position FROM cqrs.events WHERE id = 'c0000000-0000-4000-8000-000000000001'$$,
    'a retried append returns the original version and position, whatever expected_version says');
SELECT is(cqrs.stream_version('order-2'), 2::bigint, 'and writes nothing');
SELECT throws_ok($$SELECT cqrs.append('order-6', 'Noted', '{}', NULL, NULL,
                                      'c0000000-0000-4000-8000-000000000001')$$,
                 '23505', NULL, 'the same id in another stream: 23505');
SELECT ok(pg_temp.error_of($$SELECT cqrs.append('order-6', 'Noted', '{}', NULL, NULL,
                                             'c0000000-0000-4000-8000-000000000001')$$) ~ 'order-[26]',
          'the unique violation names the stream');
SELECT is(cqrs.stream_version('order-6'), 0::bigint, 'and writes nothing');

SELECT * FROM finish();
ROLLBACK;
