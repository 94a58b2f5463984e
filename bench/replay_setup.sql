-- bench/replay_setup.sql - the read model of the replay benchmarks: one row
-- per event (so a 1M-event log gives a 1M-row table), written by a plain
-- PL/pgSQL handler.  Its own schema, dropped before every reset of the
-- extension (the handler's argument type is cqrs.events).
CREATE SCHEMA bench_rm;
CREATE TABLE bench_rm.orders (
    "position" bigint PRIMARY KEY,
    stream     text    NOT NULL,
    amount     numeric NOT NULL,
    placed_at  timestamptz NOT NULL
);
CREATE FUNCTION bench_rm.handle(e cqrs.events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_rm.orders VALUES (e.position, e.stream, (e.data->>'amount')::numeric, e.recorded_at);
END
$$;
