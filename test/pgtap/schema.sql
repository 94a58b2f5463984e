-- test/pgtap/schema.sql: the shape of the event log's SQL surface (API.md section 1)
BEGIN;
SELECT plan(78);

-- the schema and the table
SELECT has_schema('cqrs');
SELECT has_table('cqrs', 'events', 'cqrs.events exists');
SELECT has_sequence('cqrs', 'events_position_seq', 'cqrs.events_position_seq exists');
SELECT columns_are('cqrs', 'events',
    ARRAY['position', 'stream', 'version', 'id', 'type', 'data', 'metadata', 'recorded_at'],
    'cqrs.events has exactly the columns of the contract');
SELECT col_type_is('cqrs', 'events', 'position', 'bigint', 'position is bigint');
SELECT col_type_is('cqrs', 'events', 'stream', 'text', 'stream is text');
SELECT col_type_is('cqrs', 'events', 'version', 'bigint', 'version is bigint');
SELECT col_type_is('cqrs', 'events', 'id', 'uuid', 'id is uuid');
SELECT col_type_is('cqrs', 'events', 'type', 'text', 'type is text');
SELECT col_type_is('cqrs', 'events', 'data', 'jsonb', 'data is jsonb');
SELECT col_type_is('cqrs', 'events', 'metadata', 'jsonb', 'metadata is jsonb');
SELECT col_type_is('cqrs', 'events', 'recorded_at', 'timestamp with time zone', 'recorded_at is timestamptz');
SELECT col_not_null('cqrs', 'events', c, c || ' is NOT NULL')
  FROM unnest(ARRAY['position', 'stream', 'version', 'id', 'type', 'data', 'metadata', 'recorded_at']) c;
SELECT col_is_pk('cqrs', 'events', 'position', 'position is the primary key');
SELECT col_is_unique('cqrs', 'events', ARRAY['stream', 'version'], 'a stream has each version once');
SELECT col_is_unique('cqrs', 'events', 'id', 'an id is recorded once');
SELECT col_default_is('cqrs', 'events', 'metadata', '{}'::jsonb, 'metadata defaults to {}');
SELECT col_default_is('cqrs', 'events', 'recorded_at', 'now()', 'recorded_at defaults to now()');
SELECT is((SELECT pg_get_serial_sequence('cqrs.events', 'position')),
          'cqrs.events_position_seq', 'position is fed by cqrs.events_position_seq');
SELECT is((SELECT seqcache FROM pg_sequence WHERE seqrelid = 'cqrs.events_position_seq'::regclass),
          1::bigint, 'the position sequence does not cache per backend');

-- the guard
SELECT has_trigger('cqrs', 'events', 'events_forbid_update_delete', 'UPDATE/DELETE guard exists');
SELECT has_trigger('cqrs', 'events', 'events_forbid_truncate', 'TRUNCATE guard exists');
SELECT trigger_is('cqrs', 'events', 'events_forbid_update_delete', 'cqrs', 'forbid_change');
SELECT trigger_is('cqrs', 'events', 'events_forbid_truncate', 'cqrs', 'forbid_change');
SELECT results_eq(
    $$SELECT tgenabled::text FROM pg_trigger
       WHERE tgrelid = 'cqrs.events'::regclass AND tgfoid = 'cqrs.forbid_change'::regproc$$,
    $$VALUES ('A'), ('A')$$,
    'the guard triggers are ENABLE ALWAYS');

-- pg_dump keeps the log and its sequence
SELECT set_eq(
    $$SELECT unnest(extconfig)::regclass::text FROM pg_extension WHERE extname = 'pg_cqrs'$$,
    ARRAY['cqrs.events', 'cqrs.events_position_seq', 'cqrs.projections', 'cqrs.skipped_events',
          'cqrs.captures', 'cqrs.projection_digests',
          'cqrs.lifecycle_log', 'cqrs.lifecycle_log_id_seq',
          'cqrs.log_security', 'cqrs.log_security_id_seq', 'cqrs.retention_rules'],
    'extconfig holds the log, its sequence, the projection, digest and capture catalogs, the audit trail, the log''s row-level security and the retention rules');
SELECT is((SELECT extrelocatable FROM pg_extension WHERE extname = 'pg_cqrs'), false,
          'the extension is not relocatable');

-- the functions: signatures, results, parameter names and defaults
SELECT has_function('cqrs', 'append', ARRAY['text', 'text', 'jsonb', 'jsonb', 'bigint', 'uuid']);
SELECT has_function('cqrs', 'append_events', ARRAY['text', 'jsonb', 'bigint']);
SELECT has_function('cqrs', 'stream_version', ARRAY['text']);
SELECT has_function('cqrs', 'read_stream', ARRAY['text', 'bigint', 'integer']);
SELECT has_function('cqrs', 'read_all', ARRAY['bigint', 'integer', 'text[]', 'text[]']);
SELECT has_function('cqrs', 'safe_position', ARRAY[]::name[]);
SELECT has_function('cqrs', 'category', ARRAY['text']);

SELECT is(pg_get_function_result('cqrs.append(text, text, jsonb, jsonb, bigint, uuid)'::regprocedure),
          'TABLE(version bigint, "position" bigint)', 'append returns TABLE(version, position)');
