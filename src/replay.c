/*-------------------------------------------------------------------------
 *
 * replay.c
 *		Replay, reconcile and verify: read tables checked against the log.
 *
 *	cqrs.replay(name)		empties the projection's tables and applies the
 *							whole log again, in the caller's transaction.
 *	cqrs.reconcile(name, repair)
 *							computes what a replay would produce, compares
 *							it with the tables by primary key and returns
 *							the differences; with repair, applies exactly
 *							those.
 *	cqrs.verify(name)		compares each table with its digest (digest.c):
 *							one scan, no replay.
 *
 * No TRUNCATE, no ACCESS EXCLUSIVE lock: replay empties the tables with
 * DELETE, so readers keep seeing the old rows until it commits and are
 * never blocked.  What writers wait for is set by CqrsRebuildLock
 * (apply.c): the appends, for a sync projection (they would apply
 * events to half-rebuilt tables); the worker and process_projections, for a
 * deferred one.
 *
 * Reconcile replays inside a subtransaction that it rolls back, so the
 * tables are never changed by the comparison itself.  Both sides are
 * summed per key bucket, as in a digest, in one scan each that also notes
 * where every row is; only the rows of the buckets whose sums differ are
 * fetched again (by TID) and turned into JSON to be matched by key, so the
 * cost is the replay plus two scans, and not a join.
 * Without repair, the locks are taken in an outer subtransaction too, and
 * released before returning; with repair they are held to commit, so that
 * nothing changes between comparing and repairing.
 *
 * Security.  Only members of the projection's owner role may run these
 * (CqrsRebuildLock checks, before it locks anything).  The statements that
 * empty and repair tables run as the owner with CQRS_INTERNAL_SEARCH_PATH,
 * naming tables, functions and casts with their schema, and comparing keys
 * with the key columns' own equality operators, named with theirs.
 *
 * Size.  The three functions share the target's locking, the replay into a
 * rolled-back subtransaction and the bucket comparison; apart, they would
 * export most of their internals to each other.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/replay.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "catalog/index.h"
#include "catalog/pg_operator.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_replay);
PG_FUNCTION_INFO_V1(cqrs_replay_concurrently);
PG_FUNCTION_INFO_V1(cqrs_reconcile);
PG_FUNCTION_INFO_V1(cqrs_verify);

/* A row of a differing bucket, as reconcile compares it. */
typedef struct RowImage
{
	int			table;			/* index in the projection's tables */
	int			bucket;
	uint64		hash;
	char	   *key;			/* the key as JSON text, for matching */
	Jsonb	   *keyjb;
	Jsonb	   *row;
} RowImage;

/* One difference. */
typedef struct Drift
{
	int			table;
	const char *kind;			/* "missing", "unexpected", "changed" */
	Jsonb	   *key;
	RowImage   *expected;
	RowImage   *actual;
} Drift;

/* What the row visitor needs. */
typedef struct Collector
{
	MemoryContext cxt;
	int			table;
	int			nkeys;
	char	  **keynames;		/* primary key columns, in key order */
	List	   *rows;			/* of RowImage */
} Collector;

static void
refuse_snapshot_isolation(const char *function)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("%s must run at READ COMMITTED", function),
				 errdetail("It rebuilds read tables from the latest state of the log, which a REPEATABLE READ or SERIALIZABLE snapshot cannot see.")));
}

static void
require_tables(const CqrsRebuildTarget *t)
{
	if (t->ntables == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" owns no tables", t->name),
				 errhint("Replay, reconcile and verify manage the tables given to cqrs.create_projection(..., tables => ...).")));
	for (int i = 0; i < t->ntables; i++)
		if (get_rel_relkind(t->tables[i]) == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("a table of projection \"%s\" (OID %u) no longer exists",
							t->name, t->tables[i]),
					 errhint("Drop the projection and create it again.")));
}

/* ----------------------------------------------------------------
 * cqrs.replay
 * ----------------------------------------------------------------
 */

/*
 * How far a rebuild goes: a paused projection stays where it paused, a
 * running sync one is at the head (locked), a deferred one goes to the
 * safe position, every event at or below which is final.
 */
