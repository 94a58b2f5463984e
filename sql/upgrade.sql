--
-- upgrade.sql: from 0.1.0 (the event log) to 0.2.0 (projections),
-- 0.3.0 (replay, capture, outbox) and 0.4.0 (the privilege model) with
-- events in the log; an updated installation is a fresh one
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP ROLE IF EXISTS regress_cqrs_writer;
RESET client_min_messages;

SELECT source, target, path FROM pg_extension_update_paths('pg_cqrs')
 WHERE path IS NOT NULL ORDER BY source, target;

CREATE EXTENSION pg_cqrs VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
-- 0.1.0 knows nothing of projections
SELECT to_regclass('cqrs.projections') AS projections, to_regclass('cqrs.projection_status') AS status,
       to_regprocedure('cqrs.create_projection(text, regproc, text, regclass[], text[], text[])') AS create_projection;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'cqrs.events'::regclass AND NOT tgisinternal ORDER BY tgname;

-- a role that appends with what 0.1.0 asks for: USAGE and INSERT
CREATE ROLE regress_cqrs_writer;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_writer;
GRANT INSERT ON cqrs.events TO regress_cqrs_writer;
SET ROLE regress_cqrs_writer;
SELECT version, position FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}', '{"user": "w"}');
SELECT version, position FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "a"}', expected_version => 1);
RESET ROLE;
SELECT version, position FROM cqrs.append_events('customer-1', '[
    {"type": "CustomerRegistered", "data": {"name": "Ada"}},
    {"type": "CustomerRenamed", "data": {"name": "Ada L."}, "id": "b0000000-0000-4000-8000-000000000001"}
]');
SELECT version, position FROM cqrs.append('order-1', 'OrderPaid', '{}');
CREATE TEMP TABLE events_before AS SELECT * FROM cqrs.events;

--
-- the update
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.2.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';

-- the log is intact, row for row
SELECT count(*) AS missing FROM (TABLE events_before EXCEPT ALL TABLE cqrs.events) d;
SELECT count(*) AS unexpected FROM (TABLE cqrs.events EXCEPT ALL TABLE events_before) d;
SELECT position, stream, version, type, data, metadata FROM cqrs.events ORDER BY position;

-- the projection surface is there, empty
SELECT count(*) FROM cqrs.projections;
SELECT count(*) FROM cqrs.skipped_events;
SELECT count(*) FROM cqrs.projection_status;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'cqrs.events'::regclass AND NOT tgisinternal ORDER BY tgname;
SELECT c.cfg::regclass AS config_table
  FROM pg_extension e, unnest(e.extconfig) AS c(cfg)
 WHERE e.extname = 'pg_cqrs' ORDER BY 1::text;

-- appending goes on as before, for the same role, from the same sequence;
-- an idempotent retry of an event appended before the update is recognised
SELECT id AS paid_id FROM cqrs.events WHERE position = 5 \gset
SET ROLE regress_cqrs_writer;
SELECT version, position FROM cqrs.append('order-1', 'OrderShipped', '{}');
SELECT version, position FROM cqrs.append('order-1', 'OrderPaid', '{}', id => :'paid_id');
RESET ROLE;

--
-- projections work on the events appended before the update
--
CREATE TABLE order_totals (stream text PRIMARY KEY, events int NOT NULL, total numeric);
CREATE FUNCTION order_totals_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO order_totals VALUES (e.stream, 1, (e.data->>'total')::numeric)
    ON CONFLICT (stream) DO UPDATE
       SET events = order_totals.events + 1,
           total = coalesce((e.data->>'total')::numeric, order_totals.total)
$$;
SELECT cqrs.create_projection('order_totals', 'order_totals_handler', tables => '{order_totals}',
                              categories => '{order}');
