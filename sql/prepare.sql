--
-- prepare.sql: a transaction that appended cannot be prepared (two-phase commit)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

SHOW max_prepared_transactions;
SELECT version FROM cqrs.append('order-1', 'OrderPlaced', '{}');

-- an append, then PREPARE TRANSACTION: refused, and the transaction is gone
BEGIN;
SELECT version FROM cqrs.append('order-1', 'OrderPaid', '{}');
PREPARE TRANSACTION 'cqrs_regress_append';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'cqrs_regress_append';
SELECT cqrs.stream_version('order-1');

-- the same with a batch, and with an append in a subtransaction
BEGIN;
SELECT version FROM cqrs.append_events('order-2', '[{"type": "OrderPlaced", "data": {}}]');
PREPARE TRANSACTION 'cqrs_regress_append';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
BEGIN;
SAVEPOINT s;
SELECT version FROM cqrs.append('order-2', 'OrderPlaced', '{}');
RELEASE SAVEPOINT s;
PREPARE TRANSACTION 'cqrs_regress_append';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'cqrs_regress_append';
SELECT cqrs.stream_version('order-2');

-- the failed transactions left nothing behind: the log reads on, and a
-- later append is visible to read_all at once
SELECT version FROM cqrs.append('order-2', 'OrderPlaced', '{}', expected_version => 0);
SELECT stream, version, type FROM cqrs.read_all();
SELECT cqrs.safe_position() >= max(position) AS covers_log FROM cqrs.events;

-- a transaction that only reads the log can still be prepared
BEGIN;
SELECT cqrs.stream_version('order-1');
SELECT count(*) FROM cqrs.read_stream('order-1');
PREPARE TRANSACTION 'cqrs_regress_read';
COMMIT PREPARED 'cqrs_regress_read';
SELECT count(*) FROM pg_prepared_xacts;

DROP EXTENSION pg_cqrs;
