-- test/pgtap/archive.sql: archive rules (0.8.0) against hostile roles.
-- Setting and applying one needs what a retention rule needs (DELETE and
-- SELECT on cqrs.events, no row-level security in force) and nothing on
-- the archive, whose rows move there as its owner; the archive itself is
-- no one's to read (no grants, row-level security on with no policy, its
-- partitions the owner's); look-alike functions, operators and tables
-- planted in public change nothing of what is moved or where; the
-- lifecycle functions reach a stream's archived rows, and only its; the
-- audit rows name who.  Roles, rules and the month's partition are
-- created inside the test's transaction and vanish with its rollback, so
-- the worker never sees them.
BEGIN;
SELECT plan(48);

CREATE ROLE regress_cqrs_stranger;     -- nothing but USAGE and EXECUTE
CREATE ROLE regress_cqrs_reader;       -- SELECT on cqrs.events
CREATE ROLE regress_cqrs_archreader;   -- SELECT on cqrs.events_archive too
CREATE ROLE regress_cqrs_deleter;      -- DELETE and SELECT on cqrs.events
CREATE ROLE regress_cqrs_admin;        -- what the lifecycle functions need
CREATE ROLE regress_cqrs_tenant;       -- all of it, under a policy
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_stranger, regress_cqrs_reader,
    regress_cqrs_archreader, regress_cqrs_deleter, regress_cqrs_admin, regress_cqrs_tenant;
GRANT SELECT ON cqrs.events TO regress_cqrs_reader, regress_cqrs_archreader;
GRANT SELECT ON cqrs.events_archive TO regress_cqrs_archreader;
GRANT DELETE, SELECT ON cqrs.events TO regress_cqrs_deleter;
GRANT SELECT, INSERT, DELETE, UPDATE ON cqrs.events TO regress_cqrs_admin, regress_cqrs_tenant;
GRANT CREATE ON SCHEMA public TO regress_cqrs_stranger;

-- 1. what nobody has
SELECT ok(NOT has_function_privilege('public',
          'cqrs.set_retention(text, interval, bigint, boolean)', 'EXECUTE'),
          'set_retention (with archive) is not PUBLIC');
SELECT ok(NOT has_table_privilege('public', 'cqrs.events_archive', 'SELECT'),
          'the archive is not readable by PUBLIC');
SELECT ok(NOT has_table_privilege('regress_cqrs_deleter', 'cqrs.events_archive', 'INSERT')
          AND NOT has_table_privilege('regress_cqrs_deleter', 'cqrs.events_archive', 'SELECT'),
          'the deleter has no right on the archive');
SELECT is((SELECT relrowsecurity::text || ' ' || relforcerowsecurity::text
                  || ' ' || (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid)
             FROM pg_class c WHERE c.oid = 'cqrs.events_archive'::regclass),
          'true false 0', 'the archive has row-level security on, and no policy');

-- EXECUTE from here on, so that the functions' own checks are what refuses
GRANT EXECUTE ON FUNCTION cqrs.set_retention(text, interval, bigint, boolean),
    cqrs.drop_retention(text), cqrs.apply_retention(text, bigint),
    cqrs.delete_stream(text, bigint, boolean), cqrs.truncate_stream(text, bigint),
    cqrs.erase_stream(text, bigint, bigint, boolean)
    TO regress_cqrs_stranger, regress_cqrs_reader, regress_cqrs_archreader,
       regress_cqrs_deleter, regress_cqrs_admin, regress_cqrs_tenant;

SELECT count(*) FROM unnest(ARRAY['mine-1', 'mine-2', 'mine-10', 'mine-11', 'victim-1']) s,
    generate_series(1, 5) i, LATERAL cqrs.append(s, 'T', jsonb_build_object('s', s, 'i', i)) a;
CREATE TEMP TABLE log_before AS SELECT * FROM cqrs.events;

-- 2. a stranger may not set or apply an archive rule
SET LOCAL ROLE regress_cqrs_stranger;
SELECT throws_ok($$SELECT cqrs.set_retention('victim', max_count => 1, archive => true)$$, '42501',
                 'permission denied for table events', 'a stranger cannot set an archive rule: 42501');
SELECT throws_ok($$SELECT cqrs.apply_retention()$$, '42501',
                 'permission denied for table events', 'nor apply rules');
SELECT throws_ok($$SELECT * FROM cqrs.events_archive$$, '42501', NULL,
                 'nor read the archive');
