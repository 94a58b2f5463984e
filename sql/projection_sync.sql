--
-- projection_sync.sql: sync projections -- catch-up at creation, filters,
-- batches in order, errors abort the append, pause/resume exactly once, drop
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- "everything": every event, with how often it was applied (n) and in which
-- order (seq); the primary key on position makes a double application
-- visible as n = 2
CREATE SEQUENCE apply_order;
CREATE TABLE everything (
    position bigint PRIMARY KEY,
    stream   text NOT NULL,
    version  bigint NOT NULL,
    type     text NOT NULL,
    n        int NOT NULL DEFAULT 1,
    seq      bigint NOT NULL DEFAULT nextval('apply_order')
);
CREATE FUNCTION everything_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO everything (position, stream, version, type)
    VALUES (e.position, e.stream, e.version, e.type)
    ON CONFLICT (position) DO UPDATE SET n = everything.n + 1
$$;
-- every stream's events must come in version order, one by one
CREATE TABLE stream_heads (stream text PRIMARY KEY, version bigint NOT NULL);
CREATE FUNCTION stream_heads_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    prev bigint;
BEGIN
    SELECT version INTO prev FROM stream_heads WHERE stream = e.stream;
    IF coalesce(prev, 0) <> e.version - 1 THEN
        RAISE EXCEPTION 'event % of % applied after version %', e.version, e.stream, prev;
    END IF;
    INSERT INTO stream_heads VALUES (e.stream, e.version)
    ON CONFLICT (stream) DO UPDATE SET version = excluded.version;
END
$$;

--
-- a new projection first catches up on the history in the log
--
SELECT position FROM cqrs.append('order-1', 'OrderPlaced', '{"total": 10}');
SELECT position FROM cqrs.append('order-1', 'ItemAdded', '{"sku": "a"}');
SELECT position FROM cqrs.append('customer-1', 'CustomerRegistered', '{}');
SELECT position FROM cqrs.append('order-1', 'OrderPaid', '{}');
SELECT cqrs.create_projection('everything', 'everything_handler', tables => '{everything}');
SELECT cqrs.create_projection('stream_heads', 'stream_heads_handler', tables => '{stream_heads}');
SELECT position, stream, version, type, n FROM everything ORDER BY seq;
SELECT * FROM stream_heads ORDER BY stream;
-- and is caught up: no lag
SELECT name, mode, state, position, lag_events, lag_seconds, last_error, error_position
  FROM cqrs.projection_status ORDER BY name;

--
-- an append is applied in the appending statement, inside its transaction
--
SELECT position FROM cqrs.append('order-2', 'OrderPlaced', '{"total": 20}');
SELECT position, stream, version, type, n FROM everything WHERE stream = 'order-2';
BEGIN;
SELECT position FROM cqrs.append('order-2', 'ItemAdded', '{"sku": "b"}');
SELECT stream, version FROM everything WHERE stream = 'order-2' ORDER BY version;
ROLLBACK;
SELECT stream, version FROM everything WHERE stream = 'order-2' ORDER BY version;
SELECT * FROM stream_heads WHERE stream = 'order-2';
-- a rolled-back savepoint takes its events' effects with it
BEGIN;
SELECT position FROM cqrs.append('order-2', 'ItemAdded', '{"sku": "c"}');
SAVEPOINT s;
SELECT position FROM cqrs.append('order-2', 'ItemAdded', '{"sku": "d"}');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT stream, version FROM everything WHERE stream = 'order-2' ORDER BY version;
SELECT * FROM stream_heads WHERE stream = 'order-2';

-- the handler gets the event as recorded, every column
CREATE TABLE copies (LIKE cqrs.events, PRIMARY KEY (position));
CREATE FUNCTION copies_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO copies SELECT e.*
$$;
SELECT cqrs.create_projection('copies', 'copies_handler', tables => '{copies}');
SELECT position FROM cqrs.append('order-3', 'OrderPlaced', '{"total": 30, "lines": [1, 2]}',
                                 '{"user": "alice"}', 0, 'a0000000-0000-4000-8000-000000000001');
