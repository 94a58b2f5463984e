--
-- security_outbox.sql: the outbox and change capture under the privilege
-- model of 0.4.0 (issue 10, findings 5, 6 and 9, and the look-alike log)
-- -- each block fails on 0.3.0
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP SCHEMA IF EXISTS cqrs CASCADE;
DROP TABLE IF EXISTS public.ob_accounts, public.ob_bodies;
DROP ROLE IF EXISTS regress_cqrs_ob_publisher, regress_cqrs_ob_stranger,
    regress_cqrs_ob_tabowner, regress_cqrs_ob_trigger, regress_cqrs_ob_writer,
    regress_cqrs_ob_operator, regress_cqrs_ob_viewer;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- The roles: a publisher (EXECUTE on cqrs.publish), a stranger with no
-- right but CREATE on public, the owner of a captured table, a role with
-- TRIGGER on it, a role that writes it, an operator (pg_monitor) and a
-- role given SELECT on the status view alone.
CREATE ROLE regress_cqrs_ob_publisher;
CREATE ROLE regress_cqrs_ob_stranger;
CREATE ROLE regress_cqrs_ob_tabowner;
CREATE ROLE regress_cqrs_ob_trigger;
CREATE ROLE regress_cqrs_ob_writer;
CREATE ROLE regress_cqrs_ob_operator IN ROLE pg_monitor;
CREATE ROLE regress_cqrs_ob_viewer;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_ob_publisher, regress_cqrs_ob_stranger,
    regress_cqrs_ob_tabowner, regress_cqrs_ob_trigger, regress_cqrs_ob_writer,
    regress_cqrs_ob_viewer;
GRANT CREATE ON SCHEMA public TO regress_cqrs_ob_stranger, regress_cqrs_ob_tabowner;

-- every line of the slot, with what changes from run to run masked
CREATE FUNCTION ob_lines() RETURNS SETOF text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(data,
           '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"L"'),
           '"xid":[0-9]+', '"xid":X'),
           '"id":"[0-9a-f-]{36}"', '"id":"U"')
      FROM pg_logical_slot_peek_changes('ob_outbox', NULL, NULL)
$$;
-- every line is one JSON object, on one line
CREATE FUNCTION ob_well_formed() RETURNS TABLE (lines bigint, one_line bigint, objects bigint)
LANGUAGE sql AS $$
    SELECT count(*), count(*) FILTER (WHERE strpos(data, E'\n') = 0 AND strpos(data, E'\r') = 0),
           count(*) FILTER (WHERE json_typeof(data::json) = 'object')
      FROM pg_logical_slot_peek_changes('ob_outbox', NULL, NULL)
$$;
CREATE FUNCTION ob_consume() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM pg_logical_slot_get_changes('ob_outbox', NULL, NULL)
$$;
SELECT 'init' FROM pg_create_logical_replication_slot('ob_outbox', 'pg_cqrs');
-- test_decoding shows the raw bodies of messages, as anyone who may read
-- WAL would see them
SELECT 'init' FROM pg_create_logical_replication_slot('ob_wal', 'test_decoding');

