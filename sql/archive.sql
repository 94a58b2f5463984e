--
-- archive.sql: archive rules (cqrs.set_retention(..., archive => true))
-- and cqrs.events_archive.  What a pass moves (the same events a deleting
-- rule would remove, byte for byte, none lost, none doubled), what it
-- never moves (heads), the monthly partitions and their names, the audit
-- rows, what the lifecycle functions do to archived rows, rights, and a
-- detached month.
--
-- The worker's background passes are off here (cqrs.retention_naptime =
-- 0); test/t/027_archive.pl covers the worker and crashes.
--
CREATE EXTENSION pg_cqrs;
ALTER SYSTEM SET cqrs.retention_naptime = 0;
-- batches of 2 events: the first call below runs several batches in one
-- transaction, the first of which makes the month's partition
ALTER SYSTEM SET cqrs.retention_batch_size = 2;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);

CREATE FUNCTION fill(s text, n int) RETURNS void LANGUAGE sql AS $$
    SELECT count(*) FROM generate_series(1, n) i,
           LATERAL cqrs.append(s, 'Happened', jsonb_build_object('i', i, 's', s),
                               jsonb_build_object('who', 'me')) a
$$;
-- what is where: versions of each stream in the log (L) and the archive (A)
CREATE VIEW placed AS
    SELECT stream,
           (SELECT string_agg(version::text, ',' ORDER BY version) FROM cqrs.events e
             WHERE e.stream = s.stream) AS log,
           (SELECT string_agg(version::text, ',' ORDER BY version) FROM cqrs.events_archive a
             WHERE a.stream = s.stream) AS archive
    FROM (SELECT stream FROM cqrs.events UNION SELECT stream FROM cqrs.events_archive) s
    ORDER BY stream;
