-- test/pgtap/projection.sql: projections (API.md section 2) -- the shape of
-- the SQL surface, and its main behaviours
BEGIN;
SELECT plan(181);

--
-- the catalog
--
SELECT has_table('cqrs', 'projections', 'cqrs.projections exists');
SELECT columns_are('cqrs', 'projections',
    ARRAY['name', 'handler', 'owner', 'mode', 'tables', 'categories', 'types', 'search_path',
          'state', 'position', 'last_error', 'error_position', 'updated_at', 'digest'],
    'cqrs.projections has the catalog''s columns');
SELECT col_type_is('cqrs', 'projections', c, t, c || ' is ' || t)
  FROM (VALUES ('name', 'text'), ('handler', 'text'), ('owner', 'regrole'), ('mode', 'text'),
               ('tables', 'regclass[]'), ('categories', 'text[]'), ('types', 'text[]'),
               ('search_path', 'text'), ('state', 'text'), ('position', 'bigint'),
               ('last_error', 'text'), ('error_position', 'bigint'),
               ('updated_at', 'timestamp with time zone'), ('digest', 'boolean')) AS v(c, t);
SELECT col_not_null('cqrs', 'projections', c, c || ' is NOT NULL')
  FROM unnest(ARRAY['name', 'handler', 'owner', 'mode', 'tables', 'search_path', 'state',
                    'position', 'updated_at', 'digest']) c;
SELECT col_is_null('cqrs', 'projections', c, c || ' may be NULL')
  FROM unnest(ARRAY['categories', 'types', 'last_error', 'error_position']) c;
SELECT col_is_pk('cqrs', 'projections', 'name', 'a projection is known by its name');
SELECT col_default_is('cqrs', 'projections', 'state', 'running', 'state defaults to running');
SELECT col_default_is('cqrs', 'projections', 'position', 0, 'position defaults to 0');
SELECT col_has_check('cqrs', 'projections', 'mode', 'mode is checked');
SELECT col_has_check('cqrs', 'projections', 'state', 'state is checked');
SELECT throws_ok($$INSERT INTO cqrs.projections (name, handler, owner, mode, search_path)
                   VALUES ('x', 'f(cqrs.events)', current_user::regrole, 'eventual', '')$$,
                 '23514', NULL, 'the catalog refuses a mode that is not sync or deferred');
SELECT throws_ok($$INSERT INTO cqrs.projections (name, handler, owner, mode, search_path, state)
                   VALUES ('x', 'f(cqrs.events)', current_user::regrole, 'sync', '', 'sleeping')$$,
                 '23514', NULL, 'the catalog refuses a state that is not running, paused or failed');

SELECT has_table('cqrs', 'skipped_events', 'cqrs.skipped_events exists');
SELECT columns_are('cqrs', 'skipped_events', ARRAY['projection', 'position', 'error', 'skipped_at'],
                   'cqrs.skipped_events has its columns');
SELECT col_type_is('cqrs', 'skipped_events', 'projection', 'text', 'projection is text');
SELECT col_type_is('cqrs', 'skipped_events', 'position', 'bigint', 'position is bigint');
SELECT col_type_is('cqrs', 'skipped_events', 'error', 'text', 'error is text');
SELECT col_type_is('cqrs', 'skipped_events', 'skipped_at', 'timestamp with time zone', 'skipped_at is timestamptz');
SELECT col_is_pk('cqrs', 'skipped_events', ARRAY['projection', 'position'],
                 'an event is skipped once per projection');
SELECT fk_ok('cqrs', 'skipped_events', 'projection', 'cqrs', 'projections', 'name',
             'skipped events belong to a projection');

--
-- the status view
--
SELECT has_view('cqrs', 'projection_status', 'cqrs.projection_status exists');
SELECT columns_are('cqrs', 'projection_status',
    ARRAY['name', 'mode', 'state', 'position', 'lag_events', 'lag_seconds', 'last_error',
          'error_position', 'updated_at'],
    'cqrs.projection_status has the columns of the contract');
