-- examples/orders/05_capture.sql: a write-model table as a source of events
--
-- Not every part of a system is event-sourced.  The product catalogue here
-- is an ordinary table that the back office edits with INSERT, UPDATE and
-- DELETE.  cqrs.capture() turns each of those row changes into an event in
-- the same transaction -- stream product-<sku>, type products.inserted /
-- products.updated / products.deleted, the row as data -- so projections
-- (and the outbox) see catalogue changes exactly as they see domain events,
-- with no second write to keep in step.

CREATE TABLE IF NOT EXISTS orders.products (
    sku     text PRIMARY KEY,
    name    text NOT NULL,
    price   numeric NOT NULL CHECK (price >= 0),
    active  boolean NOT NULL DEFAULT true
);

SELECT cqrs.capture('orders.products', 'product')
 WHERE NOT EXISTS (SELECT FROM cqrs.captures WHERE source = 'orders.products'::regclass);

-- A read model fed by the captured events: each product's price history.
CREATE TABLE IF NOT EXISTS orders.price_history (
    sku         text NOT NULL,
    version     bigint NOT NULL,
    price       numeric,
    change      text NOT NULL,
    PRIMARY KEY (sku, version)
);

CREATE OR REPLACE FUNCTION orders.apply_price_history(e cqrs.events)
RETURNS void
LANGUAGE sql
AS $$
    -- only events that set or end a price: an update of the name alone is skipped
    INSERT INTO orders.price_history (sku, version, price, change)
    SELECT e.data->>'sku', e.version,
           CASE WHEN e.type <> 'products.deleted' THEN (e.data->>'price')::numeric END,
           split_part(e.type, '.', 2)
     WHERE e.type <> 'products.updated'
        OR (e.data->>'price')::numeric IS DISTINCT FROM
           (SELECT h.price FROM orders.price_history h
             WHERE h.sku = e.data->>'sku' ORDER BY h.version DESC LIMIT 1)
$$;