SELECT count(*) AS missing FROM (TABLE cqrs.events EXCEPT ALL TABLE copies) d;
SELECT count(*) AS unexpected FROM (TABLE copies EXCEPT ALL TABLE cqrs.events) d;
SELECT cqrs.drop_projection('copies');

-- an idempotent retry writes nothing and applies nothing
SELECT position FROM cqrs.append('order-3', 'OrderPlaced', '{"total": 30, "lines": [1, 2]}',
                                 '{"user": "alice"}', 0, 'a0000000-0000-4000-8000-000000000001');
SELECT position, n FROM everything WHERE stream = 'order-3';

--
-- a batch: applied in position (= version) order, each event once
--
SELECT version, position FROM cqrs.append_events('order-4', '[
    {"type": "OrderPlaced", "data": {"total": 40}},
    {"type": "ItemAdded", "data": {"sku": "a"}},
    {"type": "ItemAdded", "data": {"sku": "b"}},
    {"type": "ItemRemoved", "data": {"sku": "a"}},
    {"type": "OrderPaid", "data": {}}
]');
SELECT position, version, type, n FROM everything WHERE stream = 'order-4' ORDER BY seq;
SELECT bool_and(ordered) AS seq_follows_position
  FROM (SELECT seq > lag(seq, 1, 0::bigint) OVER (ORDER BY position) AS ordered FROM everything) o;
SELECT * FROM stream_heads WHERE stream = 'order-4';

--
-- filters: categories and types are checked before the handler is called,
-- so a handler that raises on anything else is never called for it
--
CREATE TABLE orders_only (position bigint PRIMARY KEY, stream text NOT NULL);
CREATE FUNCTION orders_only_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cqrs.category(e.stream) <> 'order' THEN
        RAISE EXCEPTION 'orders_only got an event of %', e.stream;
    END IF;
    INSERT INTO orders_only VALUES (e.position, e.stream);
END
$$;
CREATE TABLE placed_or_paid (position bigint PRIMARY KEY, type text NOT NULL);
CREATE FUNCTION placed_or_paid_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type NOT IN ('OrderPlaced', 'OrderPaid') THEN
        RAISE EXCEPTION 'placed_or_paid got a %', e.type;
    END IF;
    INSERT INTO placed_or_paid VALUES (e.position, e.type);
END
$$;
CREATE TABLE paid_orders (position bigint PRIMARY KEY, stream text NOT NULL);
CREATE FUNCTION paid_orders_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cqrs.category(e.stream) NOT IN ('order', 'invoice') OR e.type <> 'OrderPaid' THEN
        RAISE EXCEPTION 'paid_orders got a % of %', e.type, e.stream;
    END IF;
    INSERT INTO paid_orders VALUES (e.position, e.stream);
