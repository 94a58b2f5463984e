-- bench/append_batch.sql - cqrs.append_events with a 100-event batch.
-- :events is the JSON array, defined by run.sh with pgbench -D; under
-- -M prepared it is sent as a parameter, as an application would send it.
\set sid random(1, 100000)
SELECT * FROM cqrs.append_events('order-' || :sid, :events);
