/*-------------------------------------------------------------------------
 *
 * projection.c
 *		Projections: catalog and lifecycle, the sync trigger, applying batches.
 *
 * A projection keeps read tables up to date by calling its handler, an
 * ordinary function handler(e cqrs.events) RETURNS void, once per event.
 *
 *	sync		applied by a statement-level AFTER INSERT trigger on the log,
 *				inside the appending transaction.  Nothing is recorded per
 *				append: every committed event has been applied.
 *	deferred	applied after commit, in position order, by the database's
 *				worker (worker.c) or by cqrs.process_projections(), batch by
 *				batch; each batch commits together with the projection's
 *				checkpoint (cqrs.projections.position), so every event takes
 *				effect exactly once.
 *
 * Checkpoint.  For a deferred projection, the position up to which every
 * event has been applied (or filtered out, or skipped).  A batch never goes
 * past the safe position (horizon.c), so no event committed later can land
 * below the checkpoint.  Concurrent appliers (the worker, any number of
 * process_projections calls) serialise on the projection's catalog row,
 * locked FOR UPDATE; the second one re-reads the checkpoint the first one
 * committed.
 *
 * Locking for sync projections.  Every append takes RowExclusiveLock on
 * cqrs.projections before it takes its first position (a fast-path lock, so
 * appends do not contend on it).  Creating, dropping, pausing and resuming a
 * sync projection take ShareLock, which waits for every transaction that
 * holds a position and keeps new ones from taking one.  While it is held the
 * set of applied events is exactly "every position at or below the log's
 * head", so a sync projection can start, stop and restart at an exact
 * position, and the trigger of an append that waited sees the new
 * definition.  The definitions are cached per backend and dropped on a
 * relcache invalidation of cqrs.projections, which the lifecycle functions
 * send.
 *
 * Security.  Handlers run as the projection's owner (its creator) with
 * SECURITY_RESTRICTED_OPERATION and the search_path that was in effect when
 * the projection was created, never as whoever appended, as REFRESH
 * MATERIALIZED VIEW and amcheck run user code.
 *
 * Failures.  A sync handler's error aborts the append, with the projection
 * named in the error context.  A deferred batch runs in a subtransaction: a
 * handler error rolls the batch back, then the projection is marked failed
 * with the position and message, in the enclosing transaction, and the
 * other projections go on.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/projection.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/wait_event.h"
#include "storage/latch.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_create_projection);
PG_FUNCTION_INFO_V1(cqrs_drop_projection);
PG_FUNCTION_INFO_V1(cqrs_pause_projection);
PG_FUNCTION_INFO_V1(cqrs_resume_projection);
PG_FUNCTION_INFO_V1(cqrs_skip_event);
PG_FUNCTION_INFO_V1(cqrs_process_projections);
PG_FUNCTION_INFO_V1(cqrs_wait_for_projection);
PG_FUNCTION_INFO_V1(cqrs_projection_position);
PG_FUNCTION_INFO_V1(cqrs_apply_sync_projections);

/* A projection's definition, as the appliers need it. */
typedef struct Projection
{
	char	   *name;
	char	   *handler_sig;	/* qualified signature, as stored */
	Oid			handler;
	Oid			owner;
	bool		sync;
	char		state;			/* 'r'unning, 'p'aused, 'f'ailed */
	int64		position;
	char	   *search_path;
	int			ncategories;
	text	  **categories;		/* NULL: every category */
	int			ntypes;
	text	  **types;			/* NULL: every type */
	int			ntables;
	Oid		   *tables;			/* the read tables it owns */
	bool		digest;			/* keeps digests of its tables (digest.c) */
	FmgrInfo	flinfo;
} Projection;

/* Error context while a handler runs. */
typedef struct ApplyContext
{
	const char *projection;
	int64		position;
} ApplyContext;

typedef CqrsOwnerScope OwnerScope;

/* The sync projections of this backend's database, cached. */
static List *sync_cache = NIL;
static bool sync_cache_valid = false;
static MemoryContext sync_cache_cxt = NULL;
static bool projections_callback_registered = false;
static Oid	projections_relid = InvalidOid;


static void spi_connect(void);

/* ----------------------------------------------------------------
 * The catalog
 * ----------------------------------------------------------------
 */

static void
projections_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	sync_cache_valid = false;
}

static void
projections_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == projections_relid)
		sync_cache_valid = false;
}

/*
 * CqrsProjectionsRelid
 *		OID of cqrs.projections, or InvalidOid where the extension's
 *		installed version predates projections.
 */
Oid
CqrsProjectionsRelid(void)
{
	if (!OidIsValid(get_namespace_oid("cqrs", true)))
		return InvalidOid;
	return CqrsEventLog()->projections;
}

/*
 * CqrsLockProjectionsForAppend
 *		Called by appends before they take a position; see the file header.
 */
void
CqrsLockProjectionsForAppend(void)
{
	Oid			relid = CqrsEventLog()->projections;

	if (OidIsValid(relid))
		LockRelationOid(relid, RowExclusiveLock);
}

/* Tell every backend, at commit, that projection definitions changed. */
static void
projections_changed(Oid relid)
{
	CacheInvalidateRelcacheByRelid(relid);
}

static Oid
projections_lock(LOCKMODE mode)
{
	Oid			relid = CqrsProjectionsRelid();

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_cqrs is not up to date in this database"),
				 errhint("Run ALTER EXTENSION pg_cqrs UPDATE.")));
	LockRelationOid(relid, mode);
	return relid;
}