END
$$;
CREATE FUNCTION never_called(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'never_called was called for %', e.position;
END
$$;
-- history first: the filters apply to catch-up as well
SELECT cqrs.create_projection('orders_only', 'orders_only_handler', tables => '{orders_only}',
                              categories => '{order}');
SELECT cqrs.create_projection('placed_or_paid', 'placed_or_paid_handler', tables => '{placed_or_paid}',
                              types => '{OrderPlaced,OrderPaid}');
SELECT cqrs.create_projection('paid_orders', 'paid_orders_handler', tables => '{paid_orders}',
                              categories => '{order,invoice}', types => '{OrderPaid}');
-- empty lists match nothing, as in cqrs.read_all
SELECT cqrs.create_projection('no_categories', 'never_called', categories => '{}');
SELECT cqrs.create_projection('no_types', 'never_called', types => '{}');
SELECT cqrs.create_projection('unknown_category', 'never_called', categories => '{nothing}');
-- a category is the part of the stream name before the first '-'
SELECT position FROM cqrs.append('order', 'OrderPlaced', '{}');
SELECT position FROM cqrs.append('orders-1', 'OrderPlaced', '{}');
SELECT position FROM cqrs.append('order-5-a', 'OrderPaid', '{}');
SELECT position FROM cqrs.append('Order-6', 'OrderPaid', '{}');
SELECT position FROM cqrs.append('invoice-1', 'OrderPaid', '{}');
SELECT position FROM cqrs.append('customer-1', 'OrderPaid', '{}');
SELECT version FROM cqrs.append_events('order-7', '[
    {"type": "OrderPlaced", "data": {}},
    {"type": "ItemAdded", "data": {}},
    {"type": "orderpaid", "data": {}},
    {"type": "OrderPaid", "data": {}}
]');
SELECT o.position, o.stream, e.type FROM orders_only o JOIN cqrs.events e USING (position)
 ORDER BY position;
SELECT p.position, e.stream, p.type FROM placed_or_paid p JOIN cqrs.events e USING (position)
 ORDER BY position;
SELECT p.position, p.stream, e.type FROM paid_orders p JOIN cqrs.events e USING (position)
 ORDER BY position;
-- the read tables match their filters over the whole log, both ways
SELECT count(*) AS differences FROM (
    (SELECT position FROM cqrs.events WHERE cqrs.category(stream) = 'order'
     EXCEPT SELECT position FROM orders_only)
    UNION ALL
    (SELECT position FROM orders_only
     EXCEPT SELECT position FROM cqrs.events WHERE cqrs.category(stream) = 'order')) d;
SELECT count(*) AS differences FROM (
    (SELECT position, type FROM cqrs.events WHERE type IN ('OrderPlaced', 'OrderPaid')
     EXCEPT SELECT position, type FROM placed_or_paid)
    UNION ALL
    (SELECT position, type FROM placed_or_paid
     EXCEPT SELECT position, type FROM cqrs.events WHERE type IN ('OrderPlaced', 'OrderPaid'))) d;
SELECT cqrs.drop_projection(name)
  FROM unnest(ARRAY['no_categories', 'no_types', 'unknown_category']) name;

--
-- a handler error aborts the append: nothing is recorded, no read table
-- changes, and the error names the projection and the event's position
--
CREATE FUNCTION fussy_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ? 'poison' THEN
        RAISE EXCEPTION 'fussy refuses % of %', e.type, e.stream
            USING ERRCODE = 'check_violation', HINT = 'Do not poison the log.';
    END IF;
END
$$;
SELECT cqrs.create_projection('fussy', 'fussy_handler');
SELECT max(position) AS head, count(*) AS events FROM cqrs.events \gset
SELECT count(*) AS everything_rows, sum(n) AS everything_n FROM everything \gset
SELECT try_ctx($$SELECT cqrs.append('order-8', 'OrderPlaced', '{"poison": true}')$$);
SELECT count(*) = :events AS log_unchanged FROM cqrs.events;
SELECT cqrs.stream_version('order-8');
-- "everything" ran before "fussy" (projections run in name order): its
-- work rolled back with the append
SELECT count(*) = :everything_rows AND sum(n) = :everything_n AS read_table_unchanged FROM everything;
SELECT count(*) FROM stream_heads WHERE stream = 'order-8';
-- the error as the client sees it (its context quotes internal statements,
-- shown above): the handler's SQLSTATE, message and hint are kept, so
-- callers can tell errors apart
\set SHOW_CONTEXT never
SELECT cqrs.append('order-8', 'OrderPlaced', '{"poison": 1}') \gset
\echo :LAST_ERROR_SQLSTATE
-- a poisoned event in a batch rejects the whole batch; the context names
-- the event's position within the log
SELECT try_ctx($$SELECT cqrs.append_events('order-8', '[
    {"type": "OrderPlaced", "data": {}},
    {"type": "ItemAdded", "data": {"poison": "here"}},
    {"type": "ItemAdded", "data": {}}
]')$$);
SELECT count(*) = :events AS log_unchanged FROM cqrs.events;
SELECT count(*) = :everything_rows AS read_table_unchanged FROM everything;
-- the transaction is aborted, as for any error
BEGIN;
SELECT position > :head AS appended FROM cqrs.append('order-9', 'OrderPlaced', '{}');
SELECT cqrs.append('order-9', 'ItemAdded', '{"poison": true}') \gset
\echo :LAST_ERROR_SQLSTATE
SELECT 1;
ROLLBACK;
\set SHOW_CONTEXT errors
SELECT cqrs.stream_version('order-9');
SELECT count(*) FROM everything WHERE stream = 'order-9';
-- the clean events go through
SELECT version FROM cqrs.append('order-8', 'OrderPlaced', '{}');
SELECT stream, version, n FROM everything WHERE stream = 'order-8';
SELECT cqrs.drop_projection('fussy');

-- a handler that fails on history: create_projection fails, names the
-- projection and the event, and leaves nothing behind
CREATE TABLE picky (position bigint PRIMARY KEY);
CREATE FUNCTION picky_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.type = 'ItemRemoved' THEN
        RAISE EXCEPTION 'picky cannot handle %', e.type;
    END IF;
    INSERT INTO picky VALUES (e.position);
END
$$;
SELECT cqrs.create_projection('picky', 'picky_handler', tables => '{picky}');
SELECT count(*) FROM cqrs.projections WHERE name = 'picky';
SELECT count(*) FROM picky;
-- with a filter that keeps it away from the poison, it works
SELECT cqrs.create_projection('picky', 'picky_handler', tables => '{picky}',
                              types => '{OrderPlaced,OrderPaid}');
SELECT count(*) FROM picky;

--
-- pause: appends are not applied, the position is recorded; resume catches
-- up, applying each event exactly once
--
SELECT cqrs.pause_projection('everything');
SELECT max(position) AS head FROM cqrs.events \gset
SELECT name, state, position = :head AS position_is_head, lag_events, lag_seconds
  FROM cqrs.projection_status WHERE name = 'everything';
SELECT version FROM cqrs.append('order-10', 'OrderPlaced', '{}');
SELECT version FROM cqrs.append_events('order-10', '[
    {"type": "ItemAdded", "data": {}},
    {"type": "OrderPaid", "data": {}}
]');
SELECT count(*) FROM everything WHERE stream = 'order-10';
-- the other projections went on
SELECT * FROM stream_heads WHERE stream = 'order-10';
SELECT name, state, position = :head AS position_is_head, lag_events, lag_seconds > 0 AS lagging
  FROM cqrs.projection_status WHERE name = 'everything';
SELECT cqrs.wait_for_projection('everything', :head, '0');
SELECT cqrs.wait_for_projection('everything', :head + 1, '0');
SELECT cqrs.resume_projection('everything');
SELECT position - :head AS after_head, stream, version, type, n FROM everything
 WHERE position > :head ORDER BY seq;
SELECT name, state, position = (SELECT max(position) FROM cqrs.events) AS caught_up,
       lag_events, lag_seconds
  FROM cqrs.projection_status WHERE name = 'everything';
-- every event of the log is in "everything", once
SELECT count(*) = (SELECT count(*) FROM cqrs.events) AS all_there, max(n) AS max_n FROM everything;
-- a pause in a transaction that appended records the head including its
-- own events; a rolled-back pause changes nothing
BEGIN;
SELECT position AS own FROM cqrs.append('order-11', 'OrderPlaced', '{}') \gset
SELECT cqrs.pause_projection('everything');
SELECT position = :own AS position_is_own_event FROM cqrs.projections WHERE name = 'everything';
ROLLBACK;
SELECT state FROM cqrs.projections WHERE name = 'everything';
SELECT version FROM cqrs.append('order-11', 'OrderPlaced', '{}');
SELECT stream, version, n FROM everything WHERE stream = 'order-11';
-- resume in the same transaction as the pause and the appends
BEGIN;
SELECT cqrs.pause_projection('everything');
SELECT version FROM cqrs.append('order-11', 'ItemAdded', '{}');
SELECT count(*) FROM everything WHERE stream = 'order-11';
SELECT cqrs.resume_projection('everything');
SELECT count(*) FROM everything WHERE stream = 'order-11';
COMMIT;
SELECT stream, version, n FROM everything WHERE stream = 'order-11' ORDER BY version;
-- a resume whose catch-up fails fails as a whole: still paused, nothing applied
SELECT cqrs.pause_projection('picky');
SELECT version FROM cqrs.append('order-12', 'OrderPlaced', '{}');
SELECT count(*) AS picky_rows FROM picky \gset
CREATE OR REPLACE FUNCTION picky_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'picky is broken';
END
$$;
SELECT cqrs.resume_projection('picky');
SELECT state FROM cqrs.projections WHERE name = 'picky';
SELECT count(*) = :picky_rows AS unchanged FROM picky;

--
-- sync projections and the deferred machinery
--
SELECT cqrs.process_projections('everything');
SELECT label, try(cmd) FROM (VALUES
    ('skip a sync event', $$SELECT cqrs.skip_event('everything', 1)$$),
    ('skip, paused sync', $$SELECT cqrs.skip_event('picky', 1)$$)
) AS t(label, cmd);
SELECT max(position) AS head FROM cqrs.events \gset
SELECT cqrs.wait_for_projection('everything', :head);
SELECT cqrs.wait_for_projection('everything', :head + 1, '0');
SELECT cqrs.wait_for_projection('everything', :head + 1, '100 ms');
SELECT cqrs.projection_position('everything') = :head AS at_head;

--
-- appends made under session_replication_role = replica reach sync
-- projections too (0.5.0: the append applies them, no trigger that
-- replica mode would switch off); a superuser's direct INSERT, a restore,
-- is not applied: its read tables are restored with it
--
SET session_replication_role = replica;
SELECT version FROM cqrs.append('order-12', 'OrderPlaced', '{}');
RESET session_replication_role;
SELECT stream, version, type, n FROM everything WHERE stream = 'order-12';
SELECT nextval('cqrs.events_position_seq') AS restored_position \gset
INSERT INTO cqrs.events (position, stream, version, id, type, data)
VALUES (:restored_position, 'restored-1', 1, gen_random_uuid(), 'Restored', '{}');
SELECT count(*) AS restored_rows_applied FROM everything WHERE stream = 'restored-1';

--
-- drop: the read table stays, and is no longer kept up to date
--
SELECT cqrs.drop_projection('everything');
SELECT count(*) AS rows_before FROM everything \gset
SELECT version FROM cqrs.append('order-13', 'OrderPlaced', '{}');
SELECT count(*) = :rows_before AS unchanged FROM everything;
SELECT * FROM stream_heads WHERE stream = 'order-13';
SELECT name FROM cqrs.projection_status ORDER BY name;

-- normal operation raised no NOTICE above; clean up
SELECT cqrs.drop_projection(name) FROM cqrs.projections;
DROP TABLE everything, stream_heads, copies, orders_only, placed_or_paid, paid_orders, picky;
DROP SEQUENCE apply_order;
DROP FUNCTION everything_handler(cqrs.events), stream_heads_handler(cqrs.events),
    copies_handler(cqrs.events), orders_only_handler(cqrs.events),
    placed_or_paid_handler(cqrs.events), paid_orders_handler(cqrs.events),
    never_called(cqrs.events), fussy_handler(cqrs.events), picky_handler(cqrs.events);
DROP EXTENSION pg_cqrs;
