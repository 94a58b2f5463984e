/* pg_cqrs 0.7.0 -> 0.8.0: archiving (issue 13) */

\echo Use "ALTER EXTENSION pg_cqrs UPDATE TO '0.8.0'" to load this file. \quit

-- An archive rule is a retention rule whose events are moved out of the
-- log into cqrs.events_archive instead of deleted (src/retention.c,
-- src/archive.c).

ALTER TABLE cqrs.retention_rules
    ADD COLUMN archive boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN cqrs.retention_rules.archive IS
    'true: the rule moves events to cqrs.events_archive instead of deleting them';
COMMENT ON COLUMN cqrs.retention_rules.removed IS
    'events taken out of the log by the rule so far (deleted or moved)';

-- The archive: the log's columns and when each row was moved, partitioned
-- by month of archived_at so that an old month can be detached, dumped and
-- dropped without touching the rest.  Partitions are made by the first
-- batch that needs them (archive.c), as ordinary tables: pg_dump carries
-- them with their rows, so the parent is not a configuration table.
-- No unique constraint: a partitioned table's must include archived_at,
-- which would prove nothing; each row left the log's unique indexes in the
-- statement that inserted it here.  No index on the parent either: each
-- partition gets its own two (archive.c).  A partitioned index would be
-- made by CREATE EXTENSION on restore, so pg_dump's ATTACH PARTITION would
-- clone it onto the partition under the very name of the partition's
-- dumped index, whose CREATE INDEX then fails (and with it a
-- --single-transaction restore).
CREATE TABLE cqrs.events_archive (
    "position"  bigint      NOT NULL,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    id          uuid        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL,
    archived_at timestamptz NOT NULL
) PARTITION BY RANGE (archived_at);
COMMENT ON TABLE cqrs.events_archive IS
    'pg_cqrs archive: events moved out of the log by archive rules, one partition per month';

-- History may hold personal data of every tenant: nobody but the owner
-- reads it until a DBA grants SELECT, and row-level security without a
-- policy means a grant alone still shows nothing (add policies, as for
-- the log, or grant to a role that bypasses them).
REVOKE ALL ON cqrs.events_archive FROM PUBLIC;
ALTER TABLE cqrs.events_archive ENABLE ROW LEVEL SECURITY;

-- set_retention gains an argument, so it is made anew, and EXECUTE grants
-- on the old one go with it.  They are not re-made here: a GRANT run by an
-- extension script is recorded as the function's initial privilege, which
-- pg_dump leaves out, so a restore would lose it.  Name the roles instead.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT a.grantee::pg_catalog.regrole AS grantee
        FROM pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid OPERATOR(pg_catalog.=)
                  'cqrs.set_retention(pg_catalog.text, pg_catalog.interval, pg_catalog.int8)'::pg_catalog.regprocedure
          AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
          AND a.grantee OPERATOR(pg_catalog.<>) 0
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        RAISE WARNING 'pg_cqrs 0.8.0 re-creates cqrs.set_retention with a fourth argument: role % loses EXECUTE on it', g.grantee
            USING HINT = 'GRANT EXECUTE ON FUNCTION cqrs.set_retention(text, interval, bigint, boolean) TO ' || g.grantee::pg_catalog.text || ';';
    END LOOP;
END
$$;
DROP FUNCTION cqrs.set_retention(text, interval, bigint);
CREATE FUNCTION cqrs.set_retention(category text,
                                   max_age interval DEFAULT NULL,
                                   max_count bigint DEFAULT NULL,
                                   archive boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'cqrs_set_retention'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.set_retention(text, interval, bigint, boolean) IS
    'keep only the last max_count events, or those younger than max_age, of each stream of a category; archive moves the rest to cqrs.events_archive';
REVOKE ALL ON FUNCTION cqrs.set_retention(text, interval, bigint, boolean) FROM PUBLIC;

-- == Redaction: erasing chosen JSON paths instead of whole payloads ==
-- (src/redact.c, src/lifecycle.c)

CREATE FUNCTION cqrs.redact(data jsonb, paths jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cqrs_redact'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION cqrs.redact(jsonb, jsonb) IS
    'pg_cqrs: data with the value at each of paths (e.g. [["customer","email"]]) replaced by {"$erased": true}';

CREATE FUNCTION cqrs.redact_stream(stream text, paths jsonb,
                                   from_version bigint DEFAULT 1,
                                   to_version bigint DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cqrs_redact_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cqrs.redact_stream(text, jsonb, bigint, bigint) IS
    'pg_cqrs: erase the values at chosen JSON paths of a stream''s events (log and archive), append $StreamRedacted; returns the events changed';
-- as erase_stream: the function checks UPDATE, SELECT and INSERT on the log
REVOKE EXECUTE ON FUNCTION cqrs.redact_stream(text, jsonb, bigint, bigint) FROM PUBLIC;
