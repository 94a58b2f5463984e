--
-- filtered_reads.sql: read_all and deferred projections with category and
-- type filters, through the filter indexes (0.7.0) and without them
--
-- Every filtered read must return exactly what the unfiltered log filtered
-- in SQL returns: same rows, same order, same limit, never past the safe
-- position.  The index statistics show that the filter indexes, not the
-- position index, did the work.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP ROLE IF EXISTS regress_filtered_reader;
DROP ROLE IF EXISTS regress_filtered_stranger;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- the indexes are there after CREATE EXTENSION (which runs the upgrade
-- chain), valid, and cqrs.category is LEAKPROOF
SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'cqrs.events'::regclass
   AND c.relname IN ('events_category_position_idx', 'events_type_position_idx')
 ORDER BY 1;
SELECT proleakproof FROM pg_proc WHERE oid = 'cqrs.category(text)'::regprocedure;

-- 1500 events over the categories c (most), b, a (streams "a-N" and "a"),
-- solo (a stream without a dash), then 10 of the rare category at the end;
-- positions 1..1510 in a fresh extension
SELECT count(*) FROM generate_series(1, 1500) i,
    LATERAL cqrs.append(CASE WHEN i % 7 = 0 THEN 'b-' || i % 5
                             WHEN i % 11 = 0 THEN 'a-' || i % 3
                             WHEN i % 13 = 0 THEN 'a'
                             WHEN i % 17 = 0 THEN 'solo'
                             ELSE 'c-' || i % 10 END,
                        'T' || i % 4, jsonb_build_object('i', i));
SELECT count(*) FROM generate_series(1, 10) i,
    LATERAL cqrs.append('rare-' || i % 2, 'RareHappened', jsonb_build_object('i', i));
SELECT min(position), max(position), count(*) FROM cqrs.events;

-- what read_all must return: the log filtered in SQL
CREATE FUNCTION expected_read(after bigint, n int, cats text[], typs text[])
RETURNS bigint[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(position ORDER BY position), '{}') FROM (
        SELECT e.position FROM cqrs.events e
         WHERE e.position > after AND e.position <= cqrs.safe_position()
           AND (cats IS NULL OR cqrs.category(e.stream) = ANY (cats))
           AND (typs IS NULL OR e.type = ANY (typs))
         ORDER BY e.position LIMIT n) s
$$;
-- what it returns, in the order returned
CREATE FUNCTION actual_read(after bigint, n int, cats text[], typs text[])
RETURNS bigint[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(r.position ORDER BY r.ordinality), '{}')
      FROM cqrs.read_all(after, n, cats, typs) WITH ORDINALITY AS r
$$;
-- the cases: after_position inside and between matches, limits, NULL
-- elements, empty arrays, repeated names, names that match nothing
CREATE TABLE cases AS
SELECT a.after, n.n, c.cats, t.typs
  FROM unnest(ARRAY[0, 13, 14, 1500, 1505, 2000]::bigint[]) a(after),
       unnest(ARRAY[NULL, 3, 50]::int[]) n(n),
       (VALUES (NULL::text[]), ('{}'), ('{a}'), ('{b,a}'), ('{a,NULL}'), ('{NULL}'),
               ('{a,a}'), ('{rare}'), ('{nope}'), ('{solo,c}'), ('{a-1}'), ('{c,b,a,solo,rare}')) c(cats),
       (VALUES (NULL::text[]), ('{}'), ('{T1,T3}'), ('{RareHappened}'),
               ('{NULL,T2}'), ('{T0,T0}')) t(typs);
SELECT count(*) AS cases, count(*) FILTER (WHERE expected_read(after, n, cats, typs) <> '{}') AS non_empty
  FROM cases;

-- with the indexes
SELECT count(*) AS mismatches FROM cases
 WHERE actual_read(after, n, cats, typs) IS DISTINCT FROM expected_read(after, n, cats, typs);
-- a few by hand
SELECT actual_read(0, NULL, '{rare}', NULL) AS rare;
SELECT actual_read(1503, 3, '{rare}', NULL) AS rare_after_1503;
SELECT actual_read(0, 5, '{a,b}', '{T1}') AS a_b_t1;
SELECT actual_read(0, NULL, '{}', NULL) AS empty_categories,
       actual_read(0, NULL, NULL, '{}') AS empty_types,
       actual_read(0, NULL, '{NULL}', NULL) AS null_category;

