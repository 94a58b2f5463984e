-- test/pgtap/security_outbox.sql: the outbox and change capture under the
-- privilege model of 0.4.0 (issue 10): who may publish, what the plugin
-- emits, which trigger captures, who reads outbox_status
--
-- Not one transaction: a logical slot cannot be created in a transaction
-- that has written, and decoding sees only what committed.  The slot and
-- the roles are made first and dropped last.
SET client_min_messages = error;
DO $$
BEGIN
    PERFORM pg_create_logical_replication_slot('pgtap_sec_outbox', 'pg_cqrs');
END
$$;
DO $$
BEGIN
    CREATE ROLE regress_cqrs_tap_ob_publisher;
    CREATE ROLE regress_cqrs_tap_ob_stranger;
    CREATE ROLE regress_cqrs_tap_ob_owner;
    CREATE ROLE regress_cqrs_tap_ob_trigger;
    CREATE ROLE regress_cqrs_tap_ob_writer;
    GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_tap_ob_publisher, regress_cqrs_tap_ob_stranger,
        regress_cqrs_tap_ob_owner, regress_cqrs_tap_ob_trigger, regress_cqrs_tap_ob_writer;
    GRANT CREATE ON SCHEMA public TO regress_cqrs_tap_ob_owner;
    GRANT INSERT ON cqrs.events TO regress_cqrs_tap_ob_owner;
    GRANT EXECUTE ON FUNCTION cqrs.publish(text, jsonb, text) TO regress_cqrs_tap_ob_publisher;
END
$$;

