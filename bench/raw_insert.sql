-- bench/raw_insert.sql - the same row INSERTed into bench.raw_events: one
-- nextval for the position, version = that position (cannot collide, no
-- lookup), a generated id, metadata and recorded_at from the defaults.
\set sid random(1, 100000)
INSERT INTO bench.raw_events ("position", stream, version, id, type, data)
SELECT p, 'order-' || :sid, p, gen_random_uuid(), 'OrderPlaced', '{"amount": 42, "currency": "EUR"}'
FROM nextval('bench.raw_position_seq') AS p
RETURNING version, "position";
