--
-- projection_security.sql: handlers run as the projection's owner, with the
-- search_path pinned at creation, under SECURITY_RESTRICTED_OPERATION --
-- never as whoever appends, processes or runs the worker
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP SCHEMA IF EXISTS regress_owner_s, regress_appender_s CASCADE;
DROP ROLE IF EXISTS regress_cqrs_owner, regress_cqrs_appender, regress_cqrs_intruder;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- The owner of projections, a role that only appends, and one that should
-- not be able to touch the owner's projections.  Appending needs what it
-- needed before projections existed: USAGE on the schema and INSERT on the
-- log.  The administrative functions are not PUBLIC: the owner is granted
-- them, and the projection catalog, which is what create_projection needs
-- today.
CREATE ROLE regress_cqrs_owner;
CREATE ROLE regress_cqrs_appender;
CREATE ROLE regress_cqrs_intruder;
GRANT USAGE ON SCHEMA cqrs TO regress_cqrs_owner, regress_cqrs_appender, regress_cqrs_intruder;
GRANT INSERT ON cqrs.events TO regress_cqrs_owner, regress_cqrs_appender, regress_cqrs_intruder;
GRANT EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean),
    cqrs.drop_projection(text), cqrs.pause_projection(text), cqrs.resume_projection(text),
    cqrs.skip_event(text, bigint), cqrs.process_projections(text, integer) TO regress_cqrs_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON cqrs.projections, cqrs.skipped_events TO regress_cqrs_owner;

