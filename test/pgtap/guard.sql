-- test/pgtap/guard.sql: cqrs.events is append-only
BEGIN;
SELECT plan(10);

SELECT lives_ok($$SELECT cqrs.append('order-1', 'OrderPlaced', '{}')$$, 'appending works');
SELECT lives_ok($$INSERT INTO cqrs.events (position, stream, version, id, type, data)
                  VALUES (1000, 'restored-1', 1, gen_random_uuid(), 'Restored', '{}')$$,
                'INSERT stays possible, for pg_restore');
CREATE TEMP TABLE before_guard AS SELECT * FROM cqrs.events;

SELECT throws_ok($$UPDATE cqrs.events SET data = '{"forged": true}'$$, '0A000', NULL, 'UPDATE: 0A000');
SELECT throws_ok($$DELETE FROM cqrs.events$$, '0A000', NULL, 'DELETE: 0A000');
SELECT throws_ok($$TRUNCATE cqrs.events$$, '0A000', NULL, 'TRUNCATE: 0A000');
SELECT throws_ok($$MERGE INTO cqrs.events e USING before_guard b ON e.position = b.position
                   WHEN MATCHED THEN DELETE$$, '0A000', NULL, 'MERGE ... DELETE: 0A000');
SET LOCAL session_replication_role = replica;
SELECT throws_ok($$UPDATE cqrs.events SET data = '{"forged": true}'$$, '0A000', NULL,
                 'UPDATE as replica: 0A000');
SELECT throws_ok($$DELETE FROM cqrs.events$$, '0A000', NULL, 'DELETE as replica: 0A000');
SELECT throws_ok($$TRUNCATE cqrs.events$$, '0A000', NULL, 'TRUNCATE as replica: 0A000');
SET LOCAL session_replication_role = origin;

SELECT set_eq($$SELECT * FROM cqrs.events$$, $$SELECT * FROM before_guard$$, 'the rows are unchanged');

SELECT * FROM finish();
ROLLBACK;