SELECT is((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute
            WHERE attrelid = 'cqrs.projection_status'::regclass AND attnum > 0) COLLATE "C",
          'name text, mode text, state text, position bigint, lag_events bigint, '
          'lag_seconds double precision, last_error text, error_position bigint, '
          'updated_at timestamp with time zone',
          'cqrs.projection_status columns, in order, with their types');

--
-- the functions: signatures, results, parameter names and defaults
--
SELECT has_function('cqrs', 'create_projection', ARRAY['text', 'regproc', 'text', 'regclass[]', 'text[]', 'text[]', 'boolean']);
SELECT has_function('cqrs', 'drop_projection', ARRAY['text']);
SELECT has_function('cqrs', 'pause_projection', ARRAY['text']);
SELECT has_function('cqrs', 'resume_projection', ARRAY['text']);
SELECT has_function('cqrs', 'process_projections', ARRAY['text', 'integer']);
SELECT has_function('cqrs', 'wait_for_projection', ARRAY['text', 'bigint', 'interval']);
SELECT has_function('cqrs', 'skip_event', ARRAY['text', 'bigint']);
SELECT function_returns('cqrs', 'create_projection', ARRAY['text', 'regproc', 'text', 'regclass[]', 'text[]', 'text[]', 'boolean'], 'void');
SELECT function_returns('cqrs', 'drop_projection', ARRAY['text'], 'void');
SELECT function_returns('cqrs', 'pause_projection', ARRAY['text'], 'void');
SELECT function_returns('cqrs', 'resume_projection', ARRAY['text'], 'void');
SELECT function_returns('cqrs', 'process_projections', ARRAY['text', 'integer'], 'bigint');
SELECT function_returns('cqrs', 'wait_for_projection', ARRAY['text', 'bigint', 'interval'], 'boolean');
SELECT function_returns('cqrs', 'skip_event', ARRAY['text', 'bigint'], 'void');
SELECT is(pg_get_function_arguments('cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean)'::regprocedure),
          'name text, handler regproc, mode text DEFAULT ''sync''::text, '
          'tables regclass[] DEFAULT ''{}''::regclass[], categories text[] DEFAULT NULL::text[], '
          'types text[] DEFAULT NULL::text[], digest boolean DEFAULT true',
          'create_projection parameters and defaults');
SELECT is(pg_get_function_arguments(f::regprocedure), a, f || ' parameters')
  FROM (VALUES ('cqrs.drop_projection(text)', 'name text'),
               ('cqrs.pause_projection(text)', 'name text'),
               ('cqrs.resume_projection(text)', 'name text'),
               ('cqrs.skip_event(text, bigint)', 'name text, event_position bigint')) AS v(f, a);
SELECT is(pg_get_function_arguments('cqrs.process_projections(text, integer)'::regprocedure),
          'name text DEFAULT NULL::text, max_events integer DEFAULT NULL::integer',
          'process_projections parameters and defaults');
SELECT is(pg_get_function_arguments('cqrs.wait_for_projection(text, bigint, interval)'::regprocedure),
          'name text, up_to bigint, timeout interval DEFAULT ''00:00:05''::interval',
          'wait_for_projection parameters and defaults (5 seconds)');
SELECT function_lang_is('cqrs', f, 'c', 'cqrs.' || f || ' is written in C')
  FROM unnest(ARRAY['create_projection', 'drop_projection', 'pause_projection', 'resume_projection',
                    'process_projections', 'wait_for_projection', 'skip_event']::name[]) f;
SELECT volatility_is('cqrs', f, a, 'volatile')
  FROM (VALUES ('create_projection'::name, ARRAY['text', 'regproc', 'text', 'regclass[]', 'text[]', 'text[]', 'boolean']),
               ('drop_projection', ARRAY['text']), ('pause_projection', ARRAY['text']),
               ('resume_projection', ARRAY['text']), ('process_projections', ARRAY['text', 'integer']),
               ('wait_for_projection', ARRAY['text', 'bigint', 'interval']),
               ('skip_event', ARRAY['text', 'bigint'])) AS v(f, a);
