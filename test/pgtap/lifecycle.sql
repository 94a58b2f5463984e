-- test/pgtap/lifecycle.sql: delete_stream, truncate_stream and erase_stream
-- (0.7.0) against hostile roles: rights checked first (42501 before any
-- lookup), EXECUTE not PUBLIC, statements run as the caller under
-- row-level security (a second tenant cannot touch, nor learn of, a stream
-- it cannot see; a stream is never half deleted), internal SQL immune to
-- search_path tricks, the guard's permission never left open, and the
-- audit trail naming the caller.  Roles vanish with the final rollback.
BEGIN;
SELECT plan(42);

CREATE ROLE regress_cqrs_admin;
CREATE ROLE regress_cqrs_writer;
CREATE ROLE regress_cqrs_reader;
CREATE ROLE regress_cqrs_deleter;
CREATE ROLE regress_cqrs_tenant_a;
CREATE ROLE regress_cqrs_tenant_b;
CREATE ROLE regress_cqrs_stranger;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_admin, regress_cqrs_writer, regress_cqrs_reader,
    regress_cqrs_deleter, regress_cqrs_tenant_a, regress_cqrs_tenant_b, regress_cqrs_stranger;
GRANT SELECT, INSERT, DELETE, UPDATE ON cqrs.events
    TO regress_cqrs_admin, regress_cqrs_tenant_a, regress_cqrs_tenant_b;
GRANT INSERT ON cqrs.events TO regress_cqrs_writer;
GRANT SELECT ON cqrs.events TO regress_cqrs_reader;
GRANT SELECT, INSERT, DELETE ON cqrs.events TO regress_cqrs_deleter;
GRANT CREATE ON SCHEMA public TO regress_cqrs_stranger;

-- 1. EXECUTE is not PUBLIC
SELECT ok(NOT has_function_privilege('regress_cqrs_stranger',
          'cqrs.delete_stream(text, bigint, boolean)', 'EXECUTE'), 'delete_stream is not PUBLIC');
SELECT ok(NOT has_function_privilege('regress_cqrs_stranger',
          'cqrs.truncate_stream(text, bigint)', 'EXECUTE'), 'truncate_stream is not PUBLIC');
SELECT ok(NOT has_function_privilege('regress_cqrs_stranger',
          'cqrs.erase_stream(text, bigint, bigint, boolean)', 'EXECUTE'), 'erase_stream is not PUBLIC');
SET LOCAL ROLE regress_cqrs_writer;
SELECT throws_ok($$SELECT cqrs.delete_stream('order-1')$$, '42501', NULL,
                 'without EXECUTE: 42501');
RESET ROLE;

-- from here on EXECUTE is granted, so that the table rights are what is tested
GRANT EXECUTE ON FUNCTION cqrs.delete_stream(text, bigint, boolean),
                          cqrs.truncate_stream(text, bigint),
                          cqrs.erase_stream(text, bigint, bigint, boolean)
    TO regress_cqrs_admin, regress_cqrs_writer, regress_cqrs_reader, regress_cqrs_deleter,
       regress_cqrs_tenant_a, regress_cqrs_tenant_b, regress_cqrs_stranger;

SELECT cqrs.append_events('order-1', '[{"type": "OrderPlaced", "data": {"card": "4111"}},
                                       {"type": "OrderPaid", "data": {}},
                                       {"type": "OrderShipped", "data": {}}]');
SELECT cqrs.append_events('a-1', '[{"type": "Registered", "data": {"name": "Ann"}},
                                   {"type": "Moved", "data": {"city": "Oslo"}},
                                   {"type": "Moved", "data": {"city": "Rome"}}]');
CREATE TEMP TABLE log_before AS SELECT * FROM cqrs.events;
GRANT SELECT ON log_before TO PUBLIC;
CREATE FUNCTION pg_temp.log_unchanged() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (TABLE log_before EXCEPT ALL TABLE cqrs.events)
       AND NOT EXISTS (TABLE cqrs.events EXCEPT ALL TABLE log_before)
       AND NOT EXISTS (TABLE cqrs.lifecycle_log)
