/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *		The end of a stream's life: cqrs.delete_stream, cqrs.truncate_stream
 *		and cqrs.erase_stream (0.7.0, issue 13).
 *
 * The log is append-only (guard.c); these are three of its controlled
 * exceptions.  Each one:
 *
 *	 1. checks the caller's rights first, before anything is looked up
 *		(42501): SELECT and INSERT on cqrs.events, plus DELETE to delete or
 *		truncate, UPDATE to erase.  SELECT because the statement's WHERE
 *		reads the rows, as a plain DELETE ... WHERE would need; INSERT
 *		because the operation appends a system event;
 *	 2. takes the stream's short lock and reads its head with a dirty
 *		snapshot, waiting for any transaction whose append is the head, as
 *		an append does (eventlog.c), so the head it acts on is final and no
 *		append can slip in until it has written its own system event;
 *	 3. requires the caller to see the stream's head through row-level
 *		security, else the stream "does not exist" for it (42704), as it
 *		would for a SELECT;
 *	 4. runs its one DELETE or UPDATE AS THE CALLER through SPI, prepared,
 *		fully qualified and with search_path = pg_catalog, pg_temp, between
 *		guard.c's one-shot permission (CqrsExecuteLogRewrite): table privileges and
 *		row-level security apply to it as to any DELETE or UPDATE.  Then it
 *		checks that nothing in the range is left (policies may hide rows
 *		from the caller): if anything is, it fails, so a stream is never
 *		half deleted or half erased;
 *	 5. appends a system event ("$" type) as the stream's new head, in the
 *		same transaction, so projections, the outbox and read_all consumers
 *		learn of it in order, and records the operation in
 *		cqrs.lifecycle_log (audit.c).
 *
 * What a delete, truncation or erasure does to the log it also does to the
 * stream's rows in cqrs.events_archive (0.8.0, archive.c), where archive
 * rules moved its older history: a person's data must not survive there.
 * Those statements run as the log's owner, the caller's rights on the log
 * having been checked as above; the counts returned and audited include
 * them.
 *
 * Invariants (shared with retention).  A stream's highest-version event
 * is never removed: truncation keeps it, and a hard delete leaves the
 * tombstone as head for ever.  So appends, which number from the head,
 * never reuse a version, and a deleted stream's tombstone stays its head:
 * eventlog.c refuses every append to it (55000).  Positions are never
 * reused: removed events leave gaps, like rolled-back appends.
 *
 * Why the head wait is enough against concurrent appends: an append
 * inserts its row before it releases the short lock, and we read the head
 * only while holding it.  An append that came first is the head, so we
 * wait for it to end and then act on it (it is deleted with the rest, or
 * its version fails expected_version); one that comes after finds our
 * system event as its head, still in progress, waits for our transaction
 * and then finds a tombstone (refused) or a $StreamTruncated or
 * $StreamErased head (appends after it).  The lifecycle operations
 * serialise among themselves the same way, since each appends its event.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/lifecycle.c
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
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_delete_stream);
PG_FUNCTION_INFO_V1(cqrs_truncate_stream);
PG_FUNCTION_INFO_V1(cqrs_erase_stream);
PG_FUNCTION_INFO_V1(cqrs_redact_stream);

/* Kept plans, prepared on first use (search_path restricted) */
static SPIPlanPtr head_visible_plan = NULL;
static SPIPlanPtr delete_plan = NULL;
static SPIPlanPtr erase_plan = NULL;
static SPIPlanPtr redact_plan = NULL;

/* The stream acted upon, locked, with its final head. */
typedef struct LockedStream
{
	Relation	events;
	text	   *stream;
	int64		version;		/* the head's; 0: no events */
	int64		position;
	CqrsStreamState state;
} LockedStream;

/* ----------------------------------------------------------------
 * Steps shared by the three operations
 * ----------------------------------------------------------------
 */

/*
 * Step 1; also refused in recovery and read-only transactions (25006).
 * One right at a time: pg_class_aclcheck passes when the role holds any
 * one of the rights asked for.
 */
static void
check_rights(AclMode mode, const char *function)
{
	CqrsCheckEventLogPrivilege(mode);
	CqrsCheckEventLogPrivilege(ACL_SELECT);
	CqrsCheckEventLogPrivilege(ACL_INSERT);
	PreventCommandDuringRecovery(function);
	PreventCommandIfReadOnly(function);
}

