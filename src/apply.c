/*-------------------------------------------------------------------------
 *
 * apply.c
 *		Applying events to projections: handler calls, the sync trigger, batches, rebuilds.
 *
 * The one place where handlers are called.  A projection's handler is an
 * ordinary function handler(e cqrs.events) RETURNS void, called once per
 * event the projection wants (its category and type filters), in position
 * order, as the projection's owner (scope.c), with the handler's writes to
 * its read tables counted into their digests (digest.c).  Three callers
 * feed it events:
 *
 *	sync		the append itself (append.c), inside the appending
 *				transaction, with the rows it just inserted; and the
 *				catch-up of create/resume.
 *	deferred	a batch after the projection's checkpoint, up to the safe
 *				position (horizon.c), run by the worker or by
 *				cqrs.process_projections().
 *	rebuild		replay and reconcile (replay.c): all of history into
 *				emptied tables, with the projection held still.
 *
 * Checkpoint.  For a deferred projection, the position up to which every
 * event has been applied (or filtered out, or skipped).  A batch never goes
 * past the safe position, so no event committed later can land below the
 * checkpoint.  Each batch commits together with its checkpoint, so every
 * event takes effect exactly once.  Concurrent appliers (the worker, any
 * number of process_projections calls) serialise on the projection's
 * catalog row, locked FOR UPDATE; the second one re-reads the checkpoint
 * the first one committed.
 *
 * Failures.  A sync handler's error aborts the append, with the projection
 * named in the error context.  A deferred batch runs in a subtransaction: a
 * handler error rolls the batch back, then the projection is marked failed
 * with the position and message, in the enclosing transaction, and the
 * other projections go on.
 *
 * Catching up.  A sync projection being rebuilt by cqrs.replay(name,
 * concurrently => true) is 'catching up': appends leave it alone, and the
 * appliers of deferred projections bring it back, step by step, through
 * CqrsApplyBatch (see "Sync projections catching up" below).
 *
 * Calls down into catalog.c, digest.c, horizon.c, scope.c, eventlog.c and
 * wakeup.c; called by appends (sync), the worker, the lifecycle functions
 * and replay.
 *
 * Size.  Sync catch-up, deferred batches, the catch-up of sync projections
 * and rebuilds share the collection of events, the subtransaction that
 * turns a handler error into a failed projection, and the row locking of
 * CqrsApplyBatch; apart, they would export those internals to each other.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/apply.c
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
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/tuplestore.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_apply_sync_projections);

/* Error context while a handler runs. */
typedef struct ApplyContext
{
	const char *projection;
	int64		position;
} ApplyContext;



/* ----------------------------------------------------------------
 * Running handlers
 * ----------------------------------------------------------------
 */

static void
apply_error_callback(void *arg)
{
	ApplyContext *ctx = (ApplyContext *) arg;

	errcontext("projection \"%s\" applying the event at position %lld",
			   ctx->projection, (long long) ctx->position);
}

static void
owner_scope_enter(CqrsProjection *p, CqrsOwnerScope *scope)
{
	CqrsOwnerScopeEnter(p->owner, p->search_path, scope);
}

static void
owner_scope_leave(CqrsOwnerScope *scope)
{
	CqrsOwnerScopeLeave(scope);
}

static bool
names_match(text **names, int n, const char *s, int len)
{
	if (names == NULL)
		return true;
	for (int i = 0; i < n; i++)
		if (VARSIZE_ANY_EXHDR(names[i]) == len &&
			memcmp(VARDATA_ANY(names[i]), s, len) == 0)
			return true;
	return false;
}

/*
 * CqrsProjectionWantsEvent
 *		Whether an event of this stream and type passes the projection's
 *		category and type filters.
 */
bool
CqrsProjectionWantsEvent(CqrsProjection *p, text *stream, text *type)
{
	if (p->categories != NULL)
	{
		int			len = VARSIZE_ANY_EXHDR(stream);
		const char *dash = memchr(VARDATA_ANY(stream), '-', len);

		if (dash)
			len = dash - VARDATA_ANY(stream);
		if (!names_match(p->categories, p->ncategories, VARDATA_ANY(stream), len))
			return false;
	}
	if (p->types != NULL &&
		!names_match(p->types, p->ntypes, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type)))
		return false;
	return true;
}

/* Whether the event in slot passes the projection's filters. */
static bool
projection_wants(CqrsProjection *p, TupleTableSlot *slot)
{
	bool		isnull;

	if (p->categories == NULL && p->types == NULL)
		return true;
	return CqrsProjectionWantsEvent(p,
									DatumGetTextPP(slot_getattr(slot, Anum_events_stream, &isnull)),
									DatumGetTextPP(slot_getattr(slot, Anum_events_type, &isnull)));
}

/*
 * Position of the event whose handler call is under way (or failed); read
 * after an error has unwound CqrsApplyEvents.
 */
static int64 attempted_position = 0;

