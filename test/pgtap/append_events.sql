-- test/pgtap/append_events.sql: batches (API.md section 1)
BEGIN;
SELECT plan(35);

SELECT results_eq(
    $$SELECT version FROM cqrs.append_events('cart-1', '[
        {"type": "CartOpened", "data": {"n": 1}},
        {"type": "ItemAdded",  "data": {"n": 2}, "metadata": {"user": "bob"}},
        {"type": "ItemAdded",  "data": {"n": 3}, "id": "d0000000-0000-4000-8000-000000000003"}]')$$,
    ARRAY[3::bigint], 'a batch returns the version of its last event');
SELECT results_eq(
    $$SELECT version, type, data, metadata FROM cqrs.read_stream('cart-1')$$,
    $$VALUES (1::bigint, 'CartOpened'::text, '{"n": 1}'::jsonb, '{}'::jsonb),
             (2, 'ItemAdded', '{"n": 2}', '{"user": "bob"}'),
             (3, 'ItemAdded', '{"n": 3}', '{}')$$,
    'the batch is stored in order; metadata defaults to {}');
SELECT is((SELECT version FROM cqrs.events WHERE id = 'd0000000-0000-4000-8000-000000000003'),
          3::bigint, 'a given id is stored');
SELECT is((SELECT count(DISTINCT id) FROM cqrs.events WHERE stream = 'cart-1'), 3::bigint,
          'missing ids are generated');
-- (results_eq would read the log before the append: its two queries share a snapshot)
CREATE TEMP TABLE result_1 AS
    SELECT * FROM cqrs.append_events('cart-1', '[{"type": "ItemAdded", "data": {}},
                                                {"type": "ItemAdded", "data": {}}]', 3);
SELECT results_eq(
    $$SELECT version, position FROM result_1$$,
    $$SELECT version, position FROM cqrs.events WHERE stream = 'cart-1' ORDER BY version DESC LIMIT 1$$,
    'expected_version is the version before the batch; the result is the last event');
SELECT is((SELECT version FROM result_1), 5::bigint, 'the batch continued the stream at version 3');
SELECT throws_ok($$SELECT cqrs.append_events('cart-1', '[{"type": "T", "data": {}}]', 4)$$,
                 '40001', 'wrong expected version for stream "cart-1"', 'a stale expected_version: 40001');
SELECT throws_ok($$SELECT cqrs.append_events('cart-1', '[{"type": "T", "data": {}}]', 0)$$,
                 '40001', 'wrong expected version for stream "cart-1"', 'expected_version 0 on an existing stream: 40001');
SELECT throws_ok($$SELECT cqrs.append_events('cart-1', '[{"type": "T", "data": {}}]', -1)$$,
                 '22023', NULL, 'a negative expected_version: 22023');
SELECT lives_ok($$SELECT cqrs.append_events('cart-2', '[{"type": "T", "data": {}}]', 0)$$,
                'expected_version 0 on a new stream');

-- bad batches
SELECT throws_ok(format('SELECT cqrs.append_events(%L, %L)', 'cart-3', events), code, NULL, label)
  FROM (VALUES
    ('an object is not a batch',      '{"type": "T", "data": {}}', '22023'),
    ('an empty array is not a batch', '[]', '22023'),
    ('an element that is not an object', '[{"type": "T", "data": {}}, 2]', '22023'),
    ('an event without a type',       '[{"data": {}}]', '22023'),
    ('an event without data',         '[{"type": "T"}]', '22023'),
    ('a type that is not a string',   '[{"type": ["T"], "data": {}}]', '22023'),
    ('an empty type',                 '[{"type": "", "data": {}}]', '22023'),
    ('metadata that is not an object', '[{"type": "T", "data": {}, "metadata": [1]}]', '22023'),
    ('an id that is not a uuid',      '[{"type": "T", "data": {}, "id": "x"}]', '22023'),
    ('an unknown key',                '[{"type": "T", "data": {}, "version": 1}]', '22023')
  ) AS t(label, events, code);
