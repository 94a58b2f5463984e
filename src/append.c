/*-------------------------------------------------------------------------
 *
 * append.c
 *		cqrs.append and cqrs.append_events: versioned, idempotent appends.
 *
 * An append, in order:
 *	 0. checks that the caller may append (INSERT on cqrs.events: a table
 *		privilege, so \dp, GRANT, REVOKE and role membership work as for any
 *		table) and that the transaction may write.  First thing: a refused
 *		caller learns nothing (no version, no "which stream holds this id")
 *		and burns no position;
 *	 1. validates every argument; bad input is an error before anything is
 *		locked or written;
 *	 2. takes the stream's short lock (eventlog.c) and reads its head with a
 *		dirty snapshot; if another transaction's uncommitted append is the
 *		head, lets go, waits for that transaction to end, and starts over.
 *		So appends to one stream run one at a time, appends to other
 *		streams are not held up, and nothing is held per stream until
 *		commit;
 *	 3. looks up the ids the caller gave, the same way: an event already
 *		recorded in this stream makes the call an idempotent no-op returning
 *		the original (version, position); one recorded elsewhere is an
 *		error;
 *	 4. checks expected_version against the head (40001 on a mismatch);
 *	 5. publishes the transaction's floor (horizon.c), takes positions from
 *		the sequence, inserts the rows with a prepared plan, and releases
 *		the short lock.
 *
 * Writing.  As a rule the rows are stored directly: heap_insert and the
 * index insertions, exactly what the executor would do for our INSERT
 * (same WAL, same unique checks), without starting an executor for it.
 * Whenever an INSERT would do more -- the log has row-level security (WITH
 * CHECK policies apply to the appender), a trigger other than our guards
 * (a DBA's audit trigger, say), a rule, a CHECK constraint or a column we
 * do not fill -- the rows go through a prepared INSERT (SPI) instead, so
 * that all of it happens as for any INSERT.  Those plans are prepared once
 * per backend and kept; they are fully qualified and run with search_path
 * = pg_catalog, pg_temp.  Just before executing one, we tell the guard
 * (guard.c) that the next INSERT on the log is ours: every other INSERT or
 * COPY by an ordinary role is refused.  Sync projections are applied here
 * too, after the rows are stored (apply_sync_projections).
 *
 * The checks of step 0 and 1, and the limits on names and sizes, are in
 * event_input.c; bulk import (import.c) writes through CqrsWriteEvents.
 *
 * Under REPEATABLE READ or SERIALIZABLE, a head newer than the transaction
 * snapshot means another transaction appended to the stream since ours
 * began: we raise a serialization failure, as UPDATE would, rather than
 * append on top of state the caller could not have seen.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/append.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_append);
PG_FUNCTION_INFO_V1(cqrs_append_events);

/* Result of an append: the last event's version and position. */
typedef struct AppendResult
{
	int64		version;
	int64		position;
} AppendResult;

static SPIPlanPtr insert_one_plan = NULL;	/* one event */
static SPIPlanPtr insert_many_plan = NULL;	/* any number, any streams */

/* ----------------------------------------------------------------
 * Writing
 * ----------------------------------------------------------------
 */

/*
 * Run one of our INSERT plans, the only statement the guard lets through
 * for an ordinary role (guard.c).  The permission is withdrawn afterwards
 * even on error, in case the statement failed before the guard consumed
 * it: a caught error must not leave the door open for the next INSERT.
 */
static int
execute_insert(SPIPlanPtr plan, Datum *values, const char *nulls)
{
	volatile int rc = 0;

	CqrsAllowAppendInsert();
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		CqrsEndAppendInsert();
	}
	PG_END_TRY();
	return rc;
}

static Datum
array_of(Datum *elems, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(elems, n, type, typlen, typbyval, typalign));
}

/*
 * Whether our INSERT would do nothing beyond storing the rows and their
 * index entries, so that insert_direct may do just that.  It would do more
 * if the log had row-level security (WITH CHECK policies apply to the
 * appender), rules, a trigger other than our guards (a DBA's own audit
 * trigger, say), CHECK constraints, or a column we do not fill (one with a
 * default).  The guards themselves only matter for other writers: they let
 * append's own INSERT through.
 */
