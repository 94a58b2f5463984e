-- examples/orders/06_outbox.sql
--
-- The orders domain, part 6: telling other services, with the outbox.
--
-- Every committed event of the log can be streamed to other services by a
-- logical replication slot that uses the pg_cqrs output plugin:
--
--     SELECT pg_create_logical_replication_slot('orders_outbox', 'pg_cqrs');
--     $ pg_recvlogical -d <db> --slot orders_outbox --start -f - -o categories=order
--
-- prints one JSON object a line per event, in commit order.  Not everything
-- another service needs is an event of the log: the shipping notice below
-- is an integration message for the notification service, published with
-- cqrs.publish in the same transaction as the OrderShipped event.  It is
-- streamed with the events if, and only if, that transaction commits; it
-- is written to the WAL only, so there is no outbox table to clean up.
--
-- Safe to run again: everything is CREATE OR REPLACE.

-- Ship an order and tell the customer, atomically.
CREATE OR REPLACE FUNCTION orders.ship_order_and_notify(order_id text, carrier text)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    state jsonb := orders.load_order(order_id);
BEGIN
    RETURN QUERY SELECT * FROM orders.ship_order(order_id, carrier);
    PERFORM cqrs.publish(
        topic   => 'notifications',
        payload => jsonb_build_object('template', 'order-shipped',
                                      'customer', state->>'customer',
                                      'order', order_id,
                                      'carrier', carrier),
        key     => 'order-' || order_id);
END
$$;
