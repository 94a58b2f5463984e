/*-------------------------------------------------------------------------
 *
 * read.c
 *		Reading the log: stream_version, read_stream, read_all, safe_position,
 *		category.
 *
 * read_stream and stream_version read with the statement's snapshot, like
 * any query.  read_all is different: it serves consumers that remember the
 * last position they saw, so it stops at the safe position (horizon.c) and
 * reads with a snapshot taken after computing it, even inside a REPEATABLE
 * READ transaction, whose older snapshot could miss an event below the safe
 * position.  That is why read_all is VOLATILE.
 *
 * A deleted stream (0.7.0: its head is a $StreamDeleted tombstone, see
 * lifecycle.c) reads as its tombstone alone in read_stream; stream_version
 * gives the tombstone's version, and read_all returns every row still in
 * the log, as for any other stream.
 *
 * Results are built in a tuplestore straight from index scans, so a long
 * stream is not held in memory twice (tuplestores spill to disk past
 * work_mem).
 *
 * Privileges.  The readers run as the caller and answer exactly what a
 * SELECT on cqrs.events would: first they require SELECT on it (42501,
 * before anything is looked up), then they ask check_enable_rls() whether
 * row-level security applies to the caller.  When it does not (no policy,
 * the owner, BYPASSRLS), the index scans above return every row, as a
 * SELECT would.  When it does, the same question is asked in SQL through
 * SPI, so that the planner adds the policies' quals: the same rows a
 * SELECT would return, read with the same snapshot as the fast path (the
 * statement's, or for read_all the one taken after the safe position),
 * through a cursor into the same tuplestore.  With row_security = off,
 * check_enable_rls() raises the error a SELECT would.  The SQL is fully
 * qualified and runs with search_path = pg_catalog, pg_temp; the
 * policies' own expressions were resolved when they were created.
 *
 * safe_position needs SELECT too; it reveals a position, never a row, and
 * is the same for every reader (the checkpoint a consumer may advance to).
 * Under RLS a filtered reader sees gaps where hidden events are, exactly
 * as a SELECT ... ORDER BY position would show them.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/read.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_category);
PG_FUNCTION_INFO_V1(cqrs_stream_version);
PG_FUNCTION_INFO_V1(cqrs_read_stream);
PG_FUNCTION_INFO_V1(cqrs_read_all);
PG_FUNCTION_INFO_V1(cqrs_safe_position);

/* Length of the category prefix of a stream name: up to the first '-'. */
static int
category_len(const char *stream, int len)
{
	const char *dash = memchr(stream, '-', len);

	return dash ? (int) (dash - stream) : len;
}

/*
 * cqrs.category(stream text) RETURNS text
 */
Datum
cqrs_category(PG_FUNCTION_ARGS)
{
	text	   *stream = PG_GETARG_TEXT_PP(0);
	const char *s = VARDATA_ANY(stream);

	PG_RETURN_TEXT_P(cstring_to_text_with_len(s, category_len(s, VARSIZE_ANY_EXHDR(stream))));
}

/* Kept plans of the row-level security path, one per reader. */
static SPIPlanPtr stream_version_plan = NULL;
static SPIPlanPtr read_stream_plan = NULL;

/* Rows fetched from the cursor of the row-level security path at a time */
#define RLS_FETCH_ROWS 1000

/*
 * What every reader checks first: SELECT on cqrs.events (42501).  Returns
 * whether row-level security applies to the current user's reads of it,
 * raising the error a SELECT would where row_security = off and a policy
 * would apply.
 */
static bool
check_may_read(void)
{
	CqrsCheckEventLogPrivilege(ACL_SELECT);
	return check_enable_rls(CqrsEventLog()->events, InvalidOid, false) == RLS_ENABLED;
}

/*
 * Prepare and keep one of the plans of the row-level security path.  The
 * plan cache re-plans it when the user or row_security changes, since the
 * policies it applies depend on both.  Called SPI-connected.
 */
