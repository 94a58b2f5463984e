-- test/pgtap/security_log.sql: the event log's privilege model (issue 10):
-- reads need SELECT and honour row-level security, append checks INSERT
-- before anything else, append is the only door, the limits have no holes,
-- and append in a read-only transaction says so.  Roles are created inside
-- the test's transaction and vanish with its rollback.
BEGIN;
SELECT plan(38);

CREATE ROLE regress_cqrs_writer;
CREATE ROLE regress_cqrs_reader;
CREATE ROLE regress_cqrs_stranger;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_writer, regress_cqrs_reader, regress_cqrs_stranger;
GRANT INSERT ON cqrs.events TO regress_cqrs_writer;
GRANT SELECT ON cqrs.events TO regress_cqrs_reader;

SELECT cqrs.append('order-1', 'OrderPlaced', '{}', id => 'a0000000-0000-4000-8000-000000000001');
SELECT cqrs.append('order-1', 'OrderPaid', '{}');
SELECT cqrs.append('secret-1', 'Salary', '{"amount": 1}');
SELECT cqrs.append('order-2', 'OrderPlaced', '{}');
SELECT cqrs.append('secret-1', 'Salary', '{"amount": 2}');

-- the guard trigger
SELECT has_trigger('cqrs', 'events', 'events_forbid_direct_insert', 'the INSERT guard exists');
SELECT trigger_is('cqrs', 'events', 'events_forbid_direct_insert', 'cqrs', 'forbid_direct_insert');
SELECT is((SELECT tgenabled::text FROM pg_trigger
            WHERE tgrelid = 'cqrs.events'::regclass AND tgname = 'events_forbid_direct_insert'),
          'A', 'the INSERT guard is ENABLE ALWAYS');
SELECT ok(NOT has_function_privilege('regress_cqrs_writer', 'cqrs.forbid_direct_insert()', 'EXECUTE'),
          'the guard function is not PUBLIC');

-- 1. reads need SELECT
SET LOCAL ROLE regress_cqrs_stranger;
SELECT throws_ok($$SELECT * FROM cqrs.read_stream('order-1')$$, '42501',
                 'permission denied for table events', 'read_stream without SELECT: 42501');
SELECT throws_ok($$SELECT * FROM cqrs.read_all()$$, '42501',
                 'permission denied for table events', 'read_all without SELECT: 42501');
SELECT throws_ok($$SELECT cqrs.stream_version('order-1')$$, '42501',
                 'permission denied for table events', 'stream_version without SELECT: 42501');
SELECT throws_ok($$SELECT cqrs.safe_position()$$, '42501',
                 'permission denied for table events', 'safe_position without SELECT: 42501');
RESET ROLE;
SET LOCAL ROLE regress_cqrs_reader;
SELECT is(cqrs.stream_version('order-1'), 2::bigint, 'with SELECT, stream_version reads');
SELECT is((SELECT count(*) FROM cqrs.read_all()), 5::bigint, 'with SELECT, read_all reads');
RESET ROLE;

-- 1. row-level security: the same rows as a SELECT
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY no_secrets ON cqrs.events FOR SELECT TO regress_cqrs_reader
    USING (stream NOT LIKE 'secret-%');
SET LOCAL ROLE regress_cqrs_reader;
SELECT results_eq($$SELECT * FROM cqrs.read_all()$$,
                  $$SELECT * FROM cqrs.events ORDER BY position$$,
                  'read_all returns what SELECT returns under a policy');
SELECT is((SELECT count(*) FROM cqrs.read_all()), 3::bigint, 'the policy hides the secret events');
SELECT results_eq($$SELECT * FROM cqrs.read_all(0, 10, '{secret,order}', NULL)$$,
                  $$SELECT * FROM cqrs.events WHERE stream LIKE 'order-%' ORDER BY position$$,
                  'read_all with filters under a policy');
SELECT is_empty($$SELECT * FROM cqrs.read_stream('secret-1')$$, 'read_stream of a hidden stream is empty');
SELECT results_eq($$SELECT * FROM cqrs.read_stream('order-1')$$,
                  $$SELECT * FROM cqrs.events WHERE stream = 'order-1' ORDER BY version$$,
                  'read_stream of a visible stream');
SELECT is(cqrs.stream_version('secret-1'), 0::bigint, 'stream_version of a hidden stream is 0');
SELECT is(cqrs.stream_version('order-1'), 2::bigint, 'stream_version of a visible stream');
SET LOCAL row_security = off;
SELECT throws_ok($$SELECT * FROM cqrs.read_all()$$, '42501', NULL,
                 'with row_security off, read_all fails as SELECT does');