static text **
text_array_elems(Datum d, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	text	  **out;
	int			m = 0;

	/* copied: the datum lives in SPI memory, the result in ours */
	deconstruct_array(DatumGetArrayTypePCopy(d), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &count);
	out = palloc((count + 1) * sizeof(text *));
	for (int i = 0; i < count; i++)
		if (!nulls[i])
			out[m++] = DatumGetTextPP(elems[i]);
	*n = m;
	return out;
}

/*
 * The catalog is read and written as its owner (the extension's owner), not
 * as the caller: an application role that may append must not need
 * privileges on cqrs.projections, nor on the schemas of other roles'
 * handlers, for the sync trigger to find and resolve them.  Only our own
 * schema-qualified SQL runs in this scope.
 */
typedef CqrsCatalogScope CatalogScope;

static void
catalog_scope_enter(CatalogScope *scope)
{
	HeapTuple	tup;
	Oid			owner;
	Oid			relid = CqrsEventLog()->projections;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(owner, scope->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

static void
catalog_scope_leave(CatalogScope *scope)
{
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

/*
 * CqrsCatalogConnect
 *		Connect to SPI and act as the catalog's owner, for the other files
 *		that keep bookkeeping next to the catalog (digest.c).
 */
void
CqrsCatalogConnect(CatalogScope *scope)
{
	spi_connect();
	catalog_scope_enter(scope);
}

void
CqrsCatalogDisconnect(CatalogScope *scope)
{
	catalog_scope_leave(scope);
	SPI_finish();
}

/* SPI_execute_with_args on the catalog, as its owner. */
static int
catalog_execute(const char *sql, int nargs, Oid *argtypes, Datum *values,
				const char *nulls, bool read_only)
{
	CatalogScope scope;
	int			rc;

	catalog_scope_enter(&scope);
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, read_only, 0);
	catalog_scope_leave(&scope);
	return rc;
}

/* The handler's OID from its stored signature; InvalidOid if it is gone. */
static Oid
resolve_handler(const char *signature)
{
	LOCAL_FCINFO(fcinfo, 1);
	Datum		result;

	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = CStringGetTextDatum(signature);
	fcinfo->args[0].isnull = false;
	result = to_regprocedure(fcinfo);
	return fcinfo->isnull ? InvalidOid : DatumGetObjectId(result);
}

/* digest came with 0.3.0: before ALTER EXTENSION UPDATE, every projection has one */
#define PROJECTION_COLUMNS \
	"name, handler, owner::pg_catalog.oid, mode, categories, types, search_path, state, \"position\", tables::pg_catalog.oid[], %s"

/*
 * Build a Projection from a row of PROJECTION_COLUMNS, in the current
 * memory context.  Resolves the handler, which may raise an error if it was
 * dropped.
 */
static Projection *
projection_from_row(HeapTuple tuple, TupleDesc desc)
{
	Projection *p = palloc0(sizeof(Projection));
	bool		isnull;
	Datum		d;
	char	   *mode;
	char	   *state;

	p->name = TextDatumGetCString(SPI_getbinval(tuple, desc, 1, &isnull));
	p->handler_sig = TextDatumGetCString(SPI_getbinval(tuple, desc, 2, &isnull));
	p->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
	mode = TextDatumGetCString(SPI_getbinval(tuple, desc, 4, &isnull));
	p->sync = strcmp(mode, "sync") == 0;
	d = SPI_getbinval(tuple, desc, 5, &isnull);
	if (!isnull)
		p->categories = text_array_elems(d, &p->ncategories);
	d = SPI_getbinval(tuple, desc, 6, &isnull);
	if (!isnull)
		p->types = text_array_elems(d, &p->ntypes);
	p->search_path = TextDatumGetCString(SPI_getbinval(tuple, desc, 7, &isnull));
	state = TextDatumGetCString(SPI_getbinval(tuple, desc, 8, &isnull));
	p->state = state[0];
	p->position = DatumGetInt64(SPI_getbinval(tuple, desc, 9, &isnull));
	d = SPI_getbinval(tuple, desc, 10, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		int			n;

		deconstruct_array(DatumGetArrayTypePCopy(d), OIDOID, sizeof(Oid), true, TYPALIGN_INT,
						  &elems, NULL, &n);
		p->tables = palloc((n + 1) * sizeof(Oid));
		for (int i = 0; i < n; i++)
			p->tables[i] = DatumGetObjectId(elems[i]);
		p->ntables = n;
	}
	p->digest = DatumGetBool(SPI_getbinval(tuple, desc, 11, &isnull));

	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(p->owner)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the owner of projection \"%s\" no longer exists", p->name),
				 errhint("Drop the projection and create it again as an existing role.")));

	/* a dropped handler is reported when the projection next runs */
	p->handler = resolve_handler(p->handler_sig);
	if (OidIsValid(p->handler))
		fmgr_info_cxt(p->handler, &p->flinfo, CurrentMemoryContext);
	return p;
}

/*
 * Read projections with SQL (already connected to SPI).  where is a
 * constant condition, name an optional parameter $1.  Reads with a fresh
 * snapshot: a caller that waited for a lock must see what the holder
 * committed, whatever its isolation level.
 */
/* How projections_query locks the rows it returns. */
typedef enum RowLock
{
	ROWS_UNLOCKED,
	ROWS_FOR_UPDATE,
	ROWS_FOR_UPDATE_SKIP_LOCKED
} RowLock;

