--
-- lifecycle.sql: deleting (soft, hard), truncating and erasing streams
-- (0.7.0): the system events they append, the reads after each, their
-- errors, the audit trail, the guard, projections and the output plugin
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- the output plugin sees everything from here on
SELECT 'init' FROM pg_create_logical_replication_slot('lifecycle', 'pg_cqrs');

-- a projection of people's names; it forgets a stream on $StreamDeleted
-- and the personal data on $StreamErased, as the README asks handlers to
-- do, so that a replay after the fact agrees with it
CREATE TABLE people (stream text PRIMARY KEY, name text);
CREATE FUNCTION people_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type = '$StreamDeleted' THEN
        DELETE FROM people WHERE stream = e.stream;
    ELSIF e.type = '$StreamErased' THEN
        UPDATE people SET name = NULL WHERE stream = e.stream;
    ELSIF e.type = 'Registered' THEN
        INSERT INTO people VALUES (e.stream, e.data->>'name');
    ELSIF e.type = 'Renamed' THEN
        UPDATE people SET name = e.data->>'name' WHERE stream = e.stream;
    END IF;
END $$;
SELECT cqrs.create_projection('people', 'people_handler', tables => '{people}',
                              categories => '{person}');
-- the same, deferred: it applies everything below only at the end, so it
-- meets the events already erased or removed, then the system events
CREATE TABLE people_later (LIKE people INCLUDING ALL);
CREATE FUNCTION people_later_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type = '$StreamDeleted' THEN
        DELETE FROM people_later WHERE stream = e.stream;
    ELSIF e.type = '$StreamErased' THEN
        UPDATE people_later SET name = NULL WHERE stream = e.stream;
    ELSIF e.type = 'Registered' THEN
        INSERT INTO people_later VALUES (e.stream, e.data->>'name');
    ELSIF e.type = 'Renamed' THEN
        UPDATE people_later SET name = e.data->>'name' WHERE stream = e.stream;
    END IF;
END $$;
SELECT cqrs.create_projection('people_later', 'people_later_handler', 'deferred',
                              tables => '{people_later}', categories => '{person}');
SELECT cqrs.pause_projection('people_later');

SELECT version FROM cqrs.append_events('person-1', '[
    {"type": "Registered", "data": {"name": "Ada"}, "metadata": {"ip": "10.0.0.1"}},
    {"type": "Renamed", "data": {"name": "Ada L."}, "metadata": {"ip": "10.0.0.2"}},
    {"type": "Moved", "data": {"city": "London"}},
    {"type": "Moved", "data": {"city": "Paris"}}]');
SELECT version FROM cqrs.append_events('ledger-2', '[
    {"type": "Registered", "data": {"name": "Bob"}},
    {"type": "Renamed", "data": {"name": "Bobby"}},
    {"type": "Moved", "data": {"city": "Rome"}}]');
SELECT version FROM cqrs.append_events('person-3', '[
    {"type": "Registered", "data": {"name": "Cy"}, "id": "c0000000-0000-4000-8000-000000000001"},
    {"type": "Moved", "data": {"city": "Oslo"}}]');
SELECT version FROM cqrs.append('person-4', 'Registered', '{"name": "Di"}');
SELECT * FROM people ORDER BY stream;

--
-- "$" types are the extension's: callers cannot append them, by any way in
--
SELECT try($$SELECT cqrs.append('person-9', '$StreamDeleted', '{"hard": true}')$$);
SELECT try($$SELECT cqrs.append_events('person-9', '[{"type": "$X", "data": {}}]')$$);
SELECT try($$SELECT cqrs.import_events('person-9', '$StreamDeleted', '{}', NULL, NULL)$$);
SELECT cqrs.stream_version('person-9');