RESET ROLE;
-- a reader of the log may not read the archive either
SET LOCAL ROLE regress_cqrs_reader;
SELECT throws_ok($$SELECT * FROM cqrs.events_archive$$, '42501', NULL,
                 'SELECT on cqrs.events does not reach the archive: 42501');
SELECT throws_ok($$SELECT cqrs.set_retention('victim', max_count => 1, archive => true)$$, '42501',
                 'permission denied for table events', 'nor lets it set an archive rule');
RESET ROLE;

-- 3. a tenant whose policies limit what it sees is refused
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON cqrs.events TO regress_cqrs_tenant
    USING (stream LIKE 'victim-%') WITH CHECK (stream LIKE 'victim-%');
SET LOCAL ROLE regress_cqrs_tenant;
SELECT throws_ok($$SELECT cqrs.set_retention('victim', max_count => 1, archive => true)$$, '42501', NULL,
                 'an archive rule under row-level security: 42501');
SELECT throws_ok($$SELECT cqrs.apply_retention()$$, '42501', NULL,
                 'apply_retention under row-level security: 42501');
RESET ROLE;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;
SELECT is((SELECT count(*) FROM cqrs.retention_rules), 0::bigint, 'the refused calls set no rule');

-- 4. a stranger plants look-alikes of what the pass could use: category(),
--    =, <, <= and now() (which would name another month's partition), and
--    tables named like the archive and its partition; the deleter runs the
--    pass with public first on its search_path
SELECT 'events_archive_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM') AS part \gset
SET LOCAL ROLE regress_cqrs_stranger;
CREATE FUNCTION public.category(text) RETURNS text LANGUAGE sql AS $$ SELECT 'victim' $$;
CREATE FUNCTION public.always(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.always);
CREATE FUNCTION public.always8(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.< (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.always8);
CREATE OPERATOR public.<= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.always8);
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-15 12:00+00'::timestamptz $$;
CREATE TABLE public.events_archive ("position" bigint, stream text, version bigint, id uuid,
    type text, data jsonb, metadata jsonb, recorded_at timestamptz, archived_at timestamptz);
CREATE TABLE public.events_archive_1999_01 (LIKE public.events_archive);
SELECT format('CREATE TABLE public.%I (LIKE public.events_archive)', :'part') \gexec
GRANT ALL ON public.events_archive, public.events_archive_1999_01 TO PUBLIC;
RESET ROLE;
SET LOCAL ROLE regress_cqrs_deleter;
SELECT lives_ok($$SELECT cqrs.set_retention('mine', max_count => 2, archive => true)$$,
                'a role with DELETE and SELECT on the log sets an archive rule');
-- (pgTAP's own functions would resolve the planted "=": keep the results
-- and check them after RESET)
SET LOCAL search_path = public, cqrs, pg_catalog;
CREATE TEMP TABLE moved AS SELECT cqrs.apply_retention('mine') AS mine;
RESET search_path;
SELECT throws_ok($$SELECT * FROM cqrs.events_archive$$, '42501', NULL,
                 'and needs no right on the archive, which it still cannot read');
RESET ROLE;
SELECT is((SELECT mine FROM moved), 12::bigint,
          'the pass moves the 3 oldest events of each of the 4 "mine" streams');
SELECT results_eq($$SELECT stream, string_agg(version::text, ',' ORDER BY version)
                      FROM cqrs.events_archive GROUP BY stream ORDER BY stream$$,
                  $$VALUES ('mine-1'::text, '1,2,3'::text), ('mine-10', '1,2,3'),
                           ('mine-11', '1,2,3'), ('mine-2', '1,2,3')$$,
                  'the archive holds exactly those, whatever was on the search_path');
SELECT ok(NOT EXISTS (SELECT "position", stream, version, id, type, data, metadata, recorded_at
                        FROM cqrs.events_archive
                      EXCEPT ALL
                      SELECT * FROM log_before),
          'as they were in the log (same positions, ids, data, times)');
SELECT results_eq($$SELECT stream, count(*) FROM cqrs.events GROUP BY stream ORDER BY stream$$,
                  $$VALUES ('mine-1'::text, 2::bigint), ('mine-10', 2), ('mine-11', 2), ('mine-2', 2),
                           ('victim-1', 5)$$,
                  'the log keeps the last 2 of each "mine" stream and all of the others');