-- a NULL argument is an error, not a silent no-op (as for appends)
SELECT isnt_strict('cqrs', f, a)
  FROM (VALUES ('create_projection'::name, ARRAY['text', 'regproc', 'text', 'regclass[]', 'text[]', 'text[]', 'boolean']),
               ('drop_projection', ARRAY['text']), ('pause_projection', ARRAY['text']),
               ('resume_projection', ARRAY['text']), ('wait_for_projection', ARRAY['text', 'bigint', 'interval']),
               ('skip_event', ARRAY['text', 'bigint'])) AS v(f, a);

-- administering projections runs code as their owners: not for PUBLIC;
-- waiting for one is (append, take the position, wait, read)
SELECT ok(NOT has_function_privilege('public', f, 'EXECUTE'), f || ' is not executable by PUBLIC')
  FROM unnest(ARRAY['cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean)',
                    'cqrs.drop_projection(text)', 'cqrs.pause_projection(text)',
                    'cqrs.resume_projection(text)', 'cqrs.skip_event(text, bigint)',
                    'cqrs.process_projections(text, integer)']) f;
SELECT ok(has_function_privilege('public', 'cqrs.wait_for_projection(text, bigint, interval)', 'EXECUTE'),
          'cqrs.wait_for_projection is executable by PUBLIC');

-- no trigger on the log applies sync projections: appends do (0.5.0)
SELECT hasnt_trigger('cqrs', 'events', 'events_apply_sync_projections',
                     'no sync projection trigger on the log');
SELECT is((SELECT count(*)::int FROM pg_trigger
            WHERE tgrelid = 'cqrs.events'::regclass AND NOT tgisinternal
              AND tgtype::int & 2 = 0),
          0, 'no AFTER trigger at all on the log: an append without sync projections pays for none');

--
-- behaviour: fixtures
--
CREATE TABLE seen (position bigint PRIMARY KEY, stream text NOT NULL, n int NOT NULL DEFAULT 1);
CREATE FUNCTION seen_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen VALUES (e.position, e.stream) ON CONFLICT (position) DO UPDATE SET n = seen.n + 1
$$;
CREATE TABLE later (position bigint PRIMARY KEY, n int NOT NULL DEFAULT 1);
CREATE FUNCTION later_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ? 'poison' THEN
        RAISE EXCEPTION 'poisoned' USING ERRCODE = 'data_exception';
    END IF;
    INSERT INTO later VALUES (e.position) ON CONFLICT (position) DO UPDATE SET n = later.n + 1;
END
$$;
CREATE TABLE no_pk (a int);
CREATE VIEW a_view AS SELECT 1 AS a;
CREATE FUNCTION wrong_args(e text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION wrong_result(e cqrs.events) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION wrong_setof(e cqrs.events) RETURNS SETOF void LANGUAGE sql AS '';
CREATE PROCEDURE wrong_kind(e cqrs.events) LANGUAGE sql AS '';
CREATE FUNCTION refuse(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ? 'refuse' THEN
        RAISE EXCEPTION 'refused %', e.position USING ERRCODE = 'check_violation';
    END IF;
END
$$;
SELECT lives_ok($$SELECT cqrs.append('order-1', 'OrderPlaced', '{}'),
                         cqrs.append('customer-1', 'CustomerRegistered', '{}')$$, 'history');

--
-- create_projection: validation
--
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'wrong_args')$$, '42P13', NULL,
                 'a handler must take a cqrs.events: 42P13');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'wrong_result')$$, '42P13', NULL,
                 'a handler must return void: 42P13');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'wrong_setof')$$, '42P13', NULL,
                 'a handler must not return a set: 42P13');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'wrong_kind')$$, '42P13', NULL,
                 'a handler must be a function, not a procedure: 42P13');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'no_such_handler')$$, '42883', NULL,
                 'an unknown handler: 42883');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 0)$$, '42883', NULL,
                 'a handler OID that names no function: 42883');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'seen_handler', 'async')$$, '22023',
                 'invalid projection mode "async"', 'a bad mode: 22023');
SELECT throws_ok($$SELECT cqrs.create_projection(NULL, 'seen_handler')$$, '22004', NULL,
                 'a NULL name: 22004');
SELECT throws_ok($$SELECT cqrs.create_projection('', 'seen_handler')$$, '22023', NULL,
                 'an empty name: 22023');