--
-- argument errors, before anything is looked up
--
SELECT label, try(cmd) FROM (VALUES
    ('delete null stream',      $$SELECT cqrs.delete_stream(NULL)$$),
    ('delete empty stream',     $$SELECT cqrs.delete_stream('')$$),
    ('delete negative expected', $$SELECT cqrs.delete_stream('person-1', -1)$$),
    ('delete null hard',        $$SELECT cqrs.delete_stream('person-1', NULL, NULL)$$),
    ('delete missing stream',   $$SELECT cqrs.delete_stream('person-404')$$),
    ('truncate zero',           $$SELECT cqrs.truncate_stream('person-1', 0)$$),
    ('truncate missing stream', $$SELECT cqrs.truncate_stream('person-404', 2)$$),
    ('erase from zero',         $$SELECT cqrs.erase_stream('person-1', 0)$$),
    ('erase to below from',     $$SELECT cqrs.erase_stream('person-1', 3, 2)$$),
    ('erase null keep',         $$SELECT cqrs.erase_stream('person-1', 1, NULL, NULL)$$),
    ('erase missing stream',    $$SELECT cqrs.erase_stream('person-404')$$)
) AS t(label, cmd);
-- strict: a NULL argument is a NULL result, nothing done
SELECT cqrs.truncate_stream('person-1', NULL) IS NULL AS null_truncate;
-- read-only transactions cannot
BEGIN READ ONLY;
SELECT try($$SELECT cqrs.delete_stream('person-1')$$);
ROLLBACK;
SELECT count(*) AS audited_so_far FROM cqrs.lifecycle_log;

--
-- erase: data (and metadata unless kept) overwritten, the rest kept
--
CREATE TEMP TABLE before AS SELECT * FROM cqrs.events WHERE stream = 'person-1';
SELECT cqrs.erase_stream('person-1', 1, 2, keep_metadata => true) AS erased;
SELECT e.version, e.type, e.data, e.metadata,
       e.position = b.position AND e.id = b.id AND e.recorded_at = b.recorded_at AS kept
  FROM cqrs.events e LEFT JOIN before b USING (stream, version)
 WHERE e.stream = 'person-1' ORDER BY e.version;
-- the projection was told, in the same transaction
SELECT * FROM people WHERE stream = 'person-1';
-- again: nothing left to erase, nothing appended
SELECT cqrs.erase_stream('person-1', 1, 2, keep_metadata => true) AS erased_again;
SELECT cqrs.stream_version('person-1');
-- the whole stream, metadata too; the system event is left as it is
SELECT cqrs.erase_stream('person-1') AS erased;
SELECT version, type, data, metadata FROM cqrs.read_stream('person-1');
-- a range past the head is cut at the head; beyond it there is nothing
SELECT cqrs.erase_stream('ledger-2', 2, 99) AS erased;
SELECT cqrs.erase_stream('ledger-2', 50) AS erased_none;
SELECT version, type, data FROM cqrs.read_stream('ledger-2');
-- appends go on after an erasure
SELECT version FROM cqrs.append('ledger-2', 'Moved', '{"city": "Turin"}', expected_version => 4);

--
-- truncate: versions below before_version go, never the head
--
SELECT cqrs.truncate_stream('ledger-2', 3) AS removed;
SELECT version, type, data FROM cqrs.read_stream('ledger-2');
SELECT version, type FROM cqrs.read_stream('ledger-2', 1, 2);
SELECT cqrs.stream_version('ledger-2');
-- nothing more below 3: nothing written
SELECT cqrs.truncate_stream('ledger-2', 3) AS removed_again;
-- past the head: everything but the head
SELECT cqrs.truncate_stream('ledger-2', 1000) AS removed;
SELECT version, type, data FROM cqrs.read_stream('ledger-2');
SELECT version FROM cqrs.append('ledger-2', 'Moved', '{"city": "Milan"}', expected_version => 7);

--
-- soft delete: a tombstone as head; the events stay in the log
--
SELECT try($$SELECT cqrs.delete_stream('person-3', expected_version => 1)$$);
SELECT cqrs.delete_stream('person-3', expected_version => 2) AS tombstone \gset
SELECT :tombstone = max(position) AS tombstone_is_last FROM cqrs.events;
SELECT cqrs.stream_version('person-3');
-- read_stream shows the tombstone only, from any version
SELECT version, type, data FROM cqrs.read_stream('person-3');
SELECT version, type, data FROM cqrs.read_stream('person-3', 2);
SELECT version, type, data FROM cqrs.read_stream('person-3', 5);
-- read_all still returns the events, then the tombstone
SELECT version, type FROM cqrs.read_all(0, NULL, '{person}') WHERE stream = 'person-3';
-- appends are refused, by every way in; an idempotent retry of an event
-- recorded before the delete still answers with that event
SELECT label, try(cmd) FROM (VALUES
    ('append',        $$SELECT cqrs.append('person-3', 'Moved', '{}')$$),
    ('append_events', $$SELECT cqrs.append_events('person-3', '[{"type": "Moved", "data": {}}]')$$),
    ('import',        $$SELECT cqrs.import_events('person-3', 'Moved', '{}', NULL, NULL)$$),
    ('retry',         $$SELECT cqrs.append('person-3', 'Registered', '{"name": "Cy"}',
                                           id => 'c0000000-0000-4000-8000-000000000001')$$),
    ('soft again',    $$SELECT cqrs.delete_stream('person-3')$$),
    ('truncate',      $$SELECT cqrs.truncate_stream('person-3', 2)$$),
    ('erase',         $$SELECT cqrs.erase_stream('person-3')$$)
) AS t(label, cmd);
SELECT * FROM people WHERE stream = 'person-3';

