-- bench/race_append.sql - optimistic concurrency on 20 hot streams: read the
-- stream's version, then append expecting exactly that version.  A racing
-- append in between makes cqrs.append raise 40001; pgbench --max-tries
-- re-runs the whole script (same stream: pgbench replays the random state).
\set sid random(1, 20)
SELECT cqrs.stream_version('race-' || :sid) AS v \gset
SELECT * FROM cqrs.append('race-' || :sid, 'OrderPlaced', '{"amount": 42, "currency": "EUR"}', NULL, :v);