SELECT * FROM order_totals;
CREATE TABLE all_events (position bigint PRIMARY KEY, type text NOT NULL);
CREATE FUNCTION all_events_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO all_events VALUES (e.position, e.type)
$$;
BEGIN;
SELECT cqrs.create_projection('all_events', 'all_events_handler', 'deferred', '{all_events}');
SELECT cqrs.process_projections('all_events');
SELECT cqrs.pause_projection('all_events');
COMMIT;
SELECT * FROM all_events ORDER BY position;
-- the worker serves the updated database
SELECT cqrs.resume_projection('all_events');
SELECT position AS last FROM cqrs.append('order-2', 'OrderPlaced', '{"total": 5}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM all_events WHERE position = :last;
SELECT * FROM order_totals ORDER BY stream;
SELECT name, mode, state, lag_events FROM cqrs.projection_status ORDER BY name;

-- updating again is a no-op
ALTER EXTENSION pg_cqrs UPDATE TO '0.2.0';

--
-- on to 0.3.0 (replay, capture, outbox); the projections keep working
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.3.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
SELECT position AS last FROM cqrs.append('order-3', 'OrderPlaced', '{"total": 7}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM order_totals ORDER BY stream;
-- projections from before 0.3.0 have no digest until a replay or a
-- repairing reconcile establishes one; reconcile works at once
SELECT * FROM cqrs.verify('order_totals');
SELECT * FROM cqrs.reconcile('order_totals');
SELECT * FROM cqrs.reconcile('order_totals', repair => true);
SELECT * FROM cqrs.verify('order_totals');
SELECT cqrs.replay('all_events') AS replayed;
SELECT table_name, rows, matches FROM cqrs.verify('all_events');
SELECT position AS last FROM cqrs.append('order-3', 'OrderPaid', '{}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM cqrs.verify('order_totals');
SELECT table_name, rows, matches FROM cqrs.verify('all_events');

--
-- on to 0.4.0 (the privilege model); the projections keep working
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.4.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
SELECT position AS last FROM cqrs.append('order-3', 'OrderShipped', '{}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM order_totals ORDER BY stream;
SELECT * FROM cqrs.verify('order_totals');

--
-- on to 0.5.0 (appends apply sync projections themselves; the trigger
-- goes).  Above, the 0.4.0 schema already ran under this library, whose
-- old trigger does nothing: each event was applied once, by the append.
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.5.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
SELECT count(*) AS sync_triggers FROM pg_trigger
 WHERE tgrelid = 'cqrs.events'::regclass AND tgname = 'events_apply_sync_projections';
SELECT position AS last FROM cqrs.append('order-3', 'OrderDelivered', '{"total": 5}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM order_totals ORDER BY stream;
SELECT * FROM cqrs.verify('order_totals');

--
-- on to 0.6.0 (beyond one server: nothing changes in the schema; the
-- library logs the append floors to WAL for standbys)
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.6.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
SELECT position AS last FROM cqrs.append('order-3', 'OrderReturned', '{}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM order_totals ORDER BY stream;
SELECT * FROM cqrs.verify('order_totals');

--
-- on to 0.7.0 (long-lived logs); the projections keep working
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.7.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
SELECT position AS last FROM cqrs.append('order-3', 'OrderRefunded', '{}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM order_totals ORDER BY stream;
SELECT * FROM cqrs.verify('order_totals');
-- a retention rule set through 0.7.0's three-argument function, with the
-- 0.8.0 library already loaded
SELECT cqrs.set_retention('nothing', max_count => 5);
-- a DBA's EXECUTE grant on it is named by the update, which re-creates it
CREATE ROLE upgrade_retention_admin;
GRANT EXECUTE ON FUNCTION cqrs.set_retention(text, interval, bigint) TO upgrade_retention_admin;

--
-- on to 0.8.0 (archiving): the rule deletes as before; archive rules work
--
ALTER EXTENSION pg_cqrs UPDATE TO '0.8.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
SELECT category, max_count, archive FROM cqrs.retention_rules;
SELECT cqrs.set_retention('nothing', max_count => 5, archive => true);
SELECT category, max_count, archive FROM cqrs.retention_rules;
SELECT cqrs.drop_retention('nothing');
SELECT has_function_privilege('upgrade_retention_admin',
       'cqrs.set_retention(text, interval, bigint, boolean)', 'EXECUTE') AS still_granted;
DROP ROLE upgrade_retention_admin;
SELECT position AS last FROM cqrs.append('order-3', 'OrderArchived', '{}') \gset
SELECT cqrs.wait_for_projection('all_events', :last, '60 s');
SELECT * FROM order_totals ORDER BY stream;
SELECT * FROM cqrs.verify('order_totals');

--
-- the updated extension has exactly the objects, and the same definitions,
-- as a fresh CREATE EXTENSION of the default version
--
-- the extension's members, with the definitions of its functions (an
-- aggregate by its parts: pg_get_functiondef refuses aggregates) and views
CREATE TEMP VIEW members AS
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       CASE WHEN d.classid = 'pg_proc'::regclass
                 AND (SELECT prokind FROM pg_proc WHERE oid = d.objid) = 'a'
                 THEN (SELECT format('%s %s %s %s', aggtransfn, aggtranstype::regtype,
                                     aggfinalfn, aggfinalmodify)
                         FROM pg_aggregate WHERE aggfnoid = d.objid)
            WHEN d.classid = 'pg_proc'::regclass THEN pg_get_functiondef(d.objid)
            WHEN d.classid = 'pg_class'::regclass
                 AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'v'
                 THEN pg_get_viewdef(d.objid) END AS definition
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_cqrs');
CREATE TEMP TABLE members_updated AS SELECT * FROM members;
CREATE TEMP TABLE columns_updated AS
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid) AS "default"
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE c.relnamespace = 'cqrs'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped;
CREATE TEMP TABLE constraints_updated AS
SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def
  FROM pg_constraint WHERE connamespace = 'cqrs'::regnamespace;
SELECT count(*) > 0 AS has_members FROM members_updated;

SELECT cqrs.drop_projection(name) FROM cqrs.projections;
DROP TABLE order_totals, all_events;
DROP FUNCTION order_totals_handler(cqrs.events), all_events_handler(cqrs.events);
DROP EXTENSION pg_cqrs;
CREATE EXTENSION pg_cqrs;
SELECT extversion FROM pg_extension WHERE extname = 'pg_cqrs';
CREATE TEMP TABLE members_fresh AS SELECT * FROM members;
SELECT 'only after update' AS side, object FROM
    (SELECT * FROM members_updated EXCEPT SELECT * FROM members_fresh) d
UNION ALL
SELECT 'only when fresh', object FROM
    (SELECT * FROM members_fresh EXCEPT SELECT * FROM members_updated) d
ORDER BY 1, 2;
SELECT 'only after update' AS side, * FROM
    (SELECT * FROM columns_updated EXCEPT
     SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
            a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid)
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
       LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
      WHERE c.relnamespace = 'cqrs'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped) d;
SELECT 'only after update' AS side, * FROM
    (SELECT * FROM constraints_updated EXCEPT
     SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
       FROM pg_constraint WHERE connamespace = 'cqrs'::regnamespace) d;

-- and it goes away whole
DROP EXTENSION pg_cqrs;
SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'cqrs') AS schemas,
       (SELECT count(*) FROM pg_proc WHERE proname IN ('create_projection', 'apply_sync_projections')) AS functions;
DROP ROLE regress_cqrs_writer;
