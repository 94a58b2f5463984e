-- test/pgtap/outbox.sql: the outbox's SQL surface (API.md section 5):
-- cqrs.publish, the output plugin's lines and options, cqrs.outbox_status
--
-- Not one transaction: a logical slot cannot be created in a transaction
-- that has written, and decoding sees only what committed.  The slot is
-- created first and dropped last; the database is thrown away after.
DO $$
BEGIN
    PERFORM pg_create_logical_replication_slot('pgtap_outbox', 'pg_cqrs');
    PERFORM pg_create_logical_replication_slot('pgtap_other', 'test_decoding');
END
$$;
DO $$
BEGIN
    PERFORM cqrs.append('order-1', 'OrderPlaced', '{"total": 5}', '{"user": "u"}',
                        id => 'c0000000-0000-4000-8000-000000000001');
    PERFORM cqrs.publish('orders', '{"order": 1}', 'order-1');
END
$$;
DO $$
BEGIN
    PERFORM cqrs.append('customer-1', 'CustomerRegistered', '{}',
                        id => 'c0000000-0000-4000-8000-000000000002');
END
$$;

SELECT plan(46);

-- the functions and the view
SELECT has_function('cqrs', 'publish', ARRAY['text', 'jsonb', 'text']);
SELECT function_returns('cqrs', 'publish', ARRAY['text', 'jsonb', 'text'], 'pg_lsn');
SELECT volatility_is('cqrs', 'publish', ARRAY['text', 'jsonb', 'text'], 'volatile');
SELECT isnt_strict('cqrs', 'publish', ARRAY['text', 'jsonb', 'text']);
SELECT is(pg_get_function_arguments('cqrs.publish(text, jsonb, text)'::regprocedure),
          'topic text, payload jsonb, key text DEFAULT NULL::text', 'publish parameters and default');
SELECT has_view('cqrs', 'outbox_status', 'cqrs.outbox_status exists');
SELECT columns_are('cqrs', 'outbox_status',
    ARRAY['name', 'database', 'active', 'active_pid', 'confirmed_lsn', 'lag_bytes',
          'lag_events', 'wal_status', 'safe_wal_size']);

-- the lines: events and messages in commit order, with their fields
CREATE TEMP TABLE lines AS
    SELECT row_number() OVER () AS n, lsn, xid, data::jsonb AS j
      FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL);
SELECT results_eq($$SELECT coalesce(j->>'type', j->>'topic') FROM lines ORDER BY n$$,
    ARRAY['OrderPlaced', 'orders', 'CustomerRegistered'],
    'an event, the message of its transaction, the next transaction''s event');
SELECT set_eq($$SELECT jsonb_object_keys(j) FROM lines WHERE n = 1$$,
    ARRAY['position', 'stream', 'version', 'id', 'type', 'data', 'metadata', 'recorded_at', 'lsn', 'xid'],
    'an event line has the fields of API.md');
SELECT set_eq($$SELECT jsonb_object_keys(j) FROM lines WHERE n = 2$$,
    ARRAY['topic', 'key', 'payload', 'id', 'lsn', 'xid'],
    'a message line has topic, key, payload, id, lsn, xid');
SELECT is((SELECT j FROM lines WHERE n = 1) - 'lsn' - 'xid' - 'recorded_at' - 'position',
    '{"stream": "order-1", "version": 1, "id": "c0000000-0000-4000-8000-000000000001",
      "type": "OrderPlaced", "data": {"total": 5}, "metadata": {"user": "u"}}'::jsonb,
    'an event line carries the event');
SELECT is((SELECT (j->>'position')::bigint FROM lines WHERE n = 1),
          (SELECT position FROM cqrs.events WHERE id = 'c0000000-0000-4000-8000-000000000001'),
          'with its position');
SELECT is((SELECT (j->>'recorded_at')::timestamptz FROM lines WHERE n = 1),
          (SELECT recorded_at FROM cqrs.events WHERE id = 'c0000000-0000-4000-8000-000000000001'),
          'and its recording time');
SELECT is((SELECT j - 'lsn' - 'xid' - 'id' FROM lines WHERE n = 2),
    '{"topic": "orders", "key": "order-1", "payload": {"order": 1}}'::jsonb,
    'a message line carries topic, key and payload');
SELECT ok((SELECT (j->>'id')::uuid IS NOT NULL FROM lines WHERE n = 2), 'a message has an id');
SELECT is((SELECT count(DISTINCT j->>'lsn') FROM lines WHERE n <= 2), 1::bigint,
          'an event and a message of one transaction share its lsn');
SELECT ok((SELECT bool_and((j->>'xid')::xid = xid) FROM lines), 'xid is the transaction''s');
SELECT ok((SELECT bool_and((j->>'lsn')::pg_lsn >= lsn) FROM lines), 'lsn is at or after the change');
SELECT ok((SELECT (SELECT (j->>'lsn')::pg_lsn FROM lines WHERE n = 3) > (SELECT (j->>'lsn')::pg_lsn FROM lines WHERE n = 1)),
          'lsn grows from one transaction to the next');

-- formats and filters
SELECT set_eq($$SELECT jsonb_object_keys(data::jsonb) FROM pg_logical_slot_peek_changes('pgtap_outbox',
                  NULL, NULL, 'format', 'debezium', 'types', 'OrderPlaced', 'topics', 'none')$$,
    ARRAY['id', 'aggregatetype', 'aggregateid', 'type', 'payload', 'position', 'version',
          'metadata', 'recorded_at', 'lsn', 'xid'],
    'format=debezium: the outbox event router''s fields first');
