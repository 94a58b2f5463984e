--
-- category.sql: cqrs.category -- a stream's name up to its first '-'
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

SELECT s AS stream, cqrs.category(s) AS category, cqrs.category(s) IS NULL AS is_null
  FROM unnest(ARRAY['order-42', 'order', 'a-b-c', 'order-', '-42', '-', '', 'Order-7',
                    'übung-1', 'two words-1', NULL]) WITH ORDINALITY AS t(s, n)
 ORDER BY n;

-- the category of every appended event's stream is what the filters of read_all use
SELECT count(*) FROM cqrs.append('order-42', 'OrderPlaced', '{}');
SELECT count(*) FROM cqrs.append('order', 'Configured', '{}');
SELECT count(*) FROM cqrs.append('orderline-1', 'LineAdded', '{}');
SELECT stream, cqrs.category(stream) FROM cqrs.events ORDER BY position;
SELECT stream FROM cqrs.read_all(categories => ARRAY[cqrs.category('order-1')]);

-- immutable and strict: usable in an index expression
CREATE INDEX events_category_idx_test ON cqrs.events (cqrs.category(stream));
DROP INDEX cqrs.events_category_idx_test;
SELECT provolatile, proisstrict, proparallel FROM pg_proc
 WHERE oid = 'cqrs.category(text)'::regprocedure;

DROP EXTENSION pg_cqrs;