SELECT throws_ok($$SELECT cqrs.append_events(NULL, '[{"type": "T", "data": {}}]')$$, '22004', NULL,
                 'a NULL stream: 22004');
SELECT throws_ok($$SELECT cqrs.append_events('', '[{"type": "T", "data": {}}]')$$, '22023', NULL,
                 'an empty stream: 22023');
SELECT throws_ok($$SELECT cqrs.append_events('cart-3', NULL)$$, NULL, NULL, 'NULL events: an error');
SELECT is(cqrs.stream_version('cart-3'), 0::bigint, 'bad batches wrote nothing');
SET LOCAL cqrs.max_event_size = '1kB';
SELECT throws_ok($$SELECT cqrs.append_events('cart-3', jsonb_build_array(
                       jsonb_build_object('type', 'T', 'data', '{}'::jsonb),
                       jsonb_build_object('type', 'T', 'data', jsonb_build_object('x', repeat('x', 2048)))))$$,
                 '54000', NULL, 'a batch with an event over cqrs.max_event_size: 54000');
RESET cqrs.max_event_size;
SELECT is(cqrs.stream_version('cart-3'), 0::bigint, 'and nothing of that batch is written');

-- idempotency of batches
CREATE TEMP TABLE result_2 AS
    SELECT * FROM cqrs.append_events('cart-4', '[
        {"type": "A", "data": {}, "id": "d0000000-0000-4000-8000-000000000041"},
        {"type": "B", "data": {}, "id": "d0000000-0000-4000-8000-000000000042"}]', 0);
SELECT results_eq(
    $$SELECT version, position FROM result_2$$,
    $$SELECT version, position FROM cqrs.events WHERE id = 'd0000000-0000-4000-8000-000000000042'$$,
    'a batch with ids returns its last event');
SELECT results_eq(
    $$SELECT version, position FROM cqrs.append_events('cart-4', '[
        {"type": "A", "data": {}, "id": "d0000000-0000-4000-8000-000000000041"},
        {"type": "B", "data": {}, "id": "d0000000-0000-4000-8000-000000000042"}]', 0)$$,
    $$SELECT version, position FROM cqrs.events WHERE id = 'd0000000-0000-4000-8000-000000000042'$$,
    'the same batch again returns its last event, whatever expected_version says');
SELECT is(cqrs.stream_version('cart-4'), 2::bigint, 'and writes nothing');
SELECT throws_ok($$SELECT cqrs.append_events('cart-4', '[
        {"type": "A", "data": {}, "id": "d0000000-0000-4000-8000-000000000041"},
        {"type": "C", "data": {}, "id": "d0000000-0000-4000-8000-000000000043"}]')$$,
    '23505', NULL, 'a batch repeating only some recorded ids: 23505');
SELECT throws_ok($$SELECT cqrs.append_events('cart-5', '[
        {"type": "A", "data": {}, "id": "d0000000-0000-4000-8000-000000000051"},
        {"type": "B", "data": {}, "id": "d0000000-0000-4000-8000-000000000051"}]')$$,
    '23505', NULL, 'a batch with an id twice: 23505');
SELECT throws_ok($$SELECT cqrs.append_events('cart-5', '[
        {"type": "A", "data": {}, "id": "d0000000-0000-4000-8000-000000000041"},
        {"type": "B", "data": {}, "id": "d0000000-0000-4000-8000-000000000042"}]')$$,
    '23505', NULL, 'another stream''s batch again: 23505');
SELECT is(cqrs.stream_version('cart-4'), 2::bigint, 'the refused batches wrote nothing to cart-4');
SELECT is(cqrs.stream_version('cart-5'), 0::bigint, 'nor to cart-5');
SELECT is((SELECT count(*) FROM cqrs.events
            WHERE id IN ('d0000000-0000-4000-8000-000000000043', 'd0000000-0000-4000-8000-000000000051')),
          0::bigint, 'none of the new ids of the refused batches was recorded');

SELECT * FROM finish();
ROLLBACK;