static Jsonb *
jsonb_from(const char *json)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/*
 * Step 3: the caller must see the head, else the stream does not exist for
 * it.  Without row-level security (or for the owner, or BYPASSRLS) a
 * SELECT would see it; with it, the policies decide, so we ask them.  The
 * SELECT takes a fresh snapshot: the head may have committed while we
 * waited for it.
 */
static void
require_visible_head(LockedStream *ls)
{
	bool		visible = ls->version > 0;

	if (visible &&
		check_enable_rls(RelationGetRelid(ls->events), InvalidOid, false) == RLS_ENABLED)
	{
		Oid			argtypes[2] = {TEXTOID, INT8OID};
		Datum		values[2] = {PointerGetDatum(ls->stream), Int64GetDatum(ls->version)};
		int			nestlevel;
		int			rc;

		CqrsSPIConnect();
		nestlevel = CqrsRestrictSearchPath();
		if (head_visible_plan == NULL)
			head_visible_plan = CqrsPrepareKept(
				"SELECT 1 FROM cqrs.events e"
				" WHERE e.stream OPERATOR(pg_catalog.=) $1"
				" AND e.version OPERATOR(pg_catalog.=) $2", 2, argtypes);
		rc = SPI_execute_plan(head_visible_plan, values, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "pg_cqrs: reading the head of a stream failed: %s",
				 SPI_result_code_string(rc));
		visible = SPI_processed > 0;
		CqrsRestoreSearchPath(nestlevel);
		SPI_finish();
	}
	if (!visible)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stream \"%s\" does not exist", text_to_cstring(ls->stream))));
}

/*
 * Steps 2 and 3: open the log, lock the stream, read its final head.
 * Under REPEATABLE READ or SERIALIZABLE, a head newer than the snapshot is
 * a serialization failure, as for an append: the statement would not see
 * the newer events.
 */
static void
lock_stream(text *stream, LockedStream *ls)
{
	ls->events = CqrsOpenEventLog(RowExclusiveLock);
	ls->stream = stream;
	for (;;)
	{
		TransactionId wait_for;

		CqrsLockStream(VARDATA_ANY(stream), VARSIZE_ANY_EXHDR(stream));
		wait_for = CqrsStreamHeadForChange(ls->events, stream, &ls->version,
										   &ls->position, &ls->state);
		if (!TransactionIdIsValid(wait_for))
			break;
		CqrsUnlockStream(VARDATA_ANY(stream), VARSIZE_ANY_EXHDR(stream));
		XactLockTableWait(wait_for, ls->events, NULL, XLTW_None);
	}
	CqrsCheckHeadSinceSnapshot(ls->events, stream, ls->version);
	require_visible_head(ls);
}

static void
unlock_stream(LockedStream *ls)
{
	CqrsUnlockStream(VARDATA_ANY(ls->stream), VARSIZE_ANY_EXHDR(ls->stream));
	table_close(ls->events, NoLock);
}

/* Truncating or erasing a deleted stream: 55000. */
static void
refuse_deleted(LockedStream *ls, const char *what)
{
	if (ls->state == CQRS_STREAM_LIVE)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s stream \"%s\": it is deleted", what,
					text_to_cstring(ls->stream)),
			 ls->state == CQRS_STREAM_SOFT_DELETED ?
			 errhint("Delete it with hard => true to remove its events.") : 0));
}

/*
 * Step 5: append one system event as the stream's new head (version
 * head + 1), bypassing the "$" check of event_input.c, which is for
 * callers.  Returns its position.  The stream's short lock is held.
 */
static int64
append_system_event(LockedStream *ls, const char *type, Jsonb *data)
{
	CqrsNewEvent ev;

	memset(&ev, 0, sizeof(ev));
	ev.stream = ls->stream;
	ev.type = cstring_to_text(type);
	ev.data = data;
	ev.metadata = CqrsCheckMetadata(NULL, "a system event");
	ev.version = ls->version + 1;
	CqrsWriteEvents(ls->events, &ev, 1);
	return ev.position;
}

/*
 * Step 4: run a lifecycle statement, the only UPDATE or DELETE the log's
 * guard lets through; the permission is withdrawn afterwards even on error,
 * so a caught error cannot leave it open.  SPI connected, search_path
 * restricted.  Returns the rows changed.
 */
static uint64
execute_rewrite(SPIPlanPtr plan, Datum *values, int expected_rc)
{
	return CqrsExecuteLogRewrite(plan, values, NULL, expected_rc);
}

