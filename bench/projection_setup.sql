-- bench/projection_setup.sql - the read table and handler of the projection
-- benchmarks: a count of events per stream, kept with INSERT ... ON CONFLICT.
-- Lives in its own schema, dropped before every reset of the extension
-- (the handler's argument type is cqrs.events).
CREATE SCHEMA bench_proj;
CREATE TABLE bench_proj.stream_counts (stream text PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION bench_proj.count_event(e cqrs.events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_proj.stream_counts AS c (stream, n) VALUES (e.stream, 1)
    ON CONFLICT (stream) DO UPDATE SET n = c.n + 1;
END
$$;
-- The hand-written alternative to a sync projection: the same handler from
-- an ordinary row trigger.
CREATE FUNCTION bench_proj.count_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bench_proj.count_event(NEW);
    RETURN NULL;
END
$$;
