-- bench/plain_insert.sql - the same row INSERTed into the identical table
-- that is not captured: the floor of capture's overhead
\set n random(1, 1000000)
INSERT INTO bench_cap.plain (name, email, balance)
VALUES ('customer ' || :n, 'c' || :n || '@example.com', :n % 1000);
