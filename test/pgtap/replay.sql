-- test/pgtap/replay.sql: replay, reconcile and verify (API.md section 3) --
-- the shape of the SQL surface, privileges, errors and repair idempotence
BEGIN;
SELECT plan(81);

--
-- the functions: signatures, results, parameter names and defaults
--
SELECT has_function('cqrs', 'replay', ARRAY['text']);
SELECT has_function('cqrs', 'reconcile', ARRAY['text', 'boolean']);
SELECT has_function('cqrs', 'verify', ARRAY['text']);
SELECT has_function('cqrs', 'digest_row', ARRAY[]::name[]);
SELECT function_returns('cqrs', 'replay', ARRAY['text'], 'bigint');
SELECT function_returns('cqrs', 'reconcile', ARRAY['text', 'boolean'], 'setof record');
SELECT function_returns('cqrs', 'verify', ARRAY['text'], 'setof record');
SELECT function_returns('cqrs', 'digest_row', ARRAY[]::name[], 'trigger');
SELECT is(pg_get_function_arguments('cqrs.replay(text)'::regprocedure), 'name text',
          'replay(name text)');
SELECT is(pg_get_function_arguments('cqrs.reconcile(text, boolean)'::regprocedure),
          'name text, repair boolean DEFAULT false', 'reconcile(name text, repair boolean DEFAULT false)');
SELECT is(pg_get_function_arguments('cqrs.verify(text)'::regprocedure), 'name text',
          'verify(name text)');
SELECT is(pg_get_function_result('cqrs.reconcile(text, boolean)'::regprocedure),
          'TABLE(table_name regclass, key jsonb, drift text, expected jsonb, actual jsonb)',
          'reconcile returns the columns of the contract, with their types');
SELECT is(pg_get_function_result('cqrs.verify(text)'::regprocedure),
          'TABLE(table_name regclass, rows bigint, expected_rows bigint, drifted_buckets integer, matches boolean)',
          'verify returns table, rows, expected rows, drifted buckets, matches');
SELECT volatility_is('cqrs', f, a, 'volatile')
  FROM (VALUES ('replay'::name, ARRAY['text']), ('reconcile', ARRAY['text', 'boolean']),
               ('verify', ARRAY['text'])) AS v(f, a);
-- a NULL argument is an error, not a silent no-op
SELECT isnt_strict('cqrs', f, a)
  FROM (VALUES ('replay'::name, ARRAY['text']), ('reconcile', ARRAY['text', 'boolean']),
               ('verify', ARRAY['text'])) AS v(f, a);

--
-- the digest catalog
--
SELECT has_table('cqrs', 'projection_digests', 'cqrs.projection_digests exists');
SELECT columns_are('cqrs', 'projection_digests',
    ARRAY['projection', 'table', 'base', 'buckets', 'counts', 'sums'],
    'cqrs.projection_digests has its columns');
SELECT col_type_is('cqrs', 'projection_digests', c, t, c || ' is ' || t)
  FROM (VALUES ('projection', 'text'), ('table', 'regclass'), ('base', 'boolean'),
               ('buckets', 'integer[]'), ('counts', 'bigint[]'), ('sums', 'bigint[]')) AS v(c, t);

--
-- privileges: replay and reconcile run handlers as projection owners and
-- lock out appends, verify reads every owned table: administrators only;
-- the digests are not for PUBLIC either
--
SELECT ok(NOT has_function_privilege('public', f, 'EXECUTE'), f || ' is not executable by PUBLIC')
  FROM unnest(ARRAY['cqrs.replay(text)', 'cqrs.reconcile(text, boolean)', 'cqrs.verify(text)']) f;
SELECT ok(NOT has_table_privilege('public', 'cqrs.projection_digests', p),
          'PUBLIC has no ' || p || ' on cqrs.projection_digests')
  FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p;

--
-- a small projection: a composite key and a NULL
--
CREATE TABLE stock (sku text, site int, qty int, note text, PRIMARY KEY (sku, site));
CREATE FUNCTION stock_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO stock VALUES (e.stream, (e.data->>'site')::int, (e.data->>'qty')::int, e.data->>'note')
    ON CONFLICT (sku, site) DO UPDATE SET qty = stock.qty + excluded.qty
