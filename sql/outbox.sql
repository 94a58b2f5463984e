--
-- outbox.sql: the pg_cqrs output plugin and cqrs.publish -- committed events
-- and messages only, in commit order, escaped; filters, options and their
-- errors; the Debezium shape; the status view
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- The plugin's output with what changes from run to run masked: the
-- transaction's commit LSN, its xid, generated ids and timestamps.  The
-- JSON text is shown as the plugin wrote it, escaping and all.
CREATE FUNCTION outbox_mask(line text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(regexp_replace(line,
           '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"L"'),
           '"xid":[0-9]+', '"xid":X'),
           '"id":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"', '"id":"U"'),
           '"recorded_at":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+\+00:00"', '"recorded_at":"T"')
$$;
CREATE FUNCTION outbox_peek(VARIADIC opts text[] DEFAULT '{}') RETURNS SETOF text
LANGUAGE sql AS $$
    SELECT outbox_mask(data) FROM pg_logical_slot_peek_changes('outbox', NULL, NULL, VARIADIC opts)
$$;
-- consume what is there, showing how much it was
CREATE FUNCTION outbox_consume() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM pg_logical_slot_get_changes('outbox', NULL, NULL)
$$;

SELECT 'init' FROM pg_create_logical_replication_slot('outbox', 'pg_cqrs');
SELECT name, database, active, lag_events FROM cqrs.outbox_status;

--
-- one line per committed event, with every field
--
SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10, "items": []}',
                                 '{"user": "ada"}', id => 'a0000000-0000-4000-8000-000000000001');
SELECT position FROM cqrs.append_events('order-1', '[
    {"type": "ItemAdded", "data": {"sku": "x"}, "id": "a0000000-0000-4000-8000-000000000002"},
    {"type": "ItemAdded", "data": {"sku": "y"}, "id": "a0000000-0000-4000-8000-000000000003"}]');
SELECT * FROM outbox_peek();
-- each line is a JSON object with exactly the documented keys
SELECT DISTINCT (SELECT array_agg(k ORDER BY k) FROM json_object_keys(data::json) k) AS keys
  FROM pg_logical_slot_peek_changes('outbox', NULL, NULL);
-- recorded_at is the event's own, in UTC; the lsn is the end of the
-- transaction's commit record: shared by its events, after their own
SELECT count(*) FILTER (WHERE (c.data::json->>'recorded_at')::timestamptz = e.recorded_at) AS same_time,
       count(DISTINCT c.data::json->>'lsn') AS commit_lsns,
       count(*) FILTER (WHERE (c.data::json->>'lsn')::pg_lsn > c.lsn) AS after_change
  FROM pg_logical_slot_peek_changes('outbox', NULL, NULL) c
  JOIN cqrs.events e ON e.position = (c.data::json->>'position')::bigint;
SELECT (SELECT count(DISTINCT data::json->>'xid') FROM pg_logical_slot_peek_changes('outbox', NULL, NULL)) AS xids;
SELECT outbox_consume();