SELECT is((SELECT count(*) FROM public.events_archive)
          + (SELECT count(*) FROM public.events_archive_1999_01), 0::bigint,
          'the look-alike tables were not written');
SELECT is((SELECT string_agg(DISTINCT tableoid::regclass::text, ',') FROM cqrs.events_archive),
          'cqrs.' || :'part', 'the rows are in this month''s partition of cqrs.events_archive');
SELECT is((SELECT count(*) FROM cqrs.events_archive
            WHERE archived_at IS DISTINCT FROM now()), 0::bigint,
          'archived_at is the moving transaction''s now(), not the planted one');
SELECT is((SELECT count(*) FROM pg_class WHERE relname LIKE 'events_archive_1999%'
             AND relnamespace = 'cqrs'::regnamespace), 0::bigint,
          'no partition of the planted now()''s month');
SELECT is((SELECT c.relowner FROM pg_class c WHERE c.oid = ('cqrs.' || :'part')::regclass),
          (SELECT c.relowner FROM pg_class c WHERE c.oid = 'cqrs.events_archive'::regclass),
          'the partition belongs to the archive''s owner, not to the deleter');
SELECT ok(NOT has_table_privilege('regress_cqrs_archreader', 'cqrs.' || :'part', 'SELECT')
          AND NOT has_table_privilege('public', 'cqrs.' || :'part', 'SELECT'),
          'the partition is granted to no one');
SELECT ok(NOT EXISTS (SELECT FROM pg_depend
                       WHERE classid = 'pg_class'::regclass
                         AND objid = ('cqrs.' || :'part')::regclass AND deptype = 'e'),
          'the partition is not a member of the extension (pg_dump dumps it with its rows)');
-- (performed_by is a name, collated "C": compared as text of the default
-- collation, as the VALUES are)
SELECT results_eq($$SELECT operation, target, events, performed_by::text COLLATE "default",
                           regexp_replace(detail->>'partition', '^cqrs\.', ''),
                           coalesce(detail->'rule'->>'archive', detail->>'archive')
                      FROM cqrs.lifecycle_log WHERE operation <> 'set_retention' ORDER BY id$$,
                  format($$VALUES ('archive'::text, 'mine'::text, 12::bigint,
                                   'regress_cqrs_deleter'::text, %L::text, 'true'::text)$$, :'part'),
                  'one audit row: operation archive, the deleter, the partition, an archive rule');
SELECT is((SELECT archive::text || ' ' || removed FROM cqrs.retention_rules WHERE category = 'mine'),
          'true 12', 'the rule says archive and counts what it moved');

-- 5. reading the archive: a role granted SELECT on it sees nothing (no
--    policy), and may not read the partition directly
SET LOCAL ROLE regress_cqrs_archreader;
SELECT is((SELECT count(*) FROM cqrs.events_archive), 0::bigint,
          'SELECT granted on the archive: no rows, for want of a policy');
SELECT throws_ok(format('SELECT * FROM cqrs.%I', :'part'), '42501', NULL,
                 'the partition itself: 42501');
RESET ROLE;

-- 6. the lifecycle functions reach the stream's archived rows, and only
--    its (mine-1 is not mine-10 nor mine-11), under the same search_path
SET LOCAL search_path = public, cqrs, pg_catalog;
SET LOCAL ROLE regress_cqrs_admin;
SELECT cqrs.erase_stream('mine-1', 2, 4) AS erased \gset
SELECT cqrs.truncate_stream('mine-2', 3) AS truncated \gset
SELECT cqrs.delete_stream('mine-10', hard => true) AS deleted \gset
RESET ROLE;
RESET search_path;
SELECT is(:erased::bigint, 3::bigint, 'erase_stream counts the 2 archived versions and the 1 in the log');
SELECT results_eq($$SELECT stream, version, data FROM cqrs.events_archive ORDER BY stream, version$$,
                  $$VALUES ('mine-1'::text, 1::bigint, '{"i": 1, "s": "mine-1"}'::jsonb),
                           ('mine-1', 2, '{"$erased": true}'), ('mine-1', 3, '{"$erased": true}'),
                           ('mine-11', 1, '{"i": 1, "s": "mine-11"}'), ('mine-11', 2, '{"i": 2, "s": "mine-11"}'),
                           ('mine-11', 3, '{"i": 3, "s": "mine-11"}'),
                           ('mine-2', 3, '{"i": 3, "s": "mine-2"}')$$,
                  'erased in range, truncated below 3, hard-deleted: nothing else touched');
