-- test/pgtap/redact.sql: cqrs.redact_stream (0.8.0) against hostile roles:
-- EXECUTE not PUBLIC, the table rights checked first (42501 before any
-- lookup), row-level security (a tenant cannot touch, nor learn of,
-- another's stream; a redaction the policies cut short fails whole), the
-- archived rows of the named stream only, internal SQL immune to
-- look-alike functions and operators planted in public, and the audit
-- trail naming the caller.  Roles vanish with the final rollback.
BEGIN;
SELECT plan(15);

CREATE ROLE regress_cqrs_redactor;
CREATE ROLE regress_cqrs_reader;
CREATE ROLE regress_cqrs_tenant_a;
CREATE ROLE regress_cqrs_tenant_b;
CREATE ROLE regress_cqrs_stranger;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_redactor, regress_cqrs_reader,
    regress_cqrs_tenant_a, regress_cqrs_tenant_b, regress_cqrs_stranger;
GRANT SELECT, INSERT, UPDATE ON cqrs.events
    TO regress_cqrs_redactor, regress_cqrs_tenant_a, regress_cqrs_tenant_b;
GRANT SELECT ON cqrs.events TO regress_cqrs_reader;
GRANT CREATE ON SCHEMA public TO regress_cqrs_stranger;

SELECT ok(NOT has_function_privilege('regress_cqrs_stranger',
          'cqrs.redact_stream(text, jsonb, bigint, bigint)', 'EXECUTE'),
          'redact_stream is not PUBLIC');
SELECT ok(has_function_privilege('regress_cqrs_stranger', 'cqrs.redact(jsonb, jsonb)', 'EXECUTE'),
          'cqrs.redact, a pure function, is');
SET LOCAL ROLE regress_cqrs_stranger;
SELECT throws_ok($$SELECT cqrs.redact_stream('a-1', '[["email"]]')$$, '42501', NULL,
                 'without EXECUTE: 42501');
RESET ROLE;
GRANT EXECUTE ON FUNCTION cqrs.redact_stream(text, jsonb, bigint, bigint)
    TO regress_cqrs_redactor, regress_cqrs_reader, regress_cqrs_tenant_a,
       regress_cqrs_tenant_b, regress_cqrs_stranger;

-- a-1 (two events archived), a-10 and b-1
SELECT cqrs.append_events('a-1', '[{"type": "Registered", "data": {"email": "ann@a"}},
                                   {"type": "Moved", "data": {"email": "ann@b"}},
                                   {"type": "Moved", "data": {"email": "ann@c"}}]');
SELECT cqrs.append_events('a-10', '[{"type": "Registered", "data": {"email": "al@a"}},
                                    {"type": "Moved", "data": {"email": "al@b"}}]');
SELECT cqrs.append_events('b-1', '[{"type": "Registered", "data": {"email": "bo@a"}},
                                   {"type": "Moved", "data": {"email": "bo@b"}}]');
SELECT cqrs.set_retention('a', max_count => 1, archive => true);
SELECT cqrs.apply_retention('a');
SELECT cqrs.drop_retention('a');
CREATE TEMP TABLE before AS
    SELECT stream, version, data FROM cqrs.events
    UNION ALL SELECT stream, version, data FROM cqrs.events_archive;
GRANT SELECT ON before TO PUBLIC;

-- rights first: a reader (no UPDATE) learns nothing, not even existence
SET LOCAL ROLE regress_cqrs_reader;
SELECT throws_ok($$SELECT cqrs.redact_stream('a-1', '[["email"]]')$$, '42501',
                 'permission denied for table events', 'a reader cannot redact');
SELECT throws_ok($$SELECT cqrs.redact_stream('nowhere-1', '[["email"]]')$$, '42501',
                 'permission denied for table events', 'nor probe for streams');
RESET ROLE;

-- a stranger plants look-alikes of what the internal statements use; the
-- redactor calls with public first on its path
SET LOCAL ROLE regress_cqrs_stranger;
CREATE FUNCTION public.starts_with(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT false';
CREATE FUNCTION public.eq_always(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.= (FUNCTION = public.eq_always, LEFTARG = text, RIGHTARG = text);
CREATE FUNCTION public.ne_always(jsonb, jsonb) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.<> (FUNCTION = public.ne_always, LEFTARG = jsonb, RIGHTARG = jsonb);
CREATE FUNCTION public.redact(jsonb, jsonb) RETURNS jsonb
    LANGUAGE sql AS $$SELECT '{"planted": true}'::jsonb$$;
RESET ROLE;
SET LOCAL search_path = public, pg_catalog;
SET LOCAL ROLE regress_cqrs_redactor;
-- (no pgTAP call here: the planted "=" would fool pgTAP's own bookkeeping)
SELECT cqrs.redact_stream('a-1', '[["email"]]') AS redacted \gset
RESET ROLE;
RESET search_path;
DROP OPERATOR public.= (text, text);
DROP OPERATOR public.<> (jsonb, jsonb);
DROP FUNCTION public.eq_always(text, text), public.ne_always(jsonb, jsonb),
              public.starts_with(text, text), public.redact(jsonb, jsonb);
SELECT is(:redacted::bigint, 3::bigint, 'the three events of a-1, two of them archived, were redacted');
SELECT results_eq($$SELECT data FROM (SELECT version, data FROM cqrs.events_archive WHERE stream = 'a-1'
                                      UNION ALL
                                      SELECT version, data FROM cqrs.events WHERE stream = 'a-1'
                                        AND type NOT LIKE '$%') d ORDER BY version$$,
                  $$VALUES ('{"email": {"$erased": true}}'::jsonb), ('{"email": {"$erased": true}}'),
                           ('{"email": {"$erased": true}}')$$,
                  'with the real operators and cqrs.redact, in the log and the archive');
SELECT ok(NOT EXISTS (SELECT stream, version, data FROM before WHERE stream <> 'a-1'
                      EXCEPT ALL
                      (SELECT stream, version, data FROM cqrs.events
                       UNION ALL SELECT stream, version, data FROM cqrs.events_archive)),
          'a-10 and b-1 are untouched, in the log and the archive');
SELECT results_eq($$SELECT operation, target, events, performed_by::text COLLATE "default" FROM cqrs.lifecycle_log
                     WHERE operation = 'redact_stream'$$,
                  $$VALUES ('redact_stream'::text, 'a-1'::text, 3::bigint, 'regress_cqrs_redactor'::text)$$,
                  'audited as the redactor');

-- row-level security: two tenants
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_a ON cqrs.events TO regress_cqrs_tenant_a
    USING (stream LIKE 'a-%') WITH CHECK (stream LIKE 'a-%');
CREATE POLICY tenant_b ON cqrs.events TO regress_cqrs_tenant_b
    USING (stream LIKE 'b-%') WITH CHECK (stream LIKE 'b-%');
SET LOCAL ROLE regress_cqrs_tenant_b;
SELECT throws_ok($$SELECT cqrs.redact_stream('a-10', '[["email"]]')$$, '42704',
                 'stream "a-10" does not exist', 'tenant b cannot redact a stream of tenant a');
RESET ROLE;
SELECT results_eq($$SELECT data FROM cqrs.events_archive WHERE stream = 'a-10'$$,
                  $$VALUES ('{"email": "al@a"}'::jsonb)$$,
                  'nor its archived events');
CREATE POLICY tenant_b_no_update ON cqrs.events AS RESTRICTIVE FOR UPDATE
    TO regress_cqrs_tenant_b USING (version > 1);
SET LOCAL ROLE regress_cqrs_tenant_b;
SELECT throws_ok($$SELECT cqrs.redact_stream('b-1', '[["email"]]')$$, '42501',
                 'permission denied to redact stream "b-1"', 'a redaction the policies cut short fails');
SELECT results_eq($$SELECT data FROM cqrs.read_stream('b-1')$$,
                  $$VALUES ('{"email": "bo@a"}'::jsonb), ('{"email": "bo@b"}')$$,
                  'nothing was redacted, no system event');
RESET ROLE;
SET LOCAL ROLE regress_cqrs_tenant_a;
SELECT is(cqrs.redact_stream('a-10', '[["email"]]'), 2::bigint,
          'tenant a redacts its own stream, archived event included');
RESET ROLE;
SELECT results_eq($$SELECT data FROM cqrs.events_archive WHERE stream = 'a-10'$$,
                  $$VALUES ('{"email": {"$erased": true}}'::jsonb)$$,
                  'its archived event too');

SELECT * FROM finish();
ROLLBACK;
