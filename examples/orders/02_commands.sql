-- examples/orders/02_commands.sql
--
-- The orders domain, part 2: the commands.
--
-- Each command is an ordinary PL/pgSQL function that
--   1. reads the state of its stream (orders.load_order folds cqrs.read_stream),
--   2. checks the business rules against that state, raising an error when
--      the command is not allowed (SQLSTATE P0001, the PL/pgSQL default),
--   3. appends the resulting event with expected_version = the version it
--      read, and returns the (version, position) that cqrs.append returns.
--
-- If another transaction appends to the same stream between 1 and 3, the
-- append fails with SQLSTATE 40001 (wrong expected version): the decision was
-- taken on stale state, so nothing is written and the caller re-runs the
-- command, which then decides again on fresh state.
--
-- Safe to run again: everything is CREATE OR REPLACE.

-- Register a customer: stream "customer-<id>", event CustomerRegistered.
CREATE OR REPLACE FUNCTION orders.register_customer(customer_id text, name text)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
BEGIN
    IF cqrs.stream_version('customer-' || customer_id) > 0 THEN
        RAISE EXCEPTION 'customer "%" is already registered', customer_id;
    END IF;
    RETURN QUERY
        SELECT * FROM cqrs.append('customer-' || customer_id, 'CustomerRegistered',
                                  jsonb_build_object('name', name),
                                  metadata => '{"command": "register_customer"}',
                                  expected_version => 0);
END
$$;

-- Place an order for a registered customer.
-- items: [{"sku": "BOOK-1", "qty": 2, "price": 12.50}, ...]
CREATE OR REPLACE FUNCTION orders.place_order(order_id text, customer_id text, items jsonb)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state jsonb := orders.load_order(order_id);
    total numeric;
BEGIN
    IF state->>'status' <> 'none' THEN
        RAISE EXCEPTION 'order "%" already exists', order_id;
    END IF;
    IF cqrs.stream_version('customer-' || customer_id) = 0 THEN
        RAISE EXCEPTION 'customer "%" is not registered', customer_id;
    END IF;
    IF jsonb_typeof(items) IS DISTINCT FROM 'array' OR jsonb_array_length(items) = 0 THEN
        RAISE EXCEPTION 'an order needs at least one item';
    END IF;
    IF EXISTS (SELECT FROM jsonb_array_elements(items) AS i
               WHERE ((i->>'qty')::integer > 0 AND (i->>'price')::numeric >= 0) IS NOT TRUE) THEN
        RAISE EXCEPTION 'every item needs a positive qty and a price of 0 or more';
    END IF;
    SELECT sum((i->>'qty')::integer * (i->>'price')::numeric) INTO total
    FROM jsonb_array_elements(items) AS i;

    RETURN QUERY
        SELECT * FROM cqrs.append('order-' || order_id, 'OrderPlaced',
                                  jsonb_build_object('customer', customer_id,
                                                     'items', items,
                                                     'total', total),
                                  metadata => '{"command": "place_order"}',
                                  expected_version => (state->>'version')::bigint);
END
$$;

-- Pay a placed order, exactly its total.
CREATE OR REPLACE FUNCTION orders.pay_order(order_id text, amount numeric)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state jsonb := orders.load_order(order_id);
BEGIN
    IF state->>'status' <> 'placed' THEN
        RAISE EXCEPTION 'cannot pay order "%": it is %', order_id,
            CASE state->>'status' WHEN 'none' THEN 'unknown' ELSE state->>'status' END;
    END IF;
    IF amount <> (state->>'total')::numeric THEN
        RAISE EXCEPTION 'cannot pay order "%": it costs %, not %',
            order_id, state->>'total', amount;
    END IF;
    RETURN QUERY
        SELECT * FROM cqrs.append('order-' || order_id, 'OrderPaid',
                                  jsonb_build_object('amount', amount),
                                  metadata => '{"command": "pay_order"}',
                                  expected_version => (state->>'version')::bigint);
END
$$;

-- Ship a paid order.
CREATE OR REPLACE FUNCTION orders.ship_order(order_id text, carrier text)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state jsonb := orders.load_order(order_id);
BEGIN
    IF state->>'status' <> 'paid' THEN
        RAISE EXCEPTION 'cannot ship order "%": it is %', order_id,
            CASE state->>'status' WHEN 'none' THEN 'unknown'
                                  WHEN 'placed' THEN 'not paid yet'
                                  ELSE state->>'status' END;
    END IF;
    RETURN QUERY
        SELECT * FROM cqrs.append('order-' || order_id, 'OrderShipped',
                                  jsonb_build_object('carrier', carrier),
                                  metadata => '{"command": "ship_order"}',
                                  expected_version => (state->>'version')::bigint);
END
$$;

-- Cancel an order that has not shipped yet; a paid order is refunded.
CREATE OR REPLACE FUNCTION orders.cancel_order(order_id text, reason text)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state jsonb := orders.load_order(order_id);
BEGIN
    IF state->>'status' NOT IN ('placed', 'paid') THEN
        RAISE EXCEPTION 'cannot cancel order "%": it is %', order_id,
            CASE state->>'status' WHEN 'none' THEN 'unknown'
                                  WHEN 'shipped' THEN 'already shipped'
                                  ELSE 'already ' || (state->>'status') END;
    END IF;
    RETURN QUERY
        SELECT * FROM cqrs.append('order-' || order_id, 'OrderCancelled',
                                  jsonb_build_object('reason', reason,
                                                     'refund', coalesce(state->'paid', '0')),
                                  metadata => '{"command": "cancel_order"}',
                                  expected_version => (state->>'version')::bigint);
END
$$;

-- Attach a note to an existing order.  note_id, when given, is the event's
-- id: a client that did not hear back can send the same command again with
-- the same note_id, and the note is recorded once.
CREATE OR REPLACE FUNCTION orders.add_note(order_id text, note text, note_id uuid DEFAULT NULL)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state jsonb := orders.load_order(order_id);
BEGIN
    IF state->>'status' = 'none' THEN
        RAISE EXCEPTION 'cannot add a note to order "%": it is unknown', order_id;
    END IF;
    RETURN QUERY
        SELECT * FROM cqrs.append('order-' || order_id, 'OrderNoteAdded',
                                  jsonb_build_object('note', note),
                                  metadata => '{"command": "add_note"}',
                                  expected_version => (state->>'version')::bigint,
                                  id => note_id);
END
$$;
