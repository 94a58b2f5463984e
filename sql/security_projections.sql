--
-- security_projections.sql: a projection belongs to its owner (issue 10,
-- findings 4, 5, 8 and 9).  Two tenants, an operator, and a stranger with
-- CREATE on public; each statement below failed open in 0.3.0.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP SCHEMA IF EXISTS regress_t1, regress_t2 CASCADE;
DROP ROLE IF EXISTS regress_t1, regress_t2, regress_stranger, regress_operator, regress_reader;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

CREATE ROLE regress_t1;
CREATE ROLE regress_t2;
CREATE ROLE regress_stranger;
CREATE ROLE regress_operator IN ROLE pg_monitor;
CREATE ROLE regress_reader;
GRANT USAGE ON SCHEMA cqrs TO regress_t1, regress_t2, regress_stranger, regress_operator, regress_reader;
GRANT INSERT ON cqrs.events TO regress_t1, regress_t2, regress_stranger;
-- both tenants may administer projections: the functions are granted, the
-- projections are not
GRANT EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean),
    cqrs.drop_projection(text), cqrs.pause_projection(text), cqrs.resume_projection(text),
    cqrs.skip_event(text, bigint), cqrs.process_projections(text, integer),
    cqrs.replay(text), cqrs.reconcile(text, boolean), cqrs.verify(text)
    TO regress_t1, regress_t2;
GRANT CREATE ON SCHEMA public TO regress_stranger;
CREATE SCHEMA regress_t1 AUTHORIZATION regress_t1;
CREATE SCHEMA regress_t2 AUTHORIZATION regress_t2;

