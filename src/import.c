/*-------------------------------------------------------------------------
 *
 * import.c
 *		cqrs.import_events: many events over many streams in one statement.
 *
 * An aggregate, so that any query feeds it, in the order it gives:
 *
 *	 COPY staging FROM ...;
 *	 SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n)
 *	   FROM staging;
 *
 * Each row is one event, checked as cqrs.append checks one (event_input.c:
 * INSERT on cqrs.events first, then names, sizes, metadata); metadata and
 * id may be NULL.  Events are appended at the head of their stream, in the
 * order the rows come, and get positions in that order.  An event whose id
 * is already recorded in the same stream (by an earlier import, or earlier
 * in this one) is skipped, so an import that failed half-way in an earlier
 * transaction can simply be run again; an id recorded in another stream
 * raises 23505.  The result is the number of events appended.  It all
 * happens in the calling statement's transaction: an error, or a crash,
 * leaves none of it.
 *
 * Rows are collected into batches of IMPORT_BATCH events, and each batch is
 * written as one append of many streams: its streams' short locks are
 * taken in name order (so two imports cannot deadlock on them), heads and
 * ids are read with a dirty snapshot, waiting for other transactions'
 * appends to end exactly as a single append does (eventlog.c), and the
 * events go in with one write of the whole batch (CqrsWriteEvents), so
 * sync projections, digests, capture's consumers and the outbox see them
 * as any other.  Memory is the batch's, reset after each: it does not grow
 * with the import.  A batch holds one short lock per stream in it, at most
 * IMPORT_BATCH entries of the shared lock table, and only while it is
 * written.
 *
 * Under REPEATABLE READ or SERIALIZABLE, a stream appended to by another
 * transaction since the snapshot raises a serialization failure, as for
 * cqrs.append.  Used as a window function, it refuses: a moving frame would
 * feed rows more than once.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/import.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "commands/progress.h"
#include "fmgr.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/backend_progress.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_import_events_step);
PG_FUNCTION_INFO_V1(cqrs_import_events_final);

/* events per batch: the executor run of one INSERT, and its stream locks */
#define IMPORT_BATCH 256

typedef struct ImportState
{
	MemoryContext batchcxt;		/* the batch's events; reset after each */
	int			n;				/* events in the batch */
	int64		seen;			/* rows fed so far, for messages */
	int64		appended;
	int64		skipped;		/* ids already recorded */
	bool		reporting;		/* we own pg_stat_progress_copy's row */
	CqrsNewEvent evs[IMPORT_BATCH];
} ImportState;

/* A stream of the batch, with its head once read. */
typedef struct ImportStream
{
	text	   *name;
	int64		head;
} ImportStream;

static void
import_error_callback(void *arg)
{
	errcontext("cqrs.import_events, row %lld", (long long) *(int64 *) arg);
}

