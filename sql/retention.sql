--
-- retention.sql: cqrs.set_retention, drop_retention, apply_retention and
-- the catalog cqrs.retention_rules.  What a pass removes (max_count,
-- max_age), what it never removes (a stream's head, events a deferred
-- projection of the category has not applied), its cursors, its audit
-- rows, and every error.
--
-- The worker's background passes are turned off for this file
-- (cqrs.retention_naptime = 0) so that every removal here is the
-- foreground call's; test/t/024_retention.pl covers the worker.
--
CREATE EXTENSION pg_cqrs;
ALTER SYSTEM SET cqrs.retention_naptime = 0;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);

-- fill(stream, n) appends n events to a stream; kept shows what is left
CREATE FUNCTION fill(s text, n int) RETURNS void LANGUAGE sql AS $$
    SELECT count(*) FROM generate_series(1, n) i,
           LATERAL cqrs.append(s, 'Happened', jsonb_build_object('i', i)) a
$$;
CREATE VIEW kept AS
    SELECT stream, string_agg(version::text, ',' ORDER BY version) AS versions
    FROM cqrs.events GROUP BY stream ORDER BY stream;

SELECT fill('order-1', 10), fill('order-2', 3), fill('order-3', 1), fill('cart-1', 10);

-- errors: bad arguments (22023), unknown rules (42704)
SELECT try($$SELECT cqrs.set_retention(NULL, max_count => 3)$$);
SELECT try($$SELECT cqrs.set_retention('', max_count => 3)$$);
SELECT try($$SELECT cqrs.set_retention('order-1', max_count => 3)$$);
SELECT try($$SELECT cqrs.set_retention('order')$$);
SELECT try($$SELECT cqrs.set_retention('order', max_count => 0)$$);
SELECT try($$SELECT cqrs.set_retention('order', max_age => '0 seconds')$$);
SELECT try($$SELECT cqrs.set_retention('order', max_age => '-1 day')$$);
SELECT try($$SELECT cqrs.drop_retention('order')$$);
SELECT try($$SELECT cqrs.drop_retention(NULL)$$);
SELECT try($$SELECT cqrs.apply_retention('order')$$);
SELECT try($$SELECT cqrs.apply_retention(max_events => 0)$$);
SELECT cqrs.apply_retention();   -- no rules: nothing to do
SELECT count(*) FROM cqrs.retention_rules;

-- max_count: keep the last 3 events of each stream of "order"
SELECT cqrs.set_retention('order', max_count => 3);
SELECT category, max_age, max_count, scan_position, age_position, removed, set_by = current_user AS by_me
FROM cqrs.retention_rules;
-- max_events stops a pass early, at whole scanned events; the next resumes
SELECT cqrs.apply_retention('order', max_events => 4);
SELECT scan_position > 0 AND scan_position < cqrs.safe_position() AS stopped_midway, removed
FROM cqrs.retention_rules;
SELECT cqrs.apply_retention('order');
SELECT * FROM kept;
-- the rule's scan reached the bound; a second pass finds nothing
SELECT scan_position = cqrs.safe_position() AS at_bound, removed FROM cqrs.retention_rules;
SELECT cqrs.apply_retention();
-- each batch that removed something is audited, with the rule and range
SELECT operation, target, events, detail->'rule' AS rule,
       (detail->>'first_position')::bigint <= (detail->>'last_position')::bigint AS range_ok,
       performed_by = current_user AS by_me
FROM cqrs.lifecycle_log ORDER BY id;

-- new events push older ones out of the last 3
SELECT fill('order-2', 2), fill('order-3', 1);
SELECT cqrs.apply_retention('order');
SELECT * FROM kept;

-- the same rule again keeps its place; a changed rule rescans from 0
SELECT cqrs.set_retention('order', max_count => 3);
SELECT scan_position > 0 AS kept_place FROM cqrs.retention_rules;
SELECT cqrs.set_retention('order', max_count => 1);
SELECT scan_position, age_position FROM cqrs.retention_rules;
SELECT cqrs.apply_retention('order');
SELECT * FROM kept;