SELECT throws_ok($$SELECT cqrs.create_projection('p', NULL)$$, '22004', NULL,
                 'a NULL handler: 22004');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{no_pk}')$$, '42P16',
                 'read table "no_pk" has no primary key', 'a read table without a primary key: 42P16');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{a_view}')$$, '42809',
                 NULL, 'a read table that is a view: 42809');
SELECT is((SELECT count(*) FROM cqrs.projections), 0::bigint, 'refused projections leave nothing');

--
-- sync
--
SELECT lives_ok($$SELECT cqrs.create_projection('p', 'seen_handler', tables => '{seen}')$$,
                'create a sync projection with the defaults');
SELECT row_eq($$SELECT mode, tables, categories, types, state, owner, handler
                  FROM cqrs.projections WHERE name = 'p'$$,
              ROW('sync'::text, '{seen}'::regclass[], NULL::text[], NULL::text[], 'running'::text,
                  current_user::regrole, 'public.seen_handler(cqrs.events)'::text),
              'the defaults: sync, no filters, running, owned by its creator');
SELECT results_eq($$SELECT stream, n FROM seen ORDER BY position$$,
                  $$VALUES ('order-1', 1), ('customer-1', 1)$$,
                  'a new sync projection catches up on the history');
SELECT throws_ok($$SELECT cqrs.create_projection('p', 'seen_handler')$$, '42710',
                 'projection "p" already exists', 'a duplicate name: 42710');
SELECT lives_ok($$SELECT cqrs.append_events('order-2', '[{"type": "A", "data": {}}, {"type": "B", "data": {}}]')$$,
                'a batch append');
SELECT results_eq($$SELECT stream, n FROM seen WHERE stream = 'order-2' ORDER BY position$$,
                  $$VALUES ('order-2', 1), ('order-2', 1)$$,
                  'the batch is applied in the appending transaction');
SELECT lives_ok($$SELECT cqrs.create_projection('r', 'refuse')$$, 'a projection that refuses poison');
SELECT throws_ok($$SELECT cqrs.append('order-3', 'OrderPlaced', '{"refuse": true}')$$, '23514', NULL,
                 'a sync handler error fails the append with the handler''s SQLSTATE');
SELECT is(cqrs.stream_version('order-3'), 0::bigint, 'the failed append recorded nothing');
SELECT is((SELECT count(*) FROM seen WHERE stream = 'order-3'), 0::bigint,
          'and changed no read table');
