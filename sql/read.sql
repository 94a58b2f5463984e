--
-- read.sql: stream_version, read_stream, read_all, safe_position
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- an empty log
SELECT cqrs.stream_version('order-1');
SELECT count(*) FROM cqrs.read_stream('order-1');
SELECT count(*) FROM cqrs.read_all();
SELECT cqrs.safe_position();

-- positions 1..10, deterministic in a fresh extension
SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{"n": 1}');
SELECT position FROM cqrs.append('order-2', 'OrderPlaced', '{"n": 2}');
SELECT position FROM cqrs.append('customer-1', 'CustomerRegistered', '{"n": 3}');
SELECT position FROM cqrs.append('order-1', 'ItemAdded', '{"n": 4}', '{"user": "alice"}');
SELECT position FROM cqrs.append('order', 'Configured', '{"n": 5}');
SELECT position FROM cqrs.append('order-1', 'ItemAdded', '{"n": 6}');
SELECT position FROM cqrs.append('order-2', 'OrderShipped', '{"n": 7}');
SELECT position FROM cqrs.append('customer-1', 'CustomerRenamed', '{"n": 8}');
SELECT position FROM cqrs.append('order-1', 'OrderPaid', '{"n": 9}');
SELECT position FROM cqrs.append('orders-1', 'OrderPlaced', '{"n": 10}');

--
-- stream_version
--
SELECT s AS stream, cqrs.stream_version(s)
  FROM unnest(ARRAY['order-1', 'order-2', 'customer-1', 'order', 'orders-1', 'order-3', 'ORDER-1']) s;

--
-- read_stream: the stream's events in version order, whole cqrs.events rows
--
SELECT position, stream, version, type, data, metadata FROM cqrs.read_stream('order-1');
SELECT position, version, type FROM cqrs.read_stream('order-1', 2);
SELECT position, version, type FROM cqrs.read_stream('order-1', 3, 1);
SELECT position, version, type FROM cqrs.read_stream('order-1', max_count => 2);
SELECT position, version, type FROM cqrs.read_stream(stream => 'order-1', from_version => 4);
SELECT count(*) FROM cqrs.read_stream('order-1', 5);
SELECT count(*) FROM cqrs.read_stream('order-3');
-- from_version 0 is the start of the stream
SELECT count(*) FROM cqrs.read_stream('order-1', 0);
-- the rows are those of cqrs.events, id and recorded_at included
SELECT count(*) FROM (SELECT * FROM cqrs.read_stream('order-1')
                      EXCEPT ALL
                      SELECT * FROM cqrs.events WHERE stream = 'order-1') d;
SELECT count(*) FROM (SELECT * FROM cqrs.events WHERE stream = 'order-1'
                      EXCEPT ALL
                      SELECT * FROM cqrs.read_stream('order-1')) d;
SELECT label, try(cmd) FROM (VALUES
    ('NULL stream',           $$SELECT * FROM cqrs.read_stream(NULL)$$),
    ('negative from_version', $$SELECT * FROM cqrs.read_stream('order-1', -1)$$),
    ('zero max_count',        $$SELECT * FROM cqrs.read_stream('order-1', 1, 0)$$),
    ('negative max_count',    $$SELECT * FROM cqrs.read_stream('order-1', 1, -1)$$)
) AS t(label, cmd);

--
-- read_all: events after a position, in position order
--
SELECT position, stream, version, type FROM cqrs.read_all();
SELECT position, stream, type FROM cqrs.read_all(7);
SELECT position, stream, type FROM cqrs.read_all(3, 2);
SELECT position, stream, type FROM cqrs.read_all(after_position => 0, max_count => 1);
SELECT count(*) FROM cqrs.read_all(10);
SELECT count(*) FROM cqrs.read_all(1000);
SELECT count(*) FROM (SELECT * FROM cqrs.read_all()
                      EXCEPT ALL
                      SELECT * FROM cqrs.events) d;
-- filters: categories (order-1 -> order, "order" -> order, orders-1 -> orders)
SELECT position, stream, type FROM cqrs.read_all(categories => '{order}');
SELECT position, stream, type FROM cqrs.read_all(categories => '{customer,orders}');
SELECT position, stream, type FROM cqrs.read_all(types => '{OrderPlaced}');
SELECT position, stream, type FROM cqrs.read_all(types => '{ItemAdded,CustomerRenamed}');
SELECT position, stream, type FROM cqrs.read_all(0, 1000, '{order}', '{OrderPlaced,ItemAdded}');
SELECT position, stream, type FROM cqrs.read_all(4, 2, '{order}', NULL);
SELECT count(*) FROM cqrs.read_all(categories => '{nothing}');
SELECT count(*) FROM cqrs.read_all(types => '{Nothing}');
-- a reader that pages through the log sees every event once, in order
DO $$
DECLARE
    last bigint := 0;
    seen bigint[] := '{}';
    page bigint[];
BEGIN
    LOOP
        SELECT array_agg(position ORDER BY position) INTO page FROM cqrs.read_all(last, 3);
        EXIT WHEN page IS NULL;
        seen := seen || page;
        last := page[array_length(page, 1)];
    END LOOP;
    RAISE NOTICE 'paged: %', seen;
END
$$;
-- bad arguments
SELECT label, try(cmd) FROM (VALUES
    ('negative after_position', $$SELECT * FROM cqrs.read_all(-1)$$),
    ('zero max_count',          $$SELECT * FROM cqrs.read_all(0, 0)$$),
    ('negative max_count',      $$SELECT * FROM cqrs.read_all(0, -1)$$)
) AS t(label, cmd);

-- the default max_count is 1000
SELECT count(*) FROM cqrs.append_events('ticks-1',
        (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'data', '{}'::jsonb))
           FROM generate_series(1, 1200)));
SELECT count(*), min(position), max(position) FROM cqrs.read_all();
SELECT count(*) FROM cqrs.read_all(0, 5000);
SELECT count(*) FROM cqrs.read_all(0, NULL);

--
-- safe_position: with nothing in flight, everything committed is below it
--
SELECT cqrs.safe_position() >= max(position) AS covers_log FROM cqrs.events;
SELECT count(*) FROM cqrs.read_all(cqrs.safe_position());

-- a transaction reads its own appends from the stream; a rolled-back
-- append leaves nothing to read
BEGIN;
SELECT version FROM cqrs.append('order-7', 'OrderPlaced', '{}');
SELECT stream, version, type FROM cqrs.read_stream('order-7');
SELECT cqrs.stream_version('order-7');
ROLLBACK;
SELECT cqrs.stream_version('order-7');
SELECT count(*) FROM cqrs.read_stream('order-7');

DROP EXTENSION pg_cqrs;
