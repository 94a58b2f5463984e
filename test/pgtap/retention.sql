-- test/pgtap/retention.sql: who may set, drop and apply retention rules
-- (DELETE and SELECT on cqrs.events, EXECUTE granted explicitly, no
-- row-level security in force), and that neither a crafted category name
-- nor a hostile search_path makes a pass remove anything else.  Roles are
-- created inside the test's transaction and vanish with its rollback; so
-- do the rules, which the worker therefore never sees.
BEGIN;
SELECT plan(27);

CREATE ROLE regress_cqrs_stranger;
CREATE ROLE regress_cqrs_deleter;
CREATE ROLE regress_cqrs_halfway;     -- DELETE, but no SELECT
CREATE ROLE regress_cqrs_tenant;      -- DELETE and SELECT under a policy
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_stranger, regress_cqrs_deleter,
    regress_cqrs_halfway, regress_cqrs_tenant;
GRANT DELETE, SELECT ON cqrs.events TO regress_cqrs_deleter, regress_cqrs_tenant;
GRANT DELETE ON cqrs.events TO regress_cqrs_halfway;
-- EXECUTE, so that the functions' own checks are what refuses
GRANT EXECUTE ON FUNCTION cqrs.set_retention(text, interval, bigint, boolean),
    cqrs.drop_retention(text), cqrs.apply_retention(text, bigint)
    TO regress_cqrs_stranger, regress_cqrs_deleter, regress_cqrs_halfway, regress_cqrs_tenant;
GRANT CREATE ON SCHEMA public TO regress_cqrs_deleter;

SELECT count(*) FROM generate_series(1, 5) i, LATERAL cqrs.append('order-1', 'T', jsonb_build_object('i', i)) a;
SELECT count(*) FROM generate_series(1, 5) i, LATERAL cqrs.append('victim-1', 'T', jsonb_build_object('i', i)) a;
SELECT count(*) FROM generate_series(1, 5) i, LATERAL cqrs.append('mine-1', 'T', jsonb_build_object('i', i)) a;

-- EXECUTE is not PUBLIC's
SELECT ok(NOT has_function_privilege('public', 'cqrs.set_retention(text, interval, bigint, boolean)', 'EXECUTE'),
          'set_retention is not PUBLIC');
SELECT ok(NOT has_function_privilege('public', 'cqrs.drop_retention(text)', 'EXECUTE'),
          'drop_retention is not PUBLIC');
SELECT ok(NOT has_function_privilege('public', 'cqrs.apply_retention(text, bigint)', 'EXECUTE'),
          'apply_retention is not PUBLIC');

-- a stranger: refused before anything is looked up
SELECT cqrs.set_retention('order', max_count => 1);
SET LOCAL ROLE regress_cqrs_stranger;
SELECT throws_ok($$SELECT cqrs.set_retention('victim', max_count => 1)$$, '42501',
                 'permission denied for table events', 'set_retention without DELETE: 42501');
SELECT throws_ok($$SELECT cqrs.drop_retention('order')$$, '42501',
                 'permission denied for table events', 'drop_retention without DELETE: 42501');
SELECT throws_ok($$SELECT cqrs.drop_retention('no-such')$$, '42501',
                 'permission denied for table events', 'the check comes before the lookup');
SELECT throws_ok($$SELECT cqrs.apply_retention()$$, '42501',
                 'permission denied for table events', 'apply_retention without DELETE: 42501');
SELECT throws_ok($$SELECT * FROM cqrs.retention_rules$$, '42501', NULL,
                 'a stranger cannot read the rules');
SELECT throws_ok($$INSERT INTO cqrs.retention_rules (category, max_count, set_by) VALUES ('victim', 1, 'x')$$,
                 '42501', NULL, 'nor write them');
SELECT throws_ok($$UPDATE cqrs.retention_rules SET scan_position = 0$$,
                 '42501', NULL, 'nor move their positions');
RESET ROLE;