$$;

-- 2. rights first: 42501 before anything is looked up, even for a
--    stream that does not exist
SET LOCAL ROLE regress_cqrs_writer;
SELECT throws_ok($$SELECT cqrs.delete_stream('order-1')$$, '42501',
                 'permission denied for table events', 'a writer (INSERT only) cannot delete');
SELECT throws_ok($$SELECT cqrs.delete_stream('nowhere-1', hard => true)$$, '42501',
                 'permission denied for table events', 'nor learn whether a stream exists');
SELECT throws_ok($$SELECT cqrs.truncate_stream('order-1', 3)$$, '42501',
                 'permission denied for table events', 'a writer cannot truncate');
SELECT throws_ok($$SELECT cqrs.erase_stream('order-1')$$, '42501',
                 'permission denied for table events', 'a writer cannot erase');
RESET ROLE;
SET LOCAL ROLE regress_cqrs_reader;
SELECT throws_ok($$SELECT cqrs.delete_stream('order-1')$$, '42501',
                 'permission denied for table events', 'a reader cannot delete');
SELECT throws_ok($$SELECT cqrs.truncate_stream('order-1', 3)$$, '42501',
                 'permission denied for table events', 'a reader cannot truncate');
SELECT throws_ok($$SELECT cqrs.erase_stream('nowhere-1')$$, '42501',
                 'permission denied for table events', 'a reader cannot erase, nor probe');
RESET ROLE;
SET LOCAL ROLE regress_cqrs_deleter;
SELECT throws_ok($$SELECT cqrs.erase_stream('order-1')$$, '42501',
                 'permission denied for table events', 'DELETE is not UPDATE: no erasing');
RESET ROLE;
SET LOCAL ROLE regress_cqrs_stranger;
SELECT throws_ok($$SELECT cqrs.delete_stream('order-1')$$, '42501',
                 'permission denied for table events', 'a stranger cannot delete');
RESET ROLE;
SELECT ok(pg_temp.log_unchanged(), 'nothing changed, nothing audited');