static int64
replay_target(const CqrsRebuildTarget *t)
{
	Relation	events;
	int64		safe;

	if (t->state == 'p' || t->sync)
		return t->position;
	CqrsRequireHorizon();
	events = CqrsOpenEventLog(AccessShareLock);
	safe = CqrsSafePosition(events);
	table_close(events, NoLock);
	return Max(safe, t->position);
}

/*
 * cqrs.replay(name text) RETURNS bigint
 */
Datum
cqrs_replay(PG_FUNCTION_ARGS)
{
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	CqrsRebuildTarget t;
	int64		upto;
	int64		applied;

	refuse_snapshot_isolation("cqrs.replay()");
	CqrsRebuildLock(name, &t);
	require_tables(&t);
	upto = replay_target(&t);

	/*
	 * The digest is computed from the rebuilt tables, in one scan each,
	 * rather than counted write by write (CqrsRebuildTables).
	 */
	applied = CqrsRebuildTables(&t, upto);
	CqrsRebuildFinish(&t, upto);
	PG_RETURN_INT64(applied);
}

/*
 * cqrs.replay(name text, concurrently boolean) RETURNS bigint
 *
 * With concurrently => false, cqrs.replay(name).  With true, for a sync
 * projection: mark it 'catching up', under a brief ShareLock (the appends
 * in flight finish first, so that from our commit on no append applies it)
 * and return NULL.  Its appliers then rebuild it in one transaction and
 * bring it back to in-append application (apply.c, "Sync projections
 * catching up"); readers see the old rows until the rebuild commits, and
 * appends are never held for longer than the two switches.  Asked again
 * while it is catching up (or after it failed), the rebuild starts over.
 * A deferred projection's replay never holds appends: it is replayed as
 * by cqrs.replay(name), and the count returned.
 */
Datum
cqrs_replay_concurrently(PG_FUNCTION_ARGS)
{
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	CqrsRebuildTarget t;
	CqrsProjection *p;
	Oid			relid;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("concurrently must not be null")));
	if (!PG_GETARG_BOOL(1))
		return cqrs_replay(fcinfo);
	refuse_snapshot_isolation("cqrs.replay()");
	CqrsRebuildDescribe(name, &t);	/* the owner's only, checked first */
	if (!t.sync)
		return cqrs_replay(fcinfo);
	require_tables(&t);
	CqrsRequireHorizon();

	relid = CqrsLockProjections(ShareLock);
	CqrsSPIConnect();
	p = CqrsProjectionGet(name, true);
	if (!p->sync)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("projection \"%s\" was replaced concurrently", name)));
	if (p->state == 'p')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" is paused", name),
				 errhint("Resume it first, or rebuild it up to where it paused with cqrs.replay(name).")));
	CqrsProjectionUpdate(name, "state = 'catching up', \"position\" = 0, last_error = NULL, error_position = NULL",
						 0, NULL, NULL, NULL);
	SPI_finish();
	CqrsProjectionsChanged(relid);
	CqrsWakeAppliers();
	PG_RETURN_NULL();
}

/* ----------------------------------------------------------------
 * cqrs.reconcile
 * ----------------------------------------------------------------
 */

static void
collector_init(Collector *c, MemoryContext cxt, Oid relid, int table)
{
	Relation	rel = table_open(relid, AccessShareLock);
	Oid			pk = CqrsRelationGetPrimaryKeyIndex(rel);
	Relation	index = index_open(pk, AccessShareLock);

	c->cxt = cxt;
	c->table = table;
	c->nkeys = index->rd_index->indnkeyatts;
	c->keynames = MemoryContextAlloc(cxt, c->nkeys * sizeof(char *));
	for (int i = 0; i < c->nkeys; i++)
		c->keynames[i] = MemoryContextStrdup(cxt,
											 NameStr(TupleDescAttr(RelationGetDescr(rel),
																   index->rd_index->indkey.values[i] - 1)->attname));
	index_close(index, AccessShareLock);
	table_close(rel, NoLock);
}