/*
 * After step 4: count the events of the stream with versions in [lo, hi]
 * that the statement should have removed (marker NULL), erased (marker
 * given: rows that are not system events and whose data, or metadata
 * unless kept, is not the marker) or redacted (redact given: rows that
 * are not system events and whose data redaction would still change),
 * reading with a fresh snapshot that shows our own changes.  Not through
 * SQL: row-level security must not hide what is left.
 */
static int64
count_left(LockedStream *ls, int64 lo, int64 hi, Jsonb *marker, bool keep_metadata,
		   const CqrsRedactPaths *redact)
{
	Relation	index;
	IndexScanDesc scan;
	ScanKeyData keys[3];
	TupleTableSlot *slot;
	Snapshot	snapshot;
	int64		left = 0;
	MemoryContext row_cxt = AllocSetContextCreate(CurrentMemoryContext, "pg_cqrs count_left",
												  ALLOCSET_SMALL_SIZES);

	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	index = index_open(CqrsEventLog()->stream_version_idx, AccessShareLock);
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(ls->stream));
	keys[0].sk_collation = index->rd_indcollation[0];
	ScanKeyInit(&keys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(lo));
	ScanKeyInit(&keys[2], 2, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(hi));

	slot = table_slot_create(ls->events, NULL);
	scan = cqrs_index_beginscan(ls->events, index, snapshot, 3);
	index_rescan(scan, keys, 3, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		text	   *type;
		Jsonb	   *jb;

		CHECK_FOR_INTERRUPTS();
		if (marker == NULL)
		{
			left++;
			continue;
		}
		type = DatumGetTextPP(slot_getattr(slot, Anum_events_type, &isnull));
		if (VARSIZE_ANY_EXHDR(type) > 0 && *VARDATA_ANY(type) == '$')
			continue;
		jb = DatumGetJsonbP(slot_getattr(slot, Anum_events_data, &isnull));
		if (redact != NULL)
		{
			/* what redaction allocates per event goes with the event */
			MemoryContext old = MemoryContextSwitchTo(row_cxt);

			if (CqrsRedact(jb, redact, marker) != jb)
				left++;
			MemoryContextSwitchTo(old);
			MemoryContextReset(row_cxt);
			continue;
		}
		if (VARSIZE(jb) != VARSIZE(marker) || memcmp(jb, marker, VARSIZE(marker)) != 0)
		{
			left++;
			continue;
		}
		if (keep_metadata)
			continue;
		jb = DatumGetJsonbP(slot_getattr(slot, Anum_events_metadata, &isnull));
		if (VARSIZE(jb) != VARSIZE(marker) || memcmp(jb, marker, VARSIZE(marker)) != 0)
			left++;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	UnregisterSnapshot(snapshot);
	MemoryContextDelete(row_cxt);
	return left;
}

/* Rows left after step 4: row-level security hid them from the caller. */
static void
require_none_left(LockedStream *ls, int64 left, const char *what)
{
	if (left > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s stream \"%s\"", what,
						text_to_cstring(ls->stream)),
				 errdetail("Row-level security on cqrs.events keeps %lld of its events from role \"%s\"; nothing was changed.",
						   (long long) left, GetUserNameFromId(GetUserId(), false))));
}

/*
 * DELETE the stream's events with versions below before_version, as the
 * caller; then nothing of them may be left.  Returns how many went.
 */
static int64
delete_below(LockedStream *ls, int64 before_version, const char *what)
{
	Datum		values[2] = {PointerGetDatum(ls->stream), Int64GetDatum(before_version)};
	uint64		deleted;

	if (delete_plan == NULL)
	{
		Oid			argtypes[2] = {TEXTOID, INT8OID};

		delete_plan = CqrsPrepareKept(
			"DELETE FROM cqrs.events e"
			" WHERE e.stream OPERATOR(pg_catalog.=) $1"
			" AND e.version OPERATOR(pg_catalog.<) $2", 2, argtypes);
	}
	deleted = execute_rewrite(delete_plan, values, SPI_OK_DELETE);
	require_none_left(ls, count_left(ls, 1, before_version - 1, NULL, false, NULL), what);
	/* and the stream's history moved to the archive (archive.c) */
	return (int64) deleted + CqrsArchiveDelete(ls->stream, before_version);
}

/*
 * The version range of erase_stream and redact_stream, arguments argno and
 * argno + 1: from (NULL: 1) and to (NULL: the head, *has_to false).
 */