/*
 * The handler time limit (cqrs.handler_timeout).  One handler call may take
 * that long; past it the call is cancelled as statement_timeout cancels a
 * statement, and the error names the projection: a sync append fails, a
 * deferred batch fails its projection at that event and the other
 * projections go on.  A handler that appends runs other projections'
 * handlers inside its own call: the outermost call's limit covers them, so
 * the timer is armed once, at depth zero.  Arming for each event costs no
 * system call: timeout.c leaves the pending timer alone when it is due
 * sooner than the new deadline.
 */
static TimeoutId handler_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t handler_timed_out = false;
static int	handler_depth = 0;

static void
handler_timeout_handler(void)
{
	handler_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

static void
handler_timeout_error(CqrsProjection *p)
{
	handler_timed_out = false;
	QueryCancelPending = false;
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("handler of projection \"%s\" ran longer than cqrs.handler_timeout (%d ms)",
					p->name, cqrs_handler_timeout),
			 errhint("Make the handler faster, or raise cqrs.handler_timeout.")));
}

/*
 * Causation (0.7.0).  A handler that appends, directly or by writing a
 * captured table, makes events caused by the event it was called on.  If a
 * projection consumes what its own handler appends, each applied event
 * makes another: a sync one ends in the stack depth limit, but a deferred
 * one would feed itself batch after batch, for ever.  So every event a
 * handler appends carries, in its metadata, "$causation": {"id": <the
 * causing event's id>, "projection": <its name>, "depth": <the causing
 * event's depth + 1>} (event_input.c adds it), and an append deeper than
 * cqrs.max_causation_depth fails (54001): the handler's projection fails at
 * the event that would have gone deeper, visibly, and the loop stops.
 *
 * The state is the innermost handler call's; nested calls (a handler's
 * append runs sync projections' handlers) save and restore it.
 */
typedef struct CqrsCause
{
	bool		set;
	pg_uuid_t	id;
	int32		depth;			/* depth of the events appended now */
	const char *projection;
} CqrsCause;

static CqrsCause current_cause = {false};

/*
 * The causation depth recorded in an event's metadata: 0 when none, and
 * the limit when the recorded value is not a number we can trust (a client
 * may write any metadata).
 */
static int32
event_depth(TupleTableSlot *slot)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, Anum_events_metadata, &isnull);
	Jsonb	   *metadata;
	JsonbValue	cause;
	JsonbValue	depth;
	char	   *text;
	char	   *end;
	long		value;

	if (isnull)
		return 0;
	metadata = DatumGetJsonbP(d);
	if (JB_ROOT_COUNT(metadata) == 0)
		return 0;
	if (getKeyJsonValueFromContainer(&metadata->root, CQRS_CAUSATION_KEY,
									 strlen(CQRS_CAUSATION_KEY), &cause) == NULL ||
		cause.type != jbvBinary ||
		getKeyJsonValueFromContainer(cause.val.binary.data, "depth", 5, &depth) == NULL)
		return 0;
	if (depth.type != jbvNumeric)
		return cqrs_max_causation_depth;
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(depth.val.numeric)));
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno != 0 || *end != '\0' || value < 0 || value > cqrs_max_causation_depth)
		return cqrs_max_causation_depth;
	return (int32) value;
}

/*
 * CqrsCurrentCause
 *		Whether a handler call is under way; if so, what the events it
 *		appends are caused by.  Read by event_input.c for every append.
 */
bool
CqrsCurrentCause(pg_uuid_t *id, int32 *depth, const char **projection)
{
	if (!current_cause.set)
		return false;
	*id = current_cause.id;
	*depth = current_cause.depth;
	*projection = current_cause.projection;
	return true;
}

/*
 * Call the handler on the event in slot, within the time limit.  The caller
 * is in the owner scope and resets tmpcxt between events.
 */
