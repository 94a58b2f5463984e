--
-- append.sql: cqrs.append -- versions, positions, expected_version, bad input
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- The first append to a stream is version 1; positions restart with the
-- extension, so they are deterministic here.
SELECT * FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}');
SELECT * FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "a"}');
SELECT * FROM cqrs.append('order-2', 'OrderPlaced', '{"total": 20}');
SELECT * FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "b"}');
-- position is usable unquoted as a result column
SELECT version, position FROM cqrs.append('order-2', 'OrderShipped', '{}');

-- metadata defaults to {}; a given metadata and id are stored as given
SELECT * FROM cqrs.append(stream => 'order-3', type => 'OrderPlaced',
                          data => '{"total": 30}',
                          metadata => '{"user": "alice", "correlation": "c-1"}',
                          id => '00000000-0000-4000-8000-000000000001');
SELECT * FROM cqrs.append('order-3', 'OrderNoted', '{"note": "x"}', NULL);

SELECT position, stream, version, type, data, metadata FROM cqrs.events ORDER BY position;
SELECT id FROM cqrs.events WHERE stream = 'order-3' AND version = 1;
-- generated ids are set and distinct; recorded_at is set
SELECT count(*) AS events, count(DISTINCT id) AS ids, count(id) AS non_null_ids,
       bool_and(recorded_at <= now() AND recorded_at > now() - interval '1 hour') AS recorded_now
  FROM cqrs.events;

-- data need not be an object: any JSON value but null
SELECT * FROM cqrs.append('misc-1', 'Listed', '[1, 2, 3]');
SELECT * FROM cqrs.append('misc-1', 'Counted', '42');
SELECT * FROM cqrs.append('misc-1', 'Named', '"text"');
SELECT * FROM cqrs.append('misc-1', 'Empty', '{}');
SELECT version, data FROM cqrs.read_stream('misc-1');

--
-- expected_version
--
SELECT cqrs.stream_version('order-1');
SELECT * FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "c"}', expected_version => NULL);
SELECT * FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "d"}', expected_version => 4);
SELECT * FROM cqrs.append('order-4', 'OrderPlaced', '{}', expected_version => 0);
SELECT * FROM cqrs.append('order-4', 'ItemAdded', '{}', NULL, 1);

-- a mismatch is a serialization failure naming the stream and both versions
SELECT * FROM cqrs.append('order-1', 'ItemAdded', '{}', expected_version => 4);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT label, try(cmd) FROM (VALUES
    ('stale',            $$SELECT cqrs.append('order-1', 'T', '{}', expected_version => 3)$$),
    ('ahead',            $$SELECT cqrs.append('order-1', 'T', '{}', expected_version => 10)$$),
    ('0 on existing',    $$SELECT cqrs.append('order-1', 'T', '{}', expected_version => 0)$$),
    ('1 on new stream',  $$SELECT cqrs.append('order-9', 'T', '{}', expected_version => 1)$$),
    ('negative',         $$SELECT cqrs.append('order-1', 'T', '{}', expected_version => -1)$$),
    ('negative, new',    $$SELECT cqrs.append('order-9', 'T', '{}', expected_version => -5)$$)
) AS t(label, cmd);

--
-- bad input
--
SELECT label, try(cmd) FROM (VALUES
    ('NULL stream',           $$SELECT cqrs.append(NULL, 'T', '{}')$$),
    ('NULL type',             $$SELECT cqrs.append('order-1', NULL, '{}')$$),
    ('NULL data',             $$SELECT cqrs.append('order-1', 'T', NULL)$$),
    ('JSON null data',        $$SELECT cqrs.append('order-1', 'T', 'null')$$),
    ('empty stream',          $$SELECT cqrs.append('', 'T', '{}')$$),
    ('empty type',            $$SELECT cqrs.append('order-1', '', '{}')$$),
    ('metadata array',        $$SELECT cqrs.append('order-1', 'T', '{}', '[]')$$),
    ('metadata string',       $$SELECT cqrs.append('order-1', 'T', '{}', '"m"')$$),
    ('metadata number',       $$SELECT cqrs.append('order-1', 'T', '{}', '1')$$),
    ('bad input, new stream', $$SELECT cqrs.append('order-9', '', '{}')$$)
) AS t(label, cmd);

-- none of the failures above wrote anything
SELECT stream, cqrs.stream_version(stream), count(*)
  FROM cqrs.events GROUP BY stream ORDER BY stream;
SELECT cqrs.stream_version('order-9');
SELECT count(*) FROM cqrs.events;

-- versions are gapless per stream, positions unique and increasing with them
SELECT stream,
       bool_and(version = rn) AS gapless,
       bool_and(position > coalesce(prev, 0)) AS increasing
  FROM (SELECT stream, version, position,
               row_number() OVER w AS rn,
               lag(position) OVER w AS prev
          FROM cqrs.events WINDOW w AS (PARTITION BY stream ORDER BY version)) e
 GROUP BY stream ORDER BY stream;

-- failed appends may leave gaps in positions, never go back
SELECT max(position) AS before FROM cqrs.events \gset
SELECT version, position > :before AS after_previous
  FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "e"}');

-- an appended event rolls back with its transaction, version and all
BEGIN;
SELECT version FROM cqrs.append('order-5', 'OrderPlaced', '{}');
SELECT version FROM cqrs.append('order-5', 'OrderPaid', '{}');
ROLLBACK;
SELECT cqrs.stream_version('order-5');
SELECT version FROM cqrs.append('order-5', 'OrderPlaced', '{}', expected_version => 0);

-- metadata given as JSON null is taken as absent, like SQL NULL: {}
SELECT position AS p FROM cqrs.append('order-6', 'OrderPlaced', '{}', 'null') \gset
SELECT metadata FROM cqrs.events WHERE position = :p;

-- Appends store their rows directly (heap and indexes) unless the log has
-- something an INSERT would run: then they go through the executor, so a
-- DBA's own trigger fires, and a column added with a default gets it
-- (row-level security WITH CHECK: security_log.sql).  Like the handlers of
-- sync projections, such a trigger runs under search_path pg_catalog, pg_temp.
CREATE TABLE audit (position bigint, stream text);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.audit VALUES (NEW.position, NEW.stream);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_audit AFTER INSERT ON cqrs.events
    FOR EACH ROW EXECUTE FUNCTION audit_row();
SELECT version FROM cqrs.append('audited-1', 'Noted', '{}');
SELECT version FROM cqrs.append_events('audited-1', '[{"type": "A", "data": {}}, {"type": "B", "data": {}}]');
SELECT stream, count(*) FROM audit GROUP BY stream;
DROP TRIGGER events_audit ON cqrs.events;
SELECT version FROM cqrs.append('audited-1', 'Unaudited', '{}');
SELECT count(*) AS audited FROM audit;
ALTER TABLE cqrs.events ADD COLUMN source text DEFAULT 'app';
SELECT position AS p FROM cqrs.append('order-7', 'OrderPlaced', '{}') \gset
SELECT source FROM cqrs.events WHERE position = :p;
ALTER TABLE cqrs.events DROP COLUMN source;
-- a dropped column is null in rows stored directly
SELECT version FROM cqrs.append('order-7', 'OrderPaid', '{}');
SELECT stream, version, type FROM cqrs.events WHERE stream = 'order-7' ORDER BY version;
DROP TABLE audit;
DROP FUNCTION audit_row();

DROP EXTENSION pg_cqrs;