static bool
direct_insert_ok(Relation events)
{
	TriggerDesc *trigdesc = events->trigdesc;
	TupleConstr *constr = RelationGetDescr(events)->constr;
	int			columns = 0;

	if (events->rd_rel->relrowsecurity || events->rd_rel->relhasrules)
		return false;
	if (constr != NULL && (constr->num_check > 0 || constr->has_generated_stored))
		return false;
	for (int a = 0; a < RelationGetDescr(events)->natts; a++)
		if (!TupleDescAttr(RelationGetDescr(events), a)->attisdropped)
			columns++;
	if (columns != Anum_events_recorded_at)
		return false;
	if (trigdesc != NULL)
	{
		Oid			insert_guard = CqrsEventLog()->forbid_direct_insert;

		for (int i = 0; i < trigdesc->numtriggers; i++)
		{
			Trigger    *t = &trigdesc->triggers[i];

			if (TRIGGER_FOR_INSERT(t->tgtype) &&
				!(t->tgfoid == insert_guard && !TRIGGER_FOR_ROW(t->tgtype)))
				return false;
		}
	}
	return true;
}

/*
 * Store n events and their index entries, as the executor would for our
 * INSERT when direct_insert_ok: the same heap_insert (hence the same WAL,
 * which the output plugin decodes, and the same statistics), the same
 * index insertions and unique checks.  What it saves, per append, is
 * starting and ending an executor for a cached plan, the search_path
 * switch that keeps that plan valid, and firing the statement guard that
 * would let us through anyway: about a tenth of an append's CPU.
 */
static void
insert_direct(Relation events, CqrsNewEvent *evs, int n, TimestampTz recorded_at)
{
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot = table_slot_create(events, NULL);
	CommandId	cid = GetCurrentCommandId(true);

	InitResultRelInfo(rri, events, 1, NULL, 0);
	ExecOpenIndices(rri, false);

	for (int i = 0; i < n; i++)
	{
		ExecClearTuple(slot);
		/* a dropped column is null; ours are set below */
		memset(slot->tts_isnull, true, slot->tts_tupleDescriptor->natts * sizeof(bool));
		for (int a = Anum_events_position; a <= Anum_events_recorded_at; a++)
			slot->tts_isnull[a - 1] = false;
		slot->tts_values[Anum_events_position - 1] = Int64GetDatum(evs[i].position);
		slot->tts_values[Anum_events_stream - 1] = PointerGetDatum(evs[i].stream);
		slot->tts_values[Anum_events_version - 1] = Int64GetDatum(evs[i].version);
		slot->tts_values[Anum_events_id - 1] = UUIDPGetDatum(&evs[i].id);
		slot->tts_values[Anum_events_type - 1] = PointerGetDatum(evs[i].type);
		slot->tts_values[Anum_events_data - 1] = JsonbPGetDatum(evs[i].data);
		slot->tts_values[Anum_events_metadata - 1] = JsonbPGetDatum(evs[i].metadata);
		slot->tts_values[Anum_events_recorded_at - 1] = TimestampTzGetDatum(recorded_at);
		ExecStoreVirtualTuple(slot);

		table_tuple_insert(events, slot, cid, 0, NULL);
		ResetPerTupleExprContext(estate);
		(void) cqrs_insert_index_tuples(rri, slot, estate);
	}

	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	/* as after a statement: what follows in the transaction sees the rows */
	CommandCounterIncrement();
}

/*
 * Insert n events, positions and versions set.  One row goes through a
 * VALUES plan; more go through one INSERT ... SELECT over unnest(), so a
 * batch costs one executor run, not n.  recorded_at is given rather than
 * left to the column's default (now(), the same value) so that the rows
 * handed to sync projections are exactly the stored ones.
 */
