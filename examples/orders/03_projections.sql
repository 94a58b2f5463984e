-- examples/orders/03_projections.sql: read models of the orders domain
--
-- Two projections keep read tables up to date from the log:
--   orders.order_summary   sync: changes in the same transaction as the append,
--                          so a command's caller can read its own write at once;
--   orders.customer_stats  deferred: applied after commit by pg_cqrs's worker,
--                          so appends never wait for it.
-- A handler is an ordinary function (e cqrs.events) RETURNS void, applying one
-- event.  Handlers write with INSERT ... ON CONFLICT / UPDATE so that they are
-- easy to read, but pg_cqrs applies each event exactly once anyway.

CREATE TABLE IF NOT EXISTS orders.order_summary (
    order_id    text PRIMARY KEY,
    customer    text NOT NULL,
    status      text NOT NULL,
    total       numeric NOT NULL,
    notes       integer NOT NULL DEFAULT 0,
    version     bigint NOT NULL
);

CREATE OR REPLACE FUNCTION orders.apply_order_summary(e cqrs.events)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF e.type = 'OrderPlaced' THEN
        INSERT INTO orders.order_summary (order_id, customer, status, total, version)
        VALUES (substr(e.stream, 7), e.data->>'customer', 'placed',
                (e.data->>'total')::numeric, e.version);
    ELSE
        UPDATE orders.order_summary
           SET status = CASE e.type
                          WHEN 'OrderPaid' THEN 'paid'
                          WHEN 'OrderShipped' THEN 'shipped'
                          WHEN 'OrderCancelled' THEN 'cancelled'
                          ELSE status END,
               notes = notes + (e.type = 'OrderNoteAdded')::integer,
               version = e.version
         WHERE order_id = substr(e.stream, 7);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS orders.customer_stats (
    customer    text PRIMARY KEY,
    orders      integer NOT NULL,
    spent       numeric NOT NULL
);

-- Only OrderPlaced and OrderPaid events reach this handler (the projection's
-- types filter), and it refuses totals it cannot make sense of: the demo
-- feeds it one such "poisoned" event to show how a deferred projection stops.
CREATE OR REPLACE FUNCTION orders.apply_customer_stats(e cqrs.events)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF e.type = 'OrderPlaced' THEN
        IF (e.data->>'total')::numeric < 0 THEN
            RAISE EXCEPTION 'order % has a negative total', e.stream;
        END IF;
        INSERT INTO orders.customer_stats AS s (customer, orders, spent)
        VALUES (e.data->>'customer', 1, 0)
        ON CONFLICT (customer) DO UPDATE SET orders = s.orders + 1;
    ELSE
        UPDATE orders.customer_stats
           SET spent = spent + (e.data->>'amount')::numeric
         WHERE customer = (SELECT data->>'customer' FROM cqrs.events
                            WHERE stream = e.stream AND version = 1);
    END IF;
END
$$;
