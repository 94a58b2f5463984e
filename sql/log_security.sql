--
-- log_security.sql: row-level security on cqrs.events is recorded in
-- cqrs.log_security (a table pg_dump carries) and put back when a restore
-- loads it; TAP 006 does it with a real pg_dump and pg_restore
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;
SELECT count(*) FROM cqrs.log_security;
CREATE ROLE t_a; CREATE ROLE t_b;
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_a ON cqrs.events FOR SELECT TO t_a USING (metadata->>'tenant' = 'a');
CREATE POLICY "Tenant B" ON cqrs.events AS RESTRICTIVE FOR ALL TO t_b, t_a USING (cqrs.category(stream) <> 'secret') WITH CHECK (true);
SELECT id, row_security, force_row_security, jsonb_pretty(policies) FROM cqrs.log_security;
-- DDL on other tables records nothing
CREATE TABLE other (i int);
ALTER TABLE other ENABLE ROW LEVEL SECURITY;
SELECT count(*) AS still_three FROM cqrs.log_security;
-- simulate a restore: drop the security, then insert the last row as pg_restore would
DROP POLICY tenant_a ON cqrs.events; DROP POLICY "Tenant B" ON cqrs.events;
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;
SELECT id, row_security, jsonb_array_length(policies) FROM cqrs.log_security;
CREATE TEMP TABLE saved AS SELECT * FROM cqrs.log_security WHERE id = 2;
DELETE FROM cqrs.log_security;
INSERT INTO cqrs.log_security OVERRIDING SYSTEM VALUE SELECT * FROM saved;
SELECT relrowsecurity FROM pg_class WHERE oid = 'cqrs.events'::regclass;
SELECT polname, polpermissive, polroles::regrole[], pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = 'cqrs.events'::regclass;
SELECT id FROM cqrs.log_security;
-- a policy that cannot be created (its role is gone) is left out with a
-- WARNING, and row-level security stays on: the log fails closed
CREATE TEMP TABLE broken AS SELECT * FROM cqrs.log_security ORDER BY id DESC LIMIT 1;
UPDATE broken SET policies = jsonb_set(policies, '{0,roles}', '["no_such_role"]'), id = id + 100,
                  captured_at = clock_timestamp();
INSERT INTO cqrs.log_security OVERRIDING SYSTEM VALUE SELECT * FROM broken;
SELECT relrowsecurity FROM pg_class WHERE oid = 'cqrs.events'::regclass;
SELECT polname FROM pg_policy WHERE polrelid = 'cqrs.events'::regclass ORDER BY 1;
-- nobody but the log's owner may write the record, or call the capture
CREATE ROLE ls_stranger;
GRANT USAGE ON SCHEMA cqrs TO ls_stranger;
SET ROLE ls_stranger;
SELECT sqlstate($$INSERT INTO cqrs.log_security (row_security, force_row_security, policies) VALUES (false, false, '[]')$$);
SELECT sqlstate($$SELECT cqrs.save_log_security()$$);
SELECT sqlstate($$SELECT * FROM cqrs.log_security$$);
RESET ROLE;
-- turning security off is recorded too (a restore must not leave it on)
ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY;
SELECT row_security, policies FROM cqrs.log_security ORDER BY captured_at DESC LIMIT 1;
DROP TABLE other;
DROP EXTENSION pg_cqrs;
DROP ROLE t_a, t_b, ls_stranger;
