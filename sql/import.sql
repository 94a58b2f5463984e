--
-- import.sql: cqrs.import_events, the bulk import aggregate -- numbering,
-- order, idempotency by id, the checks of append, privileges, sync
-- projections, atomicity
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- a sync projection sees imported events as any others, in position order
CREATE TABLE imported (position bigint PRIMARY KEY, stream text, version bigint,
                       n int NOT NULL DEFAULT 1);
CREATE FUNCTION imported_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO imported VALUES (e.position, e.stream, e.version)
    ON CONFLICT (position) DO UPDATE SET n = imported.n + 1
$$;
SELECT cqrs.create_projection('imported', 'imported_handler', tables => '{imported}');

-- an existing stream goes on from its head
SELECT version FROM cqrs.append('acct-1', 'Opened', '{}');

-- 1,000 rows over 3 streams (more than one batch), fed in the order given
CREATE TABLE staging (n int, stream text, type text, data jsonb, metadata jsonb, id uuid);
INSERT INTO staging
SELECT g, 'acct-' || (g % 3), 'Deposited', jsonb_build_object('n', g), NULL,
       ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid
  FROM generate_series(1, 1000) g;

SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n) AS imported
  FROM staging;

-- each stream numbered 1, 2, 3 ... with no gaps, in the order of n; positions
-- follow n too; metadata NULL became {}
SELECT stream, count(*), min(version), max(version),
       bool_and(metadata = '{}') AS empty_metadata
  FROM cqrs.events GROUP BY stream ORDER BY stream;
SELECT bool_and(ordered) AS versions_follow_n FROM (
    SELECT (e.version > lag(e.version) OVER w) IS NOT FALSE AS ordered
      FROM cqrs.events e JOIN staging s ON s.id = e.id
    WINDOW w AS (PARTITION BY e.stream ORDER BY s.n)) o;
SELECT bool_and(ordered) AS positions_follow_n FROM (
    SELECT (e.position > lag(e.position) OVER (ORDER BY s.n)) IS NOT FALSE AS ordered
      FROM cqrs.events e JOIN staging s ON s.id = e.id) o;
SELECT count(*) AS applied, max(n) AS max_applications FROM imported;

-- running it again appends nothing: every id is recorded in its stream
SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n) AS again
  FROM staging;
SELECT count(*) FROM cqrs.events;