static SPIPlanPtr
prepare_kept(SPIPlanPtr *planp, const char *sql, int nargs, Oid *argtypes)
{
	if (*planp == NULL)
		*planp = CqrsPrepareKept(sql, nargs, argtypes);
	return *planp;
}

/*
 * The row-level security path of read_stream and read_all: run the kept
 * plan *planp (prepared from sql on first use) with the given parameters
 * through a read-only cursor, with snapshot, or the active snapshot when it
 * is NULL, and put every row it returns into the function's tuplestore.
 * The cursor fetches RLS_FETCH_ROWS rows at a time, so a long result is
 * never held whole in SPI memory.
 */
static void
read_with_policies(ReturnSetInfo *rsinfo, SPIPlanPtr *planp, const char *sql,
				   int nargs, Oid *argtypes, Datum *values, const char *nulls,
				   Snapshot snapshot)
{
	Portal		portal;
	int			nestlevel;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
	nestlevel = CqrsRestrictSearchPath();
	prepare_kept(planp, sql, nargs, argtypes);

	/* a read-only cursor runs with the active snapshot, kept until closed */
	if (snapshot != NULL)
		PushActiveSnapshot(snapshot);
	portal = SPI_cursor_open(NULL, *planp, values, nulls, true);
	if (snapshot != NULL)
		PopActiveSnapshot();

	for (;;)
	{
		SPI_cursor_fetch(portal, true, RLS_FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
			tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);

	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();
}

static text *
stream_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stream must not be null")));
	return PG_GETARG_TEXT_PP(0);
}

/* max_count: NULL for no limit, else at least 1. */
static int64
max_count_arg(FunctionCallInfo fcinfo, int argno)
{
	int32		n;

	if (PG_ARGISNULL(argno))
		return PG_INT64_MAX;
	n = PG_GETARG_INT32(argno);
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be positive"),
				 errdetail("max_count was %d; use NULL for no limit.", n)));
	return n;
}

/*
 * cqrs.stream_version(stream text) RETURNS bigint
 *
 * The stream's version in the statement's snapshot, 0 when it has no events.
 */
Datum
cqrs_stream_version(PG_FUNCTION_ARGS)
{
	bool		rls = check_may_read();
	text	   *stream = stream_arg(fcinfo);
	Relation	events;
	int64		version,
				position;

	if (rls)
	{
		/* the highest version of the stream the policies let us see */
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1] = {PointerGetDatum(stream)};
		int			nestlevel;
		int			rc;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "pg_cqrs: SPI_connect failed");
		nestlevel = CqrsRestrictSearchPath();
		prepare_kept(&stream_version_plan,
					 "SELECT e.version FROM cqrs.events e"
					 " WHERE e.stream OPERATOR(pg_catalog.=) $1"
					 " ORDER BY e.version DESC LIMIT 1",
					 1, argtypes);
		rc = SPI_execute_plan(stream_version_plan, values, NULL, true, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "pg_cqrs: reading the version of a stream failed: %s",
				 SPI_result_code_string(rc));
		version = 0;
		if (SPI_processed > 0)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										  1, &isnull);

			version = isnull ? 0 : DatumGetInt64(d);
		}
		CqrsRestoreSearchPath(nestlevel);
		SPI_finish();
		PG_RETURN_INT64(version);
	}

	events = CqrsOpenEventLog(AccessShareLock);
	CqrsStreamHead(events, stream, GetActiveSnapshot(), &version, &position);
	table_close(events, NoLock);
	PG_RETURN_INT64(version);
}

/*
 * cqrs.read_stream(stream text, from_version bigint, max_count integer)
 *	  RETURNS SETOF cqrs.events
 *
 * The stream's events from from_version on, in version order.
 */