static bool
stream_eq(text *a, text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

static int
text_cmp(text *a, text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a),
				lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

/* qsort over event pointers: by stream name, then by arrival */
static int
event_stream_cmp(const void *a, const void *b)
{
	const CqrsNewEvent *x = *(CqrsNewEvent *const *) a;
	const CqrsNewEvent *y = *(CqrsNewEvent *const *) b;
	int			c = text_cmp(x->stream, y->stream);

	return c != 0 ? c : (x > y) - (x < y);
}

/* qsort over event pointers with ids: by id, then by arrival */
static int
event_id_cmp(const void *a, const void *b)
{
	const CqrsNewEvent *x = *(CqrsNewEvent *const *) a;
	const CqrsNewEvent *y = *(CqrsNewEvent *const *) b;
	int			c = memcmp(x->id.data, y->id.data, UUID_LEN);

	return c != 0 ? c : (x > y) - (x < y);
}

static void
unlock_streams(ImportStream *streams, int nstreams)
{
	for (int s = nstreams - 1; s >= 0; s--)
		CqrsUnlockStream(VARDATA_ANY(streams[s].name), VARSIZE_ANY_EXHDR(streams[s].name));
}

/*
 * Mark the events whose id is recorded already, in their stream, as skipped
 * (skip[i]); an id recorded in another stream is an error.  Returns the
 * transaction to wait for when an id is in another's uncommitted row.
 */
static TransactionId
find_recorded(Relation events, ImportState *st, bool *skip)
{
	CqrsNewEvent **byid = palloc(st->n * sizeof(CqrsNewEvent *));
	int			nids = 0;

	for (int i = 0; i < st->n; i++)
	{
		CqrsNewEvent *ev = &st->evs[i];
		text	   *other;
		int64		version,
					position;
		bool		found;
		TransactionId wait_for;

		if (!ev->has_id)
			continue;
		byid[nids++] = ev;
		wait_for = CqrsFindEventForAppend(events, &ev->id, &found, &other,
										  &version, &position);
		if (TransactionIdIsValid(wait_for))
			return wait_for;
		if (!found)
			continue;
		if (!stream_eq(other, ev->stream))
			CqrsIdRecordedElsewhere(&ev->id, other, ev->stream);
		skip[i] = true;
	}

	/* an id given twice in the batch: the later one is the same event */
	qsort(byid, nids, sizeof(CqrsNewEvent *), event_id_cmp);
	for (int i = 1; i < nids; i++)
	{
		if (memcmp(byid[i - 1]->id.data, byid[i]->id.data, UUID_LEN) != 0)
			continue;
		if (!stream_eq(byid[i - 1]->stream, byid[i]->stream))
			CqrsIdRecordedElsewhere(&byid[i]->id, byid[i - 1]->stream, byid[i]->stream);
		skip[byid[i] - st->evs] = true;
	}
	return InvalidTransactionId;
}

/*
 * Append the batch: see the file header.
 */
static void
import_flush(ImportState *st)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(st->batchcxt);
	Relation	events = CqrsOpenEventLog(RowExclusiveLock);
	CqrsNewEvent **bystream = palloc(st->n * sizeof(CqrsNewEvent *));
	int		   *group = palloc(st->n * sizeof(int));
	ImportStream *streams = palloc(st->n * sizeof(ImportStream));
	bool	   *skip = palloc(st->n * sizeof(bool));
	CqrsNewEvent *kept = palloc(st->n * sizeof(CqrsNewEvent));
	int			nstreams = 0;
	int			m = 0;

	/* the batch's streams, in name order */
	for (int i = 0; i < st->n; i++)
		bystream[i] = &st->evs[i];
	qsort(bystream, st->n, sizeof(CqrsNewEvent *), event_stream_cmp);
	for (int i = 0; i < st->n; i++)
	{
		if (nstreams == 0 || !stream_eq(streams[nstreams - 1].name, bystream[i]->stream))
		{
			streams[nstreams].name = bystream[i]->stream;
			streams[nstreams].head = 0;
			nstreams++;
		}
		group[bystream[i] - st->evs] = nstreams - 1;
	}

	for (;;)
	{
		TransactionId wait_for;

		for (int s = 0; s < nstreams; s++)
			CqrsLockStream(VARDATA_ANY(streams[s].name), VARSIZE_ANY_EXHDR(streams[s].name));
		memset(skip, false, st->n * sizeof(bool));
		wait_for = find_recorded(events, st, skip);
		for (int s = 0; s < nstreams && !TransactionIdIsValid(wait_for); s++)
		{
			int64		position;

			wait_for = CqrsStreamHeadForAppend(events, streams[s].name,
											   &streams[s].head, &position);
		}
		if (!TransactionIdIsValid(wait_for))
			break;
		unlock_streams(streams, nstreams);
		XactLockTableWait(wait_for, events, NULL, XLTW_None);
	}

	for (int s = 0; s < nstreams; s++)
		CqrsCheckHeadSinceSnapshot(events, streams[s].name, streams[s].head);

	/* versions in arrival order within each stream; positions in arrival order */
	for (int i = 0; i < st->n; i++)
	{
		if (skip[i])
			continue;
		kept[m] = st->evs[i];
		kept[m].version = ++streams[group[i]].head;
		m++;
	}
	if (m > 0)
		CqrsWriteEvents(events, kept, m);
	unlock_streams(streams, nstreams);
	table_close(events, NoLock);

	st->appended += m;
	st->skipped += st->n - m;
	if (st->reporting)
	{
		const int	index[] = {PROGRESS_COPY_TUPLES_PROCESSED, PROGRESS_COPY_TUPLES_EXCLUDED};
		const int64 value[] = {st->appended, st->skipped};

		pgstat_progress_update_multi_param(2, index, value);
	}
	st->n = 0;
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(st->batchcxt);
}