static Jsonb *
json_text_to_jsonb(const char *json)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* CqrsRowVisitor: keep a row of a differing bucket as JSON. */
static void
collect_row(void *arg, Relation rel, TupleTableSlot *slot, int bucket, uint64 hash)
{
	Collector  *c = arg;
	MemoryContext oldcxt = MemoryContextSwitchTo(c->cxt);
	RowImage   *r = palloc0(sizeof(RowImage));
	HeapTuple	tuple = ExecCopySlotHeapTuple(slot);
	Datum		record = heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel));
	text	   *json = DatumGetTextPP(DirectFunctionCall1(row_to_json, record));
	StringInfoData key;

	r->table = c->table;
	r->bucket = bucket;
	r->hash = hash;
	r->row = json_text_to_jsonb(text_to_cstring(json));

	initStringInfo(&key);
	appendStringInfoChar(&key, '{');
	for (int i = 0; i < c->nkeys; i++)
	{
		JsonbValue	k;
		JsonbValue *v;

		k.type = jbvString;
		k.val.string.val = c->keynames[i];
		k.val.string.len = strlen(c->keynames[i]);
		v = findJsonbValueFromContainer(&r->row->root, JB_FOBJECT, &k);
		if (i > 0)
			appendStringInfoString(&key, ", ");
		escape_json(&key, c->keynames[i]);
		appendStringInfoString(&key, ": ");
		appendStringInfoString(&key, v ? JsonbToCString(NULL, &JsonbValueToJsonb(v)->root, -1) : "null");
	}
	appendStringInfoChar(&key, '}');
	r->keyjb = json_text_to_jsonb(key.data);
	/* the canonical text of the key, so that equal keys compare equal */
	r->key = JsonbToCString(NULL, &r->keyjb->root, VARSIZE(r->keyjb));

	heap_freetuple(tuple);
	c->rows = lappend(c->rows, r);
	MemoryContextSwitchTo(oldcxt);
}

static int
rowimage_cmp(const ListCell *a, const ListCell *b)
{
	RowImage   *x = lfirst(a);
	RowImage   *y = lfirst(b);

	if (x->table != y->table)
		return x->table < y->table ? -1 : 1;
	return strcmp(x->key, y->key);
}

/* Match the rows of the differing buckets by key. */
static List *
match_rows(List *expected, List *actual)
{
	List	   *drift = NIL;
	ListCell   *e,
			   *a;

	list_sort(expected, rowimage_cmp);
	list_sort(actual, rowimage_cmp);
	e = list_head(expected);
	a = list_head(actual);
	while (e != NULL || a != NULL)
	{
		int			cmp;
		Drift	   *d = palloc0(sizeof(Drift));

		if (e == NULL)
			cmp = 1;
		else if (a == NULL)
			cmp = -1;
		else
			cmp = rowimage_cmp(e, a);

		if (cmp == 0)
		{
			RowImage   *x = lfirst(e);
			RowImage   *y = lfirst(a);

			e = lnext(expected, e);
			a = lnext(actual, a);
			if (x->hash == y->hash)
			{
				pfree(d);
				continue;
			}
			d->kind = "changed";
			d->expected = x;
			d->actual = y;
		}
		else if (cmp < 0)
		{
			d->kind = "missing";
			d->expected = lfirst(e);
			e = lnext(expected, e);
		}
		else
		{
			d->kind = "unexpected";
			d->actual = lfirst(a);
			a = lnext(actual, a);
		}
		d->table = d->expected ? d->expected->table : d->actual->table;
		d->key = d->expected ? d->expected->keyjb : d->actual->keyjb;
		drift = lappend(drift, d);
	}
	return drift;
}

/* The statements that repair one table, prepared on first use. */
typedef struct RepairPlans
{
	SPIPlanPtr	delete;
	SPIPlanPtr	insert;
	SPIPlanPtr	update;			/* NULL when every column is a key */
} RepairPlans;

static SPIPlanPtr
prepare_repair(const char *sql)
{
	Oid			argtypes[1] = {JSONBOID};
	SPIPlanPtr	plan = SPI_prepare(sql, 1, argtypes);

	if (plan == NULL)
		elog(ERROR, "pg_cqrs: preparing \"%s\" failed: %s", sql, SPI_result_code_string(SPI_result));
	return plan;
}

/*
 * "t.k1 = r.k1 AND ..." over the table's primary key, each "=" being the
 * equality operator of the key column's operator class, written with its
 * schema, as the foreign-key triggers do (ri_triggers.c).  An unqualified
 * "=" would be looked up on the search_path: an operator someone created
 * for a column's exact type in a schema on it would run as the owner.
 */