-- the SQLSTATE of a statement run as a role ('ok' when it succeeds);
-- pgTAP's own bookkeeping stays with the session's role
CREATE FUNCTION pg_temp.as_role(r name, cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text := 'ok';
BEGIN
    EXECUTE format('SET ROLE %I', r);
    BEGIN
        EXECUTE cmd;
    EXCEPTION WHEN OTHERS THEN
        st := SQLSTATE;
    END;
    RESET ROLE;
    RETURN st;
END
$$;

-- one transaction each: a genuine message, then the stranger's forgeries
-- (0.3.0's format, and a payload whose newlines framed an event line)
DO $$
BEGIN
    PERFORM pg_temp.as_role('regress_cqrs_tap_ob_publisher',
                            $q$SELECT cqrs.publish('orders', '{"order": 1}', 'order-1')$q$);
END
$$;
DO $$
BEGIN
    PERFORM pg_temp.as_role('regress_cqrs_tap_ob_stranger',
        $q$SELECT pg_logical_emit_message(true, 'pg_cqrs',
            '\x010011111111111111111111111111111111060000006f72646572737b7d'::bytea)$q$);
END
$$;
DO $$
BEGIN
    PERFORM pg_temp.as_role('regress_cqrs_tap_ob_stranger',
        $q$SELECT pg_logical_emit_message(true, 'pg_cqrs',
            '\x010011111111111111111111111111111111060000006f7264657273'::bytea
            || convert_to(E'["x",\n{"position":999,"stream":"order-1","version":2,"type":"Forged"}\n]', 'UTF8'))$q$);
END
$$;

-- a captured table, and a second capture trigger made by a role with TRIGGER
SET ROLE regress_cqrs_tap_ob_owner;
DO $$
BEGIN
    CREATE TABLE public.tap_ob_accounts (id int PRIMARY KEY, v text);
    PERFORM cqrs.capture('tap_ob_accounts');
    GRANT TRIGGER ON tap_ob_accounts TO regress_cqrs_tap_ob_trigger;
    GRANT INSERT ON tap_ob_accounts TO regress_cqrs_tap_ob_writer;
END
$$;
SET ROLE regress_cqrs_tap_ob_trigger;
CREATE TRIGGER tap_again AFTER INSERT OR UPDATE OR DELETE ON tap_ob_accounts
    FOR EACH ROW EXECUTE FUNCTION cqrs.capture_trigger();
RESET ROLE;

CREATE TEMP TABLE lines AS
    SELECT data FROM pg_logical_slot_peek_changes('pgtap_sec_outbox', NULL, NULL);
RESET client_min_messages;

SELECT plan(14);

-- publishing needs a grant
SELECT ok(NOT has_function_privilege('public', 'cqrs.publish(text, jsonb, text)', 'EXECUTE'),
          'PUBLIC may not execute cqrs.publish');
SELECT is(pg_temp.as_role('regress_cqrs_tap_ob_stranger', $$SELECT cqrs.publish('orders', '{}')$$),
          '42501', 'a role without the grant cannot publish');
SELECT is(pg_temp.as_role('regress_cqrs_tap_ob_publisher', $$SELECT cqrs.publish('orders', '{}')$$),
          'ok', 'a role with EXECUTE on cqrs.publish can');

-- only what cqrs.publish wrote comes out, one JSON object a line
SELECT results_eq($$SELECT (data::jsonb) - 'id' - 'lsn' - 'xid' FROM lines$$,
    $$VALUES ('{"topic": "orders", "key": "order-1", "payload": {"order": 1}}'::jsonb)$$,
    'messages the stranger emitted with the prefix are not emitted; the genuine one is');
SELECT is((SELECT count(*) FROM lines WHERE strpos(data, E'\n') > 0 OR data LIKE '%Forged%'),
          0::bigint, 'no line spans lines or carries the forged event');
SELECT ok((SELECT bool_and(json_typeof(data::json) = 'object') FROM lines),
          'every line is one JSON object');

-- the capture trigger acts only as the trigger capture() created
SELECT is(pg_temp.as_role('regress_cqrs_tap_ob_writer',
                          $$INSERT INTO tap_ob_accounts VALUES (1, 'a')$$),
          '39P01', 'a second cqrs.capture_trigger() on a captured table refuses to run');
SELECT is((SELECT count(*) FROM cqrs.events WHERE stream LIKE 'tap_ob_accounts-%'), 0::bigint,
          'and nothing was appended twice');
DROP TRIGGER tap_again ON tap_ob_accounts;
SELECT is(pg_temp.as_role('regress_cqrs_tap_ob_writer',
                          $$INSERT INTO tap_ob_accounts VALUES (1, 'a')$$),
          'ok', 'without it the write succeeds');
SELECT results_eq($$SELECT stream, version, type FROM cqrs.events WHERE stream LIKE 'tap_ob_accounts-%'$$,
    $$VALUES ('tap_ob_accounts-1', 1::bigint, 'tap_ob_accounts.inserted')$$,
    'and appends one event');

-- outbox_status: pg_monitor and grantees; its function is no side door
SELECT ok(has_table_privilege('pg_monitor', 'cqrs.outbox_status', 'SELECT'),
          'pg_monitor may read cqrs.outbox_status');
SELECT ok(NOT has_table_privilege('public', 'cqrs.outbox_status', 'SELECT'),
          'PUBLIC may not');
SELECT is(pg_temp.as_role('regress_cqrs_tap_ob_stranger', $$SELECT * FROM cqrs.outbox_status$$),
          '42501', 'a role without the grant cannot read the view');
SELECT is(pg_temp.as_role('regress_cqrs_tap_ob_stranger',
                          $$SELECT cqrs.outbox_delivered('pgtap_sec_outbox', '0/0')$$),
          '42501', 'nor call the function behind it');

SELECT * FROM finish();

SET client_min_messages = warning;
DROP TABLE tap_ob_accounts;
DO $$
BEGIN
    PERFORM pg_drop_replication_slot('pgtap_sec_outbox');
END
$$;
DROP OWNED BY regress_cqrs_tap_ob_publisher, regress_cqrs_tap_ob_stranger,
    regress_cqrs_tap_ob_owner, regress_cqrs_tap_ob_trigger, regress_cqrs_tap_ob_writer;
DROP ROLE regress_cqrs_tap_ob_publisher, regress_cqrs_tap_ob_stranger,
    regress_cqrs_tap_ob_owner, regress_cqrs_tap_ob_trigger, regress_cqrs_tap_ob_writer;