static List *
projections_query(const char *where, const char *name, RowLock rowlock)
{
	StringInfoData sql;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	List	   *result = NIL;
	MemoryContext callercxt = CurrentMemoryContext;
	CatalogScope scope;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT " PROJECTION_COLUMNS " FROM cqrs.projections WHERE %s%s ORDER BY name%s",
					 CqrsDigestsInstalled() ? "digest" : "true",
					 where, name ? " AND name OPERATOR(pg_catalog.=) $1" : "",
					 rowlock == ROWS_FOR_UPDATE ? " FOR UPDATE" :
					 rowlock == ROWS_FOR_UPDATE_SKIP_LOCKED ? " FOR UPDATE SKIP LOCKED" : "");
	values[0] = name ? CStringGetTextDatum(name) : (Datum) 0;

	catalog_scope_enter(&scope);
	if (rowlock != ROWS_UNLOCKED)
		rc = SPI_execute_with_args(sql.data, name ? 1 : 0, argtypes, values, NULL, false, 0);
	else
	{
		SPIPlanPtr	plan = SPI_prepare(sql.data, name ? 1 : 0, argtypes);

		if (plan == NULL)
			elog(ERROR, "pg_cqrs: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(),
								  InvalidSnapshot, true, false, 0);
		SPI_freeplan(plan);
	}
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading cqrs.projections failed: %s", SPI_result_code_string(rc));

	/* SPI calls leave us in SPI's context; build in the caller's */
	MemoryContextSwitchTo(callercxt);
	for (uint64 i = 0; i < SPI_processed; i++)
		result = lappend(result, projection_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc));
	catalog_scope_leave(&scope);
	return result;
}

static Projection *
projection_get(const char *name, bool for_update)
{
	List	   *l = projections_query("true", name,
									  for_update ? ROWS_FOR_UPDATE : ROWS_UNLOCKED);

	if (l == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name)));
	return linitial(l);
}

static void
projection_update(const char *name, const char *set, int nargs, Oid *argtypes, Datum *values, const char *nulls)
{
	StringInfoData sql;
	Oid			types[8];
	Datum		vals[8];
	char		ns[8];
	int			rc;

	Assert(nargs < 8);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE cqrs.projections SET %s, updated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1", set);
	types[0] = TEXTOID;
	vals[0] = CStringGetTextDatum(name);
	ns[0] = ' ';
	for (int i = 0; i < nargs; i++)
	{
		types[i + 1] = argtypes[i];
		vals[i + 1] = values[i];
		ns[i + 1] = nulls ? nulls[i] : ' ';
	}
	rc = catalog_execute(sql.data, nargs + 1, types, vals, ns, false);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "pg_cqrs: updating projection \"%s\" failed: %s", name, SPI_result_code_string(rc));
}

static void
spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
}

/* Move a projection's checkpoint. */
static void
set_position(const char *name, int64 position)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	values[0] = Int64GetDatum(position);
	projection_update(name, "\"position\" = $2", 1, types, values, NULL);
}

/*
 * Have a deferred projection's applier look at it: the database's worker,
 * or, at commit, the launcher if the database has none yet.
 */
static void
wake_appliers(void)
{
	CqrsWakeWorker(MyDatabaseId);
	CqrsWakeLauncherAtCommit();
}

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

/*
 * CqrsOwnerScopeEnter
 *		Act as a projection's owner, restricted, with its pinned search_path:
 *		how handlers run, and how replay and reconcile write read tables.
 */
