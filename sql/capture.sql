--
-- capture.sql: change capture -- one event per row change, in the writing
-- transaction; streams, types, data and metadata; key changes; errors
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
DROP SCHEMA IF EXISTS sales CASCADE;
DROP TABLE IF EXISTS customers, customers_copy, order_lines, readings, no_key,
    part, tmp_t, unlogged_t, seen, owned CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- the log without positions, ids and times (generated)
CREATE VIEW log AS
SELECT stream, version, type, data, metadata FROM cqrs.events ORDER BY position;

--
-- insert, update, delete: one event each, data the new (old for deletes) row
--
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text);
SELECT cqrs.capture('customers');
SELECT source, category, type_prefix FROM cqrs.captures;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'customers'::regclass ORDER BY tgname;
INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com'), (2, 'Bob', NULL);
UPDATE customers SET email = 'bob@example.com' WHERE id = 2;
DELETE FROM customers WHERE id = 1;
SELECT * FROM log;
-- the category is that of the stream
SELECT DISTINCT cqrs.category(stream) FROM cqrs.events;

-- an UPDATE that changes nothing appends nothing; one that sets a column to
-- NULL does
SELECT count(*) AS before FROM cqrs.events \gset
UPDATE customers SET name = name, email = email;
SELECT count(*) - :before AS appended FROM cqrs.events;
UPDATE customers SET email = NULL;
SELECT * FROM log OFFSET :before;

-- a key change: "deleted" (old row) on the old stream, "inserted" (new row)
-- on the new one, each naming the other
SELECT count(*) AS before FROM cqrs.events \gset
UPDATE customers SET id = 20, name = 'Robert' WHERE id = 2;
SELECT * FROM log OFFSET :before;
SELECT stream, version, type FROM cqrs.read_stream('customers-2');

-- a deleted key inserted again continues its stream
SELECT count(*) AS before FROM cqrs.events \gset
INSERT INTO customers VALUES (1, 'Ann again', NULL);
SELECT * FROM log OFFSET :before;

-- rollback writes nothing, and a rolled-back row is not captured later
SELECT count(*) AS before FROM cqrs.events \gset
BEGIN;
INSERT INTO customers VALUES (3, 'Cid', NULL);
UPDATE customers SET name = 'Ann once more' WHERE id = 1;
SELECT count(*) - :before AS appended_in_transaction FROM cqrs.events;
ROLLBACK;
SELECT count(*) - :before AS appended FROM cqrs.events;
-- and a savepoint rolled back takes its events with it
BEGIN;
INSERT INTO customers VALUES (3, 'Cid', NULL);
SAVEPOINT s;
INSERT INTO customers VALUES (4, 'Dee', NULL);
ROLLBACK TO s;
COMMIT;
SELECT * FROM log OFFSET :before;

-- TRUNCATE is refused: it would remove rows without "deleted" events
SELECT try('TRUNCATE customers');
SELECT try('TRUNCATE customers CASCADE');

