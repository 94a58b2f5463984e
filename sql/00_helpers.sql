--
-- 00_helpers.sql: functions the other pg_regress files share (they run in
-- alphabetical order in one database, as the runner documents)
--
-- try(sql): runs a statement; 'ok', or 'SQLSTATE: message' plus the detail.
CREATE FUNCTION public.try(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    det text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL;
    RETURN st || ': ' || msg || CASE WHEN det <> '' THEN ' DETAIL: ' || det ELSE '' END;
END
$$;
-- try_ctx(sql): like try, with the lines of the error context that name a
-- projection (the others quote the extension's internal statements)
CREATE FUNCTION public.try_ctx(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    ctx text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            ctx = PG_EXCEPTION_CONTEXT;
    RETURN st || ': ' || msg || ' CONTEXT: ' ||
           coalesce((SELECT string_agg(l, ' / ') FROM regexp_split_to_table(ctx, E'\n') l
                      WHERE l LIKE 'projection %'), '(none)');
END
$$;
-- sqlstate(sql): 'ok' or just the SQLSTATE, where the wording is not ours
CREATE FUNCTION public.sqlstate(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
    RETURN st;
END
$$;
-- wait_until(condition, timeout): polls a boolean query (each time with a
-- fresh snapshot) until it is true; false if the timeout passes first.
CREATE FUNCTION public.wait_until(cond text, timeout interval DEFAULT '60 s')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + timeout;
    ok boolean;
BEGIN
    LOOP
        EXECUTE 'SELECT (' || cond || ')' INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
END
$$;