static void
insert_events(Relation events, CqrsNewEvent *evs, int n, TimestampTz recorded_at)
{
	Datum		values[8];
	char		nulls[8];
	int			rc;
	int			nestlevel;

	if (direct_insert_ok(events))
	{
		insert_direct(events, evs, n, recorded_at);
		return;
	}

	CqrsSPIConnect();
	nestlevel = CqrsRestrictSearchPath();
	memset(nulls, ' ', sizeof(nulls));

	if (n == 1)
	{
		if (insert_one_plan == NULL)
		{
			Oid			types[8] = {INT8OID, TEXTOID, INT8OID, UUIDOID, TEXTOID, JSONBOID,
			JSONBOID, TIMESTAMPTZOID};

			insert_one_plan = CqrsPrepareKept(
				"INSERT INTO cqrs.events"
				" (\"position\", stream, version, id, type, data, metadata, recorded_at)"
				" VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", 8, types);
		}
		values[0] = Int64GetDatum(evs[0].position);
		values[1] = PointerGetDatum(evs[0].stream);
		values[2] = Int64GetDatum(evs[0].version);
		values[3] = UUIDPGetDatum(&evs[0].id);
		values[4] = PointerGetDatum(evs[0].type);
		values[5] = JsonbPGetDatum(evs[0].data);
		values[6] = JsonbPGetDatum(evs[0].metadata);
		values[7] = TimestampTzGetDatum(recorded_at);
		rc = execute_insert(insert_one_plan, values, nulls);
	}
	else
	{
		Datum	   *cols[7];

		if (insert_many_plan == NULL)
		{
			Oid			argtypes[8] = {INT8ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, UUIDARRAYOID,
			TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID, TIMESTAMPTZOID};

			insert_many_plan = CqrsPrepareKept(
				"INSERT INTO cqrs.events"
				" (\"position\", stream, version, id, type, data, metadata, recorded_at)"
				" SELECT u.p, u.s, u.v, u.i, u.t, u.d, u.m, $8"
				" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
				"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5),"
				"  pg_catalog.unnest($6), pg_catalog.unnest($7)) AS u(p, s, v, i, t, d, m)",
				8, argtypes);
		}
		for (int c = 0; c < 7; c++)
			cols[c] = palloc(n * sizeof(Datum));
		for (int i = 0; i < n; i++)
		{
			cols[0][i] = Int64GetDatum(evs[i].position);
			cols[1][i] = PointerGetDatum(evs[i].stream);
			cols[2][i] = Int64GetDatum(evs[i].version);
			cols[3][i] = UUIDPGetDatum(&evs[i].id);
			cols[4][i] = PointerGetDatum(evs[i].type);
			cols[5][i] = JsonbPGetDatum(evs[i].data);
			cols[6][i] = JsonbPGetDatum(evs[i].metadata);
		}
		values[0] = array_of(cols[0], n, INT8OID);
		values[1] = array_of(cols[1], n, TEXTOID);
		values[2] = array_of(cols[2], n, INT8OID);
		values[3] = array_of(cols[3], n, UUIDOID);
		values[4] = array_of(cols[4], n, TEXTOID);
		values[5] = array_of(cols[5], n, JSONBOID);
		values[6] = array_of(cols[6], n, JSONBOID);
		values[7] = TimestampTzGetDatum(recorded_at);
		rc = execute_insert(insert_many_plan, values, nulls);
	}

	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "pg_cqrs: inserting %d events failed: %s",
			 n, SPI_result_code_string(rc));
	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();
}

/*
 * Hand the events just written to the running sync projections, in the
 * writing transaction: the rows as stored (heap tuples of the log's
 * descriptor, so handlers get a cqrs.events value), in position order.
 *
 * The append applies them itself rather than through a trigger on the log
 * (up to 0.4.0, a statement-level AFTER INSERT trigger with a transition
 * table), so an append pays nothing for sync projections when none runs,
 * and every append reaches them, session_replication_role = replica
 * included (a trigger is not fired there unless ENABLE ALWAYS).  Rows
 * written into the log other than by an append, which only the log's owner
 * or a superuser can do (guard.c), are restores: their read tables come
 * with them, and they are not applied.
 */
static void
apply_sync_projections(Relation events, List *sync, CqrsNewEvent *evs, int n,
					   TimestampTz recorded_at)
{
	TupleDesc	desc = RelationGetDescr(events);
	Tuplestorestate *store = tuplestore_begin_heap(false, false, work_mem);
	Datum	   *values = palloc0(desc->natts * sizeof(Datum));
	bool	   *nulls = palloc(desc->natts * sizeof(bool));
	ListCell   *lc;

	for (int i = 0; i < n; i++)
	{
		HeapTuple	tuple;

		/* a dropped column, should the log ever have one, is null */
		memset(nulls, true, desc->natts * sizeof(bool));
		values[Anum_events_position - 1] = Int64GetDatum(evs[i].position);
		values[Anum_events_stream - 1] = PointerGetDatum(evs[i].stream);
		values[Anum_events_version - 1] = Int64GetDatum(evs[i].version);
		values[Anum_events_id - 1] = UUIDPGetDatum(&evs[i].id);
		values[Anum_events_type - 1] = PointerGetDatum(evs[i].type);
		values[Anum_events_data - 1] = JsonbPGetDatum(evs[i].data);
		values[Anum_events_metadata - 1] = JsonbPGetDatum(evs[i].metadata);
		values[Anum_events_recorded_at - 1] = TimestampTzGetDatum(recorded_at);
		for (int a = Anum_events_position; a <= Anum_events_recorded_at; a++)
			nulls[a - 1] = false;
		tuple = heap_form_tuple(desc, values, nulls);
		tuplestore_puttuple(store, tuple);
		heap_freetuple(tuple);
	}

	foreach(lc, sync)
		(void) CqrsApplyEvents((CqrsProjection *) lfirst(lc), store, desc, NULL, PG_INT64_MAX);
	tuplestore_end(store);
}

