--
-- append_events.sql: cqrs.append_events -- atomic batches and their validation
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- a batch returns its last event; metadata and id are optional
SELECT * FROM cqrs.append_events('order-1', '[
    {"type": "OrderPlaced", "data": {"total": 10}},
    {"type": "ItemAdded",   "data": {"sku": "a"}, "metadata": {"user": "alice"}},
    {"type": "ItemAdded",   "data": {"sku": "b"}, "id": "00000000-0000-4000-8000-0000000000b1"}
]');
SELECT position, stream, version, type, data, metadata FROM cqrs.events ORDER BY position;
SELECT version, id FROM cqrs.events WHERE id = '00000000-0000-4000-8000-0000000000b1';
SELECT count(DISTINCT id) AS distinct_ids, count(id) AS ids FROM cqrs.events;

-- a batch of one; a batch continues the stream's versions
SELECT * FROM cqrs.append_events('order-2', '[{"type": "OrderPlaced", "data": {}}]');
SELECT * FROM cqrs.append_events('order-1', '[{"type": "ItemAdded", "data": {"sku": "c"}},
                                              {"type": "ItemRemoved", "data": {"sku": "a"}}]');
SELECT version, type, data FROM cqrs.read_stream('order-1');

-- a mix with single appends keeps versions gapless
SELECT * FROM cqrs.append('order-2', 'ItemAdded', '{}');
SELECT * FROM cqrs.append_events('order-2', '[{"type": "ItemAdded", "data": {}},
                                              {"type": "OrderPaid", "data": {}}]');
SELECT version, type FROM cqrs.read_stream('order-2');

--
-- expected_version applies to the stream as it was before the batch
--
SELECT * FROM cqrs.append_events('order-3', '[{"type": "A", "data": {}}, {"type": "B", "data": {}}]',
                                 expected_version => 0);
SELECT * FROM cqrs.append_events('order-3', '[{"type": "C", "data": {}}, {"type": "D", "data": {}}]',
                                 expected_version => 2);
SELECT * FROM cqrs.append_events('order-3', '[{"type": "E", "data": {}}]', NULL);
SELECT label, try(cmd) FROM (VALUES
    ('0 on existing',  $$SELECT cqrs.append_events('order-3', '[{"type": "X", "data": {}}]', 0)$$),
    ('stale',          $$SELECT cqrs.append_events('order-3', '[{"type": "X", "data": {}}]', 4)$$),
    ('version after',  $$SELECT cqrs.append_events('order-3', '[{"type": "X", "data": {}}, {"type": "Y", "data": {}}]', 7)$$),
    ('1 on new',       $$SELECT cqrs.append_events('order-9', '[{"type": "X", "data": {}}]', 1)$$),
    ('negative',       $$SELECT cqrs.append_events('order-3', '[{"type": "X", "data": {}}]', -1)$$)
) AS t(label, cmd);
SELECT cqrs.stream_version('order-3'), cqrs.stream_version('order-9');

--
-- bad batches: a clear error, and nothing of the batch is written
--
SELECT count(*) AS events_before FROM cqrs.events \gset
SELECT label, try(cmd) FROM (VALUES
    ('NULL stream',         $$SELECT cqrs.append_events(NULL, '[{"type": "T", "data": {}}]')$$),
    ('empty stream',        $$SELECT cqrs.append_events('', '[{"type": "T", "data": {}}]')$$),
    ('NULL events',         $$SELECT cqrs.append_events('order-1', NULL)$$),
    ('object',              $$SELECT cqrs.append_events('order-1', '{"type": "T", "data": {}}')$$),
    ('string',              $$SELECT cqrs.append_events('order-1', '"T"')$$),
    ('JSON null',           $$SELECT cqrs.append_events('order-1', 'null')$$),
    ('empty array',         $$SELECT cqrs.append_events('order-1', '[]')$$),
    ('element number',      $$SELECT cqrs.append_events('order-1', '[1]')$$),
    ('element array',       $$SELECT cqrs.append_events('order-1', '[[{"type": "T", "data": {}}]]')$$),
    ('second not object',   $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}}, "x"]')$$),
    ('missing type',        $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}}, {"data": {}}]')$$),
    ('missing data',        $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}}, {"type": "T"}]')$$),
    ('type not a string',   $$SELECT cqrs.append_events('order-1', '[{"type": 1, "data": {}}]')$$),
    ('type empty',          $$SELECT cqrs.append_events('order-1', '[{"type": "", "data": {}}]')$$),
    ('metadata array',      $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}, "metadata": []}]')$$),
    ('metadata string',     $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}, "metadata": "m"}]')$$),
    ('id not a uuid',       $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}, "id": "nope"}]')$$),
    ('id a number',         $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}, "id": 42}]')$$),
    ('unknown key',         $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}, "tpye": "U"}]')$$),
    ('type JSON null',      $$SELECT cqrs.append_events('order-1', '[{"type": null, "data": {}}]')$$),
    ('data JSON null',      $$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": null}]')$$),
    ('bad, new stream',     $$SELECT cqrs.append_events('order-9', '[{"type": "T", "data": {}}, {"type": "T"}]')$$)
) AS t(label, cmd);

SELECT count(*) - :events_before AS written FROM cqrs.events;
SELECT stream, cqrs.stream_version(stream) FROM (VALUES ('order-1'), ('order-9')) s(stream);

-- a bad batch in a transaction: the error aborts it, the earlier append goes too
BEGIN;
SELECT version FROM cqrs.append('order-5', 'OrderPlaced', '{}');
SELECT version FROM cqrs.append_events('order-5', '[{"type": "T", "data": {}}, {"type": ""}]');
ROLLBACK;
SELECT cqrs.stream_version('order-5');

--
-- a large batch: gapless versions, increasing positions, the last one returned
--
SELECT version, position FROM cqrs.append_events('big-1',
        (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'data', jsonb_build_object('n', i)) ORDER BY i)
           FROM generate_series(1, 2500) i)) \gset big_
SELECT :big_version AS version, :big_position = max(position) AS last_position,
       :big_position = (SELECT position FROM cqrs.events WHERE stream = 'big-1' AND version = 2500) AS its_position
  FROM cqrs.events;
SELECT count(*), min(version), max(version),
       bool_and((data->>'n')::bigint = version) AS in_order
  FROM cqrs.events WHERE stream = 'big-1';
SELECT bool_and(position > prev) AS positions_increase
  FROM (SELECT position, lag(position) OVER (ORDER BY version) AS prev
          FROM cqrs.events WHERE stream = 'big-1') e
 WHERE prev IS NOT NULL;

DROP EXTENSION pg_cqrs;