void
CqrsOwnerScopeEnter(Oid owner, const char *search_path, OwnerScope *scope)
{
	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(owner,
						   scope->save_sec_context | SECURITY_RESTRICTED_OPERATION);
	scope->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", search_path,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
CqrsOwnerScopeLeave(OwnerScope *scope)
{
	AtEOXact_GUC(false, scope->save_nestlevel);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

static void
owner_scope_enter(Projection *p, OwnerScope *scope)
{
	CqrsOwnerScopeEnter(p->owner, p->search_path, scope);
}

static void
owner_scope_leave(OwnerScope *scope)
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

/* Whether the event in slot passes the projection's filters. */
static bool
projection_wants(Projection *p, TupleTableSlot *slot)
{
	bool		isnull;
	text	   *t;

	if (p->categories != NULL)
	{
		const char *dash;
		int			len;

		t = DatumGetTextPP(slot_getattr(slot, Anum_events_stream, &isnull));
		len = VARSIZE_ANY_EXHDR(t);
		dash = memchr(VARDATA_ANY(t), '-', len);
		if (dash)
			len = dash - VARDATA_ANY(t);
		if (!names_match(p->categories, p->ncategories, VARDATA_ANY(t), len))
			return false;
	}
	if (p->types != NULL)
	{
		t = DatumGetTextPP(slot_getattr(slot, Anum_events_type, &isnull));
		if (!names_match(p->types, p->ntypes, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)))
			return false;
	}
	return true;
}

/*
 * Position of the event whose handler call is under way (or failed); read
 * after an error has unwound apply_tuplestore.
 */
static int64 attempted_position = 0;

/*
 * Call the handler on the event in slot.  The caller is in the owner scope
 * and resets tmpcxt between events.
 */
static void
call_handler(Projection *p, TupleTableSlot *slot, ApplyContext *actx)
{
	LOCAL_FCINFO(fcinfo, 1);

	actx->position = attempted_position;
	InitFunctionCallInfoData(*fcinfo, &p->flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ExecFetchSlotHeapTupleDatum(slot);
	fcinfo->args[0].isnull = false;
	(void) FunctionCallInvoke(fcinfo);
}

/* A sorted set of positions a projection was told to skip. */
typedef struct SkipSet
{
	int			n;
	int64	   *positions;
} SkipSet;

static bool
skipset_contains(SkipSet *set, int64 position)
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
static int64
apply_tuplestore(Projection *p, Tuplestorestate *events, TupleDesc desc,
				 SkipSet *skip, int64 stop_before)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	MemoryContext tmpcxt = AllocSetContextCreate(CurrentMemoryContext,
												 "pg_cqrs apply",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt;
	ApplyContext actx;
	ErrorContextCallback errcb;
	OwnerScope	scope;
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
 * Collect events after a position into a tuplestore, in position order:
 * at most limit events (NULL-free), up to and including upto.  Returns the
 * number collected and, in *last, the position of the last one.
 */
static int64
collect_events(Relation events, int64 after, int64 upto, int64 limit,
			   Tuplestorestate *store, int64 *last)
{
	Relation	index = index_open(CqrsEventLog()->position_idx, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TupleTableSlot *slot = table_slot_create(events, NULL);
	IndexScanDesc scan;
	ScanKeyData keys[2];
	int64		n = 0;

	ScanKeyInit(&keys[0], 1, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
	ScanKeyInit(&keys[1], 1, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(upto));
	scan = cqrs_index_beginscan(events, index, snapshot, 2);
	index_rescan(scan, keys, 2, NULL, 0);
	*last = after;
	while (n < limit && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;

		tuplestore_puttupleslot(store, slot);
		*last = DatumGetInt64(slot_getattr(slot, Anum_events_position, &isnull));
		n++;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(index, NoLock);
	return n;
}

/* ----------------------------------------------------------------
 * Sync projections
 * ----------------------------------------------------------------
 */

/*
 * The running sync projections of this database, from the cache.  The
 * caller holds a lock on cqrs.projections, so the cache reflects every
 * committed change that matters (see the file header).
 */
static List *
sync_projections(Oid relid)
{
	if (!projections_callback_registered)
	{
		CacheRegisterRelcacheCallback(projections_relcache_callback, (Datum) 0);
		/* handlers resolved to OIDs: forget them when functions change */
		CacheRegisterSyscacheCallback(PROCOID, projections_syscache_callback, (Datum) 0);
		projections_callback_registered = true;
	}
	if (relid != projections_relid)
	{
		projections_relid = relid;
		sync_cache_valid = false;
	}
	if (!sync_cache_valid)
	{
		MemoryContext oldcxt;
		List	   *l;

		if (sync_cache_cxt == NULL)
			sync_cache_cxt = AllocSetContextCreate(CacheMemoryContext,
												   "pg_cqrs sync projections",
												   ALLOCSET_SMALL_SIZES);
		MemoryContextReset(sync_cache_cxt);
		sync_cache = NIL;

		spi_connect();
		oldcxt = MemoryContextSwitchTo(sync_cache_cxt);
		l = projections_query("mode OPERATOR(pg_catalog.=) 'sync' AND state OPERATOR(pg_catalog.=) 'running'",
							  NULL, ROWS_UNLOCKED);
		MemoryContextSwitchTo(oldcxt);
		SPI_finish();
		sync_cache = l;
		sync_cache_valid = true;
	}
	return sync_cache;
}

/*
 * cqrs.apply_sync_projections() RETURNS trigger
 *
 * AFTER INSERT ... FOR EACH STATEMENT on cqrs.events, with the statement's
 * new events as the transition table: apply them to every running sync
 * projection.
 */
Datum
cqrs_apply_sync_projections(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			relid;
	List	   *projections;
	ListCell   *lc;

	if (!CALLED_AS_TRIGGER(fcinfo) || trigdata->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.apply_sync_projections() must be called as an AFTER INSERT statement trigger with a transition table")));

	relid = CqrsProjectionsRelid();
	if (!OidIsValid(relid))
		return PointerGetDatum(NULL);
	/* already held by cqrs.append; taken here for plain INSERT and COPY */
	LockRelationOid(relid, RowExclusiveLock);

	projections = sync_projections(relid);
	foreach(lc, projections)
		apply_tuplestore((Projection *) lfirst(lc), trigdata->tg_newtable,
						 RelationGetDescr(trigdata->tg_relation), NULL, PG_INT64_MAX);

	return PointerGetDatum(NULL);
}

/*
 * Bring a sync projection from its position up to the head of the log,
 * inside the caller's transaction, and return the head, its new position.
 * The caller holds ShareLock on cqrs.projections, so the head is final and
 * nothing is being appended.
 */
static int64
sync_catch_up(Projection *p)
{
	Relation	events = CqrsOpenEventLog(AccessShareLock);
	int64		head = CqrsMaxPosition(events, GetLatestSnapshot());
	int64		after = p->position;

	while (after < head)
	{
		Tuplestorestate *store = tuplestore_begin_heap(false, false, work_mem);
		int64		last;
		int64		n = collect_events(events, after, head, cqrs_batch_size, store, &last);

		if (n == 0)
			break;
		(void) apply_tuplestore(p, store, RelationGetDescr(events), NULL, PG_INT64_MAX);
		tuplestore_end(store);
		after = last;
	}
	table_close(events, NoLock);
	p->position = head;
	return head;
}

/* ----------------------------------------------------------------
 * Deferred projections
 * ----------------------------------------------------------------
 */

/*
 * The positions after a checkpoint that a projection was told to skip.
 */
static SkipSet *
load_skipset(const char *name, int64 after)
{
	Oid			argtypes[2] = {TEXTOID, INT8OID};
	Datum		values[2];
	SkipSet    *set;
	int			rc;

	values[0] = CStringGetTextDatum(name);
	values[1] = Int64GetDatum(after);
	rc = catalog_execute("SELECT \"position\" FROM cqrs.skipped_events"
							   " WHERE projection OPERATOR(pg_catalog.=) $1"
							   " AND \"position\" OPERATOR(pg_catalog.>) $2 ORDER BY 1",
							   2, argtypes, values, NULL, true);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading skipped events failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return NULL;
	set = palloc(sizeof(SkipSet));
	set->n = SPI_processed;
	set->positions = palloc(set->n * sizeof(int64));
	for (int i = 0; i < set->n; i++)
	{
		bool		isnull;

		set->positions[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull));
	}
	return set;
}

/*
 * Apply a collected batch in a subtransaction.  Returns true on success
 * with *applied set; on a handler error rolls the subtransaction back and
 * returns false with the failing position and message.
 */
static bool
try_apply(Projection *p, Tuplestorestate *store, TupleDesc desc, SkipSet *skip,
		  int64 stop_before, int64 *applied, int64 *fail_position, char **fail_message)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		*applied = apply_tuplestore(p, store, desc, skip, stop_before);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;

		*fail_position = attempted_position;
		*fail_message = edata->message ? edata->message : "unknown error";
		ok = false;
	}
	PG_END_TRY();
	return ok;
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
	Projection *p;
	Relation	events;
	TupleDesc	desc;
	int64		safe;
	int64		last;
	int64		applied = 0;
	int64		fail_position = 0;
	char	   *fail_message = NULL;
	Tuplestorestate *store;
	SkipSet    *skip;
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
		(void) projections_lock(RowExclusiveLock);
	l = projections_query("true", name,
						  nowait ? ROWS_FOR_UPDATE_SKIP_LOCKED : ROWS_FOR_UPDATE);
	if (l == NIL)
	{
		/* dropped since the caller listed it, or (nowait) being applied */
		result->state = nowait ? 'b' : 'p';
		return;
	}
	p = linitial(l);
	result->state = p->state;
	result->position = p->position;
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
	result->examined = collect_events(events, p->position, safe, limit, store, &last);
	if (result->examined < limit)
		last = safe;			/* everything up to the safe position was seen */
	skip = load_skipset(name, p->position);

	if (try_apply(p, store, desc, skip, PG_INT64_MAX, &applied, &fail_position, &fail_message))
	{
		set_position(name, last);
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
		projection_update(name, "state = 'failed', \"position\" = $2, error_position = $3, last_error = $4",
						  3, types, values, NULL);
		result->state = 'f';
		result->position = before;
	}
	tuplestore_end(store);
	table_close(events, NoLock);
}

/* ----------------------------------------------------------------
 * SQL-callable lifecycle functions
 * ----------------------------------------------------------------
 */

static char *
name_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("projection name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("projection name must not be empty")));
	return name;
}

/* Validate a handler: exists, takes exactly (cqrs.events), returns void. */
static void
check_handler(Oid handler)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	Oid			events_type;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", handler)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (cqrs_proc_aclcheck(handler, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(handler)),
				 errdetail("A projection's handler runs as the role that creates the projection.")));
	events_type = get_rel_type_id(CqrsEventLog()->events);
	if (proc->pronargs != 1 || proc->proargtypes.values[0] != events_type ||
		proc->prorettype != VOIDOID || proc->proretset || proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("projection handler %s must take one cqrs.events argument and return void",
						format_procedure(handler)),
				 errhint("Declare it as: CREATE FUNCTION handler(e cqrs.events) RETURNS void ...")));
	ReleaseSysCache(tup);
}