/*
 * Progress.  A long import shows in pg_stat_progress_copy as a COPY FROM
 * into cqrs.events (type "CALLBACK"): tuples_processed counts the events
 * appended so far, tuples_excluded those skipped as already recorded,
 * updated after each batch.  Unless this backend already reports another
 * command's progress (an import inside a COPY's trigger, say), which we
 * leave alone.  An error ends the report with the transaction.
 */
static void
start_progress(ImportState *st)
{
	if (MyBEEntry == NULL || MyBEEntry->st_progress_command != PROGRESS_COMMAND_INVALID)
		return;
	pgstat_progress_start_command(PROGRESS_COMMAND_COPY, CqrsEventLog()->events);
	pgstat_progress_update_param(PROGRESS_COPY_COMMAND, PROGRESS_COPY_COMMAND_FROM);
	pgstat_progress_update_param(PROGRESS_COPY_TYPE, PROGRESS_COPY_TYPE_CALLBACK);
	st->reporting = true;
}

/*
 * cqrs.import_events_step(internal, stream text, type text, data jsonb,
 *						   metadata jsonb, id uuid) RETURNS internal
 */
Datum
cqrs_import_events_step(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	MemoryContext oldcxt;
	ImportState *st;
	CqrsNewEvent *ev;
	ErrorContextCallback errcb;
	int			kind = AggCheckCallContext(fcinfo, &aggcxt);

	if (kind == 0)
		elog(ERROR, "cqrs_import_events_step called in non-aggregate context");
	if (kind == AGG_CONTEXT_WINDOW)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cqrs.import_events cannot be used as a window function")));

	if (PG_ARGISNULL(0))
	{
		CqrsCheckMayAppend("cqrs.import_events()");
		st = MemoryContextAllocZero(aggcxt, sizeof(ImportState));
		st->batchcxt = AllocSetContextCreate(aggcxt, "pg_cqrs import batch",
											 ALLOCSET_DEFAULT_SIZES);
		start_progress(st);
	}
	else
		st = (ImportState *) PG_GETARG_POINTER(0);

	st->seen++;
	errcb.callback = import_error_callback;
	errcb.arg = &st->seen;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	/* the event, checked as cqrs.append checks one, copied into the batch */
	oldcxt = MemoryContextSwitchTo(st->batchcxt);
	ev = &st->evs[st->n];
	memset(ev, 0, sizeof(*ev));
	ev->stream = CqrsCheckNameArg(fcinfo, 1, "stream");
	CqrsCheckNameLength(ev->stream, CQRS_MAX_STREAM_LEN, "stream name");
	ev->stream = (text *) PG_DETOAST_DATUM_COPY(PointerGetDatum(ev->stream));
	ev->type = (text *) PG_DETOAST_DATUM_COPY(PointerGetDatum(CqrsCheckNameArg(fcinfo, 2, "type")));
	if (PG_ARGISNULL(3) || CqrsJsonbIsNull(PG_GETARG_JSONB_P(3)))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("data must not be null"),
				 errhint("Use an empty object {} for an event without payload.")));
	ev->data = (Jsonb *) PG_DETOAST_DATUM_COPY(PG_GETARG_DATUM(3));
	ev->metadata = CqrsCheckMetadata(PG_ARGISNULL(4) ? NULL :
									 (Jsonb *) PG_DETOAST_DATUM_COPY(PG_GETARG_DATUM(4)),
									 "the event");
	if (!PG_ARGISNULL(5))
	{
		memcpy(&ev->id, PG_GETARG_UUID_P(5), sizeof(pg_uuid_t));
		ev->has_id = true;
	}
	CqrsCheckEventSize(ev->stream, ev, "the event");
	MemoryContextSwitchTo(oldcxt);

	if (++st->n == IMPORT_BATCH)
		import_flush(st);

	error_context_stack = errcb.previous;
	PG_RETURN_POINTER(st);
}

/*
 * cqrs.import_events_final(internal) RETURNS bigint
 */
Datum
cqrs_import_events_final(PG_FUNCTION_ARGS)
{
	ImportState *st;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);		/* no rows */
	if (AggCheckCallContext(fcinfo, NULL) == 0)
		elog(ERROR, "cqrs_import_events_final called in non-aggregate context");
	st = (ImportState *) PG_GETARG_POINTER(0);
	if (st->n > 0)
		import_flush(st);
	if (st->reporting)
	{
		pgstat_progress_end_command();
		st->reporting = false;
	}
	PG_RETURN_INT64(st->appended);
}