/*
 * Ask for the worker to be woken at commit if a running deferred projection
 * wants one of these events (its category and type filters): a commit that
 * only appended events no deferred projection reads does not wake it.  A
 * deferred projection created or resumed while this transaction runs is
 * not in our list; the worker's naptime (cqrs.naptime) bounds how long such
 * a projection may wait for our events.
 */
static void
wake_if_wanted(List *deferred, CqrsNewEvent *evs, int n)
{
	ListCell   *lc;

	foreach(lc, deferred)
		for (int i = 0; i < n; i++)
			if (CqrsProjectionWantsEvent((CqrsProjection *) lfirst(lc),
										 evs[i].stream, evs[i].type))
			{
				CqrsWakeWorkerAtCommit();
				return;
			}
}

/*
 * CqrsWriteEvents
 *		Write n checked events whose streams, versions and ids are settled:
 *		take their positions, in array order, insert them, and apply them to
 *		the running sync projections.
 *
 * The caller holds the short locks of the events' streams (eventlog.c) and
 * releases them afterwards; events without an id get a generated one.
 * Holding the locks while sync projections run costs nothing: an appender
 * to the same stream would find our rows and wait for our transaction
 * anyway.
 */
void
CqrsWriteEvents(Relation events, CqrsNewEvent *evs, int n)
{
	Oid			seq = CqrsEventLog()->position_seq;
	TimestampTz recorded_at = GetCurrentTransactionStartTimestamp();
	List	   *sync;
	List	   *deferred;

	/* before any position: see "Locking for sync projections" in projection.c */
	sync = CqrsLockProjectionsForAppend(&deferred);
	wake_if_wanted(deferred, evs, n);
	CqrsHorizonBeginAppend(events);

	for (int i = 0; i < n; i++)
	{
		evs[i].position = nextval_internal(seq, false);
		CqrsHorizonNoteAllocated(evs[i].position);
		if (!evs[i].has_id)
		{
			Datum		u = DirectFunctionCall1(gen_random_uuid, (Datum) 0);

			memcpy(&evs[i].id, DatumGetUUIDP(u), sizeof(pg_uuid_t));
		}
	}

	insert_events(events, evs, n, recorded_at);
	if (sync != NIL)
		apply_sync_projections(events, sync, evs, n, recorded_at);
}

/* ----------------------------------------------------------------
 * The append itself
 * ----------------------------------------------------------------
 */

static int
uuid_cmp_qsort(const void *a, const void *b)
{
	return memcmp(((const pg_uuid_t *) a)->data, ((const pg_uuid_t *) b)->data, UUID_LEN);
}

/*
 * A batch with at most this many caller-given ids takes a short lock on
 * each (CqrsLockEventId), so that two transactions giving the same id to
 * different streams meet on our message naming the stream.  A larger batch
 * leaves that race, between two transactions, to the unique index on id,
 * whose error has the same SQLSTATE: a batch must not occupy a lock table
 * entry per event, even briefly.
 */
#define CQRS_MAX_ID_LOCKS 64

/* What an append holds while it reads the head and inserts. */
typedef struct AppendLocks
{
	text	   *stream;
	pg_uuid_t  *ids;			/* the caller-given ids, sorted */
	int			nids;
	bool		lock_ids;		/* nids <= CQRS_MAX_ID_LOCKS */
} AppendLocks;

/*
 * The batch's caller-given ids, sorted (the order in which they are
 * locked, so that two batches sharing ids cannot deadlock on them); an id
 * given twice is an error.
 */