SELECT throws_ok($$SELECT cqrs.stream_version('order-1')$$, '42501', NULL,
                 'with row_security off, stream_version fails as SELECT does');
RESET row_security;
RESET ROLE;
SELECT is((SELECT count(*) FROM cqrs.read_all()), 5::bigint, 'the owner is not subject to the policy');
DROP POLICY no_secrets ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

-- 2. append checks the right to append first
CREATE TEMP TABLE seq_before AS SELECT last_value FROM cqrs.events_position_seq;
GRANT SELECT ON seq_before TO PUBLIC;
SET LOCAL ROLE regress_cqrs_reader;
SELECT throws_ok($$SELECT cqrs.append('order-9', 'T', '{}', id => 'a0000000-0000-4000-8000-000000000001')$$,
                 '42501', 'permission denied for table events',
                 'no append right: an id of another stream is not revealed');
SELECT throws_ok($$SELECT cqrs.append('order-1', 'T', '{}', expected_version => 1)$$,
                 '42501', 'permission denied for table events',
                 'no append right: the version is not revealed');
SELECT throws_ok($$SELECT cqrs.append_events('order-1', '[{"type": "T", "data": {}}]', 1)$$,
                 '42501', 'permission denied for table events',
                 'no append right: append_events reveals nothing either');
SELECT throws_ok($$SELECT cqrs.append('order-9', 'T', '{}')$$,
                 '42501', 'permission denied for table events', 'no append right: 42501');
RESET ROLE;
SELECT is((SELECT last_value FROM cqrs.events_position_seq), (SELECT last_value FROM seq_before),
          'refused appends burn no position');

-- 3. append is the only door
SET LOCAL ROLE regress_cqrs_writer;
SELECT throws_ok($$INSERT INTO cqrs.events (position, stream, version, id, type, data)
                   VALUES (1000000, 'order-1', 3, gen_random_uuid(), 'Forged', '{}')$$,
                 '42501', 'cannot insert into the event log "cqrs.events" directly',
                 'a writer cannot INSERT into the log');
SELECT throws_ok($$INSERT INTO cqrs.events (stream, version, id, type, data)
                   VALUES ('order-1', 3, gen_random_uuid(), 'Forged', '{}')$$,
                 '42501', NULL, 'not even with the defaults');
SELECT lives_ok($$SELECT cqrs.append('order-1', 'OrderShipped', '{}')$$, 'a writer appends');
SELECT lives_ok($$SELECT cqrs.append_events('order-3', '[{"type": "OrderPlaced", "data": {}}]')$$,
                'a writer appends a batch');
RESET ROLE;
SELECT lives_ok($$INSERT INTO cqrs.events (position, stream, version, id, type, data)
                  VALUES (1000, 'restored-1', 1, gen_random_uuid(), 'Restored', '{}')$$,
                'a superuser may INSERT (restores)');
SELECT is((SELECT count(*) FROM cqrs.events WHERE type = 'Forged'), 0::bigint, 'nothing was forged');

-- 7. limits
SELECT lives_ok($$SELECT cqrs.append(repeat('s', 1024), 'T', '{}')$$, 'a stream of 1024 bytes');
SELECT throws_ok($$SELECT cqrs.append(repeat('s', 1025), 'T', '{}')$$, '54000', 'stream name is too long',
                 'a stream of 1025 bytes: 54000');
SELECT lives_ok($$SELECT cqrs.append('long-1', repeat('t', 256), '{}')$$, 'a type of 256 bytes');
SELECT throws_ok($$SELECT cqrs.append('long-1', repeat('t', 257), '{}')$$, '54000', 'type is too long',
                 'a type of 257 bytes: 54000');
SET LOCAL cqrs.max_event_size = '1kB';
SELECT throws_ok($$SELECT cqrs.append('long-2', repeat('t', 200), jsonb_build_object('x', repeat('x', 900)))$$,
                 '54000', 'the event is too large', 'max_event_size counts the type');
SELECT throws_ok($$SELECT cqrs.append(repeat('s', 200), 'T', jsonb_build_object('x', repeat('x', 900)))$$,
                 '54000', 'the event is too large', 'max_event_size counts the stream');
RESET cqrs.max_event_size;

-- errors a user can act on
SET LOCAL transaction_read_only = on;
SELECT throws_ok($$SELECT cqrs.append('order-1', 'T', '{}')$$, '25006',
                 'cannot execute cqrs.append() in a read-only transaction',
                 'append in a read-only transaction names append');

SELECT * FROM finish();
ROLLBACK;