/* Each read table must exist and have a primary key. */
static void
check_tables(ArrayType *tables)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (ARR_NDIM(tables) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("tables must be a one-dimensional array")));
	deconstruct_array(tables, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		Oid			relid;
		Relation	rel;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("tables must not contain NULL")));
		relid = DatumGetObjectId(elems[i]);
		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("relation with OID %u does not exist", relid)));
		rel = table_open(relid, AccessShareLock);
		if (rel->rd_rel->relkind != RELKIND_RELATION &&
			rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("\"%s\" is not a table", RelationGetRelationName(rel))));
		if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("read table \"%s\" is temporary", RelationGetRelationName(rel)),
					 errdetail("The worker and other sessions cannot see a temporary table.")));
		if (pg_class_aclmask(relid, GetUserId(), ACL_SELECT | ACL_INSERT | ACL_UPDATE | ACL_DELETE,
							 ACLMASK_ALL) != (ACL_SELECT | ACL_INSERT | ACL_UPDATE | ACL_DELETE))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", RelationGetRelationName(rel)),
					 errdetail("The projection's owner must be able to SELECT, INSERT, UPDATE and DELETE its read tables.")));
		if (!OidIsValid(CqrsRelationGetPrimaryKeyIndex(rel)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
					 errmsg("read table \"%s\" has no primary key", RelationGetRelationName(rel)),
					 errdetail("Replay and reconcile match rows by primary key.")));
		table_close(rel, NoLock);
	}
}

/*
 * A table belongs to one projection at most: a replay of one would wipe
 * the rows of the other, and their digests would count each other's writes
 * as drift.
 */
static void
check_tables_unowned(const char *name, ArrayType *tables)
{
	Oid			argtypes[2] = {TEXTOID, REGCLASSARRAYOID};
	Datum		values[2];
	int			rc;

	values[0] = CStringGetTextDatum(name);
	values[1] = PointerGetDatum(tables);
	rc = catalog_execute("SELECT name, t::pg_catalog.text FROM cqrs.projections, pg_catalog.unnest(tables) t"
						 " WHERE name OPERATOR(pg_catalog.<>) $1 AND t OPERATOR(pg_catalog.=) ANY ($2)"
						 " ORDER BY 1, 2 LIMIT 1",
						 2, argtypes, values, NULL, true);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading cqrs.projections failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table %s already belongs to projection \"%s\"",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
				 errdetail("Replay and reconcile rebuild a read table from one projection.")));
}

