-- test/pgtap/capture.sql: change capture (API.md section 4) -- the shape of
-- the SQL surface, and its main behaviours
BEGIN;
SELECT plan(51);

--
-- the catalog and the functions
--
SELECT has_table('cqrs', 'captures', 'cqrs.captures exists');
SELECT columns_are('cqrs', 'captures', ARRAY['source', 'category', 'type_prefix', 'captured_at'],
                   'cqrs.captures has the catalog''s columns');
SELECT col_type_is('cqrs', 'captures', 'source', 'regclass', 'source is regclass');
SELECT col_is_pk('cqrs', 'captures', 'source', 'a table is captured once');
SELECT col_is_unique('cqrs', 'captures', 'category', 'a category belongs to one table');
SELECT table_privs_are('cqrs', 'captures', 'public', ARRAY['SELECT'],
                       'everybody may read the catalog, nobody but its owner write it');

SELECT has_function('cqrs', 'capture', ARRAY['regclass', 'text']);
SELECT has_function('cqrs', 'uncapture', ARRAY['regclass']);
SELECT has_function('cqrs', 'capture_trigger', ARRAY[]::name[]);
SELECT function_returns('cqrs', 'capture', ARRAY['regclass', 'text'], 'void');
SELECT function_returns('cqrs', 'uncapture', ARRAY['regclass'], 'void');
SELECT function_returns('cqrs', 'capture_trigger', ARRAY[]::name[], 'trigger');
SELECT is(pg_get_function_arguments('cqrs.capture(regclass, text)'::regprocedure),
          'source regclass, category text DEFAULT NULL::text', 'capture parameters');
SELECT is(pg_get_function_arguments('cqrs.uncapture(regclass)'::regprocedure),
          'source regclass', 'uncapture parameters');
SELECT isnt_strict('cqrs', 'capture', ARRAY['regclass', 'text']);
SELECT isnt_strict('cqrs', 'uncapture', ARRAY['regclass']);
SELECT function_lang_is('cqrs', f, 'c', 'cqrs.' || f || ' is written in C')
  FROM unnest(ARRAY['capture', 'uncapture', 'capture_trigger', 'capture_dropped']::name[]) f;
SELECT ok(has_function_privilege('public', 'cqrs.capture_trigger()', 'EXECUTE'),
          'PUBLIC may execute the trigger function (it checks the catalog and its own trigger)');
SELECT is((SELECT evtevent FROM pg_event_trigger WHERE evtname = 'cqrs_capture_dropped'),
          'sql_drop', 'an sql_drop event trigger forgets dropped tables');

--
-- behaviour
--
CREATE TABLE accounts (tenant text, no int, balance numeric NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant, no));
SELECT lives_ok($$SELECT cqrs.capture(source => 'accounts', category => 'account')$$,
                'capture takes its named arguments');
SELECT has_trigger('accounts', 'cqrs_capture', 'capture puts a row trigger on the table');
SELECT has_trigger('accounts', 'cqrs_capture_truncate', 'and a TRUNCATE guard');
SELECT trigger_is('public', 'accounts', 'cqrs_capture', 'cqrs', 'capture_trigger',
                  'the row trigger executes cqrs.capture_trigger()');
SELECT results_eq($$SELECT category, type_prefix FROM cqrs.captures WHERE source = 'accounts'::regclass$$,
                  $$VALUES ('account', 'accounts')$$, 'the catalog records the capture');

INSERT INTO accounts VALUES ('acme', 1, 10);
SELECT results_eq($$SELECT stream, version, type, data FROM cqrs.events WHERE stream LIKE 'account-%'$$,
                  $$VALUES ('account-acme,1', 1::bigint, 'accounts.inserted',
                            '{"tenant": "acme", "no": 1, "balance": 10}'::jsonb)$$,
                  'an INSERT appends <category>-<key> / <table>.inserted / the row');
SELECT is((SELECT metadata FROM cqrs.events WHERE stream = 'account-acme,1'),
          '{"source": "public.accounts"}'::jsonb, 'the metadata names the table');
UPDATE accounts SET balance = 20;
SELECT results_eq($$SELECT version, type, data->>'balance' FROM cqrs.read_stream('account-acme,1')$$,
                  $$VALUES (1::bigint, 'accounts.inserted', '10'), (2::bigint, 'accounts.updated', '20')$$,
                  'an UPDATE appends <table>.updated with the new row');
