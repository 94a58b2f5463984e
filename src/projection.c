/*-------------------------------------------------------------------------
 *
 * projection.c
 *		The SQL lifecycle of projections: create, drop, pause, resume, skip,
 *		process, wait, and where a projection has got to.
 *
 * A projection keeps read tables up to date by calling its handler, an
 * ordinary function handler(e cqrs.events) RETURNS void, once per event.
 *
 *	sync		applied by a statement-level AFTER INSERT trigger on the log,
 *				inside the appending transaction.  Nothing is recorded per
 *				append: every committed event has been applied.
 *	deferred	applied after commit, in position order, by the database's
 *				worker (worker.c) or by cqrs.process_projections(), batch by
 *				batch, each batch with its checkpoint (see apply.c).
 *
 * This file checks the SQL arguments, takes the locks below and calls down
 * into catalog.c (the rows), apply.c (catching up, batches), digest.c (the
 * read tables' digest triggers) and wakeup.c (waking appliers, waiting for
 * progress).  Nothing of ours calls up into it.
 *
 * Locking for sync projections.  Every append takes RowExclusiveLock on
 * cqrs.projections before it takes its first position (a fast-path lock, so
 * appends do not contend on it).  Creating, dropping, pausing and resuming a
 * sync projection take ShareLock, which waits for every transaction that
 * holds a position and keeps new ones from taking one.  While it is held the
 * set of applied events is exactly "every position at or below the log's
 * head", so a sync projection can start, stop and restart at an exact
 * position, and the trigger of an append that waited sees the new
 * definition.  The definitions are cached per backend (catalog.c) and
 * dropped on a relcache invalidation of cqrs.projections, which the
 * lifecycle functions send.
 *
 * Online catch-up.  A new sync projection must first apply the history
 * already in the log, which on a long log takes minutes; holding ShareLock
 * meanwhile would stop every append for as long.  So create_projection
 * works as CREATE INDEX CONCURRENTLY does, in the caller's transaction:
 * first, holding nothing appends wait for, it applies every event up to
 * the safe position (horizon.c: everything at or below it is final), batch
 * by batch, each with a fresh snapshot, and again while the safe position
 * moves on; only then does it take ShareLock, apply the last stretch up to
 * the head, exact under the lock, and insert the catalog row.  Appends
 * that were waiting for the lock then see the projection and apply it from
 * the next position on: no event is missed or applied twice.  The catalog
 * row is inserted only under the lock, so nothing before it shows a
 * half-built projection, and an error or a crash leaves nothing behind.
 * The ShareLock lasts to the end of the caller's transaction, which should
 * therefore be create_projection alone.  A REPEATABLE READ or SERIALIZABLE
 * transaction, or a server without the horizon (pg_cqrs not preloaded),
 * takes the lock first and catches up under it, as before 0.7.0: with a
 * fixed snapshot the handler's own queries would not see the latest state
 * of what they read, which appends always show them.
 *
 * Size.  The lifecycle functions share the argument checks, the locking
 * protocol above and the catalog updates; the file is one concept, the
 * life of a projection, and splitting it would only export its helpers.
 *
 * Security.  Handlers run as the projection's owner (its creator) with
 * SECURITY_RESTRICTED_OPERATION and the search_path that was in effect when
 * the projection was created, never as whoever appended (scope.c).
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/projection.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "pg_cqrs.h"

/*
 * An online catch-up takes ShareLock once the stretch left to the head is
 * at most this many positions: what appends then wait for.
 */
#define CQRS_ONLINE_NEAR ((int64) cqrs_batch_size)

/* How often wait_for_projection looks on a hot standby, in ms. */
#define CQRS_STANDBY_POLL_MS 10

PG_FUNCTION_INFO_V1(cqrs_create_projection);
PG_FUNCTION_INFO_V1(cqrs_drop_projection);
PG_FUNCTION_INFO_V1(cqrs_pause_projection);
PG_FUNCTION_INFO_V1(cqrs_resume_projection);
PG_FUNCTION_INFO_V1(cqrs_skip_event);
PG_FUNCTION_INFO_V1(cqrs_process_projections);
PG_FUNCTION_INFO_V1(cqrs_wait_for_projection);
PG_FUNCTION_INFO_V1(cqrs_projection_position);
PG_FUNCTION_INFO_V1(cqrs_projection_dropped);
PG_FUNCTION_INFO_V1(cqrs_projection_owner);

