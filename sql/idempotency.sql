--
-- idempotency.sql: an event id is recorded once; a retried append is a no-op
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

--
-- cqrs.append with an id
--
SELECT version, position FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}',
                                          id => 'a0000000-0000-4000-8000-000000000001') \gset first_
SELECT :first_version AS version, :first_position AS position;
SELECT * FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "a"}');
SELECT count(*) AS events_before FROM cqrs.events \gset

-- the retry returns the original (version, position), whatever expected_version says
SELECT version = :first_version AS same_version, position = :first_position AS same_position
  FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}',
                   id => 'a0000000-0000-4000-8000-000000000001');
SELECT version = :first_version AS same_version, position = :first_position AS same_position
  FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}', expected_version => 0,
                   id => 'a0000000-0000-4000-8000-000000000001');
SELECT version = :first_version AS same_version, position = :first_position AS same_position
  FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}', expected_version => 1,
                   id => 'a0000000-0000-4000-8000-000000000001');
SELECT version = :first_version AS same_version, position = :first_position AS same_position
  FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}', expected_version => 77,
                   id => 'a0000000-0000-4000-8000-000000000001');
-- and wrote nothing
SELECT count(*) - :events_before AS written, cqrs.stream_version('order-1') FROM cqrs.events;

-- the same id in another stream is a unique violation naming the stream
SELECT try($$SELECT cqrs.append('order-2', 'OrderPlaced', '{}',
                                        id => 'a0000000-0000-4000-8000-000000000001')$$);
SELECT try($$SELECT cqrs.append('order-2', 'OrderPlaced', '{}', expected_version => 0,
                                        id => 'a0000000-0000-4000-8000-000000000001')$$);
SELECT cqrs.stream_version('order-2'), count(*) - :events_before AS written FROM cqrs.events;

-- a retried command inside a transaction that already appended
BEGIN;
SELECT version FROM cqrs.append('order-3', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000003');
SELECT version FROM cqrs.append('order-3', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000003');
SELECT version FROM cqrs.append('order-3', 'OrderPaid', '{}');
SELECT version FROM cqrs.append('order-3', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000003');
COMMIT;
SELECT version, type FROM cqrs.read_stream('order-3');

-- a rolled-back append leaves its id free
BEGIN;
SELECT version FROM cqrs.append('order-4', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000004');
ROLLBACK;
SELECT version FROM cqrs.append('order-5', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000004');

--
-- cqrs.append_events with ids
--
SELECT version, position FROM cqrs.append_events('cart-1', '[
    {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000003"}
]') \gset batch_
SELECT :batch_version AS version;
SELECT version AS v1, position AS p1 FROM cqrs.events
 WHERE id = 'b0000000-0000-4000-8000-000000000001' \gset
SELECT version FROM cqrs.append('cart-1', 'CartClosed', '{}');
SELECT count(*) AS events_before FROM cqrs.events \gset

-- the whole batch again, in order: a no-op returning its last event,
-- whatever expected_version says
SELECT version = :batch_version AS same_version, position = :batch_position AS same_position
  FROM cqrs.append_events('cart-1', '[
    {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000003"}
]');
SELECT version = :batch_version AS same_version, position = :batch_position AS same_position
  FROM cqrs.append_events('cart-1', '[
    {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000003"}
]', expected_version => 0);
-- a single recorded id as a batch of one is also a retry
SELECT version = :v1 AS same_version, position = :p1 AS same_position
  FROM cqrs.append_events('cart-1',
        '[{"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"}]', 2);
-- append with an id first recorded by a batch
SELECT version = :v1 AS same_version, position = :p1 AS same_position
  FROM cqrs.append('cart-1', 'CartOpened', '{}', id => 'b0000000-0000-4000-8000-000000000001');
-- the recorded tail of a batch, in order, is also a retry returning its last event
SELECT version = :batch_version AS same_version, position = :batch_position AS same_position
  FROM cqrs.append_events('cart-1', '[
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000003"}
]');
SELECT count(*) - :events_before AS written, cqrs.stream_version('cart-1') FROM cqrs.events;

-- batches that repeat only some recorded ids, or repeat an id within
-- themselves, or reuse an id of another stream: 23505, nothing written
SELECT label, try(cmd) FROM (VALUES
    ('recorded, then new', $$SELECT cqrs.append_events('cart-1', '[
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"},
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000003"},
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000099"}]')$$),
    ('new, then recorded', $$SELECT cqrs.append_events('cart-1', '[
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000099"},
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"}]')$$),
    ('recorded, out of order', $$SELECT cqrs.append_events('cart-1', '[
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"}]')$$),
    ('recorded, then no id', $$SELECT cqrs.append_events('cart-1', '[
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"},
        {"type": "ItemAdded",  "data": {}}]')$$),
    ('duplicate within', $$SELECT cqrs.append_events('cart-2', '[
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000050"},
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000050"}]')$$),
    ('other stream''s id', $$SELECT cqrs.append_events('cart-2', '[
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000051"},
        {"type": "ItemAdded",  "data": {}, "id": "a0000000-0000-4000-8000-000000000001"}]')$$),
    ('other stream''s batch', $$SELECT cqrs.append_events('cart-2', '[
        {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000001"},
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000002"},
        {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000003"}]')$$)
) AS t(label, cmd);
SELECT count(*) - :events_before AS written,
       cqrs.stream_version('cart-1') AS cart_1, cqrs.stream_version('cart-2') AS cart_2
  FROM cqrs.events;
SELECT count(*) FROM cqrs.events
 WHERE id IN ('b0000000-0000-4000-8000-000000000099', 'b0000000-0000-4000-8000-000000000050',
              'b0000000-0000-4000-8000-000000000051');

-- the ids refused above are still free
SELECT version FROM cqrs.append_events('cart-2', '[
    {"type": "CartOpened", "data": {}, "id": "b0000000-0000-4000-8000-000000000050"},
    {"type": "ItemAdded",  "data": {}, "id": "b0000000-0000-4000-8000-000000000099"}]');

DROP EXTENSION pg_cqrs;
