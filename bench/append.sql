-- bench/append.sql - one cqrs.append to one of 100000 streams (expected_version NULL)
\set sid random(1, 100000)
SELECT * FROM cqrs.append('order-' || :sid, 'OrderPlaced', '{"amount": 42, "currency": "EUR"}');
