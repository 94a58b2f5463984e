--
-- guard.sql: cqrs.events is append-only for ordinary SQL
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

SELECT version FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}');
SELECT version FROM cqrs.append('order-1', 'OrderPaid', '{"amount": 10}');
SELECT version FROM cqrs.append('order-2', 'OrderPlaced', '{"total": 20}');
CREATE TEMP TABLE snapshot AS SELECT * FROM cqrs.events;

-- the error as psql shows it
DELETE FROM cqrs.events;
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- every way of changing or removing rows fails, for the superuser too
SELECT label, try(cmd) FROM (VALUES
    ('UPDATE',             $$UPDATE cqrs.events SET data = '{}'$$),
    ('UPDATE one row',     $$UPDATE cqrs.events SET type = 'Forged' WHERE position = 1$$),
    ('DELETE',             $$DELETE FROM cqrs.events$$),
    ('DELETE one row',     $$DELETE FROM cqrs.events WHERE stream = 'order-2'$$),
    ('TRUNCATE',           $$TRUNCATE cqrs.events$$),
    ('TRUNCATE CASCADE',   $$TRUNCATE cqrs.events CASCADE$$),
    ('ON CONFLICT UPDATE', $$INSERT INTO cqrs.events (position, stream, version, id, type, data)
                             SELECT position, stream, version, id, 'Forged', data FROM cqrs.events
                             ON CONFLICT (position) DO UPDATE SET type = excluded.type$$),
    ('MERGE UPDATE',       $$MERGE INTO cqrs.events e USING snapshot s ON e.position = s.position
                             WHEN MATCHED THEN UPDATE SET type = 'Forged'$$),
    ('MERGE DELETE',       $$MERGE INTO cqrs.events e USING snapshot s ON e.position = s.position
                             WHEN MATCHED THEN DELETE$$)
) AS t(label, cmd);

-- session_replication_role = replica does not switch the guard off
SET session_replication_role = replica;
SELECT label, try(cmd) FROM (VALUES
    ('UPDATE',   $$UPDATE cqrs.events SET data = '{}'$$),
    ('DELETE',   $$DELETE FROM cqrs.events$$),
    ('TRUNCATE', $$TRUNCATE cqrs.events$$)
) AS t(label, cmd);
RESET session_replication_role;
SET session_replication_role = local;
SELECT label, try(cmd) FROM (VALUES
    ('UPDATE',   $$UPDATE cqrs.events SET data = '{}'$$),
    ('DELETE',   $$DELETE FROM cqrs.events$$),
    ('TRUNCATE', $$TRUNCATE cqrs.events$$)
) AS t(label, cmd);
RESET session_replication_role;

-- the rows are exactly as appended
SELECT count(*) AS changed_or_gone FROM (SELECT * FROM snapshot EXCEPT ALL SELECT * FROM cqrs.events) d;
SELECT count(*) AS added FROM (SELECT * FROM cqrs.events EXCEPT ALL SELECT * FROM snapshot) d;
SELECT position, stream, version, type, data FROM cqrs.events ORDER BY position;

-- appending still works after all this
SELECT version FROM cqrs.append('order-1', 'OrderShipped', '{}', expected_version => 2);

DROP TABLE snapshot;
DROP EXTENSION pg_cqrs;