-- The filter indexes did the work: a rare category reads its 10 entries
-- from the category index, a rare type its 10 from the type index, and
-- the position index gives only the safe position (a probe of the head
-- per call), where the old scan read all 1510 positions per call.
CREATE FUNCTION index_counters(OUT idx text, OUT scans bigint, OUT tuples bigint)
RETURNS SETOF record LANGUAGE sql AS $$
    SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes
     WHERE relid = 'cqrs.events'::regclass
$$;
SELECT pg_stat_force_next_flush();
CREATE TEMP TABLE counters_before AS SELECT * FROM index_counters();
SELECT count(*) FROM cqrs.read_all(0, 100, '{rare}');
SELECT count(*) FROM cqrs.read_all(0, 100, NULL, '{RareHappened}');
SELECT pg_stat_force_next_flush();
SELECT a.idx, a.scans - b.scans > 0 AS scanned,
       CASE WHEN a.idx = 'events_pkey' THEN (a.tuples - b.tuples < 100)::text
            ELSE (a.tuples - b.tuples)::text END AS tuples_read
  FROM index_counters() a JOIN counters_before b USING (idx)
 WHERE a.idx IN ('events_pkey', 'events_category_position_idx', 'events_type_position_idx')
 ORDER BY 1;

-- (That a filtered read never passes the safe position while another
-- transaction's append is in flight is shown by the isolation spec
-- read_all_filtered_horizon: it takes a second session.)

--
-- Deferred projections with filters: the batch collects only its events
-- through the filter index, and the checkpoint still moves to the safe
-- position across the non-matching ones.
--
CREATE TABLE rare_seen (position bigint PRIMARY KEY, stream text NOT NULL);
CREATE FUNCTION rare_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO rare_seen VALUES (e.position, e.stream)
$$;
CREATE TABLE t3_seen (position bigint PRIMARY KEY);
CREATE FUNCTION t3_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO t3_seen VALUES (e.position)
$$;
SELECT pg_stat_force_next_flush();
DROP TABLE counters_before;
CREATE TEMP TABLE counters_before AS SELECT * FROM index_counters();
BEGIN;
SELECT cqrs.create_projection('rare_p', 'rare_handler', 'deferred', '{rare_seen}',
                              categories => '{rare}');
SELECT cqrs.create_projection('t3_p', 't3_handler', 'deferred', '{t3_seen}',
                              categories => '{a,b}', types => '{T3}');
SELECT cqrs.process_projections() AS applied;
SELECT name, position = cqrs.safe_position() AS at_safe_position FROM cqrs.projection_status
 WHERE name IN ('rare_p', 't3_p') ORDER BY name;
SELECT cqrs.pause_projection('rare_p'), cqrs.pause_projection('t3_p');
COMMIT;
SELECT pg_stat_force_next_flush();
SELECT a.idx, a.scans - b.scans > 0 AS scanned
  FROM index_counters() a JOIN counters_before b USING (idx)
 WHERE a.idx IN ('events_category_position_idx', 'events_type_position_idx')
 ORDER BY 1;
SELECT (SELECT array_agg(position ORDER BY position) FROM rare_seen)
       = expected_read(0, NULL, '{rare}', NULL) AS rare_applied_exactly;
SELECT (SELECT array_agg(position ORDER BY position) FROM t3_seen)
       = expected_read(0, NULL, '{a,b}', '{T3}') AS t3_applied_exactly;
-- a long stretch of other events: the checkpoint moves across it, nothing
-- is applied, and a limited batch (max_events) still ends at the safe
-- position when fewer events match
SELECT count(*) FROM generate_series(1, 300) i,
    LATERAL cqrs.append('c-' || i % 10, 'T0', '{}');
SELECT position AS rare_last FROM cqrs.append('rare-1', 'RareHappened', '{}') \gset
SELECT count(*) FROM generate_series(1, 300) i,
    LATERAL cqrs.append('c-' || i % 10, 'T0', '{}');
BEGIN;
SELECT cqrs.resume_projection('rare_p'), cqrs.resume_projection('t3_p');
SELECT cqrs.process_projections('rare_p', 5) AS applied;
SELECT cqrs.process_projections('t3_p', 5) AS applied;
SELECT name, position = cqrs.safe_position() AS at_safe_position FROM cqrs.projection_status
 WHERE name IN ('rare_p', 't3_p') ORDER BY name;
