-- bench/race_plpgsql.sql - the same race against the PL/pgSQL event store
\set sid random(1, 20)
SELECT bench.pl_stream_version('race-' || :sid) AS v \gset
SELECT * FROM bench.pl_append('race-' || :sid, 'OrderPlaced', '{"amount": 42, "currency": "EUR"}', NULL, :v);