SELECT is((SELECT data FROM cqrs.events WHERE stream = 'mine-1' AND version = 4),
          '{"$erased": true}'::jsonb, 'and erase_stream erased the log''s version 4 too');
SELECT is((SELECT count(*) FROM public.events_archive), 0::bigint,
          'the look-alike archive was not written');
-- (truncate_stream removed nothing from the log: whether it audits and
-- counts archived rows alone is not checked here)
SELECT results_eq($$SELECT operation, target, performed_by::text COLLATE "default" FROM cqrs.lifecycle_log
                     WHERE operation IN ('erase_stream', 'delete_stream') ORDER BY id$$,
                  $$VALUES ('erase_stream'::text, 'mine-1'::text, 'regress_cqrs_admin'::text),
                           ('delete_stream', 'mine-10', 'regress_cqrs_admin')$$,
                  'the audit rows name the role whose rights were checked');
SET LOCAL ROLE regress_cqrs_admin;
SELECT throws_ok($$SELECT * FROM cqrs.events_archive$$, '42501', NULL,
                 'the admin still cannot read the archive afterwards');
SELECT throws_ok($$DELETE FROM cqrs.events_archive$$, '42501', NULL,
                 'nor delete from it');
RESET ROLE;

-- 7. rights first: without UPDATE no erasing of archived rows either
SET LOCAL ROLE regress_cqrs_deleter;
SELECT throws_ok($$SELECT cqrs.erase_stream('mine-11')$$, '42501',
                 'permission denied for table events', 'DELETE is not UPDATE: no erasing');
RESET ROLE;
SET LOCAL ROLE regress_cqrs_reader;
SELECT throws_ok($$SELECT cqrs.delete_stream('mine-11', hard => true)$$, '42501',
                 'permission denied for table events', 'a reader cannot delete');
SELECT throws_ok($$SELECT cqrs.truncate_stream('mine-11', 3)$$, '42501',
                 'permission denied for table events', 'nor truncate');
RESET ROLE;
-- a tenant cannot reach the archived rows of a stream it cannot see
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
SET LOCAL ROLE regress_cqrs_tenant;
SELECT throws_ok($$SELECT cqrs.erase_stream('mine-11')$$, '42704',
                 'stream "mine-11" does not exist', 'a tenant cannot erase another''s archived rows');
SELECT throws_ok($$SELECT cqrs.delete_stream('mine-11', hard => true)$$, '42704',
                 'stream "mine-11" does not exist', 'nor delete them');
SELECT throws_ok($$SELECT cqrs.truncate_stream('mine-11', 3)$$, '42704',
                 'stream "mine-11" does not exist', 'nor truncate them');
RESET ROLE;
SELECT is((SELECT string_agg(version || ':' || (data->>'i'), ',' ORDER BY version)
             FROM cqrs.events_archive WHERE stream = 'mine-11'),
          '1:1,2:2,3:3', 'mine-11''s archived rows are as they were');
-- and a tenant that sees its stream reaches its archived rows
ALTER POLICY tenant_rows ON cqrs.events TO regress_cqrs_tenant
    USING (stream LIKE 'mine-11') WITH CHECK (stream LIKE 'mine-11');
SET LOCAL ROLE regress_cqrs_tenant;
SELECT is(cqrs.erase_stream('mine-11', 1, 1), 1::bigint, 'a tenant erases its own archived event');
RESET ROLE;
SELECT is((SELECT data FROM cqrs.events_archive WHERE stream = 'mine-11' AND version = 1),
          '{"$erased": true}'::jsonb, 'it is erased in the archive');
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

-- 8. the owner's rights on the archive were not left to the callers
SELECT ok(NOT has_table_privilege('regress_cqrs_admin', 'cqrs.events_archive', 'UPDATE')
          AND NOT has_table_privilege('regress_cqrs_admin', 'cqrs.events_archive', 'DELETE')
          AND NOT has_table_privilege('regress_cqrs_admin', 'cqrs.events_archive', 'INSERT'),
          'the lifecycle calls left the admin no right on the archive');
SELECT is((SELECT count(*) FROM cqrs.retention_rules WHERE category = 'mine'), 1::bigint,
          'the rule is still there');
SELECT lives_ok($$SELECT cqrs.drop_retention('mine')$$, 'and the owner drops it');

SELECT * FROM finish();
ROLLBACK;