static void
version_range_args(FunctionCallInfo fcinfo, int argno, int64 *from, int64 *to, bool *has_to)
{
	*from = PG_ARGISNULL(argno) ? 1 : PG_GETARG_INT64(argno);
	*has_to = !PG_ARGISNULL(argno + 1);
	*to = *has_to ? PG_GETARG_INT64(argno + 1) : 0;
	if (*from < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_version must be positive")));
	if (*has_to && *to < *from)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("to_version must not be below from_version")));
}

static bool
bool_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	return PG_GETARG_BOOL(argno);
}

/* ----------------------------------------------------------------
 * The SQL functions
 * ----------------------------------------------------------------
 */

/*
 * cqrs.delete_stream(stream text, expected_version bigint, hard boolean)
 *	  RETURNS bigint
 *
 * Appends a $StreamDeleted tombstone ({"hard": bool}) as the stream's head
 * and returns its position.  Soft: the events stay in the log (read_all
 * returns them, then the tombstone); read_stream shows the tombstone only.
 * Hard: every event below the tombstone is deleted.  Either way appends
 * are refused for good (eventlog.c).  A soft-deleted stream may be deleted
 * again with hard => true (a second tombstone; the first goes with the
 * rest); anything else on a deleted stream is 55000.
 */
Datum
cqrs_delete_stream(PG_FUNCTION_ARGS)
{
	text	   *stream;
	bool		has_expected;
	int64		expected = 0;
	bool		hard;
	LockedStream ls;
	int64		position;
	int64		deleted = 0;
	int			nestlevel;
	char		json[160];

	check_rights(ACL_DELETE, "cqrs.delete_stream()");
	stream = CqrsCheckNameArg(fcinfo, 0, "stream");
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");
	has_expected = CqrsCheckExpectedVersion(fcinfo, 1, &expected);
	hard = bool_arg(fcinfo, 2, "hard");

	lock_stream(stream, &ls);
	if (ls.state == CQRS_STREAM_HARD_DELETED ||
		(ls.state == CQRS_STREAM_SOFT_DELETED && !hard))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" is already deleted", text_to_cstring(stream)),
				 errdetail("Its tombstone is at version %lld.", (long long) ls.version)));
	if (has_expected && expected != ls.version)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("wrong expected version for stream \"%s\"",
						text_to_cstring(stream)),
				 errdetail("Expected version %lld, but the stream is at version %lld.",
						   (long long) expected, (long long) ls.version),
				 errhint("Reload the stream and retry the command.")));

	snprintf(json, sizeof(json), "{\"hard\": %s}", hard ? "true" : "false");
	position = append_system_event(&ls, CQRS_TYPE_STREAM_DELETED, jsonb_from(json));

	CqrsSPIConnect();
	nestlevel = CqrsRestrictSearchPath();
	if (hard)
		deleted = delete_below(&ls, ls.version + 1, "delete");
	snprintf(json, sizeof(json),
			 "{\"hard\": %s, \"version\": " INT64_FORMAT ", \"position\": " INT64_FORMAT "}",
			 hard ? "true" : "false", ls.version + 1, position);
	CqrsAudit("delete_stream", text_to_cstring(stream), deleted, jsonb_from(json));
	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();

	unlock_stream(&ls);
	PG_RETURN_INT64(position);
}

/*
 * cqrs.truncate_stream(stream text, before_version bigint) RETURNS bigint
 *
 * Deletes the stream's events with versions below before_version, never
 * its head, and appends $StreamTruncated ({"before_version": n}, n the
 * first version kept); returns the number of events removed.  Removing
 * nothing (already truncated there) writes nothing and returns 0.
 */
Datum
cqrs_truncate_stream(PG_FUNCTION_ARGS)
{
	text	   *stream;
	int64		before;
	LockedStream ls;
	int64		deleted;
	int64		position;
	int			nestlevel;
	char		json[160];

	check_rights(ACL_DELETE, "cqrs.truncate_stream()");
	stream = CqrsCheckNameArg(fcinfo, 0, "stream");
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("before_version must not be null")));
	before = PG_GETARG_INT64(1);
	if (before < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("before_version must be positive")));

	lock_stream(stream, &ls);
	refuse_deleted(&ls, "truncate");
	/* the head stays: appends number from it */
	if (before > ls.version)
		before = ls.version;

	CqrsSPIConnect();
	nestlevel = CqrsRestrictSearchPath();
	deleted = before > 1 ? delete_below(&ls, before, "truncate") : 0;
	if (deleted > 0)
	{
		snprintf(json, sizeof(json), "{\"before_version\": " INT64_FORMAT "}", before);
		position = append_system_event(&ls, CQRS_TYPE_STREAM_TRUNCATED, jsonb_from(json));
		snprintf(json, sizeof(json),
				 "{\"before_version\": " INT64_FORMAT ", \"version\": " INT64_FORMAT
				 ", \"position\": " INT64_FORMAT "}",
				 before, ls.version + 1, position);
		CqrsAudit("truncate_stream", text_to_cstring(stream), deleted, jsonb_from(json));
	}
	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();

	unlock_stream(&ls);
	PG_RETURN_INT64(deleted);
}