-- hard delete of a soft-deleted stream: everything but a new tombstone goes
SELECT cqrs.delete_stream('person-3', hard => true) > 0 AS deleted;
SELECT version, type, data FROM cqrs.events WHERE stream = 'person-3';
SELECT try($$SELECT cqrs.delete_stream('person-3', hard => true)$$);
SELECT try($$SELECT cqrs.append('person-3', 'Moved', '{}')$$);

--
-- hard delete of a live stream, in one step
--
SELECT cqrs.delete_stream('person-4', 1, true) > 0 AS deleted;
SELECT version, type, data FROM cqrs.read_stream('person-4');
SELECT count(*) FROM cqrs.events WHERE stream = 'person-4';
-- a stream deleted in this transaction takes no event either
BEGIN;
SELECT version FROM cqrs.append('person-5', 'Registered', '{"name": "Ed"}');
SELECT cqrs.delete_stream('person-5', hard => true) > 0 AS deleted;
SELECT try($$SELECT cqrs.append('person-5', 'Moved', '{}')$$);
ROLLBACK;
SELECT cqrs.stream_version('person-5');

--
-- the guard: the one-shot permission is gone, plain SQL is still refused
--
SELECT sqlstate($$DELETE FROM cqrs.events WHERE stream = 'person-1'$$);
SELECT sqlstate($$UPDATE cqrs.events SET data = '{}' WHERE stream = 'person-1'$$);

--
-- the audit trail: one row per operation that changed something
--
SELECT operation, target, events, detail - 'position' AS detail,
       performed_by = current_user AS by_me
  FROM cqrs.lifecycle_log ORDER BY id;

--
-- the projection agrees with a replay of the log as it is now
--
SELECT * FROM people ORDER BY stream;
SELECT table_name, rows, matches FROM cqrs.verify('people');
SELECT count(*) AS drift FROM cqrs.reconcile('people');
-- the deferred projection, applied only now, ends in the same state
SELECT cqrs.resume_projection('people_later');
-- (the worker may have applied some already: process_projections waits for it)
SELECT cqrs.process_projections('people_later') IS NOT NULL AS processed;
SELECT (SELECT array_agg(p ORDER BY stream) FROM people p)::text =
       (SELECT array_agg(p ORDER BY stream) FROM people_later p)::text AS same_as_sync;
SELECT count(*) AS drift FROM cqrs.reconcile('people_later');

--
-- the output plugin: the removals and the rewrites emit nothing; the
-- system events are ordinary lines
--
SELECT j->>'stream' AS stream, j->>'version' AS version, j->>'type' AS type, j->'data' AS data
  FROM (SELECT data::jsonb AS j FROM pg_logical_slot_peek_changes('lifecycle', NULL, NULL)) c
 WHERE j->>'type' LIKE '$%' OR j->>'stream' = 'person-4'
 ORDER BY (j->>'position')::bigint;
-- one line per event ever committed (two positions went with the
-- rollback above), none for a deleted or rewritten row
SELECT count(*) AS lines,
       count(*) = (SELECT last_value - 2 FROM cqrs.events_position_seq) AS one_per_event,
       count(DISTINCT data::jsonb->'position') AS positions,
       count(*) FILTER (WHERE data LIKE '%$erased%') AS erased_lines
  FROM pg_logical_slot_get_changes('lifecycle', NULL, NULL);
SELECT pg_drop_replication_slot('lifecycle');

DROP TABLE before;
SELECT cqrs.drop_projection('people');
SELECT cqrs.drop_projection('people_later');
DROP TABLE people, people_later;
DROP FUNCTION people_handler(cqrs.events), people_later_handler(cqrs.events);
DROP EXTENSION pg_cqrs;
