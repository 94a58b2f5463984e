-- bench/capture_insert.sql - one customer row INSERTed into the captured
-- table: the row, plus the customer.inserted event its trigger appends
\set n random(1, 1000000)
INSERT INTO bench_cap.captured (name, email, balance)
VALUES ('customer ' || :n, 'c' || :n || '@example.com', :n % 1000);
