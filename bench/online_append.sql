-- online_sync group: one append per transaction, each client to a stream of its own
SELECT cqrs.append('live-' || :client_id, 'OrderPlaced', '{"amount": 1}');