static char *
qualified_operator(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator op;
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("%s.%s", quote_identifier(get_namespace_name(op->oprnamespace)),
					  NameStr(op->oprname));
	ReleaseSysCache(tup);
	return result;
}

static char *
key_condition(Relation rel)
{
	Relation	index = index_open(CqrsRelationGetPrimaryKeyIndex(rel), AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData cond;

	initStringInfo(&cond);
	for (int k = 0; k < IndexRelationGetNumberOfKeyAttributes(index); k++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, index->rd_index->indkey.values[k] - 1);
		Oid			opcintype = index->rd_opcintype[k];
		Oid			eq = get_opfamily_member(index->rd_opfamily[k], opcintype, opcintype,
											 BTEqualStrategyNumber);
		const char *col = quote_identifier(NameStr(att->attname));
		char	   *cast = "";

		if (!OidIsValid(eq))
			elog(ERROR, "pg_cqrs: no equality operator in operator family %u", index->rd_opfamily[k]);
		/* a column of another type than the operator's (varchar, a domain) */
		if (att->atttypid != opcintype && !IsPolymorphicType(opcintype))
			cast = psprintf("::%s", format_type_be_qualified(opcintype));
		appendStringInfo(&cond, "%st.%s%s OPERATOR(%s) r.%s%s",
						 k ? " AND " : "", col, cast, qualified_operator(eq), col, cast);
	}
	index_close(index, AccessShareLock);
	return cond.data;
}

/*
 * The rows are given as JSON, read back with jsonb_populate_record into
 * the table's row type: every type round-trips through its text form.
 * Generated columns are left to the table; identity columns are written
 * as they were (OVERRIDING SYSTEM VALUE) and not updated.  The statements
 * run with CQRS_INTERNAL_SEARCH_PATH and name everything with its schema.
 */
static void
repair_plans(Oid relid, RepairPlans *plans)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	char	   *qname = CqrsQualifiedName(relid);
	char	   *record = psprintf("pg_catalog.jsonb_populate_record(NULL::%s, $1)", qname);
	char	   *cond = key_condition(rel);
	CqrsRowShape shape;
	StringInfoData cols,
				sets;

	CqrsRowShapeInit(&shape, rel);
	initStringInfo(&cols);
	initStringInfo(&sets);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *col = quote_identifier(NameStr(att->attname));
		bool		is_key = false;

		if (att->attisdropped || att->attgenerated)
			continue;
		appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", col);
		for (int k = 0; k < shape.nkeys; k++)
			is_key |= shape.keys[k] == att->attnum;
		if (!is_key && att->attidentity != ATTRIBUTE_IDENTITY_ALWAYS)
			appendStringInfo(&sets, "%s%s", sets.len ? ", " : "", col);
	}
	table_close(rel, NoLock);

	plans->delete = prepare_repair(psprintf("DELETE FROM %s t USING %s r WHERE %s",
											qname, record, cond));
	plans->insert = prepare_repair(psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s",
											qname, cols.data, cols.data, record));
	plans->update = sets.len == 0 ? NULL :
		prepare_repair(psprintf("UPDATE %s t SET (%s) = (SELECT %s FROM %s) FROM %s r WHERE %s",
								qname, sets.data, sets.data, record, record, cond));
}

static void
run_repair(SPIPlanPtr plan, Jsonb *row, int expected_rc)
{
	Datum		values[1];
	int			rc;

	values[0] = JsonbPGetDatum(row);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != expected_rc)
		elog(ERROR, "pg_cqrs: repairing a row failed: %s", SPI_result_code_string(rc));
}

/*
 * Apply the differences, as the projection's owner: deletes first, then
 * updates, then inserts, so that a row that moved between keys does not
 * collide with itself in another unique index.
 */
