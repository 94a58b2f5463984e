-- bench/raw_batch.sql - the same 100 rows in one set-based INSERT ... SELECT
-- into bench.raw_events (position and version from one nextval per row).
\set sid random(1, 100000)
INSERT INTO bench.raw_events ("position", stream, version, id, type, data)
SELECT p, 'order-' || :sid, p, gen_random_uuid(), 'OrderPlaced', '{"amount": 42, "currency": "EUR"}'
FROM (SELECT nextval('bench.raw_position_seq') AS p FROM generate_series(1, 100)) AS g;