-- 3. a stranger with CREATE on public plants look-alikes of what the
--    internal statements use; the admin calls with public first on its path
SET LOCAL ROLE regress_cqrs_stranger;
CREATE FUNCTION public.starts_with(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE FUNCTION public.lt_always(bigint, bigint) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.< (FUNCTION = public.lt_always, LEFTARG = bigint, RIGHTARG = bigint);
CREATE FUNCTION public.eq_always(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.= (FUNCTION = public.eq_always, LEFTARG = text, RIGHTARG = text);
CREATE TABLE public.events ("position" bigint, stream text, version bigint, id uuid, type text,
                            data jsonb, metadata jsonb, recorded_at timestamptz);
RESET ROLE;
SET LOCAL search_path = public, pg_catalog;
SET LOCAL ROLE regress_cqrs_admin;
-- (no pgTAP call here: the planted "=" would fool pgTAP's own bookkeeping)
SELECT cqrs.truncate_stream('order-1', 2) AS truncated \gset
SELECT cqrs.erase_stream('a-1', 1, 1) AS erased \gset
RESET ROLE;
RESET search_path;
SELECT is(:truncated::bigint, 1::bigint, 'truncate removes exactly version 1');
SELECT is(:erased::bigint, 1::bigint, 'erase changes exactly version 1');
SELECT is((SELECT count(*) FROM public.events), 0::bigint, 'the look-alike table was not written');
DROP TABLE public.events;
DROP OPERATOR public.< (bigint, bigint);
DROP OPERATOR public.= (text, text);
DROP FUNCTION public.lt_always(bigint, bigint), public.eq_always(text, text),
              public.starts_with(text, text);
SELECT results_eq($$SELECT stream, version, type FROM cqrs.events ORDER BY position$$,
                  $$VALUES ('order-1'::text, 2::bigint, 'OrderPaid'::text),
                           ('order-1', 3, 'OrderShipped'),
                           ('a-1', 1, 'Registered'), ('a-1', 2, 'Moved'), ('a-1', 3, 'Moved'),
                           ('order-1', 4, '$StreamTruncated'), ('a-1', 4, '$StreamErased')$$,
                  'the look-alikes changed nothing: other streams and versions are intact');
SELECT results_eq($$SELECT data FROM cqrs.events WHERE stream = 'a-1' ORDER BY version$$,
                  $$VALUES ('{"$erased": true}'::jsonb), ('{"city": "Oslo"}'), ('{"city": "Rome"}'),
                           ('{"to_version": 1, "from_version": 1, "metadata_kept": false}')$$,
                  'only the erased version was overwritten');
SELECT results_eq($$SELECT operation, target, events, performed_by = 'regress_cqrs_admin',
                           session_role = session_user
                      FROM cqrs.lifecycle_log ORDER BY id$$,
                  $$VALUES ('truncate_stream'::text, 'order-1'::text, 1::bigint, true, true),
                           ('erase_stream', 'a-1', 1, true, true)$$,
                  'the audit rows name the role whose rights were checked and the session');

-- the audit trail: not for everyone
SET LOCAL ROLE regress_cqrs_admin;
SELECT throws_ok($$SELECT * FROM cqrs.lifecycle_log$$, '42501', NULL,
                 'the audit trail is not readable by the admin role');
SELECT throws_ok($$DELETE FROM cqrs.lifecycle_log$$, '42501', NULL,
                 'nor can it be rewritten');
RESET ROLE;
SELECT ok(has_table_privilege('pg_monitor', 'cqrs.lifecycle_log', 'SELECT'),
          'pg_monitor reads the audit trail');

-- 4. row-level security: two tenants, each seeing its own streams
SELECT cqrs.append_events('b-1', '[{"type": "Registered", "data": {"name": "Bo"}},
                                   {"type": "Moved", "data": {"city": "Bern"}}]');
SELECT cqrs.append_events('a-2', '[{"type": "Registered", "data": {"name": "Al"}},
                                   {"type": "Moved", "data": {"city": "Graz"}},
                                   {"type": "Moved", "data": {"city": "Linz"}}]');
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_a ON cqrs.events TO regress_cqrs_tenant_a
    USING (stream LIKE 'a-%') WITH CHECK (stream LIKE 'a-%');
CREATE POLICY tenant_b ON cqrs.events TO regress_cqrs_tenant_b
    USING (stream LIKE 'b-%') WITH CHECK (stream LIKE 'b-%');
TRUNCATE log_before;
INSERT INTO log_before SELECT * FROM cqrs.events;
CREATE TEMP TABLE audit_before AS SELECT count(*) AS n FROM cqrs.lifecycle_log;
GRANT SELECT ON audit_before TO PUBLIC;

SET LOCAL ROLE regress_cqrs_tenant_b;
SELECT throws_ok($$SELECT cqrs.delete_stream('a-2', hard => true)$$, '42704',
                 'stream "a-2" does not exist', 'tenant b cannot delete a stream of tenant a: it does not exist');
SELECT throws_ok($$SELECT cqrs.delete_stream('a-2')$$, '42704',
                 'stream "a-2" does not exist', 'nor soft-delete it');
SELECT throws_ok($$SELECT cqrs.truncate_stream('a-2', 3)$$, '42704',
                 'stream "a-2" does not exist', 'nor truncate it');
SELECT throws_ok($$SELECT cqrs.erase_stream('a-2')$$, '42704',
                 'stream "a-2" does not exist', 'nor erase it');
SELECT throws_ok($$SELECT cqrs.erase_stream('a-404')$$, '42704',
                 'stream "a-404" does not exist', 'the same error as for a stream that does not exist');
RESET ROLE;
SELECT ok(NOT EXISTS (TABLE log_before EXCEPT ALL TABLE cqrs.events)
          AND NOT EXISTS (TABLE cqrs.events EXCEPT ALL TABLE log_before)
          AND (SELECT count(*) FROM cqrs.lifecycle_log) = (SELECT n FROM audit_before),
          'tenant b changed nothing of tenant a');

-- tenant a works on its own streams
SET LOCAL ROLE regress_cqrs_tenant_a;
SELECT is(cqrs.erase_stream('a-2', 1, 1), 1::bigint, 'tenant a erases its own event');
SELECT is(cqrs.truncate_stream('a-2', 2), 1::bigint, 'tenant a truncates its own stream');
SELECT ok(cqrs.delete_stream('a-2', hard => true) > 0, 'tenant a hard-deletes its own stream');
SELECT results_eq($$SELECT version, type FROM cqrs.read_stream('a-2')$$,
                  $$VALUES (6::bigint, '$StreamDeleted'::text)$$, 'only its tombstone is left');
RESET ROLE;
SELECT is((SELECT count(*) FROM cqrs.events WHERE stream = 'a-2'), 1::bigint,
          'only the tombstone, as the owner sees it too');
SELECT results_eq($$SELECT operation, performed_by = 'regress_cqrs_tenant_a'
                      FROM cqrs.lifecycle_log WHERE target = 'a-2' ORDER BY id$$,
                  $$VALUES ('erase_stream'::text, true), ('truncate_stream', true), ('delete_stream', true)$$,
                  'audited as tenant a');

-- a policy that lets tenant b see its whole stream but delete only part
-- of it: the delete fails whole, nothing is half deleted
CREATE POLICY tenant_b_restrictive ON cqrs.events AS RESTRICTIVE FOR DELETE
    TO regress_cqrs_tenant_b USING (version > 1);
SET LOCAL ROLE regress_cqrs_tenant_b;
SELECT throws_ok($$SELECT cqrs.delete_stream('b-1', hard => true)$$, '42501',
                 'permission denied to delete stream "b-1"', 'a hard delete the policies cut short fails');
SELECT throws_ok($$SELECT cqrs.truncate_stream('b-1', 2)$$, '42501',
                 'permission denied to truncate stream "b-1"', 'so does such a truncation');
SELECT results_eq($$SELECT version, type FROM cqrs.read_stream('b-1')$$,
                  $$VALUES (1::bigint, 'Registered'::text), (2, 'Moved')$$,
                  'the stream is whole, with no tombstone');
RESET ROLE;
CREATE POLICY tenant_b_no_update ON cqrs.events AS RESTRICTIVE FOR UPDATE
    TO regress_cqrs_tenant_b USING (version > 1);
SET LOCAL ROLE regress_cqrs_tenant_b;
SELECT throws_ok($$SELECT cqrs.erase_stream('b-1')$$, '42501',
                 'permission denied to erase stream "b-1"', 'an erasure the policies cut short fails');
SELECT results_eq($$SELECT data FROM cqrs.read_stream('b-1')$$,
                  $$VALUES ('{"name": "Bo"}'::jsonb), ('{"city": "Bern"}')$$,
                  'nothing was erased');

-- the guard's permission is not left open by a caught failure
DO $$
BEGIN
    BEGIN
        PERFORM cqrs.erase_stream('b-1');
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
END $$;
SELECT throws_ok($$UPDATE cqrs.events SET data = '{}' WHERE stream = 'b-1'$$, '0A000', NULL,
                 'after a caught failure, a plain UPDATE is still refused');
SELECT throws_ok($$DELETE FROM cqrs.events WHERE stream = 'b-1'$$, '0A000', NULL,
                 'and so is a plain DELETE');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