SELECT max(position) = :rare_last AS got_the_new_one, count(*) FROM rare_seen;
SELECT cqrs.drop_projection('rare_p'), cqrs.drop_projection('t3_p');
COMMIT;

--
-- Row-level security: the SQL path, with the indexed expression, returns
-- what the reader's own SELECT returns.
--
CREATE ROLE regress_filtered_reader;
GRANT USAGE ON SCHEMA cqrs TO regress_filtered_reader;
GRANT SELECT ON cqrs.events TO regress_filtered_reader;
GRANT SELECT ON cases TO regress_filtered_reader;
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_no_b ON cqrs.events FOR SELECT TO regress_filtered_reader
    USING (stream NOT LIKE 'b-%' AND stream <> 'rare-0');
SET ROLE regress_filtered_reader;
SELECT count(*) AS visible FROM cqrs.events;
SELECT count(*) AS mismatches FROM cases
 WHERE actual_read(after, n, cats, typs) IS DISTINCT FROM expected_read(after, n, cats, typs);
SELECT actual_read(0, NULL, '{rare}', NULL) AS rare_visible;
SELECT actual_read(0, NULL, '{b}', NULL) AS b_hidden;
RESET ROLE;
-- and the planner takes the filter indexes for it (cqrs.category is
-- LEAKPROOF, so its condition may go below the policy's)
SELECT pg_stat_force_next_flush();
DROP TABLE counters_before;
CREATE TEMP TABLE counters_before AS SELECT * FROM index_counters();
SET ROLE regress_filtered_reader;
SELECT count(*) FROM cqrs.read_all(0, 100, '{rare}');
SELECT count(*) FROM cqrs.read_all(0, 100, NULL, '{RareHappened}');
RESET ROLE;
SELECT pg_stat_force_next_flush();
SELECT a.idx, a.scans - b.scans > 0 AS scanned,
       CASE WHEN a.idx = 'events_pkey' THEN (a.tuples - b.tuples < 100)::text
            ELSE (a.tuples - b.tuples)::text END AS tuples_read
  FROM index_counters() a JOIN counters_before b USING (idx)
 WHERE a.idx IN ('events_pkey', 'events_category_position_idx', 'events_type_position_idx')
 ORDER BY 1;
DROP POLICY reader_no_b ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;

--
-- create_filter_indexes / drop_filter_indexes: for the log's owner only
--
CREATE ROLE regress_filtered_stranger;
GRANT USAGE ON SCHEMA cqrs TO regress_filtered_stranger;
SET ROLE regress_filtered_stranger;
SELECT sqlstate($$SELECT cqrs.drop_filter_indexes()$$) AS stranger_drop,
       sqlstate($$SELECT cqrs.create_filter_indexes()$$) AS stranger_create;
RESET ROLE;
-- even with EXECUTE, DROP INDEX wants the table's owner
GRANT EXECUTE ON FUNCTION cqrs.drop_filter_indexes() TO regress_filtered_stranger;
SET ROLE regress_filtered_stranger;
SELECT sqlstate($$SELECT cqrs.drop_filter_indexes()$$) AS stranger_with_execute;
RESET ROLE;
SELECT count(*) AS filter_indexes FROM pg_class
 WHERE relname IN ('events_category_position_idx', 'events_type_position_idx');

-- Without the indexes: the same rows, from the position index
SELECT cqrs.drop_filter_indexes();
SELECT count(*) AS filter_indexes FROM pg_class
 WHERE relname IN ('events_category_position_idx', 'events_type_position_idx');
SELECT count(*) AS mismatches FROM cases
 WHERE actual_read(after, n, cats, typs) IS DISTINCT FROM expected_read(after, n, cats, typs);
SELECT cqrs.drop_filter_indexes();	-- again: nothing to do
SELECT cqrs.create_filter_indexes();
SELECT cqrs.create_filter_indexes();	-- again: nothing to do
SELECT count(*) AS mismatches FROM cases
 WHERE actual_read(after, n, cats, typs) IS DISTINCT FROM expected_read(after, n, cats, typs);

DROP TABLE cases;
DROP FUNCTION expected_read, actual_read, index_counters, rare_handler, t3_handler;
DROP TABLE rare_seen, t3_seen;
DROP EXTENSION pg_cqrs;
DROP ROLE regress_filtered_reader;
DROP ROLE regress_filtered_stranger;