/*
 * cqrs.erase_stream(stream text, from_version bigint, to_version bigint,
 *					 keep_metadata boolean) RETURNS bigint
 *
 * Overwrites data (and metadata unless kept) of the stream's events in
 * [from_version, to_version] (to_version NULL: the head) with
 * {"$erased": true}, keeping position, stream, version, id, type and
 * recorded_at; system events are left as they are.  Appends
 * $StreamErased ({"from_version", "to_version", "metadata_kept"}) and
 * returns the number of events changed.  Events already erased are not
 * counted, so erasing again writes nothing and returns 0.
 */
Datum
cqrs_erase_stream(PG_FUNCTION_ARGS)
{
	text	   *stream;
	int64		from;
	int64		to;
	bool		has_to;
	bool		keep_metadata;
	LockedStream ls;
	Jsonb	   *marker;
	uint64		erased;
	int64		position;
	int			nestlevel;
	char		json[200];

	check_rights(ACL_UPDATE, "cqrs.erase_stream()");
	stream = CqrsCheckNameArg(fcinfo, 0, "stream");
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");
	version_range_args(fcinfo, 1, &from, &to, &has_to);
	keep_metadata = bool_arg(fcinfo, 3, "keep_metadata");

	lock_stream(stream, &ls);
	refuse_deleted(&ls, "erase");
	if (!has_to || to > ls.version)
		to = ls.version;
	if (from > to)
	{
		unlock_stream(&ls);
		PG_RETURN_INT64(0);
	}

	marker = CqrsErasedMarker();
	CqrsSPIConnect();
	nestlevel = CqrsRestrictSearchPath();
	{
		Datum		values[5] = {PointerGetDatum(ls.stream), Int64GetDatum(from),
			Int64GetDatum(to), JsonbPGetDatum(marker), BoolGetDatum(keep_metadata)};

		if (erase_plan == NULL)
		{
			Oid			argtypes[5] = {TEXTOID, INT8OID, INT8OID, JSONBOID, BOOLOID};

			/* rows already erased are left alone, so they are not counted */
			erase_plan = CqrsPrepareKept(
				"UPDATE cqrs.events e"
				" SET data = $4,"
				" metadata = CASE WHEN $5 THEN e.metadata ELSE $4 END"
				" WHERE e.stream OPERATOR(pg_catalog.=) $1"
				" AND e.version OPERATOR(pg_catalog.>=) $2"
				" AND e.version OPERATOR(pg_catalog.<=) $3"
				" AND NOT pg_catalog.starts_with(e.type, '$')"
				" AND NOT (e.data OPERATOR(pg_catalog.=) $4"
				"  AND ($5 OR e.metadata OPERATOR(pg_catalog.=) $4))",
				5, argtypes);
		}
		erased = execute_rewrite(erase_plan, values, SPI_OK_UPDATE);
	}
	require_none_left(&ls, count_left(&ls, from, to, marker, keep_metadata, NULL), "erase");
	/* and the stream's history moved to the archive (archive.c) */
	erased += CqrsArchiveErase(ls.stream, from, to, marker, keep_metadata);
	if (erased > 0)
	{
		snprintf(json, sizeof(json),
				 "{\"from_version\": " INT64_FORMAT ", \"to_version\": " INT64_FORMAT
				 ", \"metadata_kept\": %s}",
				 from, to, keep_metadata ? "true" : "false");
		position = append_system_event(&ls, CQRS_TYPE_STREAM_ERASED, jsonb_from(json));
		snprintf(json, sizeof(json),
				 "{\"from_version\": " INT64_FORMAT ", \"to_version\": " INT64_FORMAT
				 ", \"metadata_kept\": %s, \"version\": " INT64_FORMAT
				 ", \"position\": " INT64_FORMAT "}",
				 from, to, keep_metadata ? "true" : "false", ls.version + 1, position);
		CqrsAudit("erase_stream", text_to_cstring(stream), (int64) erased, jsonb_from(json));
	}
	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();

	unlock_stream(&ls);
	PG_RETURN_INT64((int64) erased);
}