static void
collect_ids(text *stream, CqrsNewEvent *evs, int n, AppendLocks *locks)
{
	locks->stream = stream;
	locks->ids = palloc(n * sizeof(pg_uuid_t));
	locks->nids = 0;
	for (int i = 0; i < n; i++)
		if (evs[i].has_id)
			locks->ids[locks->nids++] = evs[i].id;
	qsort(locks->ids, locks->nids, sizeof(pg_uuid_t), uuid_cmp_qsort);
	for (int i = 1; i < locks->nids; i++)
		if (memcmp(locks->ids[i - 1].data, locks->ids[i].data, UUID_LEN) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("event %s appears twice in the batch for stream \"%s\"",
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&locks->ids[i]))),
							text_to_cstring(stream))));
	locks->lock_ids = locks->nids <= CQRS_MAX_ID_LOCKS;
}

static void
take_locks(AppendLocks *locks)
{
	CqrsLockStream(VARDATA_ANY(locks->stream), VARSIZE_ANY_EXHDR(locks->stream));
	if (locks->lock_ids)
		for (int i = 0; i < locks->nids; i++)
			CqrsLockEventId(&locks->ids[i]);
}

static void
release_locks(AppendLocks *locks)
{
	if (locks->lock_ids)
		for (int i = locks->nids - 1; i >= 0; i--)
			CqrsUnlockEventId(&locks->ids[i]);
	CqrsUnlockStream(VARDATA_ANY(locks->stream), VARSIZE_ANY_EXHDR(locks->stream));
}

/*
 * Decide whether the batch was already appended.  Returns true (and the
 * original result) when every event has an id recorded in this stream, in
 * order and with consecutive versions; false when none of the given ids is
 * recorded.  Anything in between is an error, as is an id recorded in
 * another stream.  An event without an id is never recorded, so "recorded
 * == n" also means that every event has one: a batch mixing recorded ids
 * and events without ids is an error too.
 *
 * Called holding the append's short locks.  Rows still in progress count:
 * when an id is in another transaction's uncommitted row, returns false
 * with *wait_for set, and the caller waits for that transaction and asks
 * again.
 */
static bool
find_recorded(Relation events, text *stream, CqrsNewEvent *evs, int n,
			  AppendResult *result, TransactionId *wait_for)
{
	int			recorded = 0;
	bool		in_order = true;
	int64		prev_version = 0;

	for (int i = 0; i < n; i++)
	{
		text	   *other;
		int64		version,
					position;
		bool		found;

		if (!evs[i].has_id)
			continue;
		*wait_for = CqrsFindEventForAppend(events, &evs[i].id, &found,
										   &other, &version, &position);
		if (TransactionIdIsValid(*wait_for))
			return false;
		if (!found)
			continue;

		if (VARSIZE_ANY_EXHDR(other) != VARSIZE_ANY_EXHDR(stream) ||
			memcmp(VARDATA_ANY(other), VARDATA_ANY(stream), VARSIZE_ANY_EXHDR(stream)) != 0)
			CqrsIdRecordedElsewhere(&evs[i].id, other, stream);

		if (recorded > 0 && version != prev_version + 1)
			in_order = false;
		prev_version = version;
		recorded++;
		result->version = version;
		result->position = position;
	}

	if (recorded == 0)
		return false;
	if (recorded == n && in_order)
		return true;

	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("batch repeats only some of the events already recorded in stream \"%s\"",
					text_to_cstring(stream)),
			 errdetail("%d of its %d events are already recorded%s.", recorded, n,
					   recorded == n ? ", but not in this order" : ""),
			 errhint("Retry the whole original batch, or append only new events with new ids.")));
	return false;				/* keep compiler quiet */
}

/*
 * CqrsIdRecordedElsewhere
 *		The error for a caller-given id already recorded in another stream.
 */
void
CqrsIdRecordedElsewhere(const pg_uuid_t *id, text *other, text *stream)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("event %s is already recorded in stream \"%s\"",
					DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id))),
					text_to_cstring(other)),
			 errdetail("It cannot also be appended to stream \"%s\".",
					   text_to_cstring(stream))));
}

/*
 * CqrsCheckHeadSinceSnapshot
 *		Under REPEATABLE READ or SERIALIZABLE, a final head (read under the
 *		stream's short lock) newer than the transaction snapshot's means
 *		another transaction appended to the stream since ours began: a
 *		serialization failure, as UPDATE would raise, rather than an append
 *		on top of state the caller could not have seen.
 */