/*
 * cqrs.create_projection(name text, handler regproc, mode text,
 *						  tables regclass[], categories text[], types text[])
 *	  RETURNS void
 *
 * A sync projection catches up on history here, in the caller's
 * transaction; a deferred one is caught up by the worker after commit.
 */
Datum
cqrs_create_projection(PG_FUNCTION_ARGS)
{
	char	   *name = name_arg(fcinfo, 0);
	Oid			handler;
	char	   *mode;
	bool		sync;
	ArrayType  *tables;
	Oid			relid;
	Projection *p;
	int			rc;
	bool		digest = true;
	Oid			argtypes[9] = {TEXTOID, TEXTOID, OIDOID, TEXTOID, REGCLASSARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTOID, BOOLOID};
	Datum		values[9];
	char		nulls[9];

	memset(nulls, ' ', sizeof(nulls));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("handler must not be null")));
	handler = PG_GETARG_OID(1);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("mode must not be null"),
				 errhint("Use 'sync' or 'deferred'.")));
	mode = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (strcmp(mode, "sync") != 0 && strcmp(mode, "deferred") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid projection mode \"%s\"", mode),
				 errhint("Use 'sync' or 'deferred'.")));
	sync = mode[0] == 's';
	/* the digest argument came with 0.3.0 */
	if (PG_NARGS() > 6)
	{
		if (PG_ARGISNULL(6))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("digest must not be null")));
		digest = PG_GETARG_BOOL(6);
	}
	tables = PG_ARGISNULL(3) ? construct_empty_array(REGCLASSOID) : PG_GETARG_ARRAYTYPE_P(3);

	check_handler(handler);
	check_tables(tables);

	/* Sync: no append may hold a position while we look at the head. */
	relid = projections_lock(sync ? ShareLock : RowExclusiveLock);

	spi_connect();
	if (projections_query("true", name, ROWS_UNLOCKED) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("projection \"%s\" already exists", name)));

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(format_procedure_qualified(handler));
	values[2] = ObjectIdGetDatum(GetUserId());
	values[3] = CStringGetTextDatum(mode);
	values[4] = PointerGetDatum(tables);
	values[5] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[5] = PG_ARGISNULL(4) ? 'n' : ' ';
	values[6] = PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5);
	nulls[6] = PG_ARGISNULL(5) ? 'n' : ' ';
	values[7] = CStringGetTextDatum(GetConfigOption("search_path", false, false));
	values[8] = BoolGetDatum(digest);
	if (CqrsDigestsInstalled())
		rc = catalog_execute("INSERT INTO cqrs.projections"
							 " (name, handler, owner, mode, tables, categories, types, search_path, digest)"
							 " VALUES ($1, $2, $3::pg_catalog.regrole, $4, $5, $6, $7, $8, $9)",
							 9, argtypes, values, nulls, false);
	else
		rc = catalog_execute("INSERT INTO cqrs.projections"
							 " (name, handler, owner, mode, tables, categories, types, search_path)"
							 " VALUES ($1, $2, $3::pg_catalog.regrole, $4, $5, $6, $7, $8)",
							 8, argtypes, values, nulls, false);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: inserting projection failed: %s", SPI_result_code_string(rc));

	check_tables_unowned(name, tables);
	p = projection_get(name, false);
	for (int i = 0; i < p->ntables && p->digest; i++)
	{
		CqrsDigestAttach(p->tables[i]);
		CqrsDigestSet(name, p->tables[i], NULL);
	}

	if (sync)
		set_position(name, sync_catch_up(p));
	else
		wake_appliers();

	SPI_finish();
	projections_changed(relid);
	PG_RETURN_VOID();
}

/*
 * cqrs.drop_projection(name text) RETURNS void
 *
 * Removes the projection and its bookkeeping; leaves its read tables.
 */
Datum
cqrs_drop_projection(PG_FUNCTION_ARGS)
{
	char	   *name = name_arg(fcinfo, 0);
	Oid			relid = projections_lock(ShareLock);
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;

	Datum	   *tables;
	int			ntables;
	bool		isnull;

	spi_connect();
	values[0] = CStringGetTextDatum(name);
	rc = catalog_execute("DELETE FROM cqrs.projections WHERE name OPERATOR(pg_catalog.=) $1"
						 " RETURNING tables::pg_catalog.oid[]",
						 1, argtypes, values, NULL, false);
	if (rc != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "pg_cqrs: deleting projection failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name)));
	deconstruct_array(DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 1, &isnull)),
					  OIDOID, sizeof(Oid), true, TYPALIGN_INT, &tables, NULL, &ntables);
	for (int i = 0; i < ntables; i++)
		CqrsDigestDetach(DatumGetObjectId(tables[i]));
	if (CqrsDigestsInstalled())
	{
		rc = catalog_execute("DELETE FROM cqrs.projection_digests WHERE projection OPERATOR(pg_catalog.=) $1",
							 1, argtypes, values, NULL, false);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "pg_cqrs: deleting digests failed: %s", SPI_result_code_string(rc));
	}
	SPI_finish();
	projections_changed(relid);
	PG_RETURN_VOID();
}

/*
 * cqrs.pause_projection(name text) RETURNS void
 *
 * A paused projection applies nothing until resumed.  Pausing a sync
 * projection records the head of the log, which the ShareLock makes exact:
 * every event at or below it has been applied, none above.
 */