-- the owner's read tables and handler; the handler names its table
-- without a schema, so the search_path decides which table it writes
CREATE SCHEMA regress_owner_s AUTHORIZATION regress_cqrs_owner;
CREATE SCHEMA regress_appender_s AUTHORIZATION regress_cqrs_appender;
SET ROLE regress_cqrs_owner;
SET search_path = regress_owner_s;
CREATE TABLE seen (position bigint PRIMARY KEY, who text NOT NULL, path text NOT NULL);
CREATE FUNCTION record(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen VALUES (e.position, current_user, current_setting('search_path'))
$$;
CREATE TABLE seen_later (position bigint PRIMARY KEY, who text NOT NULL, path text NOT NULL);
CREATE FUNCTION record_later(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen_later VALUES (e.position, current_user, current_setting('search_path'))
$$;
SELECT cqrs.create_projection('owned', 'record', tables => '{seen}', categories => '{acct}');
RESET search_path;
RESET ROLE;
SELECT name, handler, owner, search_path FROM cqrs.projections;

-- the appender has a table of the same name first in its search_path
SET ROLE regress_cqrs_appender;
CREATE TABLE regress_appender_s.seen (position bigint PRIMARY KEY, who text, path text);
SET search_path = regress_appender_s, public;
SELECT version FROM cqrs.append('acct-1', 'Opened', '{}');
SELECT version, position AS pos FROM cqrs.append_events('acct-1', '[{"type": "Deposited", "data": {}}]') \gset
\echo :version
-- and can wait for its write to be applied (read-your-writes), as a role
-- that may read the read model may (0.4.0: not every role)
RESET ROLE;
GRANT SELECT ON regress_owner_s.seen TO regress_cqrs_appender;
SET ROLE regress_cqrs_appender;
SELECT cqrs.wait_for_projection('owned', :pos, '0') AS applied;
-- the handler did not change the appender's session
SELECT current_user, current_setting('search_path') AS search_path;
SELECT count(*) AS decoy_rows FROM regress_appender_s.seen;
RESET search_path;
RESET ROLE;
-- nor does a superuser's append run the handler as superuser
SELECT version FROM cqrs.append('acct-1', 'Closed', '{}');
SELECT position, who, path FROM regress_owner_s.seen ORDER BY position;

-- the owner's privileges, not the appender's, decide what the handler may
-- do: a superuser's append fails where the owner may not write
CREATE TABLE public.root_only (position bigint PRIMARY KEY);
SET ROLE regress_cqrs_owner;
CREATE FUNCTION regress_owner_s.write_root_only(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.root_only VALUES (e.position)
$$;
SELECT cqrs.create_projection('overreach', 'regress_owner_s.write_root_only', categories => '{root}');
RESET ROLE;
SELECT try($$SELECT cqrs.append('root-1', 'Written', '{}')$$);
SELECT count(*) FROM public.root_only;
SELECT cqrs.drop_projection('overreach');

--
-- deferred: on demand and by the worker, the handler runs as the owner with
-- the pinned search_path
--
SET ROLE regress_cqrs_owner;
SET search_path = regress_owner_s, public;
BEGIN;
SELECT cqrs.create_projection('owned_later', 'record_later', 'deferred', '{seen_later}',
                              categories => '{acct}');
SELECT cqrs.pause_projection('owned_later');
COMMIT;
RESET search_path;
RESET ROLE;
SELECT search_path FROM cqrs.projections WHERE name = 'owned_later';
SET ROLE regress_cqrs_appender;
SELECT version FROM cqrs.append('acct-2', 'Opened', '{}');
RESET ROLE;
-- processed by a superuser, in a session with another search_path
SET search_path = regress_appender_s;
BEGIN;
SELECT cqrs.resume_projection('owned_later');
SELECT cqrs.process_projections('owned_later');
SELECT cqrs.pause_projection('owned_later');
COMMIT;
SHOW search_path;
RESET search_path;
SELECT position, who, path FROM regress_owner_s.seen_later ORDER BY position;
-- applied by the worker
SELECT cqrs.resume_projection('owned_later');
SELECT position AS last FROM cqrs.append('acct-2', 'Closed', '{}') \gset
SELECT cqrs.wait_for_projection('owned_later', :last, '60 s');
SELECT who, path FROM regress_owner_s.seen_later WHERE position = :last;
SELECT cqrs.drop_projection('owned_later');

--
-- SECURITY_RESTRICTED_OPERATION: a handler cannot change the session's
-- identity or leave state behind in it (the appender is a superuser here,
-- to show it is the handler's context that is restricted)
--
SET ROLE regress_cqrs_owner;
CREATE FUNCTION regress_owner_s.run(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE e.data->>'cmd';
END
$$;
SELECT cqrs.create_projection('restricted', 'regress_owner_s.run', categories => '{cmd}');
RESET ROLE;
SELECT cmd, try(format('SELECT cqrs.append(%L, %L, %L)', 'cmd-1', 'Run',
                               jsonb_build_object('cmd', cmd)))
  FROM unnest(ARRAY[
    'SELECT 1',
    'RESET ROLE',
    'SET ROLE NONE',
    'SET SESSION AUTHORIZATION DEFAULT',
    'SELECT set_config(''role'', ''none'', false)',
    'CREATE TEMP TABLE regress_tmp (a int)',
    'LISTEN regress_channel',
    'UNLISTEN *',
    'PREPARE regress_plan AS SELECT 1',
    'DISCARD ALL',
    'DECLARE regress_cursor CURSOR WITH HOLD FOR SELECT 1'
  ]) cmd;
-- only the harmless command was recorded
SELECT version, data->>'cmd' AS cmd FROM cqrs.read_stream('cmd-1');
-- settings a handler changes do not outlive it, whatever their scope
BEGIN;
SELECT version FROM cqrs.append('cmd-1', 'Run',
    '{"cmd": "SELECT set_config(''search_path'', ''pg_catalog'', false), set_config(''work_mem'', ''1234kB'', false), set_config(''application_name'', ''handler'', true)"}');
SELECT current_setting('search_path') AS search_path,
       current_setting('work_mem') = '1234kB' AS work_mem_changed,
       current_setting('application_name') = 'handler' AS application_name_changed;
COMMIT;
-- the same holds when the handler runs deferred: the projection fails
SELECT cqrs.drop_projection('restricted');
SET ROLE regress_cqrs_owner;
BEGIN;
SELECT cqrs.create_projection('restricted_later', 'regress_owner_s.run', 'deferred',
                              categories => '{cmd}');
SELECT cqrs.pause_projection('restricted_later');
COMMIT;
RESET ROLE;
SELECT version FROM cqrs.append('cmd-1', 'Run', '{"cmd": "CREATE TEMP TABLE regress_tmp (a int)"}');
BEGIN;
SELECT cqrs.resume_projection('restricted_later');
SELECT cqrs.process_projections('restricted_later');
SELECT state, last_error FROM cqrs.projection_status WHERE name = 'restricted_later';
COMMIT;
SELECT count(*) FROM pg_class WHERE relname = 'regress_tmp';
SELECT cqrs.drop_projection('restricted_later');

--
-- a handler the owner may not execute cannot be made a projection, or the
-- owner would run it, say a SECURITY DEFINER function, through the catalog
--
CREATE TABLE public.root_log (position bigint PRIMARY KEY, who text);
CREATE FUNCTION public.root_handler(e cqrs.events) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO public.root_log VALUES (e.position, current_user)
$$;
REVOKE EXECUTE ON FUNCTION public.root_handler(cqrs.events) FROM PUBLIC;
SET ROLE regress_cqrs_owner;
SELECT try($$SELECT public.root_handler(NULL)$$);
SELECT try($$SELECT cqrs.create_projection('stolen', 'public.root_handler')$$);
SELECT try($$SELECT cqrs.create_projection('stolen_later', 'public.root_handler', 'deferred')$$);
RESET ROLE;
SELECT count(*) FROM public.root_log;
SELECT name FROM cqrs.projections ORDER BY name;

--
-- a role that does not own a projection cannot manage it
--
SET ROLE regress_cqrs_intruder;
SELECT label, sqlstate(cmd) FROM (VALUES
    ('drop',    $$SELECT cqrs.drop_projection('owned')$$),
    ('pause',   $$SELECT cqrs.pause_projection('owned')$$),
    ('resume',  $$SELECT cqrs.resume_projection('owned')$$),
    ('catalog', $$UPDATE cqrs.projections SET owner = 'regress_cqrs_intruder'$$)
) AS t(label, cmd);
RESET ROLE;
SELECT name, owner, state FROM cqrs.projections ORDER BY name;

-- clean up: the roles go last
SELECT cqrs.drop_projection(name) FROM cqrs.projections;
DROP TABLE public.root_only, public.root_log;
DROP FUNCTION public.root_handler(cqrs.events);
SET client_min_messages = warning;
DROP SCHEMA regress_owner_s, regress_appender_s CASCADE;
RESET client_min_messages;
DROP EXTENSION pg_cqrs;
DROP ROLE regress_cqrs_owner, regress_cqrs_appender, regress_cqrs_intruder;