void
CqrsCheckHeadSinceSnapshot(Relation events, text *stream, int64 head_version)
{
	int64		seen_version,
				seen_position;

	if (!IsolationUsesXactSnapshot())
		return;
	CqrsStreamHead(events, stream, GetTransactionSnapshot(),
				   &seen_version, &seen_position);
	if (seen_version != head_version)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to concurrent append to stream \"%s\"",
						text_to_cstring(stream)),
				 errdetail("The transaction's snapshot shows version %lld, but the stream is at version %lld.",
						   (long long) seen_version, (long long) head_version)));
}

/*
 * Append n checked events to stream.  See the file header for the steps,
 * and eventlog.c for why the stream's short lock and the dirty head make
 * appends to one stream run one at a time.
 */
static AppendResult
append_to_stream(text *stream, CqrsNewEvent *evs, int n,
				 bool has_expected, int64 expected)
{
	Relation	events;
	AppendResult result;
	AppendLocks locks;
	int64		head_version,
				head_position;

	events = CqrsOpenEventLog(RowExclusiveLock);
	collect_ids(stream, evs, n, &locks);

	for (;;)
	{
		TransactionId wait_for = InvalidTransactionId;

		take_locks(&locks);
		if (locks.nids > 0 && find_recorded(events, stream, evs, n, &result, &wait_for))
		{
			release_locks(&locks);
			table_close(events, NoLock);
			return result;
		}
		if (!TransactionIdIsValid(wait_for))
			wait_for = CqrsStreamHeadForAppend(events, stream, &head_version, &head_position);
		if (!TransactionIdIsValid(wait_for))
			break;
		/* another transaction's append is not final yet: wait for its end */
		release_locks(&locks);
		XactLockTableWait(wait_for, events, NULL, XLTW_None);
	}

	CqrsCheckHeadSinceSnapshot(events, stream, head_version);

	if (has_expected && expected != head_version)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("wrong expected version for stream \"%s\"",
						text_to_cstring(stream)),
				 errdetail("Expected version %lld, but the stream is at version %lld.",
						   (long long) expected, (long long) head_version),
				 errhint("Reload the stream and retry the command.")));

	for (int i = 0; i < n; i++)
	{
		evs[i].stream = stream;
		evs[i].version = head_version + i + 1;
	}
	CqrsWriteEvents(events, evs, n);
	/* our rows are in the index: the next appender will see them */
	release_locks(&locks);
	table_close(events, NoLock);

	result.version = evs[n - 1].version;
	result.position = evs[n - 1].position;
	return result;
}

/* ----------------------------------------------------------------
 * Appending from C (change capture)
 * ----------------------------------------------------------------
 */

/*
 * CqrsAppendEvent
 *		Append one event to stream, at whatever version the stream is at, with
 *		a generated id; return its position.
 *
 * For callers inside the extension that build events themselves (the
 * capture triggers of capture.c).  The event gets the same checks as one
 * given to cqrs.append: INSERT on cqrs.events for the current user id
 * (capture appends as the captured table's owner), non-empty stream and
 * type within their length caps, metadata an object (NULL means {}), and
 * cqrs.max_event_size.  Memory is allocated in the caller's context.
 *
 *
 * Capture used to skip the stream lock, which then lasted until commit: a
 * bulk write to a captured table, one stream per row, filled the shared
 * lock table.  The short lock (eventlog.c) holds nothing per stream, so
 * capture now serialises like every other append.
 */
int64
CqrsAppendEvent(text *stream, text *type, Jsonb *data, Jsonb *metadata)
{
	CqrsNewEvent	ev;

	CqrsCheckMayAppend("cqrs.append()");
	if (stream == NULL || VARSIZE_ANY_EXHDR(stream) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream must not be empty")));
	if (type == NULL || VARSIZE_ANY_EXHDR(type) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("type must not be empty")));
	if (data == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("data must not be null")));

	stream = pg_detoast_datum_packed(stream);
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");
	memset(&ev, 0, sizeof(ev));
	ev.type = pg_detoast_datum_packed(type);
	ev.data = data;
	ev.metadata = CqrsCheckMetadata(metadata, "the event");
	CqrsCheckEventSize(stream, &ev, "the event");

	return append_to_stream(stream, &ev, 1, false, 0).position;
}

/*
 * The (version bigint, position bigint) row type of both append functions,
 * built and blessed once per backend.
 */