/* ----------------------------------------------------------------
 * SQL-callable lifecycle functions
 * ----------------------------------------------------------------
 */

/*
 * Validate a handler: exists, takes exactly (cqrs.events), returns void, is
 * the caller's.  Returns its owner, who will own the projection.
 */
static Oid
check_handler(Oid handler)
{
	Oid			owner;
	HeapTuple	tup;
	Form_pg_proc proc;
	Oid			events_type;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", handler)));
	proc = (Form_pg_proc) GETSTRUCT(tup);

	/*
	 * The handler runs as the projection's owner on every append: whoever
	 * may change its code (its owner, with CREATE OR REPLACE) must be the
	 * projection's owner, or anybody could run code with the owner's rights.
	 */
	if (!cqrs_proc_ownercheck(handler, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of function %s", format_procedure(handler)),
				 errdetail("A projection's handler runs as the projection's owner, so only the owner may be able to change its code.")));
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
	owner = proc->proowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Each read table must exist, be a permanent table of the caller's, not one
 * of the extension's own, appear once, and have a primary key.  Owning it
 * is what lets the projection put its digest trigger on it and empty it in
 * a replay; the extension's catalogs would be emptied by a replay.
 */
static void
check_tables(ArrayType *tables, Oid owner)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	Oid			extension = get_extension_oid("pg_cqrs", false);

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
		for (int j = 0; j < i; j++)
			if (DatumGetObjectId(elems[j]) == relid)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_OBJECT),
						 errmsg("table %s appears more than once in tables", get_rel_name(relid))));
		/* before locking it, as LOCK TABLE and ALTER TABLE do */
		if (!cqrs_class_ownercheck(relid, owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of table %s", get_rel_name(relid)),
					 errdetail("A projection empties, repairs and puts a trigger on its read tables: they must be its owner's.")));
		if (getExtensionOfObject(RelationRelationId, relid) == extension)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("table %s belongs to pg_cqrs and cannot be a read table", get_rel_name(relid))));
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
		if (pg_class_aclmask(relid, owner, ACL_SELECT | ACL_INSERT | ACL_UPDATE | ACL_DELETE,
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
 * The tables and every partition above or below them: a replay of a
 * partitioned table empties its partitions, and rows written through a
 * partition are rows of its parent.
 */
static ArrayType *
table_relatives(ArrayType *tables)
{
	Datum	   *elems;
	int			n;
	List	   *relids = NIL;
	Datum	   *out;
	int			nout = 0;
	ListCell   *lc;

	deconstruct_array(tables, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, NULL, &n);
	for (int i = 0; i < n; i++)
	{
		Oid			relid = DatumGetObjectId(elems[i]);

		relids = list_concat_unique_oid(relids, find_all_inheritors(relid, NoLock, NULL));
		if (get_rel_relispartition(relid))
			relids = list_concat_unique_oid(relids, get_partition_ancestors(relid));
	}
	out = palloc((list_length(relids) + 1) * sizeof(Datum));
	foreach(lc, relids)
		out[nout++] = ObjectIdGetDatum(lfirst_oid(lc));
	return construct_array(out, nout, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT);
}

/*
 * A table belongs to one projection at most, and so does each partition
 * tree: a replay of one would wipe the rows of the other, and their
 * digests would count each other's writes as drift.
 */
static void
check_tables_unowned(const char *name, ArrayType *tables)
{
	Oid			argtypes[2] = {TEXTOID, REGCLASSARRAYOID};
	Datum		values[2];
	int			rc;

	values[0] = CStringGetTextDatum(name);
	values[1] = PointerGetDatum(table_relatives(tables));
	rc = CqrsCatalogExecute("SELECT name, t::pg_catalog.text FROM cqrs.projections, pg_catalog.unnest(tables) t"
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
 * Whether create_projection can catch a sync projection up online: at READ
 * COMMITTED (each batch must read with a fresh snapshot, and the handler's
 * own queries see the latest committed state, as they do on appends), and
 * with the horizon in shared memory (the safe position).  Otherwise it
 * takes ShareLock first and catches up under it, as before 0.7.0.
 */
static bool
online_catch_up_possible(void)
{
	return !IsolationUsesXactSnapshot() && CqrsHorizonAvailable();
}

/* The digest trigger on each read table, and an empty digest to count into. */
static void
attach_digests(CqrsProjection *p)
{
	for (int i = 0; i < p->ntables && p->digest; i++)
	{
		CqrsDigestAttach(p->tables[i]);
		CqrsDigestSet(p->name, p->tables[i], NULL);
	}
}

/*
 * cqrs.create_projection(name text, handler regproc, mode text,
 *						  tables regclass[], categories text[], types text[])
 *	  RETURNS void
 *
 * A sync projection catches up on history here, in the caller's
 * transaction: online where it can (online_catch_up_possible), in two
 * phases.  First, without blocking appends, everything up to the safe
 * position (CqrsSyncCatchUpOnline); then, under ShareLock, the short rest
 * up to the head, and the catalog row, so that the next append applies the
 * projection itself, exactly from there.  The ShareLock is held until the
 * caller's transaction ends: run create_projection in a transaction of its
 * own.  A deferred one is caught up by the worker after commit.
 */
Datum
cqrs_create_projection(PG_FUNCTION_ARGS)
{
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	Oid			handler;
	char	   *mode;
	bool		sync;
	ArrayType  *tables;
	Oid			relid;
	Oid			owner;
	CqrsProjection *p;
	int			rc;
	bool		digest = true;
	bool		online;
	int64		phase1 = 0;
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

	owner = check_handler(handler);
	check_tables(tables, owner);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(format_procedure_qualified(handler));
	values[2] = ObjectIdGetDatum(owner);
	values[3] = CStringGetTextDatum(mode);
	values[4] = PointerGetDatum(tables);
	values[5] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[5] = PG_ARGISNULL(4) ? 'n' : ' ';
	values[6] = PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5);
	nulls[6] = PG_ARGISNULL(5) ? 'n' : ' ';
	values[7] = CStringGetTextDatum(GetConfigOption("search_path", false, false));
	values[8] = BoolGetDatum(digest);

	/*
	 * Sync, first phase: history up to the safe position, appends going on
	 * (see "Online catch-up" above).  The checks are made again under the
	 * lock; these only spare a long catch-up that would fail at its end.
	 */
	online = sync && online_catch_up_possible();
	if (online)
	{
		CqrsSPIConnect();
		if (CqrsProjectionsQuery("true", name, CQRS_ROWS_UNLOCKED) != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("projection \"%s\" already exists", name)));
		check_tables_unowned(name, tables);
		p = CqrsProjectionDraft(argtypes, values, nulls);
		attach_digests(p);
		phase1 = CqrsSyncCatchUpOnline(p, CQRS_ONLINE_NEAR);
		SPI_finish();
	}

	/* Sync: no append may hold a position while we look at the head. */
	relid = CqrsLockProjections(sync ? ShareLock : RowExclusiveLock);

	CqrsSPIConnect();
	if (CqrsProjectionsQuery("true", name, CQRS_ROWS_UNLOCKED) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("projection \"%s\" already exists", name)));

	if (CqrsDigestsInstalled())
		rc = CqrsCatalogExecute("INSERT INTO cqrs.projections"
								" (name, handler, owner, mode, tables, categories, types, search_path, digest)"
								" VALUES ($1, $2, $3::pg_catalog.regrole, $4, $5, $6, $7, $8, $9)",
								9, argtypes, values, nulls, false);
	else
		rc = CqrsCatalogExecute("INSERT INTO cqrs.projections"
								" (name, handler, owner, mode, tables, categories, types, search_path)"
								" VALUES ($1, $2, $3::pg_catalog.regrole, $4, $5, $6, $7, $8)",
								8, argtypes, values, nulls, false);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: inserting projection failed: %s", SPI_result_code_string(rc));

	check_tables_unowned(name, tables);
	p = CqrsProjectionGet(name, false);
	if (online)
		p->position = phase1;	/* the digests already count it */
	else
		attach_digests(p);

	if (sync)
		CqrsSetCheckpoint(name, CqrsSyncCatchUp(p));
	else
		CqrsWakeAppliers();

	SPI_finish();
	CqrsProjectionsChanged(relid);
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
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	Oid			relid;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;

	Datum	   *tables;
	int			ntables;
	bool		isnull;

	CqrsRequireProjectionOwner(name);
	relid = CqrsLockProjections(ShareLock);
	CqrsSPIConnect();
	values[0] = CStringGetTextDatum(name);
	rc = CqrsCatalogExecute("DELETE FROM cqrs.projections WHERE name OPERATOR(pg_catalog.=) $1"
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
		rc = CqrsCatalogExecute("DELETE FROM cqrs.projection_digests WHERE projection OPERATOR(pg_catalog.=) $1",
								1, argtypes, values, NULL, false);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "pg_cqrs: deleting digests failed: %s", SPI_result_code_string(rc));
	}
	SPI_finish();
	CqrsProjectionsChanged(relid);
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
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	Oid			relid;
	CqrsProjection *p;

	CqrsRequireProjectionOwner(name);
	relid = CqrsLockProjections(ShareLock);
	CqrsSPIConnect();
	p = CqrsProjectionGet(name, true);
	if (p->state == 'c')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" is catching up", name),
				 errdetail("Its tables may still hold what they held before cqrs.replay(name, concurrently => true)."),
				 errhint("Wait for it with cqrs.wait_for_projection(), or drop it.")));
	if (p->state != 'p')
	{
		if (p->sync && p->state == 'r')
		{
			Relation	events = CqrsOpenEventLog(AccessShareLock);
			Oid			types[1] = {INT8OID};
			Datum		values[1];

			values[0] = Int64GetDatum(CqrsMaxPosition(events, GetLatestSnapshot()));
			table_close(events, NoLock);
			CqrsProjectionUpdate(name, "state = 'paused', \"position\" = $2", 1, types, values, NULL);
		}
		else
			CqrsProjectionUpdate(name, "state = 'paused'", 0, NULL, NULL, NULL);
	}
	SPI_finish();
	CqrsProjectionsChanged(relid);
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
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	Oid			relid;
	CqrsProjection *p;

	CqrsRequireProjectionOwner(name);
	relid = CqrsLockProjections(ShareLock);
	CqrsSPIConnect();
	p = CqrsProjectionGet(name, true);
	if (p->sync && p->state == 'f')
	{
		/*
		 * A sync projection fails only while catching up (apply.c), maybe
		 * with its tables not yet rebuilt: it goes on catching up.
		 */
		CqrsProjectionUpdate(name, "state = 'catching up', last_error = NULL, error_position = NULL",
							 0, NULL, NULL, NULL);
		CqrsWakeAppliers();
	}
	else if (p->state != 'r' && p->state != 'c')
	{
		CqrsProjectionUpdate(name, "state = 'running', last_error = NULL, error_position = NULL",
							 0, NULL, NULL, NULL);
		if (p->sync)
			CqrsSetCheckpoint(name, CqrsSyncCatchUp(p));
		else
			CqrsWakeAppliers();
	}
	SPI_finish();
	CqrsProjectionsChanged(relid);
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
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	int64		position;
	Oid			relid;
	CqrsProjection *p;
	Oid			argtypes[2] = {TEXTOID, INT8OID};
	Datum		values[2];
	int			rc;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_position must not be null")));
	position = PG_GETARG_INT64(1);
	CqrsRequireProjectionOwner(name);
	relid = CqrsLockProjections(RowExclusiveLock);

	CqrsSPIConnect();
	p = CqrsProjectionGet(name, true);
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
	rc = CqrsCatalogExecute("SELECT 1 FROM cqrs.projections"
							" WHERE name OPERATOR(pg_catalog.=) $1"
							" AND error_position OPERATOR(pg_catalog.=) $2",
							2, argtypes, values, NULL, false);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("projection \"%s\" did not fail at position %lld", name, (long long) position),
				 errhint("See error_position in cqrs.projection_status.")));

	rc = CqrsCatalogExecute("INSERT INTO cqrs.skipped_events (projection, \"position\", error)"
							" SELECT name, error_position, last_error FROM cqrs.projections"
							" WHERE name OPERATOR(pg_catalog.=) $1",
							1, argtypes, values, NULL, false);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: recording skipped event failed: %s", SPI_result_code_string(rc));
	/*
	 * Batches leave out skipped positions, so the checkpoint need not move;
	 * it does when it sits just before the event, to keep status exact.
	 */
	CqrsProjectionUpdate(name, "state = 'running', last_error = NULL, error_position = NULL,"
						 " \"position\" = CASE WHEN \"position\" OPERATOR(pg_catalog.=) ($2 OPERATOR(pg_catalog.-) 1)"
						 " THEN $2 ELSE \"position\" END",
						 1, &argtypes[1], &values[1], NULL);
	SPI_finish();
	CqrsProjectionsChanged(relid);
	CqrsWakeAppliers();
	PG_RETURN_VOID();
}