/*
 * cqrs.redact_stream(stream text, paths jsonb, from_version bigint,
 *					  to_version bigint) RETURNS bigint
 *
 * Replaces the values at the given JSON paths (redact.c) in the data of
 * the stream's events in [from_version, to_version] (to_version NULL: the
 * head) with {"$erased": true}, in the log and the archive, keeping
 * everything else; system events are left as they are.  Appends
 * $StreamRedacted ({"from_version", "to_version", "paths"}) so handlers
 * can redact their read tables the same way, and returns the number of
 * events changed; redacting again writes nothing and returns 0.  The
 * rights are erase_stream's: UPDATE, SELECT and INSERT on cqrs.events.
 */
Datum
cqrs_redact_stream(PG_FUNCTION_ARGS)
{
	text	   *stream;
	Jsonb	   *paths_arg;
	CqrsRedactPaths *paths;
	int64		from;
	int64		to;
	bool		has_to;
	LockedStream ls;
	int64		redacted;
	int64		position;
	int			nestlevel;
	StringInfoData json;

	check_rights(ACL_UPDATE, "cqrs.redact_stream()");
	stream = CqrsCheckNameArg(fcinfo, 0, "stream");
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("paths must not be null")));
	paths_arg = PG_GETARG_JSONB_P(1);
	paths = CqrsParseRedactPaths(paths_arg);
	version_range_args(fcinfo, 2, &from, &to, &has_to);

	lock_stream(stream, &ls);
	refuse_deleted(&ls, "redact");
	if (!has_to || to > ls.version)
		to = ls.version;
	if (from > to)
	{
		unlock_stream(&ls);
		PG_RETURN_INT64(0);
	}

	CqrsSPIConnect();
	nestlevel = CqrsRestrictSearchPath();
	{
		Datum		values[4] = {PointerGetDatum(ls.stream), Int64GetDatum(from),
			Int64GetDatum(to), JsonbPGetDatum(paths_arg)};

		if (redact_plan == NULL)
		{
			Oid			argtypes[4] = {TEXTOID, INT8OID, INT8OID, JSONBOID};

			/* rows redaction would not change are left alone and not counted */
			redact_plan = CqrsPrepareKept(
				"UPDATE cqrs.events e"
				" SET data = cqrs.redact(e.data, $4)"
				" WHERE e.stream OPERATOR(pg_catalog.=) $1"
				" AND e.version OPERATOR(pg_catalog.>=) $2"
				" AND e.version OPERATOR(pg_catalog.<=) $3"
				" AND NOT pg_catalog.starts_with(e.type, '$')"
				" AND cqrs.redact(e.data, $4) OPERATOR(pg_catalog.<>) e.data",
				4, argtypes);
		}
		redacted = (int64) execute_rewrite(redact_plan, values, SPI_OK_UPDATE);
	}
	require_none_left(&ls, count_left(&ls, from, to, CqrsErasedMarker(), false, paths),
					  "redact");
	redacted += CqrsArchiveRedact(ls.stream, from, to, paths_arg);
	if (redacted > 0)
	{
		initStringInfo(&json);
		appendStringInfo(&json,
						 "{\"from_version\": " INT64_FORMAT ", \"to_version\": " INT64_FORMAT
						 ", \"paths\": %s}",
						 from, to, JsonbToCString(NULL, &paths_arg->root, VARSIZE(paths_arg)));
		position = append_system_event(&ls, CQRS_TYPE_STREAM_REDACTED, jsonb_from(json.data));
		resetStringInfo(&json);
		appendStringInfo(&json,
						 "{\"from_version\": " INT64_FORMAT ", \"to_version\": " INT64_FORMAT
						 ", \"paths\": %s, \"version\": " INT64_FORMAT
						 ", \"position\": " INT64_FORMAT "}",
						 from, to, JsonbToCString(NULL, &paths_arg->root, VARSIZE(paths_arg)),
						 ls.version + 1, position);
		CqrsAudit("redact_stream", text_to_cstring(stream), redacted, jsonb_from(json.data));
	}
	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();

	unlock_stream(&ls);
	PG_RETURN_INT64(redacted);
}
