-- test/pgtap/import.sql: cqrs.import_events, the bulk import aggregate (0.5.0)
BEGIN;
SELECT plan(16);

-- the API: an aggregate over (stream, type, data, metadata, id) returning bigint
SELECT is((SELECT prokind FROM pg_proc
            WHERE oid = 'cqrs.import_events(text, text, jsonb, jsonb, uuid)'::regprocedure),
          'a'::"char", 'cqrs.import_events is an aggregate');
SELECT function_returns('cqrs', 'import_events', ARRAY['text', 'text', 'jsonb', 'jsonb', 'uuid'],
                        'bigint', 'it returns bigint');
SELECT ok(has_function_privilege('public', 'cqrs.import_events(text, text, jsonb, jsonb, uuid)',
                                 'EXECUTE'),
          'EXECUTE stays with PUBLIC: the right it needs is INSERT on cqrs.events');
SELECT is((SELECT aggfinalmodify FROM pg_aggregate
            WHERE aggfnoid = 'cqrs.import_events(text, text, jsonb, jsonb, uuid)'::regprocedure),
          'w'::"char", 'its final function writes: never shared, never a window');

-- numbering, order, idempotency
SELECT lives_ok($$SELECT cqrs.append('acct-1', 'Opened', '{}')$$, 'an existing stream');
CREATE TEMP TABLE staging AS
SELECT g AS n, 'acct-' || (g % 2) AS stream, 'Deposited' AS type,
       jsonb_build_object('n', g) AS data, NULL::jsonb AS metadata,
       ('d0000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid AS id
  FROM generate_series(1, 600) g;
SELECT is((SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n) FROM staging),
          600::bigint, 'import_events returns the number of events appended');
SELECT is(cqrs.stream_version('acct-1'), 301::bigint, 'an existing stream goes on from its head');
SELECT is(cqrs.stream_version('acct-0'), 300::bigint, 'a new stream starts at 1');
SELECT results_eq($$SELECT e.version FROM cqrs.events e JOIN staging s USING (id)
                     WHERE e.stream = 'acct-0' ORDER BY s.n$$,
                  $$SELECT generate_series(1, 300)::bigint$$,
                  'versions follow the order of the rows, without gaps');
SELECT results_eq($$SELECT e.position FROM cqrs.events e JOIN staging s USING (id) ORDER BY s.n$$,
                  $$SELECT e.position FROM cqrs.events e JOIN staging s USING (id) ORDER BY e.position$$,
                  'positions follow the order of the rows');
SELECT is((SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n) FROM staging),
          0::bigint, 'a second run appends nothing: the ids are recorded in their streams');
SELECT is((SELECT count(*) FROM cqrs.events), 601::bigint, 'and writes nothing');

-- errors: those of cqrs.append, and nothing written
SELECT throws_ok($$SELECT cqrs.import_events('acct-9', 'T', NULL, NULL, NULL)$$,
                 '22004', NULL, 'NULL data: 22004');
SELECT throws_ok($$SELECT cqrs.import_events('acct-9', 'T', '{}', NULL,
                                             'd0000000-0000-4000-8000-000000000001')$$,
                 '23505', NULL, 'an id recorded in another stream: 23505');
SELECT throws_ok($$SELECT cqrs.import_events('acct-9', 'T', '{}', '"x"', NULL)$$,
                 '22023', NULL, 'metadata not an object: 22023');
SELECT is(cqrs.stream_version('acct-9'), 0::bigint, 'refused imports write nothing');

SELECT * FROM finish();
ROLLBACK;
