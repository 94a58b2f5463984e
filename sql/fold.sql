--
-- fold.sql: folding a stream into state with a plain SQL aggregate
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- the state transition: one event applied to the state so far
CREATE FUNCTION order_apply(state jsonb, e cqrs.events) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE e.type
        WHEN 'OrderPlaced' THEN
            jsonb_build_object('status', 'placed', 'customer', e.data->'customer',
                               'items', '{}'::jsonb, 'total', 0)
        WHEN 'ItemAdded' THEN
            jsonb_set(jsonb_set(state, ARRAY['items', e.data->>'sku'],
                                to_jsonb(coalesce((state->'items'->>(e.data->>'sku'))::int, 0)
                                         + (e.data->>'qty')::int)),
                      '{total}', to_jsonb((state->>'total')::numeric
                                          + (e.data->>'qty')::int * (e.data->>'price')::numeric))
        WHEN 'ItemRemoved' THEN
            jsonb_set(state #- ARRAY['items', e.data->>'sku'],
                      '{total}', to_jsonb((state->>'total')::numeric
                                          - (state->'items'->>(e.data->>'sku'))::int
                                            * (e.data->>'price')::numeric))
        WHEN 'OrderPaid' THEN jsonb_set(state, '{status}', '"paid"')
        ELSE state
    END
$$;

CREATE AGGREGATE order_state(cqrs.events) (
    sfunc = order_apply,
    stype = jsonb,
    initcond = '{}'
);

SELECT count(*) FROM cqrs.append_events('order-42', '[
    {"type": "OrderPlaced", "data": {"customer": "alice"}},
    {"type": "ItemAdded",   "data": {"sku": "apple", "qty": 3, "price": 0.5}},
    {"type": "ItemAdded",   "data": {"sku": "pear",  "qty": 1, "price": 2}},
    {"type": "ItemAdded",   "data": {"sku": "apple", "qty": 1, "price": 0.5}},
    {"type": "Annotated",   "data": {"note": "ignored by the fold"}},
    {"type": "ItemRemoved", "data": {"sku": "pear", "price": 2}}
]');
SELECT count(*) FROM cqrs.append('order-43', 'OrderPlaced', '{"customer": "bob"}');
SELECT count(*) FROM cqrs.append('order-42', 'OrderPaid', '{}');

-- the current state of one order
SELECT order_state(e ORDER BY e.version) FROM cqrs.read_stream('order-42') e;
-- its state as of version 3: a stream read up to a version
SELECT order_state(e ORDER BY e.version) FROM cqrs.read_stream('order-42', 1, 3) e;
-- the state of every order, straight from the log
SELECT stream, order_state(e ORDER BY e.version) FROM cqrs.events e
 WHERE cqrs.category(stream) = 'order' GROUP BY stream ORDER BY stream;
-- a stream with no events folds to the initial state
SELECT order_state(e) FROM cqrs.read_stream('order-44') e;

DROP AGGREGATE order_state(cqrs.events);
DROP FUNCTION order_apply(jsonb, cqrs.events);
DROP EXTENSION pg_cqrs;