static void
repair(const CqrsRebuildTarget *t, List *drift)
{
	RepairPlans *plans = palloc0(t->ntables * sizeof(RepairPlans));
	CqrsOwnerScope scope;
	ListCell   *lc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
	CqrsOwnerScopeEnter(t->owner, CQRS_INTERNAL_SEARCH_PATH, &scope);
	for (int pass = 0; pass < 3; pass++)
		foreach(lc, drift)
		{
			Drift	   *d = lfirst(lc);
			RepairPlans *p = &plans[d->table];

			if (p->delete == NULL)
				repair_plans(t->tables[d->table], p);
			if (pass == 0 && d->kind[0] == 'u')
				run_repair(p->delete, d->actual->row, SPI_OK_DELETE);
			else if (pass == 1 && d->kind[0] == 'c')
			{
				if (p->update != NULL)
					run_repair(p->update, d->expected->row, SPI_OK_UPDATE);
				else
				{
					run_repair(p->delete, d->actual->row, SPI_OK_DELETE);
					run_repair(p->insert, d->expected->row, SPI_OK_INSERT);
				}
			}
			else if (pass == 2 && d->kind[0] == 'm')
				run_repair(p->insert, d->expected->row, SPI_OK_INSERT);
		}
	CqrsOwnerScopeLeave(&scope);
	SPI_finish();
}

/* Subtransactions reconcile has open, to unwind on error. */
typedef struct Subxacts
{
	int			depth;
	ResourceOwner owners[2];	/* the owner before each began */
} Subxacts;

static void
subxact_begin(Subxacts *s)
{
	MemoryContext cxt = CurrentMemoryContext;

	s->owners[s->depth++] = CurrentResourceOwner;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
}

static void
subxact_rollback(Subxacts *s)
{
	MemoryContext cxt = CurrentMemoryContext;

	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = s->owners[--s->depth];
}

/*
 * Where each row of one side was, so that the rows of the differing buckets
 * can be fetched by TID instead of scanning the table again.  Up to
 * MAX_REMEMBERED rows a side (about 100MB); past that, the side forgets
 * and compare() scans again.
 */
#define MAX_REMEMBERED (4 * 1024 * 1024)

typedef struct RowPlace
{
	Oid			relid;			/* the leaf partition, or the table */
	ItemPointerData tid;
	int			bucket;
	uint64		hash;
} RowPlace;

typedef struct Places
{
	MemoryContext cxt;
	RowPlace   *rows;
	int64		n;
	int64		size;
	bool		overflow;
} Places;

/* CqrsRowVisitor: remember where the row is. */
static void
remember_row(void *arg, Relation rel, TupleTableSlot *slot, int bucket, uint64 hash)
{
	Places	   *p = arg;

	if (p->overflow)
		return;
	if (p->n == p->size)
	{
		if (p->size >= MAX_REMEMBERED)
		{
			p->overflow = true;
			return;
		}
		p->size = p->size ? 2 * p->size : 1024;
		p->rows = p->rows
			? repalloc_huge(p->rows, p->size * sizeof(RowPlace))
			: MemoryContextAllocHuge(p->cxt, p->size * sizeof(RowPlace));
	}
	p->rows[p->n].relid = RelationGetRelid(rel);
	p->rows[p->n].tid = slot->tts_tid;
	p->rows[p->n].bucket = bucket;
	p->rows[p->n].hash = hash;
	p->n++;
}

/*
 * Collect the rows of the wanted buckets of one table: by TID from where
 * the first scan left them, or by another scan if it could not remember.
 */
static void
collect_wanted(Oid relid, Snapshot snapshot, Places *places, const bool *wanted,
			   Collector *c)
{
	Relation	rel = NULL;
	TupleTableSlot *slot = NULL;

	if (places->overflow)
	{
		CqrsBuckets *scratch = palloc(sizeof(CqrsBuckets));

		CqrsScanBuckets(relid, snapshot, scratch, wanted, collect_row, c);
		pfree(scratch);
		return;
	}
	for (int64 i = 0; i < places->n; i++)
	{
		RowPlace   *r = &places->rows[i];

		if (!wanted[r->bucket])
			continue;
		if (rel == NULL || RelationGetRelid(rel) != r->relid)
		{
			if (rel != NULL)
			{
				ExecDropSingleTupleTableSlot(slot);
				table_close(rel, NoLock);
			}
			rel = table_open(r->relid, AccessShareLock);
			slot = table_slot_create(rel, NULL);
		}
		if (!table_tuple_fetch_row_version(rel, &r->tid, snapshot, slot))
			elog(ERROR, "pg_cqrs: a row of \"%s\" vanished during reconcile",
				 RelationGetRelationName(rel));
		collect_row(c, rel, slot, r->bucket, r->hash);
	}
	if (rel != NULL)
	{
		ExecDropSingleTupleTableSlot(slot);
		table_close(rel, NoLock);
	}
}