-- DELETE without SELECT: a DELETE with a WHERE clause needs both
SET LOCAL ROLE regress_cqrs_halfway;
SELECT throws_ok($$SELECT cqrs.set_retention('victim', max_count => 1)$$, '42501',
                 'permission denied for table events', 'DELETE alone may not set a rule');
SELECT throws_ok($$SELECT cqrs.apply_retention()$$, '42501',
                 'permission denied for table events', 'nor apply them');
RESET ROLE;
SELECT is((SELECT array_agg(category ORDER BY category) FROM cqrs.retention_rules),
          ARRAY['order'], 'the refused calls left the rules as they were');
SELECT is((SELECT count(*) FROM cqrs.events), 15::bigint, 'and removed nothing');

-- a tenant whose policies limit what it sees may not set rules either: the
-- worker would run them as the log's owner, over every stream
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON cqrs.events TO regress_cqrs_tenant USING (stream LIKE 'mine-%');
SET LOCAL ROLE regress_cqrs_tenant;
SELECT throws_ok($$SELECT cqrs.set_retention('victim', max_count => 1)$$, '42501', NULL,
                 'set_retention under row-level security: 42501');
SELECT throws_ok($$SELECT cqrs.apply_retention()$$, '42501', NULL,
                 'apply_retention under row-level security: 42501');
SELECT throws_ok($$SELECT cqrs.drop_retention('order')$$, '42501', NULL,
                 'drop_retention under row-level security: 42501');
RESET ROLE;
DROP POLICY tenant_rows ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

-- the deleter: may set, apply and drop; the audit names it
SET LOCAL ROLE regress_cqrs_deleter;
SELECT lives_ok($$SELECT cqrs.set_retention('mine', max_count => 2)$$, 'a DELETE holder sets a rule');
-- a crafted name is a value, never SQL: it matches no stream
SELECT lives_ok($$SELECT cqrs.set_retention($q$x' OR 'a'='a$q$, max_count => 1)$$,
                'a category with quotes is stored as it is');
SELECT throws_ok($$SELECT cqrs.set_retention('victim''); DELETE FROM cqrs.events; --', max_count => 1)$$,
                 '22023', NULL, 'a category with "-" is refused');
-- a hostile search_path: look-alike category() and = in a schema searched first
CREATE FUNCTION public.category(text) RETURNS text LANGUAGE sql AS $$ SELECT 'x'' OR ''a''=''a' $$;
CREATE FUNCTION public.always(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.always);
-- (pgTAP's own functions would resolve that "=" too: keep the results and
-- check them after RESET)
SET LOCAL search_path = public, cqrs, pg_catalog;
CREATE TEMP TABLE removed AS
    SELECT cqrs.apply_retention($q$x' OR 'a'='a$q$) AS crafted, cqrs.apply_retention('mine') AS mine;
RESET search_path;
SELECT is((SELECT crafted FROM removed), 0::bigint,
          'the crafted rule removes nothing, whatever is on the search_path');
SELECT is((SELECT mine FROM removed), 3::bigint, 'the deleter''s rule removes its category''s events');
SELECT lives_ok($$SELECT cqrs.drop_retention($q$x' OR 'a'='a$q$)$$, 'the deleter drops a rule');
RESET ROLE;
SELECT results_eq($$SELECT stream, count(*) FROM cqrs.events GROUP BY stream ORDER BY stream$$,
                  $$VALUES ('mine-1', 2::bigint), ('order-1', 5), ('victim-1', 5)$$,
                  'only the category of the rule lost events');
SELECT is((SELECT performed_by::text FROM cqrs.lifecycle_log WHERE operation = 'retention'),
          'regress_cqrs_deleter', 'the audit row names the role whose rights were checked');

-- pg_monitor reads the rules and the audit trail
SELECT ok(has_table_privilege('pg_monitor', 'cqrs.retention_rules', 'SELECT'),
          'pg_monitor may read the rules');
SELECT ok(NOT has_table_privilege('pg_monitor', 'cqrs.retention_rules', 'UPDATE'),
          'but not change them');

SELECT * FROM finish();
ROLLBACK;