static void
call_handler(CqrsProjection *p, TupleTableSlot *slot, ApplyContext *actx)
{
	LOCAL_FCINFO(fcinfo, 1);
	MemoryContext cxt = CurrentMemoryContext;
	bool		timed = handler_depth == 0 && cqrs_handler_timeout > 0;
	CqrsCause	outer_cause = current_cause;
	bool		isnull;

	actx->position = attempted_position;
	current_cause.set = true;
	current_cause.id = *DatumGetUUIDP(slot_getattr(slot, Anum_events_id, &isnull));
	current_cause.depth = event_depth(slot) + 1;
	current_cause.projection = p->name;
	InitFunctionCallInfoData(*fcinfo, &p->flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ExecFetchSlotHeapTupleDatum(slot);
	fcinfo->args[0].isnull = false;

	if (timed)
	{
		if (handler_timeout_id == MAX_TIMEOUTS)
			handler_timeout_id = RegisterTimeout(USER_TIMEOUT, handler_timeout_handler);
		handler_timed_out = false;
		enable_timeout_after(handler_timeout_id, cqrs_handler_timeout);
	}
	handler_depth++;
	PG_TRY();
	{
		(void) FunctionCallInvoke(fcinfo);
	}
	PG_CATCH();
	{
		handler_depth--;
		current_cause = outer_cause;
		if (timed)
		{
			disable_timeout(handler_timeout_id, false);
			if (handler_timed_out)
			{
				/* our cancel, not the user's: say what happened */
				MemoryContextSwitchTo(cxt);
				FlushErrorState();
				handler_timeout_error(p);
			}
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	handler_depth--;
	current_cause = outer_cause;
	if (timed)
	{
		disable_timeout(handler_timeout_id, false);
		/* it fired after the handler's last interrupt check */
		if (handler_timed_out)
			handler_timeout_error(p);
	}
}

/* A sorted set of positions a projection was told to skip. */
static bool
skipset_contains(CqrsSkipSet *set, int64 position)
{
	int			lo = 0,
				hi;

	if (set == NULL)
		return false;
	hi = set->n - 1;
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (set->positions[mid] == position)
			return true;
		if (set->positions[mid] < position)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return false;
}

/*
 * Apply the events of a tuplestore to one projection, in order, as its
 * owner: those it wants, not in skip, below stop_before.  Returns the
 * number of events handed to the handler.
 */
int64
CqrsApplyEvents(CqrsProjection *p, Tuplestorestate *events, TupleDesc desc,
				CqrsSkipSet *skip, int64 stop_before)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	MemoryContext tmpcxt = AllocSetContextCreate(CurrentMemoryContext,
												 "pg_cqrs apply",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt;
	ApplyContext actx;
	ErrorContextCallback errcb;
	CqrsOwnerScope	scope;
	int			readptr;
	int64		applied = 0;

	actx.projection = p->name;
	actx.position = 0;
	errcb.callback = apply_error_callback;
	errcb.arg = &actx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	readptr = tuplestore_alloc_read_pointer(events, EXEC_FLAG_REWIND);
	tuplestore_select_read_pointer(events, readptr);
	tuplestore_rescan(events);

	/* count the handler's writes to its tables (digest.c) */
	if (p->ntables > 0 && p->digest && CqrsDigestsInstalled())
		CqrsDigestBegin(p->name, p->ntables, p->tables);
	owner_scope_enter(p, &scope);
	while (tuplestore_gettupleslot(events, true, false, slot))
	{
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		attempted_position = DatumGetInt64(slot_getattr(slot, Anum_events_position, &isnull));
		if (attempted_position >= stop_before)
			break;
		if (!projection_wants(p, slot) || skipset_contains(skip, attempted_position))
			continue;
		actx.position = attempted_position;
		if (p->broken != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("%s", p->broken),
					 errhint("Give it back what it needs, or drop the projection.")));
		if (!OidIsValid(p->handler))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("handler %s of projection \"%s\" does not exist",
							p->handler_sig, p->name),
					 errhint("Recreate the function, or drop the projection.")));
		oldcxt = MemoryContextSwitchTo(tmpcxt);
		call_handler(p, slot, &actx);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(tmpcxt);
		applied++;
	}
	owner_scope_leave(&scope);
	if (p->ntables > 0 && p->digest && CqrsDigestsInstalled())
		CqrsDigestEnd(true);

	tuplestore_select_read_pointer(events, 0);
	error_context_stack = errcb.previous;
	MemoryContextDelete(tmpcxt);
	ExecDropSingleTupleTableSlot(slot);
	return applied;
}

/*
 * A projection's category and type filters, for CqrsCollectEvents; NULL
 * when it wants every event.  Points into p, which must outlive it.
 */
static CqrsEventFilter *
projection_filter(CqrsProjection *p, CqrsEventFilter *buf)
{
	if (p->categories == NULL && p->types == NULL)
		return NULL;
	buf->categories = p->categories;
	buf->ncategories = p->ncategories;
	buf->types = p->types;
	buf->ntypes = p->ntypes;
	return buf;
}

/*
 * Collect events after a position into a tuplestore, in position order:
 * at most limit events that pass filter (NULL: every event), up to and
 * including upto.  Returns the number collected and, in *last, the
 * position of the last one.  With a filter, the events come from the
 * filter indexes where they exist (filterscan.c), so a projection of a
 * rare category reads only its own events; fewer than limit collected
 * means every event up to upto was looked at, matching or not, and the
 * caller may move a checkpoint there.
 */
int64
CqrsCollectEvents(Relation events, const CqrsEventFilter *filter, int64 after,
				  int64 upto, int64 limit, Tuplestorestate *store, int64 *last)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	CqrsFilterScan *scan = CqrsFilterScanBegin(events, snapshot, filter, after, upto);
	TupleTableSlot *slot;
	int64		n = 0;

	*last = after;
	while (n < limit && (slot = CqrsFilterScanNext(scan)) != NULL)
	{
		bool		isnull;

		tuplestore_puttupleslot(store, slot);
		*last = DatumGetInt64(slot_getattr(slot, Anum_events_position, &isnull));
		n++;
	}
	CqrsFilterScanEnd(scan);
	UnregisterSnapshot(snapshot);
	return n;
}

/* ----------------------------------------------------------------
 * Sync projections
 * ----------------------------------------------------------------
 */
/*
 * cqrs.apply_sync_projections() RETURNS trigger
 *
 * Up to 0.4.0, the statement-level AFTER INSERT trigger on the log that
 * applied sync projections.  Appends apply them themselves now (append.c);
 * 0.5.0's upgrade script drops the trigger.  The function stays because the
 * 0.1.0 to 0.2.0 script, which every installation runs, creates it, and it
 * does nothing: between installing this library and ALTER EXTENSION UPDATE
 * the old trigger still fires, and applying there too would apply every
 * event twice.
 */
