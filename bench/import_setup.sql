-- bench/import_setup.sql - the staging table of the import group
--
-- Loaded once by bench/import.sh with psql variables :events and :streams.
-- Lives in the bench schema, so it survives the DROP/CREATE EXTENSION
-- between runs.  Row n goes to stream import-<(n - 1) % streams + 1>, so
-- the streams interleave as in a real log being migrated (with 200000
-- events over 40000 streams: 5 events each).  Most rows carry their id
-- (a migration keeps its events' ids); every 10th has none (generated on
-- import).  Every other row has metadata; the rest take the default.

SET client_min_messages = warning;
DROP TABLE IF EXISTS bench.import_staging;

CREATE TABLE bench.import_staging (
    n        bigint PRIMARY KEY,
    stream   text   NOT NULL,
    type     text   NOT NULL,
    data     jsonb  NOT NULL,
    metadata jsonb,
    id       uuid
);

INSERT INTO bench.import_staging (n, stream, type, data, metadata, id)
SELECT g,
       'import-' || ((g - 1) % :streams + 1),
       'OrderPlaced',
       jsonb_build_object('amount', g % 1000, 'currency', 'EUR'),
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('source', 'legacy', 'n', g) END,
       CASE WHEN g % 10 <> 0 THEN gen_random_uuid() END
FROM generate_series(1, :events) AS g;

VACUUM ANALYZE bench.import_staging;