-- a head is never removed, whatever the rule: max_age of a microsecond
-- makes every event of an earlier transaction old
SELECT cqrs.set_retention('cart', max_age => '1 microsecond');
SELECT cqrs.apply_retention('cart');
SELECT * FROM kept WHERE stream LIKE 'cart-%';
-- a young event stops the age scan where it is, and waits to age
SELECT cqrs.set_retention('cart', max_age => '1 hour');
SELECT fill('cart-1', 2);
SELECT cqrs.apply_retention('cart');
SELECT age_position FROM cqrs.retention_rules WHERE category = 'cart';
SELECT * FROM kept WHERE stream LIKE 'cart-%';
-- an old head passed by the age scan goes once a new event supersedes it
SELECT cqrs.set_retention('cart', max_age => '1 microsecond');
SELECT fill('cart-2', 1);
SELECT cqrs.apply_retention('cart');
SELECT age_position = cqrs.safe_position() AS passed FROM cqrs.retention_rules WHERE category = 'cart';
SELECT fill('cart-2', 1);
SELECT cqrs.apply_retention('cart');
SELECT * FROM kept WHERE stream LIKE 'cart-%';

-- both limits: an event goes when either says so
SELECT fill('both-1', 5);
SELECT cqrs.set_retention('both', max_age => '1 hour', max_count => 2);
SELECT cqrs.apply_retention('both');
SELECT * FROM kept WHERE stream = 'both-1';
-- max_events of 1 where one scanned event frees two: the call still moves
SELECT fill('both-1', 3);
SELECT cqrs.set_retention('both', max_age => '1 microsecond', max_count => 3);
SELECT cqrs.apply_retention('both', max_events => 1) BETWEEN 1 AND 2 AS one_or_two;
SELECT cqrs.apply_retention('both');
SELECT * FROM kept WHERE stream = 'both-1';

-- a deferred projection of the category holds retention back until it
-- has applied the events (paused before the worker could run it)
CREATE TABLE seen (stream text PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION on_order(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen VALUES (e.stream, 1)
    ON CONFLICT (stream) DO UPDATE SET n = seen.n + 1
$$;
BEGIN;
SELECT cqrs.create_projection('orders', 'on_order', 'deferred', '{seen}', '{order}');
SELECT cqrs.pause_projection('orders');
COMMIT;
SELECT fill('order-4', 3);
SELECT cqrs.apply_retention('order');
SELECT * FROM kept WHERE stream = 'order-4';
SELECT cqrs.resume_projection('orders');
SELECT cqrs.process_projections('orders') >= 0 AS processed;
SELECT sum(n) > 0 AS applied FROM seen;
SELECT cqrs.apply_retention('order');
SELECT * FROM kept WHERE stream = 'order-4';
SELECT cqrs.drop_projection('orders');

-- another category's events and streams without a rule are untouched
SELECT fill('other-1', 4);
SELECT cqrs.apply_retention();
SELECT * FROM kept WHERE stream = 'other-1';

-- appends go on after a pass: versions continue from the kept head
SELECT version FROM cqrs.append('order-1', 'Happened', '{}');
SELECT cqrs.stream_version('order-1');

-- the log's guard still refuses a plain DELETE
SELECT sqlstate($$DELETE FROM cqrs.events WHERE stream = 'order-1'$$);

-- drop: the rule is gone, removed events stay removed
SELECT cqrs.drop_retention('order');
SELECT category FROM cqrs.retention_rules ORDER BY category;
SELECT operation, target, events FROM cqrs.lifecycle_log
WHERE operation <> 'retention' ORDER BY id;

-- pg_dump keeps the rules (a configuration table of the extension)
SELECT c.relname FROM pg_extension x, unnest(x.extconfig) r(oid)
JOIN pg_class c ON c.oid = r.oid
WHERE x.extname = 'pg_cqrs' AND c.relname = 'retention_rules';

-- EXECUTE is not granted to PUBLIC
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may
FROM pg_proc p WHERE p.pronamespace = 'cqrs'::regnamespace
  AND p.proname IN ('set_retention', 'drop_retention', 'apply_retention') ORDER BY 1;

DROP FUNCTION fill(text, int);
DROP VIEW kept;
DROP TABLE seen;
DROP FUNCTION on_order(cqrs.events);
DROP EXTENSION pg_cqrs;
ALTER SYSTEM RESET cqrs.retention_naptime;
SELECT pg_reload_conf();