/*
 * The comparison.  Returns the differences, allocated in cxt; fills
 * expected[] with the replayed tables' sums.  Each side is scanned once,
 * remembering where its rows are; only the rows of differing buckets are
 * then fetched again, by TID, and turned into JSON.
 */
static List *
compare(const CqrsRebuildTarget *t, Subxacts *subxacts, MemoryContext cxt,
		CqrsBuckets *expected)
{
	CqrsBuckets *actual = palloc0(t->ntables * sizeof(CqrsBuckets));
	bool	   *wanted = palloc0(t->ntables * CQRS_DIGEST_BUCKETS * sizeof(bool));
	Collector  *collectors = palloc0(t->ntables * sizeof(Collector));
	Places	   *actual_places = palloc0(t->ntables * sizeof(Places));
	bool		any = false;
	Snapshot	before;
	Snapshot	after;
	List	   *expected_rows = NIL;
	List	   *actual_rows = NIL;

	/* the tables as they are (they cannot change: see CqrsRebuildLock) */
	before = RegisterSnapshot(GetLatestSnapshot());
	for (int i = 0; i < t->ntables; i++)
	{
		actual_places[i].cxt = cxt;
		CqrsScanBuckets(t->tables[i], before, &actual[i], NULL, remember_row, &actual_places[i]);
		collector_init(&collectors[i], cxt, t->tables[i], i);
	}

	/* what a replay produces, in a subtransaction rolled back afterwards */
	subxact_begin(subxacts);
	for (int i = 0; i < t->ntables; i++)
		CqrsDigestSuspend(t->tables[i]);
	CqrsRebuildEmpty(t);
	(void) CqrsRebuildApply(t->name, t->position);
	CommandCounterIncrement();
	after = RegisterSnapshot(GetLatestSnapshot());
	for (int i = 0; i < t->ntables; i++)
	{
		bool	   *w = &wanted[i * CQRS_DIGEST_BUCKETS];
		bool		differs = false;
		Places		places = {0};

		places.cxt = cxt;
		CqrsScanBuckets(t->tables[i], after, &expected[i], NULL, remember_row, &places);
		for (int b = 0; b < CQRS_DIGEST_BUCKETS; b++)
		{
			w[b] = expected[i].count[b] != actual[i].count[b] ||
				expected[i].sum[b] != actual[i].sum[b];
			differs |= w[b];
		}
		if (differs)
		{
			collect_wanted(t->tables[i], after, &places, w, &collectors[i]);
			expected_rows = list_concat(expected_rows, collectors[i].rows);
			collectors[i].rows = NIL;
			any = true;
		}
		if (places.rows)
			pfree(places.rows);
	}
	UnregisterSnapshot(after);
	subxact_rollback(subxacts);

	/* the rows of the same buckets as they are */
	if (any)
		for (int i = 0; i < t->ntables; i++)
		{
			collect_wanted(t->tables[i], before, &actual_places[i],
						   &wanted[i * CQRS_DIGEST_BUCKETS], &collectors[i]);
			actual_rows = list_concat(actual_rows, collectors[i].rows);
		}
	UnregisterSnapshot(before);
	for (int i = 0; i < t->ntables; i++)
		if (actual_places[i].rows)
			pfree(actual_places[i].rows);

	if (!any)
		return NIL;
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
		List	   *drift = match_rows(expected_rows, actual_rows);

		MemoryContextSwitchTo(oldcxt);
		return drift;
	}
}

/*
 * cqrs.reconcile(name text, repair boolean)
 *	  RETURNS TABLE (table_name regclass, key jsonb, drift text,
 *					 expected jsonb, actual jsonb)
 */
