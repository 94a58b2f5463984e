-- pgTAP: the privilege model of projections (0.4.0, issue 10): who may
-- administer, follow and drop what, checked as real roles.
BEGIN;
SELECT plan(27);

-- as_role(role, sql): run sql as role; 'ok' or its SQLSTATE.  pgTAP's own
-- bookkeeping stays with the superuser running the test.
CREATE FUNCTION pg_temp.as_role(r text, cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text := 'ok';
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    BEGIN
        EXECUTE cmd;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
    END;
    RESET ROLE;
    RETURN st;
END
$$;

CREATE ROLE cqrs_tap_owner;
CREATE ROLE cqrs_tap_other;
CREATE ROLE cqrs_tap_monitor IN ROLE pg_monitor;
GRANT USAGE ON SCHEMA cqrs TO cqrs_tap_owner, cqrs_tap_other, cqrs_tap_monitor;
GRANT INSERT ON cqrs.events TO cqrs_tap_owner, cqrs_tap_other;
GRANT EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean),
    cqrs.drop_projection(text), cqrs.pause_projection(text), cqrs.resume_projection(text),
    cqrs.skip_event(text, bigint), cqrs.process_projections(text, integer),
    cqrs.replay(text), cqrs.reconcile(text, boolean), cqrs.verify(text)
    TO cqrs_tap_owner, cqrs_tap_other;
CREATE SCHEMA tap_owned AUTHORIZATION cqrs_tap_owner;
SET LOCAL ROLE cqrs_tap_owner;
CREATE TABLE tap_owned.rm (id bigint PRIMARY KEY);
CREATE FUNCTION tap_owned.h(e cqrs.events) RETURNS void LANGUAGE sql AS
    'INSERT INTO tap_owned.rm VALUES (e.position) ON CONFLICT DO NOTHING';
SELECT cqrs.create_projection('tap_p', 'tap_owned.h', 'deferred', '{tap_owned.rm}');
RESET ROLE;

-- the surface
SELECT has_function('cqrs', 'projection_owner', ARRAY['text'], 'cqrs.projection_owner(text) exists');
SELECT is(cqrs.projection_owner('tap_p')::text, 'cqrs_tap_owner', 'the owner is the handler''s owner');
SELECT is((SELECT evtevent::text FROM pg_event_trigger WHERE evtname = 'cqrs_projection_dropped'),
          'sql_drop', 'an sql_drop event trigger guards handlers and read tables');
SELECT is((SELECT context FROM pg_settings WHERE name = 'cqrs.handler_timeout'), 'superuser',
          'cqrs.handler_timeout is for superusers to set');
SELECT is(current_setting('cqrs.handler_timeout'), '10s', 'and defaults to 10 s');
SELECT ok(has_table_privilege('public', 'cqrs.projection_status', 'SELECT'),
          'the status view is readable by everyone (rows are filtered)');
SELECT ok(NOT has_table_privilege('public', 'cqrs.projections', 'SELECT'),
          'the catalog is not');
SELECT ok(NOT bool_or(has_function_privilege('public', f, 'EXECUTE')),
          'no lifecycle function is granted to PUBLIC')
  FROM unnest(ARRAY['cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean)',
                    'cqrs.drop_projection(text)', 'cqrs.pause_projection(text)',
                    'cqrs.resume_projection(text)', 'cqrs.skip_event(text, bigint)',
                    'cqrs.process_projections(text, integer)', 'cqrs.replay(text)',
                    'cqrs.reconcile(text, boolean)', 'cqrs.verify(text)']) f;

-- another role with the same grants administers nothing of the owner's
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.drop_projection('tap_p')$$), '42501', 'drop: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.pause_projection('tap_p')$$), '42501', 'pause: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.resume_projection('tap_p')$$), '42501', 'resume: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.skip_event('tap_p', 1)$$), '42501', 'skip_event: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.process_projections('tap_p')$$), '42501', 'process_projections(name): 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.replay('tap_p')$$), '42501', 'replay: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT * FROM cqrs.reconcile('tap_p')$$), '42501', 'reconcile: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT * FROM cqrs.verify('tap_p')$$), '42501', 'verify: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.projection_position('tap_p')$$), '42501', 'projection_position: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other', $$SELECT cqrs.wait_for_projection('tap_p', 0, '0')$$), '42501', 'wait_for_projection: 42501');
SELECT is(pg_temp.as_role('cqrs_tap_other',
          $$SELECT cqrs.create_projection('tap_q', 'tap_owned.h', 'deferred')$$), '42501',
          'create_projection with another role''s handler: 42501');
-- the owner does
SELECT is(pg_temp.as_role('cqrs_tap_owner', $$SELECT cqrs.pause_projection('tap_p')$$), 'ok', 'the owner pauses');
SELECT is(pg_temp.as_role('cqrs_tap_owner', $$SELECT cqrs.resume_projection('tap_p')$$), 'ok', 'and resumes');
SELECT is(pg_temp.as_role('cqrs_tap_owner', $$SELECT * FROM cqrs.verify('tap_p')$$), 'ok', 'and verifies');

-- what a projection uses stays
SELECT throws_ok($$DROP FUNCTION tap_owned.h(cqrs.events)$$, '2BP01', NULL, 'its handler cannot be dropped: 2BP01');
SELECT throws_ok($$DROP TABLE tap_owned.rm$$, '2BP01', NULL, 'nor its read table: 2BP01');
SELECT throws_ok($$DROP ROLE cqrs_tap_owner$$, '2BP01', NULL, 'nor its owner: 2BP01');

-- status: the operator sees the row, not the error; a stranger sees nothing
SELECT is(pg_temp.as_role('cqrs_tap_monitor', $$SELECT cqrs.projection_position('tap_p')$$), 'ok',
          'pg_monitor follows every projection');
SELECT is((SELECT count(*) FROM cqrs.projection_status WHERE name = 'tap_p'), 1::bigint,
          'the superuser sees the status row');

SELECT * FROM finish();
ROLLBACK;
