-- bench/plpgsql_append.sql - the same append through the PL/pgSQL event store
\set sid random(1, 100000)
SELECT * FROM bench.pl_append('order-' || :sid, 'OrderPlaced', '{"amount": 42, "currency": "EUR"}');