Datum
cqrs_apply_sync_projections(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.apply_sync_projections() must be called as a trigger")));
	return PointerGetDatum(NULL);
}

/*
 * Apply every event in (after, upto] to p, batch by batch, each batch
 * collected with a fresh snapshot and built and applied in batchcxt, which
 * is reset after it: memory stays flat however long the stretch.  The
 * caller knows that every event at or below upto is final (committed or
 * gone for good).  Returns upto.
 */
static int64
apply_final_stretch(CqrsProjection *p, Relation events, int64 after, int64 upto,
					MemoryContext batchcxt)
{
	CqrsEventFilter fbuf;

	while (after < upto)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(batchcxt);
		Tuplestorestate *store = tuplestore_begin_heap(false, false, work_mem);
		int64		last;
		int64		n;

		CHECK_FOR_INTERRUPTS();
		n = CqrsCollectEvents(events, projection_filter(p, &fbuf), after, upto,
							  cqrs_batch_size, store, &last);
		if (n > 0)
			(void) CqrsApplyEvents(p, store, RelationGetDescr(events), NULL, PG_INT64_MAX);
		tuplestore_end(store);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(batchcxt);
		if (n == 0)
			break;
		after = last;
	}
	return upto;
}

/*
 * Bring a sync projection from its position up to the head of the log,
 * inside the caller's transaction, and return the head, its new position.
 * The caller holds ShareLock on cqrs.projections, so the head is final and
 * nothing is being appended.
 */
int64
CqrsSyncCatchUp(CqrsProjection *p)
{
	Relation	events = CqrsOpenEventLog(AccessShareLock);
	int64		head = CqrsMaxPosition(events, GetLatestSnapshot());
	MemoryContext batchcxt = AllocSetContextCreate(CurrentMemoryContext,
												   "pg_cqrs catch-up batch",
												   ALLOCSET_DEFAULT_SIZES);

	if (head > p->position)
		(void) apply_final_stretch(p, events, p->position, head, batchcxt);
	MemoryContextDelete(batchcxt);
	table_close(events, NoLock);
	p->position = Max(head, p->position);
	return p->position;
}

/*
 * CqrsSyncCatchUpOnline
 *		The first, unlocked phase of an online catch-up (create_projection):
 *		apply history from p->position up to the safe position, in the
 *		caller's transaction, without holding anything appends wait for.
 *
 * Every event at or below the safe position is final, so what is applied
 * here is exactly what the log will ever hold there.  While it runs the
 * log grows; so it looks again and goes on while the safe position moves
 * and the stretch left to the head is longer than near, then stops at the
 * last safe position it reached and returns it (also in p->position); it
 * also stops when the stretch left stops shrinking (appends coming faster
 * than the handler applies them), since it would never end.  The
 * caller then takes ShareLock and applies the rest with CqrsSyncCatchUp,
 * which is then short.  The safe position may stay put (an append held
 * open for long, possibly by the caller's own transaction): we stop there
 * rather than wait, since the ShareLock has to wait for it anyway.
 *
 * Needs the horizon (shared memory); READ COMMITTED (each batch reads with
 * a fresh snapshot; the caller checks).
 */
int64
CqrsSyncCatchUpOnline(CqrsProjection *p, int64 near)
{
	Relation	events = CqrsOpenEventLog(AccessShareLock);
	MemoryContext batchcxt = AllocSetContextCreate(CurrentMemoryContext,
												   "pg_cqrs catch-up batch",
												   ALLOCSET_DEFAULT_SIZES);

	int64		left = PG_INT64_MAX;

	for (;;)
	{
		int64		safe = CqrsSafePosition(events);
		int64		head;

		CHECK_FOR_INTERRUPTS();
		if (safe <= p->position)
			break;				/* the safe position did not move on */
		p->position = apply_final_stretch(p, events, p->position, safe, batchcxt);
		head = CqrsMaxPosition(events, GetLatestSnapshot());

		/*
		 * Near enough; or not getting nearer (appends outpace the handler),
		 * when going on would never end.
		 */
		if (head - p->position <= near || head - p->position >= left)
			break;
		left = head - p->position;
	}
	MemoryContextDelete(batchcxt);
	table_close(events, NoLock);
	return p->position;
}

/* ----------------------------------------------------------------
 * Deferred projections
 * ----------------------------------------------------------------
 */

/* What try_apply and try_rebuild hand to their subtransaction. */
typedef struct TryArgs
{
	CqrsProjection *p;
	Tuplestorestate *store;
	TupleDesc	desc;
	CqrsSkipSet *skip;
	int64		stop_before;
	CqrsRebuildTarget *target;
	int64		upto;
	int64		applied;		/* out */
} TryArgs;

static void
apply_step(void *arg)
{
	TryArgs    *a = (TryArgs *) arg;

	a->applied = CqrsApplyEvents(a->p, a->store, a->desc, a->skip, a->stop_before);
}