-- tenant 1: a sync projection keyed by a varchar, and a deferred one
SET ROLE regress_t1;
CREATE TABLE regress_t1.accounts (id varchar(20) PRIMARY KEY, balance int NOT NULL);
CREATE FUNCTION regress_t1.on_account(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO regress_t1.accounts VALUES (e.stream, (e.data->>'amount')::int)
    ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance
$$;
SELECT cqrs.create_projection('t1_accounts', 'regress_t1.on_account', 'sync',
                              '{regress_t1.accounts}', categories => '{acct}');
CREATE TABLE regress_t1.log (position bigint PRIMARY KEY);
CREATE FUNCTION regress_t1.on_log(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO regress_t1.log VALUES (e.position)
$$;
SELECT cqrs.create_projection('t1_log', 'regress_t1.on_log', 'deferred', '{regress_t1.log}');
SELECT version FROM cqrs.append('acct-1', 'Deposited', '{"amount": 10}');
RESET ROLE;
SELECT name, owner FROM cqrs.projections ORDER BY name;

--
-- Finding 4: a projection is its owner's.  Tenant 2 may run the functions
-- but not on tenant 1's projections; nor may it read tenant 1's rows
-- through reconcile.
--
SET ROLE regress_t2;
SELECT try('SELECT cqrs.drop_projection(''t1_accounts'')');
SELECT try('SELECT cqrs.pause_projection(''t1_accounts'')');
SELECT try('SELECT cqrs.resume_projection(''t1_log'')');
SELECT try('SELECT cqrs.skip_event(''t1_log'', 1)');
SELECT try('SELECT cqrs.process_projections(''t1_log'')');
SELECT try('SELECT cqrs.replay(''t1_accounts'')');
SELECT try('SELECT * FROM cqrs.reconcile(''t1_accounts'')');
SELECT try('SELECT * FROM cqrs.verify(''t1_accounts'')');
-- without a name, process_projections applies only the caller's own
SELECT cqrs.process_projections() AS applied_by_t2;
RESET ROLE;
-- a member of the owner role administers it, as for any owned object
GRANT regress_t1 TO regress_t2;
SET ROLE regress_t2;
SELECT try('SELECT cqrs.pause_projection(''t1_log'')');
SELECT try('SELECT cqrs.resume_projection(''t1_log'')');
RESET ROLE;
REVOKE regress_t1 FROM regress_t2;

--
-- Finding 5: nobody else's code runs with the owner's rights.
--
-- a handler the creator does not own (its owner could change its body)
SET ROLE regress_stranger;
CREATE FUNCTION public.stranger_handler(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
RESET ROLE;
SET ROLE regress_t1;
SELECT try('SELECT cqrs.create_projection(''borrowed'', ''public.stranger_handler'', ''deferred'')');
-- tables the creator does not own get no digest trigger, nor are emptied
CREATE FUNCTION regress_t1.noop(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
RESET ROLE;
SET ROLE regress_t2;
CREATE TABLE regress_t2.victim (id int PRIMARY KEY);
GRANT USAGE ON SCHEMA regress_t2 TO regress_t1;
GRANT ALL ON regress_t2.victim TO regress_t1;
RESET ROLE;
SET ROLE regress_t1;
SELECT try('SELECT cqrs.create_projection(''grab'', ''regress_t1.noop'', ''deferred'', ''{regress_t2.victim}'')');
-- the extension's own tables (even for a superuser, who owns them), the
-- same table twice, and a partition of a table another projection owns are
-- no read tables
RESET ROLE;
CREATE FUNCTION pg_temp.noop(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT try('SELECT cqrs.create_projection(''cat'', ''pg_temp.noop'', ''deferred'', ''{cqrs.captures}'')');
SET ROLE regress_t1;
CREATE TABLE regress_t1.twice (id int PRIMARY KEY);
SELECT try('SELECT cqrs.create_projection(''twice'', ''regress_t1.noop'', ''deferred'', ''{regress_t1.twice,regress_t1.twice}'')');
CREATE TABLE regress_t1.parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE regress_t1.part1 PARTITION OF regress_t1.parted FOR VALUES FROM (0) TO (100);
SELECT cqrs.create_projection('parent', 'regress_t1.noop', 'deferred', '{regress_t1.parted}');
CREATE FUNCTION regress_t1.noop2(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT try('SELECT cqrs.create_projection(''child'', ''regress_t1.noop2'', ''deferred'', ''{regress_t1.part1}'')');
SELECT cqrs.drop_projection('parent');
SELECT cqrs.create_projection('child', 'regress_t1.noop2', 'deferred', '{regress_t1.part1}');
SELECT try('SELECT cqrs.create_projection(''parent'', ''regress_t1.noop'', ''deferred'', ''{regress_t1.parted}'')');
SELECT cqrs.drop_projection('child');
-- a handler or a read table in use cannot be dropped (nor replaced by a
-- function of the same signature that somebody else creates later)
SELECT sqlstate('DROP FUNCTION regress_t1.on_account(cqrs.events)');
SELECT try('DROP FUNCTION regress_t1.on_account(cqrs.events)');
SELECT try('DROP TABLE regress_t1.accounts');
SET client_min_messages = warning;
SELECT try('DROP SCHEMA regress_t1 CASCADE');
RESET client_min_messages;
RESET ROLE;
-- nor can the owner role go while it owns the handler (pg_shdepend)
SELECT sqlstate('DROP ROLE regress_t1');
-- a handler the owner gives away no longer runs with the owner's rights:
-- the projection now belongs to the new owner of the code, who does not
-- own the read table, so the projection refuses to run
ALTER FUNCTION regress_t1.on_account(cqrs.events) OWNER TO regress_stranger;
SELECT try_ctx($$SELECT cqrs.append('acct-1', 'Deposited', '{"amount": 1}')$$);
ALTER FUNCTION regress_t1.on_account(cqrs.events) OWNER TO regress_t1;
SELECT version FROM cqrs.append('acct-1', 'Deposited', '{"amount": 1}');
-- a renamed handler is reported with the event it stopped at
ALTER FUNCTION regress_t1.on_account(cqrs.events) RENAME TO on_account_renamed;
SELECT regexp_replace(try_ctx($$SELECT cqrs.append('acct-1', 'Deposited', '{"amount": 1}')$$),
                      'position \d+', 'position N') AS renamed;
ALTER FUNCTION regress_t1.on_account_renamed(cqrs.events) RENAME TO on_account;

-- a stranger's operator on public cannot hijack a repair: the key is
-- compared with the key's own operator class, named with its schema
SET ROLE regress_stranger;
CREATE TABLE public.hijacks (who text);
GRANT INSERT ON public.hijacks TO PUBLIC;
CREATE FUNCTION public.vc_eq(varchar, varchar) RETURNS boolean LANGUAGE sql AS $$
    INSERT INTO public.hijacks VALUES (current_user) RETURNING true
$$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.vc_eq);
RESET ROLE;
SET ROLE regress_t1;
UPDATE regress_t1.accounts SET balance = 0;
SET search_path = public, regress_t1;
SELECT table_name, key, drift FROM cqrs.reconcile('t1_accounts', repair => true);
RESET search_path;
SELECT * FROM regress_t1.accounts;
RESET ROLE;
SELECT count(*) AS hijacked FROM public.hijacks;

--
-- Finding 8: a slow handler stalls nobody else.
--
SET ROLE regress_t1;
CREATE TABLE regress_t1.slow (position bigint PRIMARY KEY);
CREATE FUNCTION regress_t1.on_slow(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type = 'Slow' THEN PERFORM pg_sleep(5); END IF;
    INSERT INTO regress_t1.slow VALUES (e.position);
END
$$;
RESET ROLE;
SET cqrs.handler_timeout = '200ms';
-- sync: the append fails, naming the projection
SET ROLE regress_t1;
CREATE TABLE regress_t1.sync_slow (position bigint PRIMARY KEY);
CREATE FUNCTION regress_t1.on_sync_slow(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(5);
END
$$;
SELECT cqrs.create_projection('t1_sync_slow', 'regress_t1.on_sync_slow', 'sync', categories => '{slow}');
RESET ROLE;
-- (57014, like statement_timeout: not caught by WHEN OTHERS)
\set VERBOSITY terse
SELECT cqrs.append('slow-1', 'Slow', '{}');
\set VERBOSITY default
-- deferred: the projection fails at the slow event, the others go on (in
-- a transaction, out of the worker's sight)
BEGIN;
SET LOCAL ROLE regress_t1;
SELECT cqrs.create_projection('t1_slow', 'regress_t1.on_slow', 'deferred', '{regress_t1.slow}');
RESET ROLE;
SELECT version FROM cqrs.append('other-1', 'Slow', '{}');
SELECT version FROM cqrs.append('other-1', 'Fast', '{}');
SELECT cqrs.process_projections() > 0 AS applied;
SELECT name, state, last_error FROM cqrs.projection_status WHERE name IN ('t1_slow', 't1_log') ORDER BY name;
COMMIT;
RESET cqrs.handler_timeout;
-- an owner cannot lift the limit for itself
SET ROLE regress_t1;
SELECT sqlstate('SET cqrs.handler_timeout = 0');
RESET ROLE;

--
-- Finding 9: status for operators, errors for owners.
--
SET ROLE regress_operator;
SELECT name, state, last_error IS NOT NULL AS sees_error FROM cqrs.projection_status ORDER BY name;
SELECT cqrs.projection_position('t1_log') IS NOT NULL AS operator_sees_position;
RESET ROLE;
SET ROLE regress_t1;
SELECT name, state, last_error IS NOT NULL AS sees_error FROM cqrs.projection_status
 WHERE name = 't1_slow';
RESET ROLE;
SET ROLE regress_stranger;
SELECT count(*) AS stranger_sees FROM cqrs.projection_status;
SELECT try('SELECT cqrs.projection_position(''t1_log'')');
SELECT try('SELECT cqrs.wait_for_projection(''t1_log'', 1, ''0'')');
RESET ROLE;
-- a role that may read a read table may follow its projection: read your
-- own writes
GRANT SELECT ON regress_t1.log TO regress_reader;
SET ROLE regress_reader;
SELECT cqrs.wait_for_projection('t1_log', 1, '0') AS reader_waits;
RESET ROLE;
-- a projection that does not exist says so, whatever the timeout
SELECT try('SELECT cqrs.wait_for_projection(''nope'', 1, ''1000000 years'')');
SELECT cqrs.wait_for_projection('t1_log', 1, '1000000 years') AS long_wait;

-- clean up: the projections first, then what they used
SELECT cqrs.drop_projection(name) FROM cqrs.projections ORDER BY name;
SET client_min_messages = warning;
DROP SCHEMA regress_t1, regress_t2 CASCADE;
RESET client_min_messages;
DROP OPERATOR public.= (varchar, varchar);
DROP FUNCTION public.vc_eq(varchar, varchar), public.stranger_handler(cqrs.events), pg_temp.noop(cqrs.events);
DROP TABLE public.hijacks;
DROP EXTENSION pg_cqrs;
REVOKE CREATE ON SCHEMA public FROM regress_stranger;
DROP ROLE regress_t1, regress_t2, regress_stranger, regress_operator, regress_reader;

--
-- Upgrading from 0.3.0: a projection 0.4.0 would refuse is paused, with a
-- WARNING saying why; one that complies keeps running.
--
CREATE ROLE regress_creator;
CREATE ROLE regress_coder;
CREATE EXTENSION pg_cqrs VERSION '0.3.0';
GRANT USAGE ON SCHEMA cqrs TO regress_creator;
GRANT INSERT ON cqrs.events TO regress_creator;
GRANT EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean)
    TO regress_creator;
CREATE TABLE public.up_rm (position bigint PRIMARY KEY);
ALTER TABLE public.up_rm OWNER TO regress_creator;
-- 0.3.0 let the creator use a handler somebody else owns (and may
-- change): here the creator's handler is given away after creation
CREATE FUNCTION public.up_foreign(e cqrs.events) RETURNS void LANGUAGE sql AS
    'INSERT INTO public.up_rm VALUES (e.position)';
CREATE FUNCTION public.up_own(e cqrs.events) RETURNS void LANGUAGE sql AS 'SELECT';
ALTER FUNCTION public.up_foreign(cqrs.events) OWNER TO regress_creator;
ALTER FUNCTION public.up_own(cqrs.events) OWNER TO regress_creator;
SET ROLE regress_creator;
SELECT cqrs.create_projection('up_foreign', 'public.up_foreign', 'sync', '{public.up_rm}');
SELECT cqrs.create_projection('up_own', 'public.up_own', 'sync');
RESET ROLE;
SELECT version FROM cqrs.append('up-1', 'Before', '{}');
ALTER FUNCTION public.up_foreign(cqrs.events) OWNER TO regress_coder;
ALTER EXTENSION pg_cqrs UPDATE TO '0.4.0';
SELECT name, state, owner FROM cqrs.projections ORDER BY name;
-- appends go on; the paused one applies nothing until its owner fixes it
SELECT version FROM cqrs.append('up-1', 'After', '{}');
SELECT count(*) AS applied FROM public.up_rm;
SELECT cqrs.drop_projection(name) FROM cqrs.projections ORDER BY name;
DROP TABLE public.up_rm;
DROP FUNCTION public.up_foreign(cqrs.events), public.up_own(cqrs.events);
DROP EXTENSION pg_cqrs;
DROP ROLE regress_creator, regress_coder;