Datum
cqrs_read_stream(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		rls = check_may_read();
	text	   *stream = stream_arg(fcinfo);
	int64		from = PG_ARGISNULL(1) ? 1 : PG_GETARG_INT64(1);
	int64		limit = max_count_arg(fcinfo, 2);
	Relation	events;
	Relation	index;
	IndexScanDesc scan;
	ScanKeyData keys[2];
	TupleTableSlot *slot;
	int64		count = 0;

	if (from < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_version must not be negative")));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	/*
	 * A deleted stream reads as its tombstone alone (0.7.0): whoever loads
	 * it learns that it is deleted, at which version, and soft or hard,
	 * rather than folding events of an aggregate that no longer exists.
	 * The probe ignores row-level security, but only moves from_version:
	 * what is returned is still what the policies let the caller see.
	 */
	{
		int64		head_version,
					head_position;
		CqrsStreamState state;

		events = CqrsOpenEventLog(AccessShareLock);
		CqrsStreamHeadState(events, stream, GetActiveSnapshot(),
							&head_version, &head_position, &state);
		table_close(events, NoLock);
		if (state != CQRS_STREAM_LIVE && from < head_version)
			from = head_version;
	}

	if (rls)
	{
		Oid			argtypes[3] = {TEXTOID, INT8OID, INT8OID};
		Datum		values[3] = {PointerGetDatum(stream), Int64GetDatum(from),
		Int64GetDatum(limit)};

		read_with_policies(rsinfo, &read_stream_plan,
						   "SELECT e.* FROM cqrs.events e"
						   " WHERE e.stream OPERATOR(pg_catalog.=) $1"
						   " AND e.version OPERATOR(pg_catalog.>=) $2"
						   " ORDER BY e.version LIMIT $3",
						   3, argtypes, values, NULL, NULL);
		return (Datum) 0;
	}

	events = CqrsOpenEventLog(AccessShareLock);
	index = index_open(CqrsEventLog()->stream_version_idx, AccessShareLock);

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream));
	keys[0].sk_collation = index->rd_indcollation[0];
	ScanKeyInit(&keys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(from));

	slot = table_slot_create(events, NULL);
	scan = cqrs_index_beginscan(events, index, GetActiveSnapshot(), 2);
	index_rescan(scan, keys, 2, NULL, 0);
	while (count < limit && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		CHECK_FOR_INTERRUPTS();
		tuplestore_puttupleslot(rsinfo->setResult, slot);
		count++;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(events, NoLock);

	return (Datum) 0;
}

/*
 * A text[] filter argument as C strings, NULL elements dropped, into
 * *names and *n; *names is NULL when the argument is (no filter).
 */
static void
filter_arg(FunctionCallInfo fcinfo, int argno, text ***names, int *n)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			count;

	*names = NULL;
	*n = 0;
	if (PG_ARGISNULL(argno))
		return;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	*names = palloc((count + 1) * sizeof(text *));
	for (int i = 0; i < count; i++)
		if (!nulls[i])
			(*names)[(*n)++] = DatumGetTextPP(elems[i]);
}

/*
 * The row-level security path of read_all, one kept plan per filter shape
 * (none, categories, types, both), so that each plan names only the
 * conditions that apply and the planner can pick the filter indexes for a
 * generic plan too.  The category is cqrs.category(stream), the indexed
 * expression; it is LEAKPROOF (it only ever returns a prefix of its
 * argument), which lets the planner use it in an index condition under
 * the policies.  "= ANY" ignores NULL elements as the fast path does.
 */
static SPIPlanPtr read_all_plans[4];