$$;
DO $$
BEGIN
    PERFORM cqrs.append(s, 'Received', jsonb_build_object('site', site, 'qty', q, 'note', n))
       FROM (VALUES ('apple', 1, 5, 'fresh'), ('apple', 2, 3, NULL), ('pear', 1, 7, NULL),
                    ('apple', 1, 2, NULL), ('fig', 3, 1, 'dried')) AS v(s, site, q, n);
    PERFORM cqrs.create_projection('stock', 'stock_handler', 'sync', '{stock}');
END $$;
CREATE TEMP TABLE want AS TABLE stock;

SELECT results_eq($$SELECT table_name::text, "rows", expected_rows, drifted_buckets, matches FROM cqrs.verify('stock')$$,
                  $$VALUES ('stock', 4::bigint, 4::bigint, 0, true)$$,
                  'verify: a fresh projection matches its digest');
SELECT is_empty($$SELECT * FROM cqrs.reconcile('stock')$$, 'reconcile: no drift at first');
SELECT is(cqrs.replay('stock'), 5::bigint, 'replay returns the number of events applied');
SELECT set_eq('TABLE stock', 'TABLE want', 'replay rebuilds the same rows');
SELECT is((SELECT "position" FROM cqrs.projections WHERE name = 'stock'),
          (SELECT max("position") FROM cqrs.events), 'replay sets the checkpoint to the head');

-- each kind of drift
UPDATE stock SET qty = 0 WHERE sku = 'apple' AND site = 1;
UPDATE stock SET note = 'x' WHERE sku = 'apple' AND site = 2;           -- a NULL changed
DELETE FROM stock WHERE sku = 'pear';
INSERT INTO stock VALUES ('kiwi', 9, 1, NULL);
CREATE TEMP TABLE drifted AS TABLE stock;
SELECT results_eq($$SELECT "rows", expected_rows, drifted_buckets > 0, matches FROM cqrs.verify('stock')$$,
                  $$VALUES (4::bigint, 4::bigint, true, false)$$, 'verify sees the drift');
SELECT results_eq(
    $$SELECT table_name::text, key, drift, expected, actual FROM cqrs.reconcile('stock') ORDER BY key::text$$,
    $$VALUES ('stock', '{"sku": "apple", "site": 1}'::jsonb, 'changed',
              '{"sku": "apple", "site": 1, "qty": 7, "note": "fresh"}'::jsonb,
              '{"sku": "apple", "site": 1, "qty": 0, "note": "fresh"}'::jsonb),
             ('stock', '{"sku": "apple", "site": 2}', 'changed',
              '{"sku": "apple", "site": 2, "qty": 3, "note": null}',
              '{"sku": "apple", "site": 2, "qty": 3, "note": "x"}'),
             ('stock', '{"sku": "kiwi", "site": 9}', 'unexpected', NULL,
              '{"sku": "kiwi", "site": 9, "qty": 1, "note": null}'),
             ('stock', '{"sku": "pear", "site": 1}', 'missing',
              '{"sku": "pear", "site": 1, "qty": 7, "note": null}', NULL)$$,
    'reconcile reports each difference by primary key, with both rows');
SELECT set_eq('TABLE stock', 'TABLE drifted', 'reconcile without repair leaves the table alone');
SELECT results_eq($$SELECT matches FROM cqrs.verify('stock')$$, $$VALUES (false)$$,
                  'reconcile without repair leaves the digest alone');

-- repair: exactly those rows, then nothing more to do
SELECT results_eq($$SELECT drift, count(*)::int FROM cqrs.reconcile('stock', repair => true) GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('changed', 2), ('missing', 1), ('unexpected', 1)$$,
                  'repair returns the differences it repairs');