--
-- 6a. Publishing needs a grant: EXECUTE on cqrs.publish is not PUBLIC
--
SELECT has_function_privilege('public', 'cqrs.publish(text, jsonb, text)', 'EXECUTE') AS public_may_publish;
SET ROLE regress_cqrs_ob_stranger;
SELECT try($$SELECT cqrs.publish('orders', '{"forged": true}')$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION cqrs.publish(text, jsonb, text) TO regress_cqrs_ob_publisher;
SET ROLE regress_cqrs_ob_publisher;
SELECT cqrs.publish('orders', '{"order": 1, "note": "line\nbreak {\"position\":1}"}', 'order-1') IS NOT NULL AS published;
RESET ROLE;
-- one line, the newline in the payload escaped
SELECT * FROM ob_lines();
SELECT * FROM ob_well_formed();

--
-- 6b. Nothing a role without the publish right does makes the plugin emit
-- a line: pg_logical_emit_message() with the prefix, whatever the body
--
-- the body of the genuine message above, as WAL shows it, kept where the
-- stranger can read it
CREATE TABLE ob_bodies AS
SELECT substr(data, position('content:'::bytea IN data) + 8) AS body
  FROM pg_logical_slot_peek_binary_changes('ob_wal', NULL, NULL)
 WHERE data LIKE 'message: transactional: 1 prefix: pg_cqrs,%'::bytea;
GRANT SELECT ON ob_bodies TO regress_cqrs_ob_stranger, regress_cqrs_ob_publisher;
SELECT count(*) AS genuine_bodies FROM ob_bodies;
SELECT ob_consume();
\set VERBOSITY terse
SET ROLE regress_cqrs_ob_stranger;
-- (1) a body in 0.3.0's format, which 0.3.0 emitted as a message
SELECT pg_logical_emit_message(true, 'pg_cqrs',
    '\x010011111111111111111111111111111111060000006f72646572737b7d'::bytea) IS NOT NULL AS emitted;
-- (2) a body in the current format with a made-up authentication code
SELECT pg_logical_emit_message(true, 'pg_cqrs',
    '\x020011111111111111111111111111111111060000006f72646572737b7d'::bytea
    || '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) IS NOT NULL AS emitted;
-- (3) the genuine body, replayed in another transaction
SELECT pg_logical_emit_message(true, 'pg_cqrs', body) IS NOT NULL AS emitted FROM ob_bodies;
RESET ROLE;
-- nothing is emitted; each transaction gets one WARNING, however many
-- messages it forged
SELECT * FROM ob_lines();
SELECT ob_consume();
-- (4) a publisher's genuine message and a replayed one in one transaction:
-- only the genuine one
SET ROLE regress_cqrs_ob_publisher;
BEGIN;
SELECT pg_logical_emit_message(true, 'pg_cqrs', body) IS NOT NULL AS emitted FROM ob_bodies;
SELECT cqrs.publish('orders', '{"order": 2}') IS NOT NULL AS published;
SELECT pg_logical_emit_message(true, 'pg_cqrs', body) IS NOT NULL AS emitted FROM ob_bodies;
COMMIT;
RESET ROLE;
SELECT * FROM ob_lines();
SELECT ob_consume();

--
-- 6c. Every line is one JSON object the decoder wrote: a payload with
-- newlines between its tokens made 0.3.0 emit a complete event line of
-- the forger's choosing
--
SET ROLE regress_cqrs_ob_stranger;
SELECT pg_logical_emit_message(true, 'pg_cqrs',
    '\x010011111111111111111111111111111111060000006f7264657273'::bytea
    || convert_to(E'["x",\n{"position":999,"stream":"order-1","version":2,'
                  '"id":"f0000000-0000-4000-8000-000000000666","type":"OrderRefunded",'
                  '"data":{"amount":1000},"metadata":{},"recorded_at":"2026-01-01T00:00:00+00:00",'
                  '"lsn":"0/0","xid":1}\n]', 'UTF8')) IS NOT NULL AS emitted;
RESET ROLE;
SELECT * FROM ob_lines();
SELECT ob_consume();
-- genuine messages with awkward payloads: escapes, control characters,
-- nesting, numbers, scalars -- each one line, equal to what was published
SET ROLE regress_cqrs_ob_publisher;
SELECT cqrs.publish('awkward', p) IS NOT NULL AS published
  FROM (VALUES (jsonb_build_object('nl', E'a\nb', 'cr', E'\r', 'tab', E'\t', 'ctl', E'\x01\x1f',
                                   'quote', '"', 'backslash', E'\\', 'unicode', 'café ☕ 😀',
                                   'forged', E'\n{"position":1}\n')),
               ('[1, -2.5e10, 0.000001, true, false, null, [], {}, [[{"a": [{}]}]]]'::jsonb),
               ('"just a string"'::jsonb),
               (jsonb_build_object(E'key\nwith newline', E'value\u2028'))) v(p);
RESET ROLE;
SELECT * FROM ob_lines();
SELECT * FROM ob_well_formed();
SELECT count(*) FILTER (WHERE (data::jsonb)->'payload' IN (
           SELECT jsonb_build_object('nl', E'a\nb', 'cr', E'\r', 'tab', E'\t', 'ctl', E'\x01\x1f',
                                     'quote', '"', 'backslash', E'\\', 'unicode', 'café ☕ 😀',
                                     'forged', E'\n{"position":1}\n')
           UNION ALL SELECT '[1, -2.5e10, 0.000001, true, false, null, [], {}, [[{"a": [{}]}]]]'::jsonb
           UNION ALL SELECT '"just a string"'::jsonb
           UNION ALL SELECT jsonb_build_object(E'key\nwith newline', E'value\u2028'))) AS payloads_equal
  FROM pg_logical_slot_peek_changes('ob_outbox', NULL, NULL);
SELECT ob_consume();
\set VERBOSITY default

--
-- 5. The capture trigger acts only as the trigger capture() created: a
-- role with TRIGGER on a captured table cannot make the owner append twice
--
GRANT INSERT ON cqrs.events TO regress_cqrs_ob_tabowner;
SET ROLE regress_cqrs_ob_tabowner;
CREATE TABLE public.ob_accounts (id int PRIMARY KEY, v text);
SELECT cqrs.capture('ob_accounts');
GRANT TRIGGER ON ob_accounts TO regress_cqrs_ob_trigger;
GRANT INSERT, UPDATE, DELETE ON ob_accounts TO regress_cqrs_ob_writer;
SET ROLE regress_cqrs_ob_trigger;
CREATE TRIGGER ob_again AFTER INSERT OR UPDATE OR DELETE ON ob_accounts
    FOR EACH ROW EXECUTE FUNCTION cqrs.capture_trigger();
SET ROLE regress_cqrs_ob_writer;
SELECT try($$INSERT INTO ob_accounts VALUES (1, 'a')$$);
RESET ROLE;
SELECT stream, version, type FROM cqrs.events WHERE stream LIKE 'ob_accounts-%' ORDER BY position;
-- the owner drops it; writes are captured once
SET ROLE regress_cqrs_ob_tabowner;
DROP TRIGGER ob_again ON ob_accounts;
SET ROLE regress_cqrs_ob_writer;
INSERT INTO ob_accounts VALUES (1, 'a');
UPDATE ob_accounts SET v = 'b';
RESET ROLE;
SELECT stream, version, type FROM cqrs.events WHERE stream LIKE 'ob_accounts-%' ORDER BY position;
-- should the owner drop cqrs_capture by hand, a trigger of that name made
-- by somebody else runs only if it is exactly capture()'s
SET ROLE regress_cqrs_ob_tabowner;
DROP TRIGGER cqrs_capture ON ob_accounts;
SET ROLE regress_cqrs_ob_trigger;
CREATE TRIGGER cqrs_capture AFTER INSERT OR UPDATE OR DELETE ON ob_accounts
    FOR EACH ROW WHEN (current_user <> 'nobody') EXECUTE FUNCTION cqrs.capture_trigger();
SET ROLE regress_cqrs_ob_writer;
SELECT try($$INSERT INTO ob_accounts VALUES (2, 'x')$$);
SET ROLE regress_cqrs_ob_tabowner;
DROP TRIGGER cqrs_capture ON ob_accounts;
SET ROLE regress_cqrs_ob_trigger;
CREATE TRIGGER cqrs_capture AFTER INSERT ON ob_accounts
    FOR EACH ROW EXECUTE FUNCTION cqrs.capture_trigger();
SET ROLE regress_cqrs_ob_writer;
SELECT try($$INSERT INTO ob_accounts VALUES (3, 'x')$$);
-- uncapture and capture put things right
SET ROLE regress_cqrs_ob_tabowner;
SELECT cqrs.uncapture('ob_accounts');
SELECT cqrs.capture('ob_accounts');
SET ROLE regress_cqrs_ob_writer;
INSERT INTO ob_accounts VALUES (4, 'x');
RESET ROLE;
SELECT stream, version, type FROM cqrs.events WHERE stream LIKE 'ob_accounts-%' ORDER BY position;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'ob_accounts'::regclass ORDER BY tgname;
SELECT ob_consume();

--
-- 9. cqrs.outbox_status is readable by pg_monitor and by whom SELECT on it
-- is granted; the function behind it is no side door
--
SELECT r AS role, has_table_privilege(r, 'cqrs.outbox_status', 'SELECT') AS may_read
  FROM unnest(ARRAY['public', 'pg_monitor', 'regress_cqrs_ob_operator', 'regress_cqrs_ob_stranger']) r;
SET ROLE regress_cqrs_ob_stranger;
SELECT try($$SELECT * FROM cqrs.outbox_status$$);
SELECT try($$SELECT cqrs.outbox_delivered('ob_outbox', '0/0')$$);
SET ROLE regress_cqrs_ob_operator;
SELECT name, lag_events FROM cqrs.outbox_status ORDER BY name;
RESET ROLE;
GRANT SELECT ON cqrs.outbox_status TO regress_cqrs_ob_viewer;
SET ROLE regress_cqrs_ob_viewer;
SELECT name, lag_events FROM cqrs.outbox_status ORDER BY name;
RESET ROLE;

--
-- After DROP EXTENSION, a table made to look like the log is not the log:
-- the plugin streams only the extension's own cqrs.events
--
SET client_min_messages = warning;
DROP EXTENSION pg_cqrs CASCADE;
RESET client_min_messages;
CREATE SCHEMA cqrs;
GRANT USAGE, CREATE ON SCHEMA cqrs TO regress_cqrs_ob_stranger;
SET ROLE regress_cqrs_ob_stranger;
CREATE TABLE cqrs.events (position bigint, stream text, version bigint, id uuid,
                          type text, data jsonb, metadata jsonb, recorded_at timestamptz);
INSERT INTO cqrs.events VALUES (1, 'order-1', 1, 'f0000000-0000-4000-8000-000000000777',
                                'OrderRefunded', '{"amount": 1000}', '{}', now());
RESET ROLE;
SELECT * FROM ob_lines();
-- the real log, installed again, is recognised again
DROP SCHEMA cqrs CASCADE;
CREATE EXTENSION pg_cqrs;
SELECT count(*) FROM cqrs.append('order-9', 'OrderPlaced', '{}');
SELECT data::json->>'stream' AS stream FROM pg_logical_slot_get_changes('ob_outbox', NULL, NULL);

SELECT pg_drop_replication_slot('ob_outbox');
SELECT pg_drop_replication_slot('ob_wal');
DROP FUNCTION ob_lines(), ob_well_formed(), ob_consume();
DROP TABLE ob_accounts, ob_bodies;
SET client_min_messages = warning;
DROP EXTENSION pg_cqrs CASCADE;
RESET client_min_messages;
REVOKE CREATE ON SCHEMA public FROM regress_cqrs_ob_stranger, regress_cqrs_ob_tabowner;
DROP ROLE regress_cqrs_ob_publisher, regress_cqrs_ob_stranger, regress_cqrs_ob_tabowner,
    regress_cqrs_ob_trigger, regress_cqrs_ob_writer, regress_cqrs_ob_operator,
    regress_cqrs_ob_viewer;
