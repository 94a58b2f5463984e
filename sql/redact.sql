--
-- redact.sql: cqrs.redact(data, paths) and cqrs.redact_stream — erasing
-- the values at chosen JSON paths of a stream's events, in the log and in
-- the archive, instead of whole payloads; its system event, audit row,
-- errors and rights.
--
CREATE EXTENSION pg_cqrs;
ALTER SYSTEM SET cqrs.retention_naptime = 0;
SELECT pg_reload_conf();

-- cqrs.redact: keys, nested keys, array indexes (negative from the end)
SELECT cqrs.redact('{"a": 1, "b": {"c": 2, "d": 3}}', '[["a"], ["b", "c"]]');
SELECT cqrs.redact('{"items": [{"card": "4111"}, {"card": "5500"}]}', '[["items", 0, "card"]]');
SELECT cqrs.redact('{"items": [1, 2, 3]}', '[["items", -1]]');
-- what is not there is skipped: a missing key, an index past the end, a
-- key looked up in an array, any path in a scalar document
SELECT cqrs.redact('{"a": 1}', '[["x"], ["a", "b"]]');
SELECT cqrs.redact('{"items": [1]}', '[["items", 5], ["items", "card"]]');
SELECT cqrs.redact('"just a string"', '[["a"]]');
-- redacting twice changes nothing; a whole erased value stays as it is
SELECT cqrs.redact(cqrs.redact('{"a": 1}', '[["a"]]'), '[["a"]]') = cqrs.redact('{"a": 1}', '[["a"]]') AS idempotent;
SELECT cqrs.redact('{"a": 1}', NULL) IS NULL AS strict;
-- paths must be an array of non-empty arrays of keys and integer indexes
SELECT try($$SELECT cqrs.redact('{}', '{"a": 1}')$$);
SELECT try($$SELECT cqrs.redact('{}', '"a"')$$);
SELECT try($$SELECT cqrs.redact('{}', '[]')$$);
SELECT try($$SELECT cqrs.redact('{}', '["a"]')$$);
SELECT try($$SELECT cqrs.redact('{}', '[[]]')$$);
SELECT try($$SELECT cqrs.redact('{}', '[["a", 1.5]]')$$);
SELECT try($$SELECT cqrs.redact('{}', '[["a", {"b": 1}]]')$$);
SELECT try($$SELECT cqrs.redact('{}', '[["a", ["b"]]]')$$);
SELECT try($$SELECT cqrs.redact('{}', '[["a", null]]')$$);

-- a customer's stream: three events, the first two archived
SELECT version FROM cqrs.append('customer-1', 'Registered', '{"name": "Ada", "email": "ada@example.org", "plan": "pro"}');
SELECT version FROM cqrs.append('customer-1', 'Moved', '{"address": {"city": "Oslo", "street": "Main 1"}, "email": "ada@example.org"}');
SELECT version FROM cqrs.append('customer-1', 'Ordered', '{"items": [{"sku": "x", "card": "4111"}], "total": 10}');
SELECT version FROM cqrs.append('customer-2', 'Registered', '{"name": "Bob", "email": "bob@example.org"}');
SELECT cqrs.set_retention('customer', max_count => 1, archive => true);
SELECT cqrs.apply_retention('customer');
SELECT cqrs.drop_retention('customer');

-- errors: nothing is written
SELECT try($$SELECT cqrs.redact_stream('customer-1', NULL)$$);
SELECT try($$SELECT cqrs.redact_stream('customer-1', '[]')$$);
SELECT try($$SELECT cqrs.redact_stream('customer-1', '[["email"]]', 0)$$);
SELECT try($$SELECT cqrs.redact_stream('customer-1', '[["email"]]', 3, 2)$$);
SELECT try($$SELECT cqrs.redact_stream('nobody-1', '[["email"]]')$$);
SELECT try($$SELECT cqrs.redact_stream(NULL, '[["email"]]')$$);

-- redact the e-mail, the name, the street and the card, wherever they are
SELECT cqrs.redact_stream('customer-1',
       '[["email"], ["name"], ["address", "street"], ["items", 0, "card"]]');
SELECT 'archive' AS place, version, type, data FROM cqrs.events_archive WHERE stream = 'customer-1'
UNION ALL
SELECT 'log', version, type, data FROM cqrs.events WHERE stream = 'customer-1'
ORDER BY version;
-- the other customer is untouched
SELECT data FROM cqrs.events WHERE stream = 'customer-2';
-- again: nothing left to change, nothing written
SELECT cqrs.redact_stream('customer-1', '[["email"], ["name"]]');
SELECT count(*) AS redacted_events FROM cqrs.events WHERE type = '$StreamRedacted';
-- a range: version 3 alone (its total goes; it has no plan)
SELECT cqrs.redact_stream('customer-1', '[["total"], ["plan"]]', 3, 3);
SELECT version, data FROM cqrs.events WHERE stream = 'customer-1' AND version >= 3 ORDER BY version;
SELECT operation, target, events, detail - 'position' AS detail FROM cqrs.lifecycle_log
WHERE operation = 'redact_stream' ORDER BY id;

-- rights: UPDATE, SELECT and INSERT on the log; EXECUTE is not PUBLIC
SELECT has_function_privilege('public', 'cqrs.redact_stream(text, jsonb, bigint, bigint)', 'EXECUTE') AS public_may;
CREATE ROLE redactor;
GRANT USAGE ON SCHEMA cqrs TO redactor;
GRANT EXECUTE ON FUNCTION cqrs.redact_stream(text, jsonb, bigint, bigint) TO redactor;
GRANT SELECT, INSERT ON cqrs.events TO redactor;
SET ROLE redactor;
SELECT try($$SELECT cqrs.redact_stream('customer-2', '[["email"]]')$$);
RESET ROLE;
GRANT UPDATE ON cqrs.events TO redactor;
-- a policy that keeps the redactor from updating an event: the whole
-- redaction fails and nothing changes
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY all_read ON cqrs.events FOR SELECT USING (true);
CREATE POLICY all_insert ON cqrs.events FOR INSERT WITH CHECK (true);
CREATE POLICY no_bob_update ON cqrs.events FOR UPDATE USING (data->>'name' IS DISTINCT FROM 'Bob');
SELECT cqrs.append('customer-2', 'Moved', '{"email": "bob@new.example.org"}') IS NOT NULL AS appended;
SET ROLE redactor;
SELECT try($$SELECT cqrs.redact_stream('customer-2', '[["email"]]')$$);
RESET ROLE;
SELECT version, data FROM cqrs.events WHERE stream = 'customer-2' ORDER BY version;
DROP POLICY no_bob_update ON cqrs.events;
CREATE POLICY all_update ON cqrs.events FOR UPDATE USING (true);
SET ROLE redactor;
SELECT cqrs.redact_stream('customer-2', '[["email"]]');
RESET ROLE;
SELECT version, data FROM cqrs.events WHERE stream = 'customer-2' ORDER BY version;
SELECT performed_by FROM cqrs.lifecycle_log ORDER BY id DESC LIMIT 1;

DROP EXTENSION pg_cqrs;
DROP ROLE redactor;
ALTER SYSTEM RESET cqrs.retention_naptime;
SELECT pg_reload_conf();