SELECT set_eq('TABLE stock', 'TABLE want', 'repair restores what a replay writes');
SELECT is_empty($$SELECT * FROM cqrs.reconcile('stock', true)$$, 'a second repair finds nothing');
SELECT is_empty($$SELECT * FROM cqrs.reconcile('stock')$$, 'nor does a reconcile without repair');
SELECT set_eq('TABLE stock', 'TABLE want', 'a repair with nothing to do changes nothing');
SELECT results_eq($$SELECT "rows", expected_rows, drifted_buckets, matches FROM cqrs.verify('stock')$$,
                  $$VALUES (4::bigint, 4::bigint, 0, true)$$, 'verify matches after the repair');
-- the repair touched only the drifted rows: the others keep their tuples
CREATE TEMP TABLE tids AS SELECT sku, site, ctid AS tid FROM stock;
UPDATE stock SET qty = 100 WHERE sku = 'fig';
SELECT is((SELECT count(*)::int FROM cqrs.reconcile('stock', true)), 1, 'repair of one changed row');
SELECT is((SELECT count(*)::int FROM stock s JOIN tids t USING (sku, site) WHERE s.ctid <> t.tid), 1,
          'only that row was written');

-- appends after a repair keep the digest in step
DO $$ BEGIN PERFORM cqrs.append('fig', 'Received', jsonb_build_object('site', 3, 'qty', 4)); END $$;
SELECT results_eq($$SELECT "rows", expected_rows, matches FROM cqrs.verify('stock')$$,
                  $$VALUES (4::bigint, 4::bigint, true)$$, 'verify matches after an append');

-- no digest (projections created before 0.3.0): verify says so with NULLs
-- until replay or reconcile(repair) establishes one
DELETE FROM cqrs.projection_digests WHERE projection = 'stock';
SELECT results_eq($$SELECT "rows", expected_rows, drifted_buckets, matches FROM cqrs.verify('stock')$$,
                  $$VALUES (4::bigint, NULL::bigint, NULL::int, NULL::boolean)$$,
                  'verify without a digest: NULLs');
SELECT is_empty($$SELECT * FROM cqrs.reconcile('stock')$$, 'reconcile needs no digest');
SELECT results_eq($$SELECT matches FROM cqrs.verify('stock')$$, $$VALUES (NULL::boolean)$$,
                  'reconcile without repair establishes none');
SELECT is_empty($$SELECT * FROM cqrs.reconcile('stock', true)$$, 'nothing to repair');
SELECT results_eq($$SELECT expected_rows, matches FROM cqrs.verify('stock')$$,
                  $$VALUES (4::bigint, true)$$, 'reconcile(repair) establishes the digest');
DELETE FROM cqrs.projection_digests WHERE projection = 'stock';
SELECT lives_ok($$SELECT cqrs.replay('stock')$$, 'replay without a digest');
SELECT results_eq($$SELECT expected_rows, matches FROM cqrs.verify('stock')$$,
                  $$VALUES (4::bigint, true)$$, 'replay establishes the digest');

--
-- errors: a clear SQLSTATE and nothing written
--
SELECT throws_ok($$SELECT cqrs.replay('nope')$$, '42704', NULL, 'replay: unknown projection: 42704');
SELECT throws_ok($$SELECT * FROM cqrs.reconcile('nope')$$, '42704', NULL, 'reconcile: unknown projection: 42704');
SELECT throws_ok($$SELECT * FROM cqrs.verify('nope')$$, '42704', NULL, 'verify: unknown projection: 42704');
SELECT throws_ok($$SELECT cqrs.replay(NULL)$$, '22004', NULL, 'replay: NULL name: 22004');
SELECT throws_ok($$SELECT * FROM cqrs.reconcile(NULL)$$, '22004', NULL, 'reconcile: NULL name: 22004');
SELECT throws_ok($$SELECT * FROM cqrs.verify(NULL)$$, '22004', NULL, 'verify: NULL name: 22004');
SELECT throws_ok($$SELECT * FROM cqrs.reconcile('stock', NULL)$$, '22004', NULL, 'reconcile: NULL repair: 22004');
SELECT throws_ok($$SELECT cqrs.replay('')$$, '22023', NULL, 'replay: empty name: 22023');
SELECT throws_ok($$SELECT * FROM cqrs.verify('')$$, '22023', NULL, 'verify: empty name: 22023');