SELECT is(pg_get_function_result('cqrs.append_events(text, jsonb, bigint)'::regprocedure),
          'TABLE(version bigint, "position" bigint)', 'append_events returns TABLE(version, position)');
SELECT function_returns('cqrs', 'stream_version', ARRAY['text'], 'bigint');
SELECT function_returns('cqrs', 'read_stream', ARRAY['text', 'bigint', 'integer'], 'setof cqrs.events');
SELECT function_returns('cqrs', 'read_all', ARRAY['bigint', 'integer', 'text[]', 'text[]'], 'setof cqrs.events');
SELECT function_returns('cqrs', 'safe_position', ARRAY[]::name[], 'bigint');
SELECT function_returns('cqrs', 'category', ARRAY['text'], 'text');

SELECT is(pg_get_function_arguments('cqrs.append(text, text, jsonb, jsonb, bigint, uuid)'::regprocedure),
          'stream text, type text, data jsonb, metadata jsonb DEFAULT NULL::jsonb, '
          'expected_version bigint DEFAULT NULL::bigint, id uuid DEFAULT NULL::uuid',
          'append parameters and defaults');
SELECT is(pg_get_function_arguments('cqrs.append_events(text, jsonb, bigint)'::regprocedure),
          'stream text, events jsonb, expected_version bigint DEFAULT NULL::bigint',
          'append_events parameters and defaults');
SELECT is(pg_get_function_arguments('cqrs.stream_version(text)'::regprocedure),
          'stream text', 'stream_version parameters');
SELECT is(pg_get_function_arguments('cqrs.read_stream(text, bigint, integer)'::regprocedure),
          'stream text, from_version bigint DEFAULT 1, max_count integer DEFAULT NULL::integer',
          'read_stream parameters and defaults');
SELECT is(pg_get_function_arguments('cqrs.read_all(bigint, integer, text[], text[])'::regprocedure),
          'after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, '
          'categories text[] DEFAULT NULL::text[], types text[] DEFAULT NULL::text[]',
          'read_all parameters and defaults');
SELECT is(pg_get_function_arguments('cqrs.category(text)'::regprocedure),
          'stream text', 'category parameters');

-- appends are not STRICT (a NULL argument is an error, not a silent no-op)
SELECT isnt_strict('cqrs', 'append', ARRAY['text', 'text', 'jsonb', 'jsonb', 'bigint', 'uuid']);
SELECT isnt_strict('cqrs', 'append_events', ARRAY['text', 'jsonb', 'bigint']);
SELECT volatility_is('cqrs', 'append', ARRAY['text', 'text', 'jsonb', 'jsonb', 'bigint', 'uuid'], 'volatile');
SELECT volatility_is('cqrs', 'append_events', ARRAY['text', 'jsonb', 'bigint'], 'volatile');
SELECT volatility_is('cqrs', 'read_all', ARRAY['bigint', 'integer', 'text[]', 'text[]'], 'volatile');
SELECT volatility_is('cqrs', 'safe_position', ARRAY[]::name[], 'volatile');
SELECT volatility_is('cqrs', 'category', ARRAY['text'], 'immutable');
SELECT is_strict('cqrs', 'category', ARRAY['text']);
SELECT function_lang_is('cqrs', f, 'c', 'cqrs.' || f || ' is written in C')
  FROM unnest(ARRAY['append', 'append_events', 'stream_version', 'read_stream', 'read_all',
                    'safe_position', 'category']::name[]) f;

-- named arguments as the contract spells them
SELECT lives_ok($$SELECT * FROM cqrs.append(stream => 'shape-1', type => 'T', data => '{}',
                                           metadata => '{}', expected_version => 0,
                                           id => gen_random_uuid())$$,
                'append takes its named arguments');
SELECT lives_ok($$SELECT * FROM cqrs.append_events(stream => 'shape-1',
                                                  events => '[{"type": "T", "data": {}}]',
                                                  expected_version => 1)$$,
                'append_events takes its named arguments');
SELECT lives_ok($$SELECT * FROM cqrs.read_stream(stream => 'shape-1', from_version => 1, max_count => 10)$$,
                'read_stream takes its named arguments');
SELECT lives_ok($$SELECT * FROM cqrs.read_all(after_position => 0, max_count => 10,
                                             categories => '{shape}', types => '{T}')$$,
                'read_all takes its named arguments');
SELECT lives_ok($$SELECT cqrs.stream_version(stream => 'shape-1'), cqrs.category(stream => 'shape-1')$$,
                'stream_version and category take their named arguments');
-- position is usable unquoted as a result column
SELECT is((SELECT version FROM cqrs.append('shape-1', 'T', '{}') WHERE position > 0), 3::bigint,
          'SELECT ... position works unquoted on append''s result');

-- the setting
SELECT is(current_setting('cqrs.max_event_size'), '16MB', 'cqrs.max_event_size defaults to 16MB');
SELECT is((SELECT context FROM pg_settings WHERE name = 'cqrs.max_event_size'), 'superuser',
          'cqrs.max_event_size is superuser-settable');
SELECT is((SELECT unit FROM pg_settings WHERE name = 'cqrs.max_event_size'), 'B',
          'cqrs.max_event_size is in bytes');

SELECT * FROM finish();
ROLLBACK;
