--
-- max_event_size.sql: the cqrs.max_event_size setting (data plus metadata)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_cqrs CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_cqrs;

-- a payload of n bytes
CREATE FUNCTION pg_temp.blob(n int) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('blob', repeat('x', n)) $$;

-- the setting, its default and its units
SHOW cqrs.max_event_size;
SELECT name, setting, unit, context, vartype, boot_val, min_val, max_val
  FROM pg_settings WHERE name = 'cqrs.max_event_size';
SET cqrs.max_event_size = '1kB';
SHOW cqrs.max_event_size;
SET cqrs.max_event_size = 2048;
SHOW cqrs.max_event_size;
SET cqrs.max_event_size = '1MB';
SHOW cqrs.max_event_size;
SELECT try($$SET cqrs.max_event_size = 'lots'$$);
SELECT try($$SET cqrs.max_event_size = '1 parsec'$$);
-- out of range (the bounds are min_val and max_val above; PostgreSQL 17
-- and later also print them with their unit, so the message stops before)
SELECT regexp_replace(try($$SET cqrs.max_event_size = -1$$), ' \(.*\)$', '') AS try;
SHOW cqrs.max_event_size;
-- the prefix is reserved: a misspelt cqrs setting is an error, not a placeholder
SELECT try($$SET cqrs.max_event_sise = '1kB'$$);
-- only a superuser may change it
SET client_min_messages = warning;
DROP ROLE IF EXISTS cqrs_regress_user;
RESET client_min_messages;
CREATE ROLE cqrs_regress_user;
SET ROLE cqrs_regress_user;
SELECT try($$SET cqrs.max_event_size = '1GB'$$);
RESET ROLE;
DROP ROLE cqrs_regress_user;
SHOW cqrs.max_event_size;

--
-- with 1kB: 2kB events fail with 54000 and write nothing
--
SET cqrs.max_event_size = '1kB';
SELECT count(*) FROM cqrs.append('blob-1', 'Small', pg_temp.blob(100));
SELECT label, try(cmd) FROM (VALUES
    ('2kB data',             $$SELECT cqrs.append('blob-1', 'Big', pg_temp.blob(2048))$$),
    ('2kB metadata',         $$SELECT cqrs.append('blob-1', 'Big', '{}', pg_temp.blob(2048))$$),
    ('600B data + 600B metadata',
                             $$SELECT cqrs.append('blob-1', 'Big', pg_temp.blob(600), pg_temp.blob(600))$$),
    ('2kB data, new stream', $$SELECT cqrs.append('blob-2', 'Big', pg_temp.blob(2048), expected_version => 0)$$),
    ('batch, second too big', $$SELECT cqrs.append_events('blob-1', jsonb_build_array(
                                 jsonb_build_object('type', 'Small', 'data', pg_temp.blob(10)),
                                 jsonb_build_object('type', 'Big', 'data', pg_temp.blob(2048))))$$),
    ('batch, metadata too big', $$SELECT cqrs.append_events('blob-1', jsonb_build_array(
                                 jsonb_build_object('type', 'Small', 'data', pg_temp.blob(600),
                                                    'metadata', pg_temp.blob(600))))$$)
) AS t(label, cmd);
-- below the limit: fine, also data and metadata that are only together near it
SELECT label, try(cmd) FROM (VALUES
    ('400B data + 400B metadata',
                             $$SELECT cqrs.append('blob-1', 'Medium', pg_temp.blob(400), pg_temp.blob(400))$$),
    ('800B data',            $$SELECT cqrs.append('blob-1', 'Medium', pg_temp.blob(800))$$),
    ('batch of small events adding up to more than 1kB',
                             $$SELECT cqrs.append_events('blob-1', (SELECT jsonb_agg(jsonb_build_object(
                                 'type', 'Small', 'data', pg_temp.blob(500))) FROM generate_series(1, 4)))$$)
) AS t(label, cmd);
SELECT stream, version, type, length(data->>'blob') AS data_len, length(metadata->>'blob') AS metadata_len
  FROM cqrs.events ORDER BY position;
SELECT cqrs.stream_version('blob-2');

-- measured uncompressed: a 4kB payload stored compressed is still too big
CREATE TEMP TABLE payloads (data jsonb);
INSERT INTO payloads VALUES (pg_temp.blob(4000));
SELECT pg_column_compression(data) IS NOT NULL AS compressed,
       pg_column_size(data) < 1024 AS small_when_compressed FROM payloads;
SELECT try($$SELECT cqrs.append('blob-3', 'Big', data) FROM payloads$$);
SELECT try($$SELECT cqrs.append('blob-3', 'Big', '{}', data) FROM payloads$$);
SELECT try($$SELECT cqrs.append_events('blob-3', jsonb_build_array(
                       jsonb_build_object('type', 'Big', 'data', data))) FROM payloads$$);
SELECT cqrs.stream_version('blob-3');
DROP TABLE payloads;

-- with 2048 bytes, the 2kB-data event fits when a little smaller
SET cqrs.max_event_size = 2048;
SELECT try($$SELECT cqrs.append('blob-1', 'Big', pg_temp.blob(1900))$$);
SELECT try($$SELECT cqrs.append('blob-1', 'Big', pg_temp.blob(2100))$$);

-- back to the default (16MB): a 2MB event is fine
RESET cqrs.max_event_size;
SHOW cqrs.max_event_size;
SELECT version FROM cqrs.append('blob-1', 'Huge', pg_temp.blob(2 * 1024 * 1024));
SELECT try($$SELECT cqrs.append('blob-1', 'TooHuge', pg_temp.blob(17 * 1024 * 1024))$$);
SELECT version, type FROM cqrs.read_stream('blob-1', 6);

DROP EXTENSION pg_cqrs;