--
-- nothing for rolled-back work, other tables, empty transactions and the
-- extension's own bookkeeping
--
BEGIN;
SELECT position FROM cqrs.append('order-2', 'OrderPlaced', '{}');
ROLLBACK;
BEGIN;
SELECT position FROM cqrs.append('order-3', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000004');
SAVEPOINT s;
SELECT position FROM cqrs.append('order-3', 'OrderCancelled', '{}');
ROLLBACK TO s;
SELECT position FROM cqrs.append('order-3', 'OrderPaid', '{}', id => 'a0000000-0000-4000-8000-000000000005');
COMMIT;
CREATE TABLE orders (id int PRIMARY KEY, total int);
INSERT INTO orders VALUES (1, 10);
UPDATE orders SET total = 11;
DELETE FROM orders;
-- a table named events in another schema is not the log
CREATE TABLE public.events (position bigint, stream text, version bigint, id uuid,
                            type text, data jsonb, metadata jsonb, recorded_at timestamptz);
INSERT INTO public.events VALUES (1, 'fake-1', 1, gen_random_uuid(), 'Fake', '{}', '{}', now());
BEGIN;
COMMIT;
CREATE FUNCTION noop_handler(e cqrs.events) RETURNS void LANGUAGE sql AS '';
SELECT cqrs.create_projection('noop', 'noop_handler');
SELECT cqrs.pause_projection('noop');
SELECT cqrs.drop_projection('noop');
SELECT * FROM outbox_peek();
SELECT outbox_consume();

--
-- escaping: quotes, backslashes, control characters, non-ASCII and emoji,
-- in stream, type and JSON values; every line parses back to the input
--
SELECT position FROM cqrs.append(E'we"ird\\str-1', E'type\twith\ncontrol\x01\x1f "chars"',
    jsonb_build_object('quote', E'"', 'backslash', E'\\', 'nl', E'a\nb', 'ctl', E'\x01\x1f',
                       'unicode', 'café ☕ 😀 𝄞', 'escaped', '\u00e9'),
    id => 'a0000000-0000-4000-8000-000000000010');
SELECT position FROM cqrs.append('ünïcødé-😀', 'Événement', '"just a string"',
    id => 'a0000000-0000-4000-8000-000000000011');
SELECT * FROM outbox_peek();
SELECT e.stream = j->>'stream' AS stream_ok, e.type = j->>'type' AS type_ok,
       e.data = (j->'data')::jsonb AS data_ok, e.metadata = (j->'metadata')::jsonb AS metadata_ok
  FROM (SELECT data::json AS j FROM pg_logical_slot_peek_changes('outbox', NULL, NULL)) c
  JOIN cqrs.events e ON e.id = (j->>'id')::uuid;
SELECT outbox_consume();

-- a value large enough to be TOASTed out of line is reassembled
SELECT position FROM cqrs.append('big-1', 'Big',
    (SELECT jsonb_agg(md5(i::text)) FROM generate_series(1, 20000) i));
SELECT pg_relation_size(reltoastrelid) > 0 AS toasted FROM pg_class WHERE oid = 'cqrs.events'::regclass;
SELECT octet_length(c.data) > 700000 AS whole, (c.data::json->'data')::jsonb = e.data AS data_ok
  FROM pg_logical_slot_peek_changes('outbox', NULL, NULL) c
  JOIN cqrs.events e ON e.stream = 'big-1';
SELECT outbox_consume();

--
-- filters: categories, types (whitespace around items is dropped), both
--
SELECT count(*) FROM cqrs.append('order-10', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000020');
SELECT count(*) FROM cqrs.append('customer-10', 'CustomerRegistered', '{}', id => 'a0000000-0000-4000-8000-000000000021');
SELECT count(*) FROM cqrs.append('order-10', 'OrderPaid', '{}', id => 'a0000000-0000-4000-8000-000000000022');
SELECT count(*) FROM cqrs.append('invoice', 'InvoiceSent', '{}', id => 'a0000000-0000-4000-8000-000000000023');
SELECT * FROM outbox_peek('categories', 'order');
SELECT * FROM outbox_peek('categories', ' customer , invoice ');
SELECT * FROM outbox_peek('types', 'OrderPaid,CustomerRegistered');
SELECT * FROM outbox_peek('categories', 'order', 'types', 'OrderPaid');
SELECT * FROM outbox_peek('categories', 'Order');
SELECT * FROM outbox_peek('categories', 'order-10');

--
-- include-metadata and format
--
SELECT * FROM outbox_peek('categories', 'invoice', 'include-metadata', 'false');
SELECT * FROM outbox_peek('categories', 'invoice', 'include-metadata', 'on');
SELECT * FROM outbox_peek('categories', 'order', 'format', 'json');
SELECT * FROM outbox_peek('categories', 'order', 'format', 'debezium');
SELECT * FROM outbox_peek('categories', 'invoice', 'format', 'debezium', 'include-metadata', 'false');
SELECT outbox_consume();

--
-- every option error names the option and hints at the valid ones
--
\set VERBOSITY default
SELECT * FROM outbox_peek('bogus', '1');
SELECT * FROM outbox_peek('Categories', 'order');
SELECT * FROM outbox_peek('categories', 'order', 'categories', 'customer');
SELECT * FROM outbox_peek('categories', '');
SELECT * FROM outbox_peek('types', 'a,,b');
SELECT * FROM outbox_peek('topics', 'a, ');
SELECT * FROM outbox_peek('include-metadata', 'maybe');
SELECT * FROM outbox_peek('format', 'xml');
SELECT * FROM outbox_peek('transaction-end', 'maybe');
SELECT * FROM outbox_peek('transaction-end', 'on', 'transaction-end', 'off');
-- (option values without a value, pg_recvlogical -o format, are
-- tested in t/007_outbox_recvlogical.pl: SQL cannot pass them)

--
-- published messages: in commit order with the events, nothing when rolled
-- back (whole transaction or savepoint)
--
BEGIN;
SELECT cqrs.publish('order-events', '{"order": 20, "status": "placed"}', 'order-20') IS NOT NULL AS published;
SELECT count(*) FROM cqrs.append('order-20', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000030');
SAVEPOINT s;
SELECT cqrs.publish('order-events', '{"rolled": "back"}') IS NOT NULL AS published;
ROLLBACK TO s;
SELECT cqrs.publish('notifications', '["a", 1, null]') IS NOT NULL AS published;
COMMIT;
BEGIN;
SELECT cqrs.publish('order-events', '{"never": true}') IS NOT NULL AS published;
ROLLBACK;
-- a message alone is a transaction of its own
SELECT cqrs.publish('notifications', '"hello \"world\" ☕"', E'key\twith "tab"') IS NOT NULL AS published;
SELECT cqrs.publish('notifications', 'null') IS NOT NULL AS published;
SELECT * FROM outbox_peek();
SELECT * FROM outbox_peek('topics', 'notifications');
-- event filters do not hide messages, topics do not hide events
SELECT * FROM outbox_peek('categories', 'customer');
SELECT * FROM outbox_peek('format', 'debezium', 'topics', 'order-events');
-- each message has its own id
SELECT count(DISTINCT data::json->>'id') AS ids, count(*) AS messages
  FROM pg_logical_slot_peek_changes('outbox', NULL, NULL) WHERE data LIKE '{"topic"%';

--
-- transaction-end: one commit line ends each transaction that wrote a line,
-- counting its lines; none for a transaction whose lines were all filtered
-- out, none without the option
--
SELECT * FROM outbox_peek('transaction-end', 'true');
SELECT * FROM outbox_peek('transaction-end', 'on', 'topics', 'notifications', 'categories', 'none');
SELECT * FROM outbox_peek('transaction-end', 'off', 'topics', 'notifications');
SELECT count(*) FROM pg_logical_slot_peek_changes('outbox', NULL, NULL, 'transaction-end', 'true',
                                                  'topics', 'none', 'categories', 'none');
-- its lsn and xid are those its transaction's lines carry; its row's lsn
-- (the replication message's start) is its lsn too, while a change line's
-- row starts before its lsn; lines counts them
WITH c AS (
    SELECT lsn, data::json AS j, data::json->'commit' AS e
      FROM pg_logical_slot_peek_changes('outbox', NULL, NULL, 'transaction-end', 'true'))
SELECT count(*) AS commits,
       count(*) FILTER (WHERE (e->>'lsn')::pg_lsn = lsn) AS message_at_lsn,
       count(*) FILTER (WHERE (e->>'lines')::int =
                        (SELECT count(*) FROM c l WHERE l.e IS NULL
                            AND l.j->>'lsn' = c.e->>'lsn' AND l.j->>'xid' = c.e->>'xid')) AS lines_match,
       (SELECT count(*) FROM c l WHERE l.e IS NULL AND (l.j->>'lsn')::pg_lsn > l.lsn) AS change_lines_before,
       (SELECT count(*) FROM c l WHERE l.e IS NULL) AS change_lines
  FROM c WHERE e IS NOT NULL;
SELECT outbox_consume();

-- other prefixes and non-transactional messages are not ours; a message
-- with our prefix that cqrs.publish did not write is skipped with a warning
-- (one per transaction)
SELECT pg_logical_emit_message(true, 'other', 'hello') IS NOT NULL AS emitted;
SELECT pg_logical_emit_message(false, 'pg_cqrs', 'hello') IS NOT NULL AS emitted;
SELECT pg_logical_emit_message(true, 'pg_cqrs', 'hello') IS NOT NULL AS emitted;
-- 0.3.0 emitted what parsed as a message whoever wrote it; since 0.4.0
-- only what cqrs.publish authenticated is emitted (security_outbox.sql
-- tries harder)
SELECT pg_logical_emit_message(true, 'pg_cqrs',
    '\x010011111111111111111111111111111111060000006f72646572737b7d'::bytea) IS NOT NULL AS emitted;
SELECT pg_logical_emit_message(true, 'pg_cqrs',
    '\x0100111111111111111111111111111111110500000061626364657b'::bytea) IS NOT NULL AS emitted;
\set VERBOSITY terse
SELECT * FROM outbox_peek();
SELECT outbox_consume();
\set VERBOSITY default

-- bad arguments: clear errors, nothing written
SELECT try($$SELECT cqrs.publish(NULL, '{}')$$);
SELECT try($$SELECT cqrs.publish('', '{}')$$);
SELECT try($$SELECT cqrs.publish('t', NULL)$$);
SELECT try($$SELECT cqrs.publish('t', '{}', '')$$);
BEGIN READ ONLY;
SELECT try($$SELECT cqrs.publish('t', '{}')$$);
COMMIT;
SET cqrs.max_event_size = 100;
SELECT try($$SELECT cqrs.publish('t', (SELECT jsonb_agg(i) FROM generate_series(1, 100) i))$$);
RESET cqrs.max_event_size;
SELECT * FROM outbox_peek();

--
-- the status view: lag in events once the consumer's position is known
--
SELECT name, database, active, lag_bytes >= 0 AS lag_bytes_ok, lag_events,
       wal_status, safe_wal_size IS NULL AS unlimited
  FROM cqrs.outbox_status;
SELECT count(*) FROM cqrs.append('order-40', 'OrderPlaced', '{}');
SELECT count(*) FROM pg_logical_slot_get_changes('outbox', NULL, NULL);
SELECT name, lag_events FROM cqrs.outbox_status;
SELECT count(*) FROM cqrs.append_events('order-41', '[{"type": "A", "data": {}}, {"type": "B", "data": {}}]');
SELECT count(*) FROM cqrs.append('order-42', 'C', '{}');
-- decoded but not confirmed: three events behind
SELECT count(*) FROM pg_logical_slot_peek_changes('outbox', NULL, NULL);
SELECT name, lag_events, lag_bytes > 0 AS behind FROM cqrs.outbox_status;
SELECT outbox_consume();
SELECT name, lag_events FROM cqrs.outbox_status;
-- a filtered consumer has also passed what it skipped
SELECT count(*) FROM cqrs.append('order-43', 'D', '{}');
SELECT count(*) FROM pg_logical_slot_get_changes('outbox', NULL, NULL, 'categories', 'nothing');
SELECT name, lag_events FROM cqrs.outbox_status;

--
-- commit order, not position order: the later position commits first
-- (the isolation spec outbox_commit_order interleaves real appends)
--
BEGIN;
INSERT INTO cqrs.events (position, stream, version, id, type, data)
VALUES (1000, 'late-1', 1, 'a0000000-0000-4000-8000-000000001000', 'Later', '{}');
COMMIT;
BEGIN;
INSERT INTO cqrs.events (position, stream, version, id, type, data)
VALUES (999, 'early-1', 1, 'a0000000-0000-4000-8000-000000000999', 'Earlier', '{}');
COMMIT;
SELECT data::json->>'position' AS position FROM pg_logical_slot_peek_changes('outbox', NULL, NULL);
SELECT outbox_consume();

--
-- the log re-created under a live slot is recognised again
--
SELECT pg_drop_replication_slot('outbox');
SELECT 'init' FROM pg_create_logical_replication_slot('outbox', 'pg_cqrs');
SELECT name, lag_events FROM cqrs.outbox_status;
SELECT count(*) FROM cqrs.append('before-1', 'BeforeDrop', '{}');
DROP TABLE public.events;
DROP EXTENSION pg_cqrs CASCADE;
CREATE EXTENSION pg_cqrs;
SELECT count(*) FROM cqrs.append('after-1', 'AfterCreate', '{}');
SELECT data::json->>'stream' AS stream, data::json->>'position' AS position
  FROM pg_logical_slot_get_changes('outbox', NULL, NULL);

SELECT pg_drop_replication_slot('outbox');
DROP TABLE orders;
DROP FUNCTION outbox_consume(), outbox_peek(text[]), outbox_mask(text);
DROP EXTENSION pg_cqrs CASCADE;