CREATE FUNCTION pg_temp.context_of(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE ctx text;
BEGIN
    EXECUTE cmd;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS ctx = PG_EXCEPTION_CONTEXT;
    RETURN ctx;
END $$;
SELECT matches(pg_temp.context_of($$SELECT cqrs.append('order-3', 'OrderPlaced', '{"refuse": 1}')$$),
               'projection "r" applying the event at position [0-9]+',
               'the error context names the projection and the position');
SELECT lives_ok($$SELECT cqrs.drop_projection('r')$$, 'drop a projection');
SELECT lives_ok($$SELECT cqrs.append('order-3', 'OrderPlaced', '{"refuse": 1}')$$,
                'a dropped projection is no longer applied');

-- pause and resume
SELECT lives_ok($$SELECT cqrs.pause_projection('p')$$, 'pause');
SELECT is((SELECT state FROM cqrs.projection_status WHERE name = 'p'), 'paused', 'the status shows paused');
SELECT is((SELECT position FROM cqrs.projections WHERE name = 'p'),
          (SELECT max(position) FROM cqrs.events), 'pausing a sync projection records the head');
SELECT lives_ok($$SELECT cqrs.append('order-4', 'OrderPlaced', '{}'), cqrs.append('order-4', 'OrderPaid', '{}')$$,
                'append while paused');
SELECT is((SELECT count(*) FROM seen WHERE stream = 'order-4'), 0::bigint, 'a paused projection applies nothing');
SELECT is((SELECT lag_events FROM cqrs.projection_status WHERE name = 'p'), 2::bigint, 'lag_events counts them');
SELECT ok((SELECT lag_seconds > 0 FROM cqrs.projection_status WHERE name = 'p'), 'lag_seconds > 0');
SELECT lives_ok($$SELECT cqrs.resume_projection('p')$$, 'resume');
SELECT results_eq($$SELECT count(*), max(n) FROM seen$$,
                  $$SELECT count(*), 1 FROM cqrs.events$$,
                  'resume catches up: every event applied exactly once');
SELECT row_eq($$SELECT state, lag_events, lag_seconds FROM cqrs.projection_status WHERE name = 'p'$$,
              ROW('running'::text, 0::bigint, 0::double precision), 'and the lag is gone');

--
-- deferred, in this transaction: nothing is committed, the worker never
-- sees these projections
--
SELECT lives_ok($$SELECT cqrs.create_projection('d', 'later_handler', 'deferred', '{later}')$$,
                'create a deferred projection');
SELECT is((SELECT count(*) FROM later), 0::bigint, 'create_projection does not apply a deferred projection');
SELECT is(cqrs.process_projections('d', 2), 2::bigint, 'process_projections honours max_events');
SELECT is(cqrs.process_projections('d'), (SELECT count(*) - 2 FROM cqrs.events),
          'process_projections applies the rest');
SELECT is(cqrs.process_projections(), 0::bigint, 'and then has nothing to do');
SELECT is(cqrs.process_projections('p'), 0::bigint, 'process_projections leaves sync projections alone');
SELECT results_eq($$SELECT count(*), max(n) FROM later$$, $$SELECT count(*), 1 FROM cqrs.events$$,
                  'each event once');
SELECT ok(cqrs.wait_for_projection('d', (SELECT max(position) FROM cqrs.events), '0'),
          'wait_for_projection: true once applied');
SELECT lives_ok($$SELECT cqrs.pause_projection('d')$$, 'pause the deferred projection');
SELECT lives_ok($$SELECT cqrs.append('order-5', 'OrderPlaced', '{}')$$, 'append');
SELECT is(cqrs.process_projections('d'), 0::bigint, 'a paused projection is left alone');
SELECT ok(NOT cqrs.wait_for_projection('d', (SELECT max(position) FROM cqrs.events), '0'),
          'wait_for_projection: false on timeout 0');
SELECT ok(NOT cqrs.wait_for_projection('d', (SELECT max(position) FROM cqrs.events), '50 ms'),
          'wait_for_projection: false on timeout 50ms');
SELECT lives_ok($$SELECT cqrs.resume_projection('d')$$, 'resume it');

-- a failure
SELECT lives_ok($$SELECT cqrs.append('order-5', 'ItemAdded', '{"poison": 1}'),
                         cqrs.append('order-5', 'OrderPaid', '{}')$$, 'append a poisoned event and one after it');
SELECT is(cqrs.process_projections('d'), 1::bigint, 'the event before the poison is applied');
SELECT row_eq($$SELECT state, position, error_position, last_error FROM cqrs.projection_status WHERE name = 'd'$$,
              ROW('failed'::text,
                  (SELECT position - 1 FROM cqrs.events WHERE stream = 'order-5' AND version = 2),
                  (SELECT position FROM cqrs.events WHERE stream = 'order-5' AND version = 2),
                  'poisoned'::text),
              'failed, just before the poison, with the position and the error');
SELECT throws_ok($$SELECT cqrs.skip_event('d', 1)$$, '22023', NULL,
                 'skip_event of an event the projection did not fail at: 22023');
SELECT throws_ok($$SELECT cqrs.skip_event('p', 1)$$, '55000', NULL, 'skip_event on a sync projection: 55000');
SELECT throws_ok($$SELECT cqrs.skip_event('nope', 1)$$, '42704', NULL, 'skip_event on an unknown projection: 42704');
SELECT lives_ok($$SELECT cqrs.resume_projection('d')$$, 'resume the failed projection');
SELECT is(cqrs.process_projections('d'), 0::bigint, 'resume retries...');
SELECT is((SELECT state FROM cqrs.projections WHERE name = 'd'), 'failed', '...and fails again');
SELECT lives_ok(format('SELECT cqrs.skip_event(%L, %s)', 'd',
                       (SELECT position FROM cqrs.events WHERE stream = 'order-5' AND version = 2)),
                'skip the poisoned event');
SELECT results_eq($$SELECT projection, position, error FROM cqrs.skipped_events$$,
                  $$SELECT 'd'::text, position, 'poisoned'::text FROM cqrs.events
                     WHERE stream = 'order-5' AND version = 2$$,
                  'the skipped event is recorded with its error');
SELECT throws_ok(format('SELECT cqrs.skip_event(%L, %s)', 'd',
                        (SELECT position FROM cqrs.events WHERE stream = 'order-5' AND version = 2)),
                 '55000', NULL, 'skip_event on a projection that has not failed: 55000');
SELECT is(cqrs.process_projections('d'), 1::bigint, 'after the skip, the projection moves on');
SELECT row_eq($$SELECT state, position, lag_events FROM cqrs.projection_status WHERE name = 'd'$$,
              ROW('running'::text, (SELECT max(position) FROM cqrs.events), 0::bigint),
              'running at the head again');
SELECT is((SELECT count(*) FROM later WHERE position =
              (SELECT position FROM cqrs.events WHERE stream = 'order-5' AND version = 2)),
          0::bigint, 'the skipped event was not applied');

-- filters
CREATE TABLE only_paid (position bigint PRIMARY KEY);
CREATE FUNCTION only_paid_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type <> 'OrderPaid' OR cqrs.category(e.stream) <> 'order' THEN
        RAISE EXCEPTION 'only_paid got % of %', e.type, e.stream;
    END IF;
    INSERT INTO only_paid VALUES (e.position);
END
$$;
SELECT lives_ok($$SELECT cqrs.create_projection('paid_sync', 'only_paid_handler',
                                                categories => '{order}', types => '{OrderPaid}')$$,
                'a sync projection with filters catches up without calling its handler on the rest');
SELECT set_eq($$SELECT position FROM only_paid$$,
              $$SELECT position FROM cqrs.events WHERE type = 'OrderPaid' AND stream LIKE 'order-%'$$,
              'exactly the filtered events');
SELECT lives_ok($$SELECT cqrs.drop_projection('paid_sync')$$, 'drop it');
TRUNCATE only_paid;
SELECT lives_ok($$SELECT cqrs.create_projection('paid_later', 'only_paid_handler', 'deferred',
                                                categories => '{order}', types => '{OrderPaid}')$$,
                'the same deferred');
SELECT is(cqrs.process_projections('paid_later'),
          (SELECT count(*) FROM cqrs.events WHERE type = 'OrderPaid' AND stream LIKE 'order-%'),
          'process_projections applies only the filtered events');
SELECT is((SELECT lag_events FROM cqrs.projection_status WHERE name = 'paid_later'), 0::bigint,
          'and its checkpoint moved past the others');

-- unknown projections
SELECT throws_ok($$SELECT cqrs.drop_projection('nope')$$, '42704', 'projection "nope" does not exist',
                 'drop_projection: 42704');
SELECT throws_ok($$SELECT cqrs.pause_projection('nope')$$, '42704', NULL, 'pause_projection: 42704');
SELECT throws_ok($$SELECT cqrs.resume_projection('nope')$$, '42704', NULL, 'resume_projection: 42704');
SELECT throws_ok($$SELECT cqrs.process_projections('nope')$$, '42704', NULL, 'process_projections: 42704');
SELECT throws_ok($$SELECT cqrs.wait_for_projection('nope', 1, '0')$$, '42704', NULL, 'wait_for_projection: 42704');
SELECT throws_ok($$SELECT cqrs.process_projections('d', -1)$$, '22023', NULL, 'negative max_events: 22023');
SELECT throws_ok($$SELECT cqrs.drop_projection(NULL)$$, '22004', NULL, 'drop_projection(NULL): 22004');

-- drop leaves the read tables
SELECT lives_ok($$SELECT cqrs.drop_projection('d')$$, 'drop the deferred projection');
SELECT ok((SELECT count(*) FROM later) > 0, 'its read table is left in place');
SELECT is((SELECT count(*) FROM cqrs.skipped_events), 0::bigint, 'its skipped events go with it');
SELECT is((SELECT count(*) FROM cqrs.projection_status), (SELECT count(*) FROM cqrs.projections),
          'one status row per projection');

SELECT * FROM finish();
ROLLBACK;
