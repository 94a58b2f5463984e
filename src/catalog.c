/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		The projection catalog: its rows, the sync cache, skipped events.
 *
 * cqrs.projections holds one row per projection: its handler (stored as a
 * qualified signature), owner, mode, filters, pinned search_path, state,
 * checkpoint and read tables; cqrs.skipped_events the positions a failed
 * projection was told to skip.  This file reads and writes both, always as
 * the catalog's owner (scope.c) and with schema-qualified SQL, and keeps
 * the backend's cache of running sync projections, which a relcache
 * invalidation of cqrs.projections (sent by every change, see
 * CqrsProjectionsChanged) or of any function drops.
 *
 * It calls only eventlog.c and scope.c: everything that applies events,
 * or exposes projections to SQL, is above it.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/catalog.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"


/*
 * The running sync projections of this backend's database, and its running
 * deferred ones (for their filters: an append wakes the worker only for
 * events one of them wants), cached.
 */
static List *sync_cache = NIL;
static List *deferred_cache = NIL;
static bool sync_cache_valid = false;
static MemoryContext sync_cache_cxt = NULL;
static bool projections_callback_registered = false;
static Oid	projections_relid = InvalidOid;
static List *sync_cache_tables = NIL;	/* their read tables' OIDs */


/* ----------------------------------------------------------------
 * The catalog
 * ----------------------------------------------------------------
 */

static void
projections_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	sync_cache_valid = false;
}

/* A read table changing owner may break its projection. */
static void
projections_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == projections_relid ||
		list_member_oid(sync_cache_tables, relid))
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
 *		Called by appends before they take a position (see "Locking for sync
 *		projections" in projection.c); returns the running sync projections,
 *		which the lock keeps from changing until the transaction ends, and in
 *		*deferred the running deferred ones as of the lock (they may change
 *		meanwhile: the answer only decides whether to wake the worker).
 */
List *
CqrsLockProjectionsForAppend(List **deferred)
{
	Oid			relid = CqrsEventLog()->projections;
	List	   *sync;

	*deferred = NIL;
	if (!OidIsValid(relid))
		return NIL;
	LockRelationOid(relid, RowExclusiveLock);
	sync = CqrsSyncProjections(relid);
	*deferred = deferred_cache;
	return sync;
}

/*
 * CqrsProjectionsChanged
 *		Tell every backend, at commit, that projection definitions changed.
 */
void
CqrsProjectionsChanged(Oid relid)
{
	CacheInvalidateRelcacheByRelid(relid);
}

/*
 * A lifecycle function that takes ShareLock on cqrs.projections (creating,
 * dropping, pausing, resuming, replaying a sync projection) stops every
 * append until its transaction ends.  A session that then sits idle in
 * that transaction would hold them all for as long as it stays open; so
 * the rest of the transaction gets idle_in_transaction_session_timeout
 * at most cqrs.lifecycle_idle_timeout, as SET LOCAL would give it: past
 * that, idle, the server ends the session and its transaction, and the
 * appends go on.  A lower timeout the session already has is kept.
 *
 * This bounds forgetfulness (a migration left open, a client that died
 * without closing its connection), not malice: the owner could raise the
 * timeout again within the transaction.  Only the projection's owner can
 * take the lock at all (scope.c); statement_timeout bounds a busy holder.
 */
static void
bound_idle_hold(void)
{
	char		value[32];

	if (cqrs_lifecycle_idle_timeout <= 0)
		return;
	if (IdleInTransactionSessionTimeout > 0 &&
		IdleInTransactionSessionTimeout <= cqrs_lifecycle_idle_timeout)
		return;
	snprintf(value, sizeof(value), "%d", cqrs_lifecycle_idle_timeout);
	(void) set_config_option("idle_in_transaction_session_timeout", value,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
							 true, 0, false);
}

/*
 * CqrsLockProjections
 *		Lock cqrs.projections in mode and return its OID; an error where
 *		the installed version predates projections.
 */
Oid
CqrsLockProjections(LOCKMODE mode)
{
	Oid			relid = CqrsProjectionsRelid();

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_cqrs is not up to date in this database"),
				 errhint("Run ALTER EXTENSION pg_cqrs UPDATE.")));
	LockRelationOid(relid, mode);
	if (mode >= ShareLock)
		bound_idle_hold();
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
 * CqrsCatalogConnect
 *		Connect to SPI and act as the catalog's owner, for the other files
 *		that keep bookkeeping next to the catalog (digest.c).
 */