static const char *
read_all_sql(int shape)
{
	static const char *const sql[4] = {
		"SELECT e.* FROM cqrs.events e"
		" WHERE e.\"position\" OPERATOR(pg_catalog.>) $1"
		" AND e.\"position\" OPERATOR(pg_catalog.<=) $2"
		" ORDER BY e.\"position\" LIMIT $5",

		"SELECT e.* FROM cqrs.events e"
		" WHERE e.\"position\" OPERATOR(pg_catalog.>) $1"
		" AND e.\"position\" OPERATOR(pg_catalog.<=) $2"
		" AND cqrs.category(e.stream) OPERATOR(pg_catalog.=) ANY ($3)"
		" ORDER BY e.\"position\" LIMIT $5",

		"SELECT e.* FROM cqrs.events e"
		" WHERE e.\"position\" OPERATOR(pg_catalog.>) $1"
		" AND e.\"position\" OPERATOR(pg_catalog.<=) $2"
		" AND e.type OPERATOR(pg_catalog.=) ANY ($4)"
		" ORDER BY e.\"position\" LIMIT $5",

		"SELECT e.* FROM cqrs.events e"
		" WHERE e.\"position\" OPERATOR(pg_catalog.>) $1"
		" AND e.\"position\" OPERATOR(pg_catalog.<=) $2"
		" AND cqrs.category(e.stream) OPERATOR(pg_catalog.=) ANY ($3)"
		" AND e.type OPERATOR(pg_catalog.=) ANY ($4)"
		" ORDER BY e.\"position\" LIMIT $5",
	};

	return sql[shape];
}

/*
 * cqrs.read_all(after_position bigint, max_count integer,
 *				 categories text[], types text[])
 *	  RETURNS SETOF cqrs.events
 *
 * Events after after_position, in position order, never past the safe
 * position; see the file header for the snapshot used.  With categories or
 * types, only the events that match, found through the filter indexes
 * where they exist (filterscan.c), so the cost follows what is returned
 * rather than how far the log goes; skipped events are never formed into
 * rows.  A NULL filter matches everything, an empty one nothing.
 */
Datum
cqrs_read_all(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		rls = check_may_read();
	int64		after = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	int64		limit = max_count_arg(fcinfo, 1);
	CqrsEventFilter filter;
	Relation	events;
	CqrsFilterScan *scan;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	int64		safe;
	int64		count = 0;

	if (after < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("after_position must not be negative")));
	filter_arg(fcinfo, 2, &filter.categories, &filter.ncategories);
	filter_arg(fcinfo, 3, &filter.types, &filter.ntypes);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	events = CqrsOpenEventLog(AccessShareLock);
	safe = CqrsSafePosition(events);
	if (safe <= after)
	{
		table_close(events, NoLock);
		return (Datum) 0;
	}

	/* Only a snapshot taken after the safe position shows all below it. */
	snapshot = RegisterSnapshot(GetLatestSnapshot());

	if (rls)
	{
		Oid			argtypes[5] = {INT8OID, INT8OID, TEXTARRAYOID, TEXTARRAYOID, INT8OID};
		Datum		values[5];
		char		nulls[5];
		int			shape = (PG_ARGISNULL(2) ? 0 : 1) | (PG_ARGISNULL(3) ? 0 : 2);

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(after);
		values[1] = Int64GetDatum(safe);
		values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
		nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
		values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
		nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
		values[4] = Int64GetDatum(limit);

		read_with_policies(rsinfo, &read_all_plans[shape], read_all_sql(shape),
						   5, argtypes, values, nulls, snapshot);
		UnregisterSnapshot(snapshot);
		table_close(events, NoLock);
		return (Datum) 0;
	}

	scan = CqrsFilterScanBegin(events, snapshot,
							   (filter.categories || filter.types) ? &filter : NULL,
							   after, safe);
	while (count < limit && (slot = CqrsFilterScanNext(scan)) != NULL)
	{
		tuplestore_puttupleslot(rsinfo->setResult, slot);
		count++;
	}
	CqrsFilterScanEnd(scan);
	UnregisterSnapshot(snapshot);
	table_close(events, NoLock);

	return (Datum) 0;
}

/*
 * cqrs.safe_position() RETURNS bigint
 *
 * The position a consumer may advance its checkpoint to when read_all with
 * filters returned nothing: every event at or below it is final.
 */
Datum
cqrs_safe_position(PG_FUNCTION_ARGS)
{
	Relation	events;
	int64		safe;

	CqrsCheckEventLogPrivilege(ACL_SELECT);
	events = CqrsOpenEventLog(AccessShareLock);
	safe = CqrsSafePosition(events);

	table_close(events, NoLock);
	PG_RETURN_INT64(safe);
}