Datum
cqrs_pause_projection(PG_FUNCTION_ARGS)
{
	char	   *name = name_arg(fcinfo, 0);
	Oid			relid = projections_lock(ShareLock);
	Projection *p;

	spi_connect();
	p = projection_get(name, true);
	if (p->state != 'p')
	{
		if (p->sync && p->state == 'r')
		{
			Relation	events = CqrsOpenEventLog(AccessShareLock);
			Oid			types[1] = {INT8OID};
			Datum		values[1];

			values[0] = Int64GetDatum(CqrsMaxPosition(events, GetLatestSnapshot()));
			table_close(events, NoLock);
			projection_update(name, "state = 'paused', \"position\" = $2", 1, types, values, NULL);
		}
		else
			projection_update(name, "state = 'paused'", 0, NULL, NULL, NULL);
	}
	SPI_finish();
	projections_changed(relid);
	PG_RETURN_VOID();
}

/*
 * cqrs.resume_projection(name text) RETURNS void
 *
 * Puts a paused or failed projection back to work: a failed one retries
 * the event it stopped at.  A sync projection catches up here.
 */
Datum
cqrs_resume_projection(PG_FUNCTION_ARGS)
{
	char	   *name = name_arg(fcinfo, 0);
	Oid			relid = projections_lock(ShareLock);
	Projection *p;

	spi_connect();
	p = projection_get(name, true);
	if (p->state != 'r')
	{
		projection_update(name, "state = 'running', last_error = NULL, error_position = NULL",
						  0, NULL, NULL, NULL);
		if (p->sync)
			set_position(name, sync_catch_up(p));
		else
			wake_appliers();
	}
	SPI_finish();
	projections_changed(relid);
	PG_RETURN_VOID();
}

/*
 * cqrs.skip_event(name text, event_position bigint) RETURNS void
 *
 * For a projection that failed at event_position: record the event as
 * skipped, move the checkpoint past it and resume.
 */
Datum
cqrs_skip_event(PG_FUNCTION_ARGS)
{
	char	   *name = name_arg(fcinfo, 0);
	int64		position;
	Oid			relid;
	Projection *p;
	Oid			argtypes[2] = {TEXTOID, INT8OID};
	Datum		values[2];
	int			rc;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_position must not be null")));
	position = PG_GETARG_INT64(1);
	relid = projections_lock(RowExclusiveLock);

	spi_connect();
	p = projection_get(name, true);
	if (p->sync)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot skip an event of sync projection \"%s\"", name),
				 errdetail("A sync projection's failing event is never recorded: the append fails.")));
	if (p->state != 'f')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" has not failed", name),
				 errhint("Only the event a failed projection stopped at can be skipped.")));

	values[0] = CStringGetTextDatum(name);
	values[1] = Int64GetDatum(position);
	rc = catalog_execute("SELECT 1 FROM cqrs.projections"
							   " WHERE name OPERATOR(pg_catalog.=) $1"
							   " AND error_position OPERATOR(pg_catalog.=) $2",
							   2, argtypes, values, NULL, false);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("projection \"%s\" did not fail at position %lld", name, (long long) position),
				 errhint("See error_position in cqrs.projection_status.")));

	rc = catalog_execute("INSERT INTO cqrs.skipped_events (projection, \"position\", error)"
							   " SELECT name, error_position, last_error FROM cqrs.projections"
							   " WHERE name OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL, false);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: recording skipped event failed: %s", SPI_result_code_string(rc));
	/*
	 * Batches leave out skipped positions, so the checkpoint need not move;
	 * it does when it sits just before the event, to keep status exact.
	 */
	projection_update(name, "state = 'running', last_error = NULL, error_position = NULL,"
					  " \"position\" = CASE WHEN \"position\" OPERATOR(pg_catalog.=) ($2 OPERATOR(pg_catalog.-) 1)"
					  " THEN $2 ELSE \"position\" END",
					  1, &argtypes[1], &values[1], NULL);
	SPI_finish();
	projections_changed(relid);
	wake_appliers();
	PG_RETURN_VOID();
}

/*
 * cqrs.process_projections(name text, max_events integer) RETURNS bigint
 *
 * Apply, in the caller's transaction, every event committed before the call
 * to the running deferred projections (or the one named), handing at most
 * max_events events to handlers in all.  (A batch examines no more events
 * than the budget left, so it cannot overshoot.)  Waits for a batch another applier is running, and for
 * appends in flight below the events to apply.  Returns events applied.
 */
Datum
cqrs_process_projections(PG_FUNCTION_ARGS)
{
	char	   *only = PG_ARGISNULL(0) ? NULL : name_arg(fcinfo, 0);
	int64		budget = PG_ARGISNULL(1) ? PG_INT64_MAX : PG_GETARG_INT32(1);
	int64		total = 0;
	int64		target;
	List	   *projections;
	ListCell   *lc;
	Relation	events;

	if (budget < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must not be negative")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("cqrs.process_projections() must run at READ COMMITTED"),
				 errdetail("It moves checkpoints the background worker moves too, which a REPEATABLE READ or SERIALIZABLE transaction cannot follow.")));
	(void) projections_lock(RowExclusiveLock);
	CqrsRequireHorizon();

	events = CqrsOpenEventLog(AccessShareLock);
	target = CqrsMaxPosition(events, GetLatestSnapshot());
	table_close(events, NoLock);

	spi_connect();
	projections = projections_query("mode OPERATOR(pg_catalog.=) 'deferred' AND state OPERATOR(pg_catalog.=) 'running'",
									only, ROWS_UNLOCKED);
	if (only != NULL && projections == NIL)
		(void) projection_get(only, false); /* error if it does not exist */

	foreach(lc, projections)
	{
		Projection *p = lfirst(lc);

		while (budget > 0)
		{
			CqrsBatchResult r;

			CHECK_FOR_INTERRUPTS();
			CqrsApplyBatch(p->name, Min(budget, (int64) cqrs_batch_size), false, &r);
			total += r.applied;
			budget -= r.applied;
			if (r.state != 'r' || r.position >= target)
				break;
			if (r.examined == 0)
			{
				/*
				 * An append below target is still in flight: wait for its
				 * transaction, visibly to the deadlock detector (it may be
				 * waiting for us).  If it just ended, look again at once.
				 */
				TransactionId holder = CqrsHorizonHolder(r.position + 1);

				if (TransactionIdIsValid(holder))
					XactLockTableWait(holder, NULL, NULL, XLTW_None);
				else
				{
					(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
									 10, PG_WAIT_EXTENSION);
					ResetLatch(MyLatch);
				}
			}
		}
	}
	SPI_finish();
	PG_RETURN_INT64(total);
}