/* The failing position and message of a step's error; false. */
static bool
step_failed(ErrorData *edata, int64 *fail_position, char **fail_message)
{
	*fail_position = attempted_position;
	*fail_message = edata->message ? edata->message : "unknown error";
	return false;
}

/*
 * Apply a collected batch in a subtransaction.  Returns true on success
 * with *applied set; on a handler error rolls the subtransaction back and
 * returns false with the failing position and message.
 */
static bool
try_apply(CqrsProjection *p, Tuplestorestate *store, TupleDesc desc, CqrsSkipSet *skip,
		  int64 stop_before, int64 *applied, int64 *fail_position, char **fail_message)
{
	TryArgs		a = {.p = p,.store = store,.desc = desc,.skip = skip,.stop_before = stop_before};
	ErrorData  *edata = CqrsTrySubtransaction(apply_step, &a);

	if (edata != NULL)
		return step_failed(edata, fail_position, fail_message);
	*applied = a.applied;
	return true;
}

/* ----------------------------------------------------------------
 * Sync projections catching up (cqrs.replay(name, concurrently => true))
 * ----------------------------------------------------------------
 *
 * A sync projection in state 'catching up' is left alone by appends and
 * brought back by its appliers, as a deferred one is, one step per call of
 * CqrsApplyBatch, each step a transaction of the worker's (or a part of
 * process_projections' transaction):
 *
 *	rebuild		its checkpoint is 0: the tables still hold what they held
 *				when the replay was asked for.  Empty them (DELETE) and apply
 *				every event up to the safe position, in one transaction, as
 *				a deferred replay does: readers see the old rows until it
 *				commits.  The checkpoint is then the safe position.
 *	batch		further than CQRS_CATCH_UP_NEAR from the head: a batch up to
 *				the safe position, as for a deferred projection.
 *	switch		near the head: take ShareLock on cqrs.projections (which
 *				waits for the appends in flight and holds new ones, see
 *				projection.c), apply the last stretch up to the head, exact
 *				under the lock, and mark the projection running: appends
 *				apply it from the next position on.  The lock is waited for
 *				at most CQRS_SWITCH_LOCK_TIMEOUT ms, which bounds what new
 *				appends wait behind it when an old append stays open; the
 *				step is then tried again later.
 *
 * A handler error in a rebuild or a batch fails the projection as for a
 * deferred one (the rebuild is rolled back whole, the tables keep their
 * old rows and the checkpoint stays 0); resume_projection then puts it
 * back to catching up.  Every step commits with its checkpoint, so a crash
 * leaves a state the worker goes on from after restart.
 */

/* positions from the head at which a catching-up projection switches */
#define CQRS_CATCH_UP_NEAR ((int64) cqrs_batch_size)
/* longest wait for the ShareLock of the switch, in ms */
#define CQRS_SWITCH_LOCK_TIMEOUT 200

/*
 * CqrsRebuildEmpty
 *		Empty a rebuild target's tables, as its owner: DELETE, not TRUNCATE,
 *		so that readers keep seeing the old rows until the caller commits.
 */