SELECT is((SELECT data::jsonb - 'lsn' - 'xid' - 'recorded_at' - 'position'
             FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'format', 'debezium',
                  'types', 'OrderPlaced', 'topics', 'none', 'include-metadata', 'false')),
    '{"id": "c0000000-0000-4000-8000-000000000001", "aggregatetype": "order",
      "aggregateid": "order-1", "type": "OrderPlaced", "payload": {"total": 5}, "version": 1}'::jsonb,
    'debezium: aggregatetype is the category, aggregateid the stream, payload the data');
SELECT is((SELECT count(*) FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL,
                  'categories', 'customer', 'topics', 'none')), 1::bigint, 'categories filters events');
SELECT is((SELECT count(*) FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL,
                  'types', 'Nothing', 'topics', 'orders')), 1::bigint, 'topics filters messages');
SELECT throws_ok($$SELECT * FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'nope', 'x')$$,
    '22023', 'option "nope" is unknown to the pg_cqrs output plugin', 'an unknown option is an error');
SELECT throws_ok($$SELECT * FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'include-metadata', '2')$$,
    '22023', NULL, 'a bad boolean is an error');
SELECT throws_ok($$SELECT * FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'format', 'avro')$$,
    '22023', NULL, 'an unknown format is an error');
SELECT throws_ok($$SELECT * FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'types', ',')$$,
    '22023', NULL, 'an empty list item is an error');

-- transaction-end: a commit line per transaction, what it says, where its
-- message starts; the divergence check of README finds every event line
CREATE TEMP TABLE ended AS
    SELECT row_number() OVER () AS n, lsn, xid, data::jsonb AS j
      FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'transaction-end', 'true');
SELECT results_eq($$SELECT coalesce(j->>'type', j->>'topic', 'commit') FROM ended ORDER BY n$$,
    ARRAY['OrderPlaced', 'orders', 'commit', 'CustomerRegistered', 'commit'],
    'transaction-end: each transaction ends with a commit line');
SELECT is((SELECT j FROM ended WHERE n = 3),
    jsonb_build_object('commit', jsonb_build_object('lsn', (SELECT j->>'lsn' FROM ended WHERE n = 1),
                                                    'xid', (SELECT (j->>'xid')::bigint FROM ended WHERE n = 1),
                                                    'lines', 2)),
    'the commit line: its transaction''s lsn and xid, and how many lines came before');
SELECT ok((SELECT bool_and(lsn = (j->'commit'->>'lsn')::pg_lsn) FROM ended WHERE j ? 'commit'),
          'a commit line''s message starts at its lsn: safe to confirm once it is processed');
SELECT ok((SELECT bool_and(lsn < (j->>'lsn')::pg_lsn) FROM ended WHERE NOT j ? 'commit'),
          'a change line''s message starts before its lsn');
SELECT is((SELECT count(*) FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL,
                  'transaction-end', 'true', 'categories', 'none', 'topics', 'none')), 0::bigint,
          'no commit line for a transaction whose lines were all filtered out');
SELECT throws_ok($$SELECT * FROM pg_logical_slot_peek_changes('pgtap_outbox', NULL, NULL, 'transaction-end', 'yes please')$$,
    '22023', 'invalid value for option "transaction-end": "yes please"', 'a bad transaction-end is an error');
SELECT set_eq($$SELECT position, id FROM cqrs.events
                 WHERE position = ANY (ARRAY(SELECT (j->>'position')::bigint FROM ended WHERE j ? 'position'))$$,
    $$SELECT (j->>'position')::bigint, (j->>'id')::uuid FROM ended WHERE j ? 'position'$$,
    'the divergence check: the log still holds each line''s (position, id)');

-- publish: bad input, and what it returns
SELECT throws_ok($$SELECT cqrs.publish(NULL, '{}')$$, '22004', 'topic must not be null');
SELECT throws_ok($$SELECT cqrs.publish('', '{}')$$, '22023', 'topic must not be empty');
SELECT throws_ok($$SELECT cqrs.publish('t', NULL)$$, '22004', 'payload must not be null');
SELECT throws_ok($$SELECT cqrs.publish('t', '{}', '')$$, '22023', 'key must not be empty');
SELECT ok(cqrs.publish('t', '{}') <= pg_current_wal_insert_lsn(), 'publish returns the message''s LSN');
SELECT lives_ok($$SELECT cqrs.publish('t', '[1, "two", null]', NULL)$$, 'any JSON value, no key');

-- the status view
SELECT is((SELECT count(*) FROM cqrs.outbox_status WHERE name = 'pgtap_outbox'), 1::bigint,
          'the slot is listed');
SELECT is((SELECT database FROM cqrs.outbox_status WHERE name = 'pgtap_outbox'), current_database(),
          'with its database');
SELECT ok((SELECT lag_bytes > 0 FROM cqrs.outbox_status WHERE name = 'pgtap_outbox'),
          'a consumer that confirmed nothing lags in bytes');
SELECT is((SELECT count(*) FROM pg_logical_slot_get_changes('pgtap_outbox', NULL, NULL, 'topics', 'none')),
          2::bigint, 'consume');
SELECT is((SELECT lag_events FROM cqrs.outbox_status WHERE name = 'pgtap_outbox'), 0::bigint,
          'a consumer that confirmed everything lags by no event');
SELECT is((SELECT count(*) FROM cqrs.outbox_status WHERE name = 'pgtap_other'), 0::bigint,
          'slots of other plugins are not listed');

SELECT * FROM finish();

DO $$
BEGIN
    PERFORM pg_drop_replication_slot('pgtap_outbox');
    PERFORM pg_drop_replication_slot('pgtap_other');
END
$$;
