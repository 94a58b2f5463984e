--
-- extension.sql: what CREATE EXTENSION installs, and what pg_dump keeps
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

SELECT extname, extrelocatable, extversion FROM pg_extension WHERE extname = 'pg_cqrs';

-- pg_dump keeps the event log and its position counter, whole
SELECT c.cfg::regclass AS config_table, e.extcondition[c.n] AS condition
  FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY AS c(cfg, n)
 WHERE e.extname = 'pg_cqrs'
 ORDER BY c.cfg::regclass::text;

-- the log's columns
SELECT attname, format_type(atttypid, atttypmod), attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default
  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE attrelid = 'cqrs.events'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;
-- (NOT NULL is attnotnull above; PostgreSQL 18 also records it as a
-- constraint of type 'n', which this list leaves out)
SELECT conname, contype, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid = 'cqrs.events'::regclass AND contype <> 'n'
 ORDER BY conname;

-- positions come from one sequence without per-backend caching
SELECT seqrelid::regclass, seqtypid::regtype, seqstart, seqincrement, seqcache, seqcycle
  FROM pg_sequence WHERE seqrelid = 'cqrs.events_position_seq'::regclass;
SELECT pg_get_serial_sequence('cqrs.events', 'position');

-- the guard triggers fire always, also for replication
SELECT tgname, tgenabled, tgtype, tgfoid::regproc
  FROM pg_trigger
 WHERE tgrelid = 'cqrs.events'::regclass AND tgfoid = 'cqrs.forbid_change'::regproc
 ORDER BY tgname;

-- the functions of the event log
SELECT p.oid::regprocedure AS function, pg_get_function_result(p.oid) AS result,
       p.provolatile, p.proisstrict, p.proretset
  FROM pg_proc p
 WHERE p.pronamespace = 'cqrs'::regnamespace
   AND p.proname IN ('append', 'append_events', 'stream_version', 'read_stream', 'read_all',
                     'safe_position', 'category', 'forbid_change')
 ORDER BY p.proname, p.oid::regprocedure::text;
SELECT pg_get_function_arguments('cqrs.append(text, text, jsonb, jsonb, bigint, uuid)'::regprocedure);
SELECT pg_get_function_arguments('cqrs.append_events(text, jsonb, bigint)'::regprocedure);
SELECT pg_get_function_arguments('cqrs.read_stream(text, bigint, integer)'::regprocedure);
SELECT pg_get_function_arguments('cqrs.read_all(bigint, integer, text[], text[])'::regprocedure);

-- the sequence restarts with the extension
SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{}');
DROP EXTENSION pg_cqrs;
CREATE EXTENSION pg_cqrs;
SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{}');

-- nothing of the extension outlives it
DROP EXTENSION pg_cqrs;
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace::regnamespace::text = 'cqrs') AS relations,
       (SELECT count(*) FROM pg_proc WHERE pronamespace::regnamespace::text = 'cqrs') AS functions,
       (SELECT count(*) FROM pg_type WHERE typnamespace::regnamespace::text = 'cqrs') AS types;