static TupleDesc
result_tupdesc(void)
{
	static TupleDesc tupdesc = NULL;

	if (tupdesc == NULL)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(TopMemoryContext);
		TupleDesc	desc = CreateTemplateTupleDesc(2);

		TupleDescInitEntry(desc, 1, "version", INT8OID, -1, 0);
		TupleDescInitEntry(desc, 2, "position", INT8OID, -1, 0);
		tupdesc = BlessTupleDesc(desc);
		MemoryContextSwitchTo(oldcontext);
	}
	return tupdesc;
}

/*
 * Return the one (version, position) row of an append, value-per-call so
 * that nothing outlives the call: appends are often made in a loop within
 * one long query or transaction.
 */
static Datum
append_srf(FunctionCallInfo fcinfo, AppendResult (*work) (FunctionCallInfo))
{
	FuncCallContext *funcctx;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext oldcontext;
		TupleDesc	tupdesc;
		AppendResult r;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		funcctx = SRF_FIRSTCALL_INIT();
		r = work(fcinfo);

		tupdesc = result_tupdesc();
		oldcontext = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		values[0] = Int64GetDatum(r.version);
		values[1] = Int64GetDatum(r.position);
		funcctx->user_fctx = heap_form_tuple(tupdesc, values, nulls);
		MemoryContextSwitchTo(oldcontext);
	}

	funcctx = SRF_PERCALL_SETUP();
	if (funcctx->user_fctx != NULL)
	{
		HeapTuple	tuple = (HeapTuple) funcctx->user_fctx;

		funcctx->user_fctx = NULL;
		SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(tuple));
	}
	SRF_RETURN_DONE(funcctx);
}

static AppendResult
append_one(FunctionCallInfo fcinfo)
{
	text	   *stream;
	CqrsNewEvent	ev;
	bool		has_expected;
	int64		expected = 0;

	CqrsCheckMayAppend("cqrs.append()");
	stream = CqrsCheckNameArg(fcinfo, 0, "stream");
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");
	memset(&ev, 0, sizeof(ev));
	ev.type = CqrsCheckNameArg(fcinfo, 1, "type");
	if (PG_ARGISNULL(2) || CqrsJsonbIsNull(PG_GETARG_JSONB_P(2)))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("data must not be null"),
				 errhint("Use an empty object {} for an event without payload.")));
	ev.data = PG_GETARG_JSONB_P(2);
	ev.metadata = CqrsCheckMetadata(PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3), "the event");
	has_expected = CqrsCheckExpectedVersion(fcinfo, 4, &expected);
	if (!PG_ARGISNULL(5))
	{
		memcpy(&ev.id, PG_GETARG_UUID_P(5), sizeof(pg_uuid_t));
		ev.has_id = true;
	}
	CqrsCheckEventSize(stream, &ev, "the event");

	return append_to_stream(stream, &ev, 1, has_expected, expected);
}

static AppendResult
append_many(FunctionCallInfo fcinfo)
{
	text	   *stream;
	Jsonb	   *batch;
	CqrsNewEvent   *evs;
	int			n;
	bool		has_expected;
	int64		expected = 0;

	CqrsCheckMayAppend("cqrs.append_events()");
	stream = CqrsCheckNameArg(fcinfo, 0, "stream");
	CqrsCheckNameLength(stream, CQRS_MAX_STREAM_LEN, "stream name");

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be null")));
	batch = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_ARRAY(batch) || JB_ROOT_IS_SCALAR(batch))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON array"),
				 errhint("Pass a non-empty array of objects {\"type\": ..., \"data\": ...}.")));
	n = JB_ROOT_COUNT(batch);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must not be an empty array")));
	has_expected = CqrsCheckExpectedVersion(fcinfo, 2, &expected);

	evs = palloc(n * sizeof(CqrsNewEvent));
	for (int i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&batch->root, i);

		CqrsParseEvent(stream, elem, i + 1, &evs[i]);
	}

	return append_to_stream(stream, evs, n, has_expected, expected);
}

/*
 * cqrs.append(stream text, type text, data jsonb, metadata jsonb,
 *			   expected_version bigint, id uuid)
 *	  RETURNS TABLE (version bigint, "position" bigint)
 */
Datum
cqrs_append(PG_FUNCTION_ARGS)
{
	return append_srf(fcinfo, append_one);
}

/*
 * cqrs.append_events(stream text, events jsonb, expected_version bigint)
 *	  RETURNS TABLE (version bigint, "position" bigint)
 */
Datum
cqrs_append_events(PG_FUNCTION_ARGS)
{
	return append_srf(fcinfo, append_many);
}
