-- bench/baseline.sql - the tables and functions pg_cqrs is measured against
--
-- Loaded once into the benchmark cluster by bench/run.sh.  Nothing here
-- depends on pg_cqrs: the extension is dropped and re-created between runs
-- while these objects stay (their tables are truncated instead).

CREATE SCHEMA bench;

--
-- raw_events: a plain table with the same columns, defaults and indexes as
-- cqrs.events (PK on a bigint position from a CACHE 1 sequence,
-- UNIQUE (stream, version), UNIQUE (id), the two filter indexes,
-- recorded_at DEFAULT now()).
-- Inserting into it is the floor any append has to pay: no version lookup,
-- no per-stream lock, no validation.
--
CREATE SEQUENCE bench.raw_position_seq AS bigint CACHE 1 NO CYCLE;

CREATE TABLE bench.raw_events (
    "position"  bigint      NOT NULL DEFAULT nextval('bench.raw_position_seq'),
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    id          uuid        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("position"),
    UNIQUE (stream, version),
    UNIQUE (id)
);
ALTER SEQUENCE bench.raw_position_seq OWNED BY bench.raw_events."position";
-- the equivalents of the filter indexes of cqrs.events (0.7.0), so that
-- the ratio compares like with like (split_part(stream, '-', 1) is what
-- cqrs.category computes); the append_filter_index group drops them for
-- its raw_nofilter side and creates them again for its raw side
CREATE INDEX raw_events_category_position_idx ON bench.raw_events (split_part(stream, '-', 1), "position");
CREATE INDEX raw_events_type_position_idx ON bench.raw_events (type, "position");

--
-- The PL/pgSQL event store: what people write by hand.  A streams table
-- holds each stream's version; an upsert on it bumps the version and locks
-- the stream's row until commit (so appends to one stream serialise), the
-- expected version is checked, then the event goes into pl_events, which
-- again has the same columns, defaults and indexes as cqrs.events.
--
CREATE TABLE bench.pl_streams (
    stream  text   PRIMARY KEY,
    version bigint NOT NULL
);

CREATE SEQUENCE bench.pl_position_seq AS bigint CACHE 1 NO CYCLE;

CREATE TABLE bench.pl_events (
    "position"  bigint      NOT NULL DEFAULT nextval('bench.pl_position_seq'),
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    id          uuid        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("position"),
    UNIQUE (stream, version),
    UNIQUE (id)
);
ALTER SEQUENCE bench.pl_position_seq OWNED BY bench.pl_events."position";
CREATE INDEX pl_events_category_position_idx ON bench.pl_events (split_part(stream, '-', 1), "position");
CREATE INDEX pl_events_type_position_idx ON bench.pl_events (type, "position");

CREATE FUNCTION bench.pl_append(p_stream text, p_type text, p_data jsonb,
                                p_metadata jsonb DEFAULT NULL,
                                p_expected_version bigint DEFAULT NULL,
                                p_id uuid DEFAULT NULL)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_version  bigint;
    v_position bigint;
BEGIN
    INSERT INTO bench.pl_streams AS s (stream, version)
    VALUES (p_stream, 1)
    ON CONFLICT (stream) DO UPDATE SET version = s.version + 1
    RETURNING s.version INTO v_version;

    IF p_expected_version IS NOT NULL AND v_version - 1 <> p_expected_version THEN
        RAISE EXCEPTION 'wrong expected version for stream "%"', p_stream
            USING ERRCODE = 'serialization_failure',
                  DETAIL = format('Expected version %s, but the stream is at version %s.',
                                  p_expected_version, v_version - 1);
    END IF;

    INSERT INTO bench.pl_events AS e (stream, version, id, type, data, metadata)
    VALUES (p_stream, v_version, coalesce(p_id, gen_random_uuid()), p_type, p_data,
            coalesce(p_metadata, '{}'))
    RETURNING e."position" INTO v_position;

    version := v_version;
    "position" := v_position;
    RETURN NEXT;
END
$$;

-- The version a PL/pgSQL-store client reads before appending (0: no stream).
CREATE FUNCTION bench.pl_stream_version(p_stream text)
RETURNS bigint
LANGUAGE sql STABLE
AS $$ SELECT coalesce((SELECT s.version FROM bench.pl_streams s
                       WHERE s.stream = p_stream), 0) $$;
