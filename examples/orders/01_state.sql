-- examples/orders/01_state.sql
--
-- The orders domain, part 1: how an order's state is rebuilt from its events.
--
-- Every order is a stream named "order-<id>"; customers live in streams
-- named "customer-<id>".  An order's events are
--
--   OrderPlaced     {"customer", "items": [{"sku", "qty", "price"}], "total"}
--   OrderPaid       {"amount"}
--   OrderShipped    {"carrier"}
--   OrderCancelled  {"reason", "refund"}
--   OrderNoteAdded  {"note"}
--
-- Nothing but the events is stored.  The current state of an order is a fold
-- (a left reduce) of its events: an ordinary SQL aggregate whose state
-- function applies one event to a jsonb state.  The state remembers the
-- version of the last event folded in, so that a command can append with
-- expected_version = the version it decided on.
--
-- Safe to run again: everything is CREATE OR REPLACE.

CREATE SCHEMA IF NOT EXISTS orders;

-- Apply one event to the state of an order.  Pure: same inputs, same output.
CREATE OR REPLACE FUNCTION orders.apply_event(state jsonb, e cqrs.events)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    state := state || jsonb_build_object('version', e.version);
    CASE e.type
    WHEN 'OrderPlaced' THEN
        state := state || jsonb_build_object('status', 'placed',
                                             'customer', e.data->'customer',
                                             'total', e.data->'total');
    WHEN 'OrderPaid' THEN
        state := state || jsonb_build_object('status', 'paid',
                                             'paid', e.data->'amount');
    WHEN 'OrderShipped' THEN
        state := state || jsonb_build_object('status', 'shipped',
                                             'carrier', e.data->'carrier');
    WHEN 'OrderCancelled' THEN
        state := state || jsonb_build_object('status', 'cancelled');
    WHEN 'OrderNoteAdded' THEN
        state := state || jsonb_build_object('notes',
                     coalesce(state->'notes', '[]') || jsonb_build_array(e.data->'note'));
    ELSE
        NULL;   -- an event type this code does not know changes nothing
    END CASE;
    RETURN state;
END
$$;

-- The fold.  Use it with ORDER BY version, as in orders.load_order below:
-- an aggregate sees its rows in whatever order the plan delivers them.
CREATE OR REPLACE AGGREGATE orders.order_state(cqrs.events) (
    sfunc    = orders.apply_event,
    stype    = jsonb,
    initcond = '{"status": "none", "version": 0}'
);

-- The current state of one order: {"status": "none", "version": 0} when the
-- order does not exist yet.
CREATE OR REPLACE FUNCTION orders.load_order(order_id text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT orders.order_state(e ORDER BY e.version)
    FROM cqrs.read_stream('order-' || order_id) AS e
$$;