void
CqrsCatalogConnect(CqrsCatalogScope *scope)
{
	CqrsSPIConnect();
	CqrsCatalogScopeEnter(scope);
}

void
CqrsCatalogDisconnect(CqrsCatalogScope *scope)
{
	CqrsCatalogScopeLeave(scope);
	SPI_finish();
}

/*
 * CqrsCatalogExecute
 *		SPI_execute_with_args on the catalog, as its owner (SPI connected).
 */
int
CqrsCatalogExecute(const char *sql, int nargs, Oid *argtypes, Datum *values,
				   const char *nulls, bool read_only)
{
	CqrsCatalogScope scope;
	int			rc;

	CqrsCatalogScopeEnter(&scope);
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, read_only, 0);
	CqrsCatalogScopeLeave(&scope);
	return rc;
}

static Oid
function_owner(Oid proc)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(proc));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", proc);
	owner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	ReleaseSysCache(tup);
	return owner;
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
#define PROJECTION_COLUMNS_DRAFT \
	"name, handler, owner::pg_catalog.oid, mode, categories, types, search_path, state, \"position\", tables::pg_catalog.oid[], digest"

/*
 * Build a CqrsProjection from a row of PROJECTION_COLUMNS, in the current
 * memory context.  Resolves the handler, which may raise an error if it was
 * dropped.
 */
static CqrsProjection *
projection_from_row(HeapTuple tuple, TupleDesc desc)
{
	CqrsProjection *p = palloc0(sizeof(CqrsProjection));
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

	/*
	 * A projection runs as whoever owns its code: the handler's owner, who
	 * alone can change it (see CqrsProjectionOwner).  What cannot run is
	 * reported when the projection next runs (CqrsApplyEvents), so that it
	 * can still be listed, paused and dropped.
	 */
	p->handler = resolve_handler(p->handler_sig);
	if (OidIsValid(p->handler))
	{
		p->owner = function_owner(p->handler);
		fmgr_info_cxt(p->handler, &p->flinfo, CurrentMemoryContext);
	}
	else if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(p->owner)))
		p->broken = psprintf("the owner of projection \"%s\" no longer exists", p->name);

	/*
	 * Its handler writes its tables as the owner: a table owned by another
	 * role could carry that role's triggers, run with the owner's rights.
	 */
	for (int i = 0; i < p->ntables && p->broken == NULL; i++)
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(p->tables[i])) &&
			!cqrs_class_ownercheck(p->tables[i], p->owner))
			p->broken = psprintf("read table %s of projection \"%s\" is not owned by the projection's owner",
								 get_rel_name(p->tables[i]), p->name);
	return p;
}

/*
 * Read projections with SQL (already connected to SPI).  where is a
 * constant condition, name an optional parameter $1.  Reads with a fresh
 * snapshot: a caller that waited for a lock must see what the holder
 * committed, whatever its isolation level.
 */
List *
CqrsProjectionsQuery(const char *where, const char *name, CqrsRowLock rowlock)
{
	StringInfoData sql;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	List	   *result = NIL;
	MemoryContext callercxt = CurrentMemoryContext;
	CqrsCatalogScope scope;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT " PROJECTION_COLUMNS " FROM cqrs.projections WHERE %s%s ORDER BY name%s",
					 CqrsDigestsInstalled() ? "digest" : "true",
					 where, name ? " AND name OPERATOR(pg_catalog.=) $1" : "",
					 rowlock == CQRS_ROWS_FOR_UPDATE ? " FOR UPDATE" :
					 rowlock == CQRS_ROWS_FOR_UPDATE_SKIP_LOCKED ? " FOR UPDATE SKIP LOCKED" : "");
	values[0] = name ? CStringGetTextDatum(name) : (Datum) 0;

	CqrsCatalogScopeEnter(&scope);
	if (rowlock != CQRS_ROWS_UNLOCKED)
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
	CqrsCatalogScopeLeave(&scope);
	return result;
}

/*
 * CqrsProjectionGet
 *		One projection, optionally locked FOR UPDATE; an error if it does not
 *		exist.  SPI connected; the result is in the caller's context.
 */
CqrsProjection *
CqrsProjectionGet(const char *name, bool for_update)
{
	List	   *l = CqrsProjectionsQuery("true", name,
										 for_update ? CQRS_ROWS_FOR_UPDATE : CQRS_ROWS_UNLOCKED);

	if (l == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name)));
	return linitial(l);
}