-- partition names without the month they are for
CREATE FUNCTION masked(n text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(n, 'events_archive_\d{4}_\d{2}', 'events_archive_YYYY_MM')
$$;

SELECT fill('order-1', 10), fill('order-2', 3), fill('order-3', 1), fill('cart-1', 5);
CREATE TABLE before AS SELECT * FROM cqrs.events;

-- the archive starts empty, without partitions, closed to everyone else
SELECT count(*) FROM cqrs.events_archive;
SELECT relname, relkind, relrowsecurity,
       (SELECT count(*) FROM aclexplode(relacl) x WHERE x.grantee <> relowner) AS grants_to_others
FROM pg_class WHERE relname = 'events_archive';
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'cqrs.events_archive'::regclass;

-- errors
SELECT try($$SELECT cqrs.set_retention('order', max_count => 3, archive => NULL)$$);

-- an archive rule keeping the last 3 events of each order stream
SELECT cqrs.set_retention('order', max_count => 3, archive => true);
SELECT category, max_count, archive, removed FROM cqrs.retention_rules;
SELECT cqrs.apply_retention('order', max_events => 4);
SELECT cqrs.apply_retention('order');
SELECT * FROM placed;
SELECT removed FROM cqrs.retention_rules;

-- every event is in exactly one place, unchanged, and nothing else is there
SELECT count(*) AS everywhere,
       count(DISTINCT "position") AS distinct_positions
FROM (SELECT "position" FROM cqrs.events UNION ALL SELECT "position" FROM cqrs.events_archive) u;
SELECT count(*) AS changed_or_missing FROM before b
WHERE NOT EXISTS (SELECT FROM cqrs.events e WHERE (e.*) = (b.*))
  AND NOT EXISTS (SELECT FROM cqrs.events_archive a
                  WHERE (a."position", a.stream, a.version, a.id, a.type, a.data,
                         a.metadata, a.recorded_at) = (b.*));
SELECT count(*), bool_and(archived_at BETWEEN now() - interval '1 hour' AND now()) AS just_now
FROM cqrs.events_archive;

-- read_all and read_stream read the log only
SELECT count(*) FROM cqrs.read_all(0) WHERE stream = 'order-1';
SELECT string_agg(version::text, ',') FROM cqrs.read_stream('order-1');

-- one partition, for this month (UTC), as closed as its parent
SELECT masked(c.relname) AS partition, c.relrowsecurity, c.relacl IS NULL OR NOT
       EXISTS (SELECT FROM aclexplode(c.relacl) x WHERE x.grantee = 0) AS no_public,
       pg_get_expr(c.relpartbound, c.oid) =
           format('FOR VALUES FROM (%L) TO (%L)',
                  date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                  (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')
           AS this_month
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'cqrs.events_archive'::regclass;

-- audited as 'archive', with the partition
SELECT operation, target, events, detail->'rule' AS rule, masked(detail->>'partition') AS partition
FROM cqrs.lifecycle_log ORDER BY id;

-- changing only where events go keeps the rule's place; a deleting rule
-- then deletes (nothing more to do here until new events come)
SELECT cqrs.set_retention('order', max_count => 3, archive => false);
SELECT archive, scan_position > 0 AS kept_place FROM cqrs.retention_rules;
SELECT fill('order-2', 2);
SELECT cqrs.apply_retention('order');
SELECT * FROM placed WHERE stream = 'order-2';
SELECT operation, events FROM cqrs.lifecycle_log ORDER BY id DESC LIMIT 1;
SELECT cqrs.set_retention('order', max_count => 3, archive => true);

-- the lifecycle functions reach archived rows: erase ...
SELECT cqrs.erase_stream('order-1', 1, 8, false);
SELECT version, data, metadata FROM cqrs.events_archive WHERE stream = 'order-1' ORDER BY version;
SELECT version, data FROM cqrs.events WHERE stream = 'order-1' ORDER BY version;
SELECT cqrs.erase_stream('order-1', 1, 8, false);   -- already erased: 0
-- ... truncate ...
SELECT cqrs.truncate_stream('order-1', 5);
SELECT * FROM placed WHERE stream = 'order-1';
-- ... and hard delete
SELECT cqrs.delete_stream('order-2', NULL, true);
SELECT * FROM placed WHERE stream = 'order-2';
SELECT operation, target, events FROM cqrs.lifecycle_log
WHERE operation IN ('erase_stream', 'truncate_stream', 'delete_stream') ORDER BY id;

-- rights: DELETE and SELECT on the log, nothing on the archive
CREATE ROLE archive_admin;
CREATE ROLE archive_reader;
GRANT USAGE ON SCHEMA cqrs TO archive_admin, archive_reader;
GRANT SELECT, DELETE ON cqrs.events TO archive_admin;
GRANT EXECUTE ON FUNCTION cqrs.set_retention(text, interval, bigint, boolean),
                          cqrs.apply_retention(text, bigint) TO archive_admin, archive_reader;
GRANT SELECT ON cqrs.events TO archive_reader;
SET ROLE archive_reader;
SELECT try($$SELECT cqrs.set_retention('cart', max_count => 1, archive => true)$$);
SELECT try($$SELECT count(*) FROM cqrs.events_archive$$);
RESET ROLE;
SET ROLE archive_admin;
SELECT cqrs.set_retention('cart', max_count => 1, archive => true);
SELECT cqrs.apply_retention('cart');
SELECT try($$SELECT count(*) FROM cqrs.events_archive$$);
RESET ROLE;
SELECT * FROM placed WHERE stream = 'cart-1';
SELECT operation, target, events, performed_by FROM cqrs.lifecycle_log ORDER BY id DESC LIMIT 1;
-- a grant alone shows nothing: row-level security without a policy
GRANT SELECT ON cqrs.events_archive TO archive_reader;
SET ROLE archive_reader;
SELECT count(*) AS seen FROM cqrs.events_archive;
RESET ROLE;
REVOKE SELECT ON cqrs.events_archive FROM archive_reader;

-- a detached month keeps its rows under its name; the next batch (run by
-- the archive admin, who may not create tables) makes a new partition for
-- the month with a suffix, as the log's owner
SELECT format('ALTER TABLE cqrs.events_archive DETACH PARTITION cqrs.%I', c.relname) AS detach
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'cqrs.events_archive'::regclass \gset
:detach;
SELECT count(*) FROM cqrs.events_archive;
SELECT fill('order-3', 2);
SET ROLE archive_admin;
SELECT cqrs.apply_retention('order');
RESET ROLE;
SELECT masked(c.relname) AS partition, (SELECT count(*) FROM cqrs.events_archive) AS archived
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'cqrs.events_archive'::regclass;
SELECT masked(relname) AS kept_table, relispartition FROM pg_class
WHERE relname ~ '^events_archive_\d{4}_\d{2}$';

-- a detached month in schema cqrs holds DROP EXTENSION back (it would go
-- with the schema); moved elsewhere, it outlives the extension, which
-- takes the archive and its attached partitions with it
DROP VIEW placed;
SELECT format('ALTER TABLE cqrs.%I SET SCHEMA public', relname) AS move_kept FROM pg_class
WHERE relname ~ '^events_archive_\d{4}_\d{2}$' \gset
SELECT sqlstate($$DROP EXTENSION pg_cqrs$$);
:move_kept;
DROP EXTENSION pg_cqrs;
SELECT masked(c.relname) AS left_behind, n.nspname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname LIKE 'events_archive%' ORDER BY 1;
SELECT format('DROP TABLE public.%I', relname) AS drop_kept FROM pg_class
WHERE relname ~ '^events_archive_\d{4}_\d{2}$' \gset
:drop_kept;
DROP TABLE before;
DROP FUNCTION fill(text, int);
DROP FUNCTION masked(text);
DROP ROLE archive_admin;
DROP ROLE archive_reader;
ALTER SYSTEM RESET cqrs.retention_naptime;
ALTER SYSTEM RESET cqrs.retention_batch_size;
SELECT pg_reload_conf();
