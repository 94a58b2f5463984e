-- bench/retention_append.sql - one cqrs.append to one of the :streams
-- "acct" streams of the retention group's log, while a pass removes their
-- older events
\set sid random(1, :streams)
SELECT * FROM cqrs.append('acct-' || :sid, 'Deposited', '{"amount": 42}');