/*
 * CqrsProjectionDraft
 *		A projection not yet in the catalog, as CqrsProjectionGet would return
 *		it once inserted with these values (the nine of create_projection's
 *		INSERT: name, handler signature, owner, mode, tables, categories,
 *		types, search_path, digest), running at position 0.  For an online
 *		catch-up, which applies history before the row is inserted (see
 *		projection.c).  SPI connected; the result is in the caller's context.
 */
CqrsProjection *
CqrsProjectionDraft(Oid *argtypes, Datum *values, const char *nulls)
{
	MemoryContext callercxt = CurrentMemoryContext;
	CqrsProjection *p;
	int			rc;

	rc = CqrsCatalogExecute("SELECT " PROJECTION_COLUMNS_DRAFT " FROM (SELECT $1 AS name, $2 AS handler,"
							" $3::pg_catalog.regrole AS owner, $4 AS mode, $5 AS tables,"
							" $6 AS categories, $7 AS types, $8 AS search_path, $9 AS digest,"
							" 'running'::pg_catalog.text AS state, 0::pg_catalog.int8 AS \"position\") AS projections",
							9, argtypes, values, nulls, true);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pg_cqrs: describing a new projection failed: %s", SPI_result_code_string(rc));
	MemoryContextSwitchTo(callercxt);
	p = projection_from_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc);
	return p;
}

/*
 * CqrsProjectionUpdate
 *		UPDATE a projection's row: set is the SET list, whose parameters are
 *		$2 onwards ($1 is the name).  Also sets updated_at.
 */
void
CqrsProjectionUpdate(const char *name, const char *set, int nargs, Oid *argtypes, Datum *values, const char *nulls)
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
	rc = CqrsCatalogExecute(sql.data, nargs + 1, types, vals, ns, false);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "pg_cqrs: updating projection \"%s\" failed: %s", name, SPI_result_code_string(rc));
}

/* CqrsSPIConnect: SPI_connect, or an internal error. */
void
CqrsSPIConnect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
}

/*
 * CqrsSetCheckpoint
 *		Move a projection's checkpoint (SPI connected).
 */
void
CqrsSetCheckpoint(const char *name, int64 position)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	values[0] = Int64GetDatum(position);
	CqrsProjectionUpdate(name, "\"position\" = $2", 1, types, values, NULL);
}

/*
 * CqrsSyncProjections
 *		The running sync projections of this database, from the cache.  The
 * caller holds a lock on cqrs.projections, so the cache reflects every
 * committed change that matters (see projection.c).
 */
List *
CqrsSyncProjections(Oid relid)
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
		ListCell   *lc;

		if (sync_cache_cxt == NULL)
			sync_cache_cxt = AllocSetContextCreate(CacheMemoryContext,
												   "pg_cqrs sync projections",
												   ALLOCSET_SMALL_SIZES);
		MemoryContextReset(sync_cache_cxt);
		sync_cache = NIL;
		deferred_cache = NIL;
		sync_cache_tables = NIL;

		CqrsSPIConnect();
		oldcxt = MemoryContextSwitchTo(sync_cache_cxt);
		l = CqrsProjectionsQuery("mode OPERATOR(pg_catalog.=) 'sync' AND state OPERATOR(pg_catalog.=) 'running'",
								 NULL, CQRS_ROWS_UNLOCKED);
		foreach(lc, l)
		{
			CqrsProjection *p = lfirst(lc);

			for (int i = 0; i < p->ntables; i++)
				sync_cache_tables = lappend_oid(sync_cache_tables, p->tables[i]);
		}
		deferred_cache = CqrsProjectionsQuery("mode OPERATOR(pg_catalog.=) 'deferred' AND state OPERATOR(pg_catalog.=) 'running'",
											  NULL, CQRS_ROWS_UNLOCKED);
		MemoryContextSwitchTo(oldcxt);
		SPI_finish();
		sync_cache = l;
		sync_cache_valid = true;
	}
	return sync_cache;
}

/*
 * CqrsRunningDeferredNames
 *		The names of the running deferred projections and of the sync ones
 *		catching up (apply.c), sorted, allocated in
 *		cxt: what the worker applies.  Reads as the caller, with the
 *		transaction snapshot; the caller holds a lock on cqrs.projections.
 */