UPDATE accounts SET balance = balance;
SELECT is(cqrs.stream_version('account-acme,1'), 2::bigint, 'an UPDATE that changes nothing appends nothing');
UPDATE accounts SET no = 2;
SELECT results_eq($$SELECT stream, type, metadata FROM cqrs.events WHERE stream LIKE 'account-%'
                     AND type <> 'accounts.updated' ORDER BY position OFFSET 1$$,
                  $$VALUES ('account-acme,1', 'accounts.deleted',
                            '{"source": "public.accounts", "moved_to": "account-acme,2"}'::jsonb),
                           ('account-acme,2', 'accounts.inserted',
                            '{"source": "public.accounts", "moved_from": "account-acme,1"}'::jsonb)$$,
                  'a key change ends the old stream and starts the new one');
DELETE FROM accounts;
SELECT results_eq($$SELECT type, data->>'balance' FROM cqrs.read_stream('account-acme,2') OFFSET 1$$,
                  $$VALUES ('accounts.deleted', '20')$$, 'a DELETE appends <table>.deleted with the old row');
SELECT throws_ok('TRUNCATE accounts', '0A000', 'cannot truncate captured table "accounts"',
                 'TRUNCATE is refused');
SELECT throws_ok($$SELECT cqrs.capture('accounts')$$, '42710', 'table "accounts" is already captured',
                 'capturing twice is refused');
SELECT throws_ok($$SELECT cqrs.capture(NULL)$$, '22004', 'source must not be null',
                 'a NULL source is refused');
SELECT throws_ok($$SELECT cqrs.uncapture(NULL)$$, '22004', 'source must not be null',
                 'uncapture refuses a NULL source');
CREATE TABLE keyless (a int);
SELECT throws_ok($$SELECT cqrs.capture('keyless')$$, '42P16', 'table "keyless" has no primary key',
                 'a table without a primary key is refused');
CREATE TABLE other_accounts (id int PRIMARY KEY);
SELECT throws_ok($$SELECT cqrs.capture('other_accounts', 'account')$$, '42710', NULL,
                 'a category already captured from another table is refused');
SELECT throws_ok($$SELECT cqrs.capture('other_accounts', 'other-accounts')$$, '22023', NULL,
                 'a category containing "-" is refused');
SELECT throws_ok($$SELECT cqrs.uncapture('other_accounts')$$, '42704',
                 'table "other_accounts" is not captured', 'uncapture of a table not captured is refused');
SELECT throws_ok($$SELECT cqrs.capture('cqrs.events')$$, '0A000', NULL,
                 'the extension''s own tables are refused');
CREATE VIEW accounts_v AS SELECT * FROM accounts;
SELECT throws_ok($$SELECT cqrs.capture('accounts_v')$$, '42809', NULL, 'a view is refused');

-- rollback: nothing appended
SELECT lives_ok($$SELECT cqrs.capture('other_accounts')$$, 'the default category is the table''s name');
SAVEPOINT before_insert;
INSERT INTO other_accounts VALUES (1);
SELECT is(cqrs.stream_version('other_accounts-1'), 1::bigint, 'the event is there in the transaction');
ROLLBACK TO before_insert;
SELECT is(cqrs.stream_version('other_accounts-1'), 0::bigint, 'and gone with its rollback');

-- uncapture
SELECT lives_ok($$SELECT cqrs.uncapture(source => 'other_accounts')$$, 'uncapture takes its named argument');
SELECT hasnt_trigger('other_accounts', 'cqrs_capture', 'uncapture drops the row trigger');
SELECT hasnt_trigger('other_accounts', 'cqrs_capture_truncate', 'and the TRUNCATE guard');
INSERT INTO other_accounts VALUES (1);
SELECT is(cqrs.stream_version('other_accounts-1'), 0::bigint, 'an uncaptured table appends nothing');

-- DROP TABLE forgets the capture
DROP VIEW accounts_v;
DROP TABLE accounts;
SELECT is_empty($$SELECT FROM cqrs.captures WHERE category = 'account'$$,
                'DROP TABLE removes the table''s capture');

SELECT * FROM finish();
ROLLBACK;