Datum
cqrs_reconcile(PG_FUNCTION_ARGS)
{
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	bool		do_repair;
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext cxt;
	/* in memory, not a local: PG_CATCH must see the depth PG_TRY left */
	Subxacts   *volatile subxacts = palloc0(sizeof(Subxacts));
	CqrsRebuildTarget t;
	CqrsBuckets *expected = NULL;
	List	   *drift = NIL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ListCell   *lc;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("repair must not be null")));
	do_repair = PG_GETARG_BOOL(1);
	refuse_snapshot_isolation("cqrs.reconcile()");

	cxt = AllocSetContextCreate(callercxt, "pg_cqrs reconcile", ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		/* without repair, even the locks go when we are done */
		if (!do_repair)
			subxact_begin(subxacts);
		CqrsRebuildLock(name, &t);
		require_tables(&t);
		expected = palloc0(t.ntables * sizeof(CqrsBuckets));
		drift = compare(&t, subxacts, cxt, expected);
		if (do_repair)
		{
			if (drift != NIL)
				repair(&t, drift);
			/* the tables now hold what a replay writes: so does the digest */
			for (int i = 0; i < t.ntables && t.digest; i++)
			{
				CqrsDigestAttach(t.tables[i]);
				CqrsDigestSet(name, t.tables[i], &expected[i]);
			}
		}
		else
			subxact_rollback(subxacts);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* unwind our subtransactions before the caller's handler runs */
		MemoryContextSwitchTo(callercxt);
		edata = CopyErrorData();
		FlushErrorState();
		while (subxacts->depth > 0)
			subxact_rollback(subxacts);
		ReThrowError(edata);
	}
	PG_END_TRY();

	InitMaterializedSRF(fcinfo, 0);
	foreach(lc, drift)
	{
		Drift	   *d = lfirst(lc);
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = ObjectIdGetDatum(t.tables[d->table]);
		values[1] = JsonbPGetDatum(d->key);
		values[2] = CStringGetTextDatum(d->kind);
		if (d->expected)
			values[3] = JsonbPGetDatum(d->expected->row);
		else
			nulls[3] = true;
		if (d->actual)
			values[4] = JsonbPGetDatum(d->actual->row);
		else
			nulls[4] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	MemoryContextDelete(cxt);
	return (Datum) 0;
}

/* ----------------------------------------------------------------
 * cqrs.verify
 * ----------------------------------------------------------------
 */

/* Fold a table's digest rows when this many have piled up. */
#define COMPACT_AFTER_ROWS 16

/*
 * cqrs.verify(name text)
 *	  RETURNS TABLE (table_name regclass, rows bigint, expected_rows bigint,
 *					 drifted_buckets integer, matches boolean)
 *
 * Reads the table and its digest with one snapshot and locks nothing but
 * AccessShareLock: a commit changes both or neither.
 */
Datum
cqrs_verify(PG_FUNCTION_ARGS)
{
	char	   *name = CqrsProjectionNameArg(fcinfo, 0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CqrsRebuildTarget t;
	CqrsBuckets *digest = palloc(sizeof(CqrsBuckets));
	CqrsBuckets *actual = palloc(sizeof(CqrsBuckets));
	Snapshot	snapshot;

	CqrsRebuildDescribe(name, &t);
	require_tables(&t);
	if (!t.digest)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" keeps no digest", name),
				 errdetail("It was created with digest => false."),
				 errhint("cqrs.reconcile() compares its tables with a replay of the log.")));
	InitMaterializedSRF(fcinfo, 0);

	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	for (int i = 0; i < t.ntables; i++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};
		int64		digest_rows;
		bool		known = CqrsDigestLoad(name, t.tables[i], snapshot, digest, &digest_rows);
		int			drifted = 0;

		CqrsScanBuckets(t.tables[i], snapshot, actual, NULL, NULL, NULL);
		for (int b = 0; b < CQRS_DIGEST_BUCKETS; b++)
			if (digest->count[b] != actual->count[b] || digest->sum[b] != actual->sum[b])
				drifted++;

		values[0] = ObjectIdGetDatum(t.tables[i]);
		values[1] = Int64GetDatum(actual->rows);
		values[2] = Int64GetDatum(digest->rows);
		values[3] = Int32GetDatum(drifted);
		values[4] = BoolGetDatum(drifted == 0);
		if (!known)
			nulls[2] = nulls[3] = nulls[4] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

		if (digest_rows > COMPACT_AFTER_ROWS && !IsolationUsesXactSnapshot())
			CqrsDigestCompact(name, t.tables[i]);
	}
	UnregisterSnapshot(snapshot);
	return (Datum) 0;
}