List *
CqrsRunningDeferredNames(MemoryContext cxt)
{
	List	   *names = NIL;
	int			nestlevel;
	int			rc;

	nestlevel = CqrsRestrictSearchPath();
	CqrsSPIConnect();
	PushActiveSnapshot(GetTransactionSnapshot());
	rc = SPI_execute("SELECT name FROM cqrs.projections"
					 " WHERE (mode OPERATOR(pg_catalog.=) 'deferred'"
					 " AND state OPERATOR(pg_catalog.=) 'running')"
					 " OR state OPERATOR(pg_catalog.=) 'catching up' ORDER BY name",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: listing projections failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PopActiveSnapshot();
	CqrsRestoreSearchPath(nestlevel);
	return names;
}

/*
 * CqrsLoadSkipSet
 *		The positions after a checkpoint that a projection was told to skip,
 *		sorted; NULL when none.  SPI connected.
 */
CqrsSkipSet *
CqrsLoadSkipSet(const char *name, int64 after)
{
	Oid			argtypes[2] = {TEXTOID, INT8OID};
	Datum		values[2];
	CqrsSkipSet    *set;
	int			rc;

	values[0] = CStringGetTextDatum(name);
	values[1] = Int64GetDatum(after);
	rc = CqrsCatalogExecute("SELECT \"position\" FROM cqrs.skipped_events"
							" WHERE projection OPERATOR(pg_catalog.=) $1"
							" AND \"position\" OPERATOR(pg_catalog.>) $2 ORDER BY 1",
							2, argtypes, values, NULL, true);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading skipped events failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return NULL;
	set = palloc(sizeof(CqrsSkipSet));
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
 * CqrsProjectionOwner
 *		The owner of a projection as last committed, read without locking
 *		anything; an error if it does not exist.  Manages its own SPI
 *		connection.
 *
 * The owner is the role that owns the handler: the one role that can
 * change the code run with the owner's rights.  create_projection requires
 * the creator to own it; REASSIGN OWNED moves the projection with it; and
 * as long as the role owns the handler, PostgreSQL refuses to drop it
 * (pg_shdepend), while dropping the handler is refused by
 * cqrs.projection_dropped().  The owner column keeps the creator, for a
 * handler that is gone.
 */
Oid
CqrsProjectionOwner(const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;
	CqrsCatalogScope scope;
	Oid			owner = InvalidOid;
	bool		isnull;
	int			rc;

	CqrsCatalogConnect(&scope);
	values[0] = CStringGetTextDatum(name);
	plan = SPI_prepare("SELECT COALESCE((SELECT f.proowner FROM pg_catalog.pg_proc f"
					   "                  WHERE f.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure(p.handler)),"
					   "                 p.owner::pg_catalog.oid)"
					   " FROM cqrs.projections p WHERE p.name OPERATOR(pg_catalog.=) $1",
					   1, argtypes);
	if (plan == NULL)
		elog(ERROR, "pg_cqrs: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading cqrs.projections failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	CqrsCatalogDisconnect(&scope);
	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name)));
	return owner;
}

/*
 * CqrsCheckProjectionOwner
 *		A projection is administered only by roles with the privileges of
 *		its owner (the owner, its members, superusers), as PostgreSQL's
 *		ownership checks go: 42501 for anybody else.
 */
void
CqrsCheckProjectionOwner(const char *name, Oid owner)
{
	if (!has_privs_of_role(GetUserId(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of projection \"%s\"", name),
				 errdetail("Only members of the projection's owner role may administer it.")));
}

/*
 * CqrsCheckProjectionStatusAccess
 *		Where a projection has got to (projection_position, waiting for it,
 *		its row of cqrs.projection_status) is for its owner's members, for
 *		whoever may read one of its read tables (to read one's own writes,
 *		say), and for pg_monitor: 42501 for anybody else.
 */
void
CqrsCheckProjectionStatusAccess(const CqrsProjection *p)
{
	if (has_privs_of_role(GetUserId(), p->owner) ||
		has_privs_of_role(GetUserId(), ROLE_PG_MONITOR))
		return;
	for (int i = 0; i < p->ntables; i++)
		if (pg_class_aclcheck(p->tables[i], GetUserId(), ACL_SELECT) == ACLCHECK_OK)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for projection \"%s\"", p->name),
			 errdetail("Its progress is for members of its owner role, roles that may read one of its tables, and pg_monitor.")));
}

/*
 * CqrsRequireProjectionOwner
 *		Both: called first by every function that takes a projection's
 *		name, before it takes any lock on the catalog, so that a stranger
 *		can neither administer a projection nor hold appends up trying.
 */
void
CqrsRequireProjectionOwner(const char *name)
{
	CqrsCheckProjectionOwner(name, CqrsProjectionOwner(name));
}

/*
 * CqrsProjectionNameArg
 *		A projection name argument, checked: not NULL, not empty.
 */
char *
CqrsProjectionNameArg(FunctionCallInfo fcinfo, int argno)
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