CREATE FUNCTION nothing_handler(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
DO $$ BEGIN PERFORM cqrs.create_projection('nothing', 'nothing_handler', 'sync'); END $$;
SELECT throws_ok($$SELECT cqrs.replay('nothing')$$, '55000', NULL, 'replay: no owned tables: 55000');
SELECT throws_ok($$SELECT * FROM cqrs.reconcile('nothing')$$, '55000', NULL, 'reconcile: no owned tables: 55000');
SELECT throws_ok($$SELECT * FROM cqrs.verify('nothing')$$, '55000', NULL, 'verify: no owned tables: 55000');

-- an owned table that lost its primary key; dropping it is refused (0.4.0)
CREATE TABLE nokey (id int PRIMARY KEY);
CREATE FUNCTION nokey_handler(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
DO $$ BEGIN PERFORM cqrs.create_projection('nokey', 'nokey_handler', 'sync', '{nokey}'); END $$;
ALTER TABLE nokey DROP CONSTRAINT nokey_pkey;
SELECT throws_ok($$SELECT * FROM cqrs.verify('nokey')$$, '42P16', NULL, 'verify: no primary key: 42P16');
SELECT throws_ok($$SELECT * FROM cqrs.reconcile('nokey')$$, '42P16', NULL, 'reconcile: no primary key: 42P16');
SELECT throws_ok($$DROP TABLE nokey$$, '2BP01', NULL, 'a read table in use cannot be dropped: 2BP01');
SELECT throws_ok($$DROP FUNCTION nokey_handler(cqrs.events)$$, '2BP01', NULL, 'nor its handler: 2BP01');

-- a failed replay or repair writes nothing
UPDATE stock SET qty = -1 WHERE sku = 'fig';
CREATE TEMP TABLE before_error AS TABLE stock;
CREATE TEMP TABLE digest_before AS SELECT * FROM cqrs.projection_digests WHERE projection = 'stock';
CREATE OR REPLACE FUNCTION stock_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'handler broken at %', e."position" USING ERRCODE = 'P0001';
END $$;
SELECT throws_ok($$SELECT cqrs.replay('stock')$$, 'P0001', NULL, 'replay: a handler error is the error');
SELECT throws_ok($$SELECT * FROM cqrs.reconcile('stock', true)$$, 'P0001', NULL,
                 'reconcile(repair): a handler error is the error');
SELECT set_eq('TABLE stock', 'TABLE before_error', 'the failed calls left the table alone');
SELECT set_eq($$SELECT * FROM cqrs.projection_digests WHERE projection = 'stock'$$,
              'TABLE digest_before', 'and the digest');

--
-- a role without the grants
--
-- (pgTAP's own bookkeeping is not writable by that role: the SQLSTATEs are
-- gathered in a table it may write, and checked afterwards)
CREATE ROLE cqrs_pgtap_nobody;
CREATE TEMP TABLE as_nobody (call text, sqlstate text);
GRANT INSERT ON as_nobody TO cqrs_pgtap_nobody;
SET ROLE cqrs_pgtap_nobody;
DO $$
DECLARE
    call text;
BEGIN
    FOREACH call IN ARRAY ARRAY['SELECT cqrs.replay(''stock'')',
                                'SELECT * FROM cqrs.reconcile(''stock'')',
                                'SELECT * FROM cqrs.verify(''stock'')',
                                'SELECT * FROM cqrs.projection_digests'] LOOP
        BEGIN
            EXECUTE call;
            INSERT INTO as_nobody VALUES (call, 'ok');
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO as_nobody VALUES (call, SQLSTATE);
        END;
    END LOOP;
END $$;
RESET ROLE;
SELECT set_eq('TABLE as_nobody',
              $$VALUES ('SELECT cqrs.replay(''stock'')', '42501'),
                       ('SELECT * FROM cqrs.reconcile(''stock'')', '42501'),
                       ('SELECT * FROM cqrs.verify(''stock'')', '42501'),
                       ('SELECT * FROM cqrs.projection_digests', '42501')$$,
              'a role without grants may not replay, reconcile, verify or read the digests: 42501');

SELECT * FROM finish();
ROLLBACK;