void
CqrsRebuildEmpty(const CqrsRebuildTarget *t)
{
	CqrsOwnerScope scope;

	CqrsSPIConnect();
	CqrsOwnerScopeEnter(t->owner, CQRS_INTERNAL_SEARCH_PATH, &scope);
	for (int i = 0; i < t->ntables; i++)
	{
		char	   *sql = psprintf("DELETE FROM %s", CqrsQualifiedName(t->tables[i]));
		int			rc = SPI_execute(sql, false, 0);

		if (rc != SPI_OK_DELETE)
			elog(ERROR, "pg_cqrs: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
	}
	CqrsOwnerScopeLeave(&scope);
	SPI_finish();
}

/*
 * CqrsRebuildTables
 *		Empty a projection's tables and apply every event up to upto, in the
 *		caller's transaction, and establish their digests from the result
 *		(one scan each, cheaper than counting every write).  The caller holds
 *		the projection still (CqrsRebuildLock, or its row locked) and moves
 *		its checkpoint.  Returns the number of events applied.
 */
int64
CqrsRebuildTables(const CqrsRebuildTarget *t, int64 upto)
{
	int64		applied;

	for (int i = 0; i < t->ntables && t->digest; i++)
	{
		CqrsDigestAttach(t->tables[i]);
		CqrsDigestSuspend(t->tables[i]);
	}
	CqrsRebuildEmpty(t);
	applied = CqrsRebuildApply(t->name, upto);
	for (int i = 0; i < t->ntables && t->digest; i++)
		CqrsDigestResume(t->tables[i]);
	CommandCounterIncrement();
	if (t->digest && CqrsDigestsInstalled())
	{
		Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
		CqrsBuckets *digest = palloc(sizeof(CqrsBuckets));

		for (int i = 0; i < t->ntables; i++)
		{
			CqrsScanBuckets(t->tables[i], snapshot, digest, NULL, NULL, NULL);
			CqrsDigestSet(t->name, t->tables[i], digest);
		}
		UnregisterSnapshot(snapshot);
		pfree(digest);
	}
	return applied;
}

static void describe(CqrsProjection *p, CqrsRebuildTarget *t);

static void
rebuild_step(void *arg)
{
	TryArgs    *a = (TryArgs *) arg;

	a->applied = CqrsRebuildTables(a->target, a->upto);
}

/*
 * The rebuild step, in a subtransaction: true on success with *applied;
 * on an error, rolled back whole, false with the failing position and
 * message.
 */
static bool
try_rebuild(CqrsProjection *p, int64 upto, int64 *applied,
			int64 *fail_position, char **fail_message)
{
	CqrsRebuildTarget t;
	TryArgs		a = {.target = &t,.upto = upto};
	ErrorData  *edata;

	describe(p, &t);
	attempted_position = 0;
	edata = CqrsTrySubtransaction(rebuild_step, &a);
	if (edata != NULL)
		return step_failed(edata, fail_position, fail_message);
	*applied = a.applied;
	return true;
}

static void
switch_lock_step(void *arg)
{
	if (LockTimeout <= 0 || LockTimeout > CQRS_SWITCH_LOCK_TIMEOUT)
		LockTimeout = CQRS_SWITCH_LOCK_TIMEOUT;
	(void) CqrsLockProjections(ShareLock);
}

/*
 * ShareLock on cqrs.projections, waiting at most CQRS_SWITCH_LOCK_TIMEOUT
 * ms (lock_timeout, in a subtransaction whose locks the caller keeps on
 * success); false when it timed out.  Other errors (deadlock) are raised.
 */
static bool
switch_lock(void)
{
	int			save_timeout = LockTimeout;
	ErrorData  *edata = CqrsTrySubtransaction(switch_lock_step, NULL);

	LockTimeout = save_timeout;
	if (edata == NULL)
		return true;
	if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
		ReThrowError(edata);
	return false;
}

/* Mark a catching-up projection failed at fail_position, checkpoint before. */
static void
catch_up_failed(CqrsProjection *p, int64 before, int64 fail_position, char *fail_message,
				CqrsBatchResult *result)
{
	Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
	Datum		values[3];

	values[0] = Int64GetDatum(before);
	values[1] = Int64GetDatum(fail_position);
	values[2] = CStringGetTextDatum(fail_message);
	CqrsProjectionUpdate(p->name, "state = 'failed', \"position\" = $2, error_position = $3, last_error = $4",
						 3, types, values, NULL);
	result->state = 'f';
	result->position = before;
	result->failed = true;
}

/*
 * One step of a catching-up sync projection (see above); its row is locked.
 * result->state is 'c' while it is still catching up (examined says whether
 * the step found anything to do), 'r' once switched, 'f' on failure.
 */
static void
catch_up_step(CqrsProjection *p, int64 limit, CqrsBatchResult *result)
{
	Relation	events = CqrsOpenEventLog(AccessShareLock);
	TupleDesc	desc = RelationGetDescr(events);
	int64		safe = CqrsSafePosition(events);
	int64		head;
	int64		applied = 0;
	int64		fail_position = 0;
	char	   *fail_message = NULL;
	Tuplestorestate *store;
	int64		last;
	CqrsEventFilter fbuf;

	result->safe = safe;
	if (p->position == 0)
	{
		/* rebuild: the whole history up to the safe position, at once */
		if (try_rebuild(p, safe, &applied, &fail_position, &fail_message))
		{
			CqrsSetCheckpoint(p->name, safe);
			result->examined = Max(applied, 1);
			result->applied = applied;
			result->position = safe;
		}
		else
			catch_up_failed(p, 0, fail_position, fail_message, result);
		table_close(events, NoLock);
		return;
	}

	head = CqrsMaxPosition(events, GetLatestSnapshot());
	if (head - p->position > CQRS_CATCH_UP_NEAR)
	{
		/* a batch, as for a deferred projection */
		if (safe > p->position)
		{
			store = tuplestore_begin_heap(false, false, work_mem);
			result->examined = CqrsCollectEvents(events, projection_filter(p, &fbuf), p->position,
												 safe, limit, store, &last);
			if (result->examined < limit)
				last = safe;
			if (try_apply(p, store, desc, NULL, PG_INT64_MAX, &applied, &fail_position, &fail_message))
			{
				CqrsSetCheckpoint(p->name, last);
				result->applied = applied;
				result->position = last;
			}
			else
			{
				int64		before = p->position;
				int64		ignored_position;
				char	   *ignored_message;

				if (try_apply(p, store, desc, NULL, fail_position, &applied,
							  &ignored_position, &ignored_message))
				{
					before = fail_position - 1;
					result->applied = applied;
				}
				catch_up_failed(p, before, fail_position, fail_message, result);
			}
			tuplestore_end(store);
		}
		table_close(events, NoLock);
		return;
	}

	/*
	 * the switch: appends wait from here to our commit (the worker logs how
	 * long, from these two times, once it has committed)
	 */
	result->switch_asked = GetCurrentTimestamp();
	if (!switch_lock())
	{
		result->switch_asked = 0;
		table_close(events, NoLock);
		return;					/* still 'c', nothing examined: later */
	}
	result->switch_locked = GetCurrentTimestamp();
	head = CqrsMaxPosition(events, GetLatestSnapshot());
	store = tuplestore_begin_heap(false, false, work_mem);
	result->examined = CqrsCollectEvents(events, projection_filter(p, &fbuf), p->position,
										 head, PG_INT64_MAX, store, &last);
	if (try_apply(p, store, desc, NULL, PG_INT64_MAX, &applied, &fail_position, &fail_message))
	{
		Oid			types[1] = {INT8OID};
		Datum		values[1];

		values[0] = Int64GetDatum(head);
		CqrsProjectionUpdate(p->name, "state = 'running', \"position\" = $2, last_error = NULL, error_position = NULL",
							 1, types, values, NULL);
		CqrsProjectionsChanged(CqrsEventLog()->projections);
		result->state = 'r';
		result->applied = applied;
		result->position = head;
		result->examined = Max(result->examined, 1);
	}
	else
	{
		int64		before = p->position;
		int64		ignored_position;
		char	   *ignored_message;

		if (try_apply(p, store, desc, NULL, fail_position, &applied,
					  &ignored_position, &ignored_message))
		{
			before = fail_position - 1;
			result->applied = applied;
		}
		catch_up_failed(p, before, fail_position, fail_message, result);
	}
	tuplestore_end(store);
	table_close(events, NoLock);
}

/*
 * CqrsApplyBatch
 *		Apply the next batch of a deferred projection, in the caller's
 *		transaction (SPI connected).
 *
 * Locks the projection's row, so concurrent appliers take turns; reads the
 * checkpoint they left.  With nowait (the worker) it waits for no lock at
 * all and reports 'b'usy instead: the worker then never sits in a lock queue
 * holding locks, so it can be part of no deadlock, with DROP EXTENSION or
 * lifecycle calls that lock in another order.  Then it applies events after
 * the checkpoint up to the safe position, at most limit of them, in a
 * subtransaction, and moves the checkpoint.
 *
 * A handler error rolls the batch back.  The events before the failing one
 * are then applied again in a new subtransaction, so the checkpoint stops
 * just before the failing event; the projection is marked failed there.
 */
void
CqrsApplyBatch(const char *name, int64 limit, bool nowait, CqrsBatchResult *result)
{
	CqrsProjection *p;
	Relation	events;
	TupleDesc	desc;
	int64		safe;
	int64		last;
	int64		applied = 0;
	int64		fail_position = 0;
	char	   *fail_message = NULL;
	Tuplestorestate *store;
	CqrsSkipSet    *skip;
	CqrsEventFilter fbuf;
	List	   *l;
	Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
	Datum		values[3];

	memset(result, 0, sizeof(*result));

	/*
	 * RowExclusiveLock before the row lock: taking it only to move the
	 * checkpoint would upgrade from the RowShareLock of FOR UPDATE and
	 * deadlock with pause/drop, which hold ShareLock while they wait for
	 * our row.
	 */
	if (nowait)
	{
		const CqrsEventLogOids *oids = CqrsEventLog();

		if (!ConditionalLockRelationOid(oids->projections, RowExclusiveLock) ||
			!ConditionalLockRelationOid(oids->events, AccessShareLock) ||
			!ConditionalLockRelationOid(oids->skipped_events, AccessShareLock) ||
			(OidIsValid(oids->projection_digests) &&
			 !ConditionalLockRelationOid(oids->projection_digests, RowExclusiveLock)))
		{
			result->state = 'b';
			return;
		}
	}
	else
		(void) CqrsLockProjections(RowExclusiveLock);
	l = CqrsProjectionsQuery("true", name,
							 nowait ? CQRS_ROWS_FOR_UPDATE_SKIP_LOCKED : CQRS_ROWS_FOR_UPDATE);
	if (l == NIL)
	{
		/* dropped since the caller listed it, or (nowait) being applied */
		result->state = nowait ? 'b' : 'p';
		return;
	}
	p = linitial(l);
	result->state = p->state;
	result->position = p->position;
	if (p->sync && p->state == 'c')
	{
		catch_up_step(p, limit, result);
		return;
	}
	if (p->sync || p->state != 'r')
		return;

	events = CqrsOpenEventLog(AccessShareLock);
	desc = RelationGetDescr(events);
	safe = CqrsSafePosition(events);
	if (safe <= p->position)
	{
		table_close(events, NoLock);
		return;
	}

	store = tuplestore_begin_heap(false, false, work_mem);
	result->examined = CqrsCollectEvents(events, projection_filter(p, &fbuf), p->position,
										 safe, limit, store, &last);
	if (result->examined < limit)
		last = safe;			/* everything up to the safe position was seen */
	skip = CqrsLoadSkipSet(name, p->position);

	if (try_apply(p, store, desc, skip, PG_INT64_MAX, &applied, &fail_position, &fail_message))
	{
		CqrsSetCheckpoint(name, last);
		result->applied = applied;
		result->position = last;
	}
	else
	{
		int64		before = p->position;
		int64		ignored_position;
		char	   *ignored_message;

		if (try_apply(p, store, desc, skip, fail_position, &applied,
					  &ignored_position, &ignored_message))
		{
			before = fail_position - 1;
			result->applied = applied;
		}
		values[0] = Int64GetDatum(before);
		values[1] = Int64GetDatum(fail_position);
		values[2] = CStringGetTextDatum(fail_message);
		CqrsProjectionUpdate(name, "state = 'failed', \"position\" = $2, error_position = $3, last_error = $4",
							 3, types, values, NULL);
		result->state = 'f';
		result->position = before;
	}
	tuplestore_end(store);
	table_close(events, NoLock);
}

/* ----------------------------------------------------------------
 * Rebuilding, for replay and reconcile (replay.c)
 * ----------------------------------------------------------------
 */

static void
describe(CqrsProjection *p, CqrsRebuildTarget *t)
{
	t->name = pstrdup(p->name);
	t->sync = p->sync;
	t->state = p->state;
	t->position = p->position;
	t->owner = p->owner;
	t->search_path = pstrdup(p->search_path);
	t->digest = p->digest;
	t->ntables = p->ntables;
	t->tables = palloc((p->ntables + 1) * sizeof(Oid));
	for (int i = 0; i < p->ntables; i++)
		t->tables[i] = p->tables[i];
}

/*
 * CqrsRebuildDescribe
 *		A projection as last committed, without locking anything; for its
 *		owner only.
 */
void
CqrsRebuildDescribe(const char *name, CqrsRebuildTarget *target)
{
	MemoryContext callercxt = CurrentMemoryContext;
	CqrsProjection *p;

	CqrsRequireProjectionOwner(name);
	CqrsSPIConnect();
	p = CqrsProjectionGet(name, false);
	MemoryContextSwitchTo(callercxt);
	describe(p, target);
	SPI_finish();
}

/*
 * CqrsRebuildLock
 *		Hold a projection still while its tables are rebuilt or compared,
 *		and describe it; for its owner only, checked before any lock.
 *
 * A sync projection: ShareLock on cqrs.projections, as for pause, so no
 * append holds or takes a position until the caller's (sub)transaction
 * ends; target->position is then the head of the log, exactly what the
 * projection has applied.  A deferred one: its catalog row, locked, so the
 * worker skips it and process_projections waits; target->position is its
 * checkpoint.  The mode is read first, unlocked, to pick the lock; it is
 * checked again once locked.
 */
void
CqrsRebuildLock(const char *name, CqrsRebuildTarget *target)
{
	MemoryContext callercxt = CurrentMemoryContext;
	CqrsProjection *p;
	bool		sync;

	CqrsRequireProjectionOwner(name);
	CqrsSPIConnect();
	sync = CqrsProjectionGet(name, false)->sync;
	(void) CqrsLockProjections(sync ? ShareLock : RowExclusiveLock);
	p = CqrsProjectionGet(name, true);
	if (p->sync != sync)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("projection \"%s\" was replaced concurrently", name)));
	MemoryContextSwitchTo(callercxt);
	describe(p, target);
	if (p->sync && p->state == 'r')
	{
		Relation	events = CqrsOpenEventLog(AccessShareLock);

		target->position = CqrsMaxPosition(events, GetLatestSnapshot());
		table_close(events, NoLock);
	}
	SPI_finish();
}