/*
 * Where a projection has got to, read with a fresh snapshot: a deferred or
 * paused projection's checkpoint; for a running sync projection, the safe
 * position (every final event is applied).  Sets *state.
 */
static int64
projection_progress(const char *name, char *state)
{
	Projection *p;
	int64		position;

	spi_connect();
	p = projection_get(name, false);
	position = p->position;
	*state = p->state;
	if (p->sync && p->state == 'r')
	{
		Relation	events = CqrsOpenEventLog(AccessShareLock);

		position = CqrsHorizonAvailable() ? CqrsSafePosition(events)
			: CqrsMaxPosition(events, GetLatestSnapshot());
		table_close(events, NoLock);
	}
	SPI_finish();
	return position;
}

/*
 * cqrs.projection_position(name text) RETURNS bigint
 *
 * The position up to which the projection has applied every event; used by
 * the cqrs.projection_status view.
 */
Datum
cqrs_projection_position(PG_FUNCTION_ARGS)
{
	char		state;

	PG_RETURN_INT64(projection_progress(name_arg(fcinfo, 0), &state));
}

/*
 * cqrs.wait_for_projection(name text, up_to bigint, timeout interval)
 *	  RETURNS boolean
 *
 * Sleeps on the workers' progress condition variable (or, without shared
 * memory, on the latch) until the projection has applied every event at or
 * below up_to; false when the timeout passes first.
 */
Datum
cqrs_wait_for_projection(PG_FUNCTION_ARGS)
{
	char	   *name = name_arg(fcinfo, 0);
	int64		up_to;
	TimestampTz deadline;
	bool		done = false;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("up_to must not be null")));
	up_to = PG_GETARG_INT64(1);
	if (PG_ARGISNULL(2))
		deadline = DT_NOEND;
	else
	{
		Interval   *timeout = PG_GETARG_INTERVAL_P(2);

		deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														   TimestampTzGetDatum(GetCurrentTimestamp()),
														   PointerGetDatum(timeout)));
	}

	for (;;)
	{
		char		state;
		long		remaining;

		CHECK_FOR_INTERRUPTS();
		if (projection_progress(name, &state) >= up_to)
		{
			done = true;
			break;
		}
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		CqrsWaitForProgress(Min(remaining, 100));
	}
	CqrsWaitForProgressDone();
	PG_RETURN_BOOL(done);
}

/* ----------------------------------------------------------------
 * For replay and reconcile (replay.c)
 * ----------------------------------------------------------------
 */

/*
 * CqrsProjectionNameArg
 *		A projection name argument, checked: not NULL, not empty.
 */
char *
CqrsProjectionNameArg(FunctionCallInfo fcinfo, int argno)
{
	return name_arg(fcinfo, argno);
}

static void
describe(Projection *p, CqrsRebuildTarget *t)
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
 *		A projection as last committed, without locking anything.
 */
void
CqrsRebuildDescribe(const char *name, CqrsRebuildTarget *target)
{
	MemoryContext callercxt = CurrentMemoryContext;
	Projection *p;

	spi_connect();
	p = projection_get(name, false);
	MemoryContextSwitchTo(callercxt);
	describe(p, target);
	SPI_finish();
}

/*
 * CqrsRebuildLock
 *		Hold a projection still while its tables are rebuilt or compared,
 *		and describe it.
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
	Projection *p;
	bool		sync;

	spi_connect();
	sync = projection_get(name, false)->sync;
	(void) projections_lock(sync ? ShareLock : RowExclusiveLock);
	p = projection_get(name, true);
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
	Projection *p;
	Relation	events;
	SkipSet    *skip;
	int64		after = 0;
	int64		applied = 0;

	spi_connect();
	p = projection_get(name, false);
	skip = load_skipset(name, 0);
	events = CqrsOpenEventLog(AccessShareLock);
	while (after < upto)
	{
		Tuplestorestate *store = tuplestore_begin_heap(false, false, work_mem);
		int64		last;
		int64		n;

		CHECK_FOR_INTERRUPTS();
		n = collect_events(events, after, upto, 10 * (int64) cqrs_batch_size, store, &last);
		if (n > 0)
			applied += apply_tuplestore(p, store, RelationGetDescr(events), skip, PG_INT64_MAX);
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

	spi_connect();
	values[0] = Int64GetDatum(position);
	projection_update(target->name,
					  "\"position\" = $2, state = CASE state WHEN 'failed' THEN 'running' ELSE state END,"
					  " last_error = NULL, error_position = NULL",
					  1, types, values, NULL);
	SPI_finish();
	if (!target->sync)
		wake_appliers();
}
