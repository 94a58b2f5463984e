-- bench/capture_setup.sql - the two identical write-model tables of the
-- capture group; loaded after every reset (the extension is re-created).
-- bench_cap.captured is captured by pg_cqrs, bench_cap.plain is not.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_cap CASCADE;
CREATE SCHEMA bench_cap;
CREATE TABLE bench_cap.captured (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name    text NOT NULL,
    email   text,
    balance numeric NOT NULL DEFAULT 0,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench_cap.plain (LIKE bench_cap.captured INCLUDING ALL);
SELECT cqrs.capture('bench_cap.captured', 'customer');