/*
 * CqrsRebuildApply
 *		Apply every event up to and including upto to a projection whose
 *		tables the caller has emptied, in the caller's transaction: the
 *		events it wants, minus those it was told to skip.  A handler error
 *		is the caller's error.  Returns the number of events applied.
 */
int64
CqrsRebuildApply(const char *name, int64 upto)
{
	CqrsProjection *p;
	Relation	events;
	CqrsSkipSet    *skip;
	int64		after = 0;
	int64		applied = 0;
	CqrsEventFilter fbuf;

	CqrsSPIConnect();
	p = CqrsProjectionGet(name, false);
	skip = CqrsLoadSkipSet(name, 0);
	events = CqrsOpenEventLog(AccessShareLock);
	while (after < upto)
	{
		Tuplestorestate *store = tuplestore_begin_heap(false, false, work_mem);
		int64		last;
		int64		n;

		CHECK_FOR_INTERRUPTS();
		n = CqrsCollectEvents(events, projection_filter(p, &fbuf), after, upto,
							  10 * (int64) cqrs_batch_size, store, &last);
		if (n > 0)
			applied += CqrsApplyEvents(p, store, RelationGetDescr(events), skip, PG_INT64_MAX);
		tuplestore_end(store);
		if (n == 0)
			break;
		after = last;
	}
	table_close(events, NoLock);
	SPI_finish();
	return applied;
}

/*
 * CqrsRebuildFinish
 *		Record that a projection's tables hold every event up to position:
 *		its checkpoint; a failed projection runs again.
 */
void
CqrsRebuildFinish(const CqrsRebuildTarget *target, int64 position)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	CqrsSPIConnect();
	values[0] = Int64GetDatum(position);
	CqrsProjectionUpdate(target->name,
						 "\"position\" = $2, state = CASE state WHEN 'failed' THEN 'running' ELSE state END,"
						 " last_error = NULL, error_position = NULL",
						 1, types, values, NULL);
	SPI_finish();
	if (!target->sync)
		CqrsWakeAppliers();
}