--
-- composite keys: values in key-column order, '\' and ',' escaped, so
-- distinct keys always give distinct streams
--
CREATE TABLE order_lines (
    line    int,
    order_id text,
    qty     int,
    note    text,
    PRIMARY KEY (order_id, line)   -- key order, not column order
);
SELECT cqrs.capture('order_lines', 'line');
INSERT INTO order_lines VALUES
    (1, '42', 2, NULL),
    (2, '42', 1, 'gift'),
    (1, 'a,b', 1, NULL),    -- ('a,b', 1)
    (1, 'a', 1, NULL),      -- these two would collide without escaping:
    (1, 'a\', 1, NULL),     -- ('a\', 1)
    (1, 'a-b', 1, NULL);    -- a '-' in the key is fine: the category ends at the first
SELECT stream, type, data FROM log WHERE stream LIKE 'line-%';
SELECT count(DISTINCT stream) = count(*) AS distinct_streams FROM cqrs.events WHERE stream LIKE 'line-%';
SELECT DISTINCT cqrs.category(stream) FROM cqrs.events WHERE stream LIKE 'line-%';

-- key types whose text output depends on settings are printed with fixed
-- ones: the stream does not depend on the session's TimeZone or DateStyle
CREATE TABLE readings (sensor int, at timestamptz, day date, value float8,
                       PRIMARY KEY (sensor, at, day));
SELECT cqrs.capture('readings');
SET TimeZone = 'America/New_York';
SET DateStyle = 'German';
INSERT INTO readings VALUES (7, '2024-01-01 12:00:00+00', '2024-01-01', 0.1);
SET TimeZone = 'Asia/Tokyo';
UPDATE readings SET value = 0.2;
RESET TimeZone;
RESET DateStyle;
SELECT stream, version, type FROM log WHERE stream LIKE 'readings-%';

--
-- a table in another schema with a quoted name, captured under a category
-- of its own; the metadata names the table, qualified and quoted
--
CREATE SCHEMA sales;
CREATE TABLE sales."Order-Items" (id bigint PRIMARY KEY, sku text);
SELECT try($$SELECT cqrs.capture('sales."Order-Items"')$$);
SELECT cqrs.capture('sales."Order-Items"', 'item');
INSERT INTO sales."Order-Items" VALUES (1, 'x');
SELECT * FROM log WHERE stream LIKE 'item-%';
-- the same table name in another schema needs another category
CREATE TABLE customers_copy (LIKE customers INCLUDING ALL);
CREATE TABLE sales.customers (LIKE customers INCLUDING ALL);
SELECT try($$SELECT cqrs.capture('sales.customers')$$);
SELECT cqrs.capture('sales.customers', 'sales_customer');
-- renaming a captured table keeps its event types; the metadata follows
ALTER TABLE sales.customers RENAME TO clients;
INSERT INTO sales.clients VALUES (1, 'Eve', NULL);
SELECT * FROM log WHERE stream LIKE 'sales_customer-%';

--
-- captured events feed sync projections like any other event
--
CREATE TABLE seen (stream text PRIMARY KEY, last_type text, name text, events int);
CREATE FUNCTION seen_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen VALUES (e.stream, e.type, e.data->>'name', 1)
    ON CONFLICT (stream) DO UPDATE
       SET last_type = excluded.last_type, name = excluded.name, events = seen.events + 1
$$;
SELECT cqrs.create_projection('seen', 'seen_handler', tables => '{seen}',
                              categories => '{customers}');
SELECT * FROM seen ORDER BY stream;
INSERT INTO customers VALUES (5, 'Fay', NULL);
UPDATE customers SET name = 'Fay B.' WHERE id = 5;
SELECT * FROM seen WHERE stream = 'customers-5';
-- and a handler error aborts the write to the captured table
CREATE FUNCTION picky(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data->>'name' = 'Nobody' THEN RAISE EXCEPTION 'no Nobody'; END IF;
END $$;
SELECT cqrs.create_projection('picky', 'picky', categories => '{customers}');
SELECT regexp_replace(try_ctx($$INSERT INTO customers VALUES (6, 'Nobody', NULL)$$),
                      'position [0-9]+', 'position N') AS error;
SELECT count(*) FROM customers WHERE id = 6;
SELECT cqrs.drop_projection('picky');

--
-- errors: each writes nothing
--
SELECT count(*) AS before FROM cqrs.events \gset
SELECT try($$SELECT cqrs.capture(NULL)$$);
SELECT try($$SELECT cqrs.uncapture(NULL)$$);
SELECT try($$SELECT cqrs.capture('customers')$$);                -- twice
SELECT try($$SELECT cqrs.capture('customers_copy', 'customers')$$); -- category taken
SELECT try($$SELECT cqrs.capture('customers_copy', '')$$);
SELECT try($$SELECT cqrs.capture('customers_copy', 'a-b')$$);
CREATE TABLE no_key (a int);
SELECT try($$SELECT cqrs.capture('no_key')$$);
CREATE TABLE part (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (1) TO (10);
SELECT try($$SELECT cqrs.capture('part')$$);
SELECT try($$SELECT cqrs.capture('part_1')$$);
CREATE TEMP TABLE tmp_t (id int PRIMARY KEY);
SELECT try($$SELECT cqrs.capture('tmp_t')$$);
CREATE UNLOGGED TABLE unlogged_t (id int PRIMARY KEY);
SELECT try($$SELECT cqrs.capture('unlogged_t')$$);
CREATE VIEW customers_v AS SELECT * FROM customers;
SELECT try($$SELECT cqrs.capture('customers_v')$$);
SELECT try($$SELECT cqrs.capture('customers_pkey')$$);
SELECT try($$SELECT cqrs.capture('cqrs.events')$$);
SELECT try($$SELECT cqrs.capture('cqrs.projections')$$);
SELECT try($$SELECT cqrs.capture('pg_class')$$);
SELECT try($$SELECT cqrs.uncapture('customers_copy')$$);
SELECT try($$SELECT cqrs.capture(0)$$);
-- the trigger function refuses tables capture() did not register
CREATE TRIGGER rogue AFTER INSERT ON customers_copy
    FOR EACH ROW EXECUTE FUNCTION cqrs.capture_trigger();
SELECT try($$INSERT INTO customers_copy VALUES (1, 'x', NULL)$$);
DROP TRIGGER rogue ON customers_copy;
SELECT try($$SELECT cqrs.capture_trigger()$$);
-- a captured table that lost its primary key refuses writes, loudly
BEGIN;
ALTER TABLE customers DROP CONSTRAINT customers_pkey;
SELECT try($$INSERT INTO customers VALUES (7, 'Gus', NULL)$$);
ROLLBACK;
-- a row larger than cqrs.max_event_size refuses the write
SET cqrs.max_event_size = 100;
SELECT try($$INSERT INTO customers VALUES (7, repeat('x', 200), NULL)$$);
RESET cqrs.max_event_size;
SELECT count(*) - :before AS appended FROM cqrs.events;
SELECT source, category FROM cqrs.captures ORDER BY category;

--
-- privileges: only the owner captures; writers need no rights on the log,
-- because the events are appended with the rights of the table's owner
--
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_capture_owner;
DROP ROLE IF EXISTS regress_capture_writer;
RESET client_min_messages;
CREATE ROLE regress_capture_owner;
CREATE ROLE regress_capture_writer;
GRANT USAGE ON SCHEMA cqrs TO regress_capture_owner, regress_capture_writer;
GRANT CREATE ON SCHEMA public TO regress_capture_owner;
SET ROLE regress_capture_owner;
CREATE TABLE owned (id int PRIMARY KEY, v text);
GRANT SELECT, INSERT, UPDATE, DELETE ON owned TO regress_capture_writer;
-- the owner may not append yet: capture says so
SELECT try($$SELECT cqrs.capture('owned')$$);
RESET ROLE;
GRANT INSERT ON cqrs.events TO regress_capture_owner;
SET ROLE regress_capture_writer;
SELECT try($$SELECT cqrs.capture('owned')$$);
SET ROLE regress_capture_owner;
SELECT cqrs.capture('owned');
SET ROLE regress_capture_writer;
SELECT try($$SELECT cqrs.uncapture('owned')$$);
-- the writer has no INSERT on cqrs.events, yet its writes are captured ...
SELECT try($$SELECT cqrs.append('owned-1', 'Forged', '{}')$$);
INSERT INTO owned VALUES (1, 'by writer');
UPDATE owned SET v = 'changed by writer';
RESET ROLE;
SELECT * FROM log WHERE stream LIKE 'owned-%';
-- ... and when the owner loses the right to append, writes fail
REVOKE INSERT ON cqrs.events FROM regress_capture_owner;
SET ROLE regress_capture_writer;
SELECT try($$INSERT INTO owned VALUES (2, 'x')$$);
RESET ROLE;

--
-- uncapture: the triggers and the catalog row go, the events stay
--
SELECT count(*) AS before FROM cqrs.events \gset
SELECT cqrs.uncapture('customers');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'customers'::regclass;
INSERT INTO customers VALUES (8, 'Hal', NULL);
TRUNCATE customers;
SELECT count(*) - :before AS appended FROM cqrs.events;
SELECT try($$SELECT cqrs.uncapture('customers')$$);
-- and the table can be captured again
SELECT cqrs.capture('customers');
INSERT INTO customers VALUES (9, 'Ida', NULL);
SELECT * FROM log OFFSET :before;
-- a trigger dropped by hand does not stop uncapture
DROP TRIGGER cqrs_capture_truncate ON customers;
SELECT cqrs.uncapture('customers');

-- DROP TABLE forgets the capture, also through DROP SCHEMA ... CASCADE
DROP TABLE order_lines;
SET client_min_messages = warning;
DROP SCHEMA sales CASCADE;
RESET client_min_messages;
SELECT source, category FROM cqrs.captures ORDER BY category;

-- DROP EXTENSION needs CASCADE while tables are captured, and removes
-- their triggers with it
SELECT split_part(try('DROP EXTENSION pg_cqrs'), ' DETAIL', 1);
SET client_min_messages = warning;
DROP EXTENSION pg_cqrs CASCADE;
RESET client_min_messages;
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'cqrs_capture%';
DROP VIEW customers_v;
DROP TABLE customers, customers_copy, readings, no_key, part, tmp_t, unlogged_t, seen, owned;
REVOKE CREATE ON SCHEMA public FROM regress_capture_owner;
DROP ROLE regress_capture_owner, regress_capture_writer;