/*
 * cqrs.process_projections(name text, max_events integer) RETURNS bigint
 *
 * Apply, in the caller's transaction, every event committed before the call
 * to the running deferred projections the caller may administer (or the
 * one named, which it must), and bring the sync ones catching up back to
 * in-append application (see apply.c), handing at most
 * max_events events to handlers in all.  (A batch examines no more events
 * than the budget left, so it cannot overshoot.)  Waits for a batch another applier is running, and for
 * appends in flight below the events to apply.  Returns events applied.
 */
Datum
cqrs_process_projections(PG_FUNCTION_ARGS)
{
	char	   *only = PG_ARGISNULL(0) ? NULL : CqrsProjectionNameArg(fcinfo, 0);
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
	if (only != NULL)
		CqrsRequireProjectionOwner(only);
	(void) CqrsLockProjections(RowExclusiveLock);
	CqrsRequireHorizon();

	events = CqrsOpenEventLog(AccessShareLock);
	target = CqrsMaxPosition(events, GetLatestSnapshot());
	table_close(events, NoLock);

	CqrsSPIConnect();
	projections = CqrsProjectionsQuery("((mode OPERATOR(pg_catalog.=) 'deferred' AND state OPERATOR(pg_catalog.=) 'running')"
									   " OR state OPERATOR(pg_catalog.=) 'catching up')",
									   only, CQRS_ROWS_UNLOCKED);
	if (only != NULL && projections == NIL)
		(void) CqrsProjectionGet(only, false); /* error if it does not exist */

	foreach(lc, projections)
	{
		CqrsProjection *p = lfirst(lc);

		/* without a name: the projections the caller may administer */
		if (!has_privs_of_role(GetUserId(), p->owner))
			continue;
		while (budget > 0)
		{
			CqrsBatchResult r;

			CHECK_FOR_INTERRUPTS();
			CqrsApplyBatch(p->name, Min(budget, (int64) cqrs_batch_size), false, &r);
			total += r.applied;
			budget -= r.applied;
			/* a sync one catching up is done once switched back (apply.c) */
			if (r.state == 'c' && r.examined == 0 && r.safe >= target)
			{
				/* the switch's lock timed out: look again shortly */
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 10, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				continue;
			}
			if (r.state == 'c')
			{
				if (r.examined > 0)
					continue;
			}
			else if (r.state != 'r' || p->sync || r.position >= target)
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
 * position (every final event is applied).  Sets *state.  For those
 * CqrsCheckProjectionStatusAccess lets follow it.  False when that is not
 * known: a sync projection on a standby that cannot compute a safe
 * position yet (see standby.c).
 */
static bool
projection_progress(const char *name, char *state, int64 *position)
{
	CqrsProjection *p;
	bool		known = true;

	CqrsSPIConnect();
	p = CqrsProjectionGet(name, false);
	CqrsCheckProjectionStatusAccess(p);
	*position = p->position;
	*state = p->state;
	if (p->sync && p->state == 'r')
	{
		Relation	events = CqrsOpenEventLog(AccessShareLock);

		if (CqrsHorizonAvailable())
			known = CqrsSafePositionIfKnown(events, position);
		else
			*position = CqrsMaxPosition(events, GetLatestSnapshot());
		table_close(events, NoLock);
	}
	SPI_finish();
	return known;
}

/*
 * cqrs.projection_position(name text) RETURNS bigint
 *
 * The position up to which the projection has applied every event; used by
 * the cqrs.projection_status view.  NULL on a standby that cannot know it
 * yet.
 */
Datum
cqrs_projection_position(PG_FUNCTION_ARGS)
{
	char		state;
	int64		position;

	if (!projection_progress(CqrsProjectionNameArg(fcinfo, 0), &state, &position))
		PG_RETURN_NULL();
	PG_RETURN_INT64(position);
}

/*
 * Now plus timeout; a timeout past any timestamp is no deadline at all,
 * rather than a "timestamp out of range" error.
 */
static TimestampTz
deadline_after(Interval *timeout)
{
	double		usecs = (double) timeout->time +
		((double) timeout->day + (double) timeout->month * DAYS_PER_MONTH) * USECS_PER_DAY;

	/* 100 years: far beyond any wait, far within timestamptz's range */
	if (usecs > 100.0 * DAYS_PER_YEAR * USECS_PER_DAY)
		return DT_NOEND;
	if (usecs < 0)
		usecs = 0;
	return GetCurrentTimestamp() + (TimestampTz) usecs;
}

/*
 * cqrs.projection_owner(name text) RETURNS regrole
 *
 * The role a projection belongs to and runs as: its handler's owner (see
 * CqrsProjectionOwner).  Not secret: pg_proc says as much.
 */
Datum
cqrs_projection_owner(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(CqrsProjectionOwner(CqrsProjectionNameArg(fcinfo, 0)));
}

/*
 * cqrs.wait_for_projection(name text, up_to bigint, timeout interval)
 *	  RETURNS boolean
 *
 * Sleeps on the workers' progress condition variable (or, without shared
 * memory, on the latch) until the projection has applied every event at or
 * below up_to; false when the timeout passes first.  On a hot standby it
 * looks every CQRS_STANDBY_POLL_MS instead.
 */
Datum
cqrs_wait_for_projection(PG_FUNCTION_ARGS)
{
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	int64		up_to;
	TimestampTz deadline;
	bool		done = false;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("up_to must not be null")));
	up_to = PG_GETARG_INT64(1);
	/* the name (and the right to watch it) first: an error a user can act on */
	CqrsSPIConnect();
	CqrsCheckProjectionStatusAccess(CqrsProjectionGet(name, false));
	SPI_finish();
	if (PG_ARGISNULL(2))
		deadline = DT_NOEND;
	else
		deadline = deadline_after(PG_GETARG_INTERVAL_P(2));

	for (;;)
	{
		char		state;
		int64		position;
		long		remaining;

		CHECK_FOR_INTERRUPTS();
		if (projection_progress(name, &state, &position) && position >= up_to)
		{
			done = true;
			break;
		}
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;

		/*
		 * On the primary, workers and appends wake us.  On a standby,
		 * progress arrives by replay, which wakes nobody: look often.
		 */
		CqrsWaitForProgress(Min(remaining, RecoveryInProgress() ? CQRS_STANDBY_POLL_MS : 100));
	}
	CqrsWaitForProgressDone();
	PG_RETURN_BOOL(done);
}

/*
 * cqrs.projection_dropped() RETURNS event_trigger
 *
 * ON sql_drop: refuse to drop a projection's handler or one of its read
 * tables (DROP FUNCTION, DROP TABLE, DROP SCHEMA ... CASCADE, DROP OWNED),
 * as PostgreSQL refuses to drop an object others depend on.  Otherwise a
 * function of the same signature created later by anybody would be bound
 * in the handler's place, and appends would fail on a missing table.  The
 * projection must be dropped first.
 *
 * (The catalog cannot record these dependencies in pg_depend: its rows are
 * not objects, and a dependency of the extension's catalog table on the
 * handler would make DROP FUNCTION ... CASCADE drop the extension.)
 */
Datum
cqrs_projection_dropped(PG_FUNCTION_ARGS)
{
	int			rc;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.projection_dropped() must be called as an event trigger")));

	/* DROP EXTENSION pg_cqrs: the catalog itself may be gone */
	if (!OidIsValid(get_namespace_oid("cqrs", true)) ||
		!OidIsValid(CqrsProjectionsRelid()))
		PG_RETURN_VOID();

	CqrsSPIConnect();
	rc = CqrsCatalogExecute("SELECT p.name, d.object_type, d.object_identity"
							"  FROM pg_catalog.pg_event_trigger_dropped_objects() d, cqrs.projections p"
							" WHERE d.objsubid OPERATOR(pg_catalog.=) 0"
							"   AND ((d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass"
							"         AND d.object_identity OPERATOR(pg_catalog.=) p.handler)"
							"     OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
							"         AND d.objid OPERATOR(pg_catalog.=) ANY (p.tables::pg_catalog.oid[])))"
							" ORDER BY 1, 3 LIMIT 1",
							0, NULL, NULL, NULL, true);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading dropped objects failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop %s %s because projection \"%s\" uses it",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3),
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
				 errhint("Drop the projection first, with cqrs.drop_projection().")));
	SPI_finish();
	PG_RETURN_VOID();
}