-- an id repeated within an import, in the same stream, is the same event
SELECT cqrs.import_events(s, 'T', '{}', NULL, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')
  FROM (VALUES ('dup-1'), ('dup-1')) v(s);
SELECT stream, version FROM cqrs.events WHERE stream = 'dup-1';

-- rows without ids always append; no rows append nothing
SELECT cqrs.import_events(s, 'T', '{}', NULL, NULL) FROM (VALUES ('free-1'), ('free-1')) v(s);
SELECT cqrs.import_events(stream, type, data, metadata, id) FROM staging WHERE false;

-- bad input: the error of cqrs.append, with the row; nothing is written
SELECT count(*) AS before FROM cqrs.events \gset
SELECT label, try(cmd) FROM (VALUES
    ('null stream',     $$SELECT cqrs.import_events(NULL, 'T', '{}', NULL, NULL)$$),
    ('empty type',      $$SELECT cqrs.import_events(s, '', '{}', NULL, NULL) FROM (VALUES ('ok-1')) v(s)$$),
    ('null data',       $$SELECT cqrs.import_events(s, 'T', d, NULL, NULL) FROM (VALUES ('ok-1', '{}'::jsonb), ('ok-1', NULL)) v(s, d)$$),
    ('json null data',  $$SELECT cqrs.import_events('ok-1', 'T', 'null', NULL, NULL)$$),
    ('array metadata',  $$SELECT cqrs.import_events('ok-1', 'T', '{}', '[]', NULL)$$),
    ('long stream',     $$SELECT cqrs.import_events(repeat('s', 1025), 'T', '{}', NULL, NULL)$$),
    ('id elsewhere',    $$SELECT cqrs.import_events('other-1', 'T', '{}', NULL, '00000000-0000-0000-0000-000000000001')$$),
    ('id twice, two streams',
                        $$SELECT cqrs.import_events(s, 'T', '{}', NULL, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11') FROM (VALUES ('x-1'), ('x-2')) v(s)$$),
    ('as a window',     $$SELECT cqrs.import_events(stream, type, data, metadata, id) OVER () FROM staging$$)
) AS t(label, cmd);
-- the error names the row that caused it
SELECT cqrs.import_events(s, 'T', d, NULL, NULL)
  FROM (VALUES (1, 'ok-1', '{}'::jsonb), (2, 'ok-1', '{}'), (3, 'ok-1', NULL)) v(n, s, d);
SELECT count(*) = :before AS nothing_written FROM cqrs.events;

-- an error in a late batch undoes the earlier batches of the statement
SELECT try($$SELECT cqrs.import_events(s, 'T', CASE WHEN g = 900 THEN NULL ELSE '{}'::jsonb END, NULL, NULL)
               FROM generate_series(1, 1000) g, LATERAL (SELECT 'late-' || g % 7) v(s)$$);
SELECT count(*) AS late_events FROM cqrs.events WHERE stream LIKE 'late-%';

-- the right to import is the right to append: INSERT on cqrs.events
CREATE ROLE regress_importer;
GRANT USAGE ON SCHEMA cqrs TO regress_importer;
GRANT SELECT ON staging TO regress_importer;
SET ROLE regress_importer;
SELECT try($$SELECT cqrs.import_events(stream, type, data, metadata, id) FROM staging$$);
RESET ROLE;
GRANT INSERT ON cqrs.events TO regress_importer;
SET ROLE regress_importer;
SELECT cqrs.import_events(s, 'T', '{}', NULL, NULL) FROM (VALUES ('granted-1')) v(s);
-- and the step function cannot be called on its own
SELECT sqlstate($$SELECT cqrs.import_events_step(NULL, 's', 't', '{}', NULL, NULL)$$);
-- the rows come from the caller's own query, with the caller's rights
SELECT try($$SELECT cqrs.import_events(stream, 'T', '{}', NULL, NULL) FROM imported$$);
RESET ROLE;

-- row-level security WITH CHECK applies to imports as to an INSERT: a
-- policy letting the importer write only its tenant's events refuses the
-- rest of an import, whole
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY importer_writes ON cqrs.events FOR INSERT TO regress_importer
    WITH CHECK (metadata->>'tenant' = 'sales');
SET ROLE regress_importer;
SELECT cqrs.import_events(s, 'T', '{}', '{"tenant": "sales"}', NULL)
  FROM (VALUES ('rls-1'), ('rls-1')) v(s);
SELECT try($$SELECT cqrs.import_events(s, 'T', '{}', m, NULL)
               FROM (VALUES ('rls-2', '{"tenant": "sales"}'::jsonb), ('rls-2', '{"tenant": "hr"}')) v(s, m)$$);
RESET ROLE;
SELECT stream, count(*) FROM cqrs.events WHERE stream LIKE 'rls-%' GROUP BY stream ORDER BY stream;
DROP POLICY importer_writes ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

-- the projection saw every imported event once, and verify agrees
SELECT (SELECT count(*) FROM imported) = (SELECT count(*) FROM cqrs.events) AS all_applied,
       (SELECT max(n) FROM imported) AS max_applications;
SELECT table_name, rows, matches FROM cqrs.verify('imported');

SELECT cqrs.drop_projection('imported');
DROP TABLE imported, staging;
DROP FUNCTION imported_handler(cqrs.events);
REVOKE ALL ON cqrs.events FROM regress_importer;
REVOKE ALL ON SCHEMA cqrs FROM regress_importer;
DROP ROLE regress_importer;
DROP EXTENSION pg_cqrs;
