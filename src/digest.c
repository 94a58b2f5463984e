/*-------------------------------------------------------------------------
 *
 * digest.c
 *		Read-table digests: what a projection wrote, summed per key bucket.
 *
 * Drift is a read table that no longer holds what its projection wrote:
 * a manual UPDATE, a restore from the wrong backup, a lost write.  Finding
 * it by replaying the log costs as much as the replay.  Instead, every
 * write a projection's handler makes to one of its tables is folded into a
 * digest as it happens, and cqrs.verify() compares the digest with one scan
 * of the table.
 *
 * Row image hash.  Each row is hashed by its binary image and falls in a
 * bucket by its key (rowhash.c).
 *
 * Digest.  Per owned table, per bucket: the number of rows and the sum of
 * their hashes modulo 2^64.  Sums are additive, so an INSERT adds the new
 * row's hash, a DELETE subtracts the old one, an UPDATE does both, and
 * deltas commute: each applier appends its own delta row to
 * cqrs.projection_digests in the same (sub)transaction as the writes it
 * describes, so appliers never contend on a digest row, and a reader that
 * scans the table and sums the delta rows with one snapshot sees both sides
 * of exactly the same commits.  Compaction (DELETE ... RETURNING, then one
 * merged row) is commutative too, but it must not meet another compaction
 * or a reset of the same digest (CqrsDigestSet) halfway: the DELETE of the
 * second one would wait for the rows the first one took, and then miss
 * the merged row the first one inserted, which its snapshot cannot see
 * (a reset would leave that row beside its new base: false drift for
 * good).  So both take a lock on the table's digest first (digest_lock):
 * a reset waits for it, a compaction, which is optional, does without when
 * the lock is taken, so that verify and appends never wait.  A row with
 * base = true marks the digest as established (by create_projection,
 * replay or a repairing reconcile); without one the digest is unknown.
 *
 * Which writes count.  The row trigger cqrs.digest_row() is ENABLE ALWAYS
 * on every owned table, but only counts a write while a projection that owns
 * the table is applying events in this backend (projection.c brackets its
 * handler calls with CqrsDigestBegin/CqrsDigestEnd).  It has no WHEN
 * clause: the executor would compile it for every statement a handler
 * runs, which measured as a fifth of a simple handler's cost, more than the
 * trigger event it saves for writes that do not count.  Bulk rewrites of
 * our own (replay, reconcile) disable the trigger instead.  Anything else (manual
 * DML, another projection's handler, a repair) is drift by definition,
 * which is the point.  Deltas gathered in a subtransaction that aborts are
 * dropped with it: they are kept per nesting level and merged into the
 * parent level at subtransaction commit.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/digest.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/objectaddress.h"
#include "catalog/partition.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_digest_row);

/* The deltas one (sub)transaction level has gathered for one table. */
typedef struct LevelDelta
{
	Oid			relid;			/* the owned table (the root, if partitioned) */
	int			level;			/* transaction nesting level */
	CqrsBuckets buckets;
} LevelDelta;

/* A projection applying events in this backend (they may nest). */
typedef struct Applying
{
	const char *projection;
	int			ntables;
	Oid		   *tables;
	int			level;
} Applying;

#define MAX_APPLYING 16

static Applying applying[MAX_APPLYING];
static int	napplying = 0;
static List *deltas = NIL;		/* of LevelDelta, in TopTransactionContext */
static bool callbacks_registered = false;
static int	flushes = 0;


/* ----------------------------------------------------------------
 * Deltas, per transaction level
 * ----------------------------------------------------------------
 */

static void
digest_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, deltas)
		{
			LevelDelta *d = lfirst(lc);

			if (d->level >= level)
			{
				deltas = foreach_delete_current(deltas, lc);
				pfree(d);
			}
		}
		while (napplying > 0 && applying[napplying - 1].level >= level)
			napplying--;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, deltas)
		{
			LevelDelta *d = lfirst(lc);
			ListCell   *lc2;
			bool		merged = false;

			if (d->level < level)
				continue;
			foreach(lc2, deltas)
			{
				LevelDelta *parent = lfirst(lc2);

				if (parent != d && parent->relid == d->relid && parent->level == level - 1)
				{
					CqrsBucketsAdd(&parent->buckets, &d->buckets, 1);
					merged = true;
					break;
				}
			}
			if (merged)
			{
				deltas = foreach_delete_current(deltas, lc);
				pfree(d);
			}
			else
				d->level = level - 1;
		}
	}
}

static void
digest_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* the memory goes with TopTransactionContext */
			deltas = NIL;
			napplying = 0;
			break;
		default:
			break;
	}
}

static LevelDelta *
delta_for(Oid relid)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;
	LevelDelta *d;

	foreach(lc, deltas)
	{
		d = lfirst(lc);
		if (d->relid == relid && d->level == level)
			return d;
	}
	d = MemoryContextAllocZero(TopTransactionContext, sizeof(LevelDelta));
	d->relid = relid;
	d->level = level;
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

		deltas = lappend(deltas, d);
		MemoryContextSwitchTo(oldcxt);
	}
	return d;
}

/*
 * CqrsDigestBegin
 *		A projection starts applying events in this backend: count its
 *		handler's writes to the given tables.
 */
void
CqrsDigestBegin(const char *projection, int ntables, Oid *tables)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(digest_xact_callback, NULL);
		RegisterSubXactCallback(digest_subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (napplying >= MAX_APPLYING)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("projections nested more than %d deep", MAX_APPLYING),
				 errdetail("A handler appended an event that another projection's handler handled, and so on.")));
	applying[napplying].projection = projection;
	applying[napplying].ntables = ntables;
	applying[napplying].tables = tables;
	applying[napplying].level = GetCurrentTransactionNestLevel();
	napplying++;
}

/* Drop the deltas gathered for these tables. */
static void
forget_deltas(int ntables, Oid *tables)
{
	ListCell   *lc;

	foreach(lc, deltas)
	{
		LevelDelta *d = lfirst(lc);

		for (int i = 0; i < ntables; i++)
			if (d->relid == tables[i])
			{
				deltas = foreach_delete_current(deltas, lc);
				pfree(d);
				break;
			}
	}
}

/* Values of the non-zero buckets, as the three arrays of a digest row. */
static void
buckets_to_arrays(const CqrsBuckets *b, Datum *buckets, Datum *counts, Datum *sums, int *n)
{
	Datum	   *bv = palloc(CQRS_DIGEST_BUCKETS * sizeof(Datum));
	Datum	   *cv = palloc(CQRS_DIGEST_BUCKETS * sizeof(Datum));
	Datum	   *sv = palloc(CQRS_DIGEST_BUCKETS * sizeof(Datum));
	int			m = 0;

	for (int i = 0; i < CQRS_DIGEST_BUCKETS; i++)
	{
		if (b->count[i] == 0 && b->sum[i] == 0)
			continue;
		bv[m] = Int32GetDatum(i);
		cv[m] = Int64GetDatum(b->count[i]);
		sv[m] = Int64GetDatum((int64) b->sum[i]);
		m++;
	}
	*buckets = PointerGetDatum(construct_array(bv, m, INT4OID, 4, true, TYPALIGN_INT));
	*counts = PointerGetDatum(construct_array(cv, m, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	*sums = PointerGetDatum(construct_array(sv, m, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	*n = m;
}

/*
 * Insert one digest row.  Straight into the heap, without SPI: a sync
 * projection writes one per append, and the table has no index, trigger
 * or constraint beyond NOT NULL, all of which we satisfy; nobody but this
 * file writes it.
 */
static void
insert_digest_row(const char *projection, Oid relid, bool base, const CqrsBuckets *b)
{
	Relation	rel;
	HeapTuple	tuple;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};
	int			n;

	buckets_to_arrays(b, &values[3], &values[4], &values[5], &n);
	if (n == 0 && !base)
		return;
	values[0] = CStringGetTextDatum(projection);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = BoolGetDatum(base);

	rel = table_open(CqrsEventLog()->projection_digests, RowExclusiveLock);
	if (RelationGetDescr(rel)->natts != 6 || rel->rd_rel->relhasindex)
		elog(ERROR, "pg_cqrs: cqrs.projection_digests is not as this library expects");
	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tuple);
	heap_freetuple(tuple);
	table_close(rel, NoLock);
	for (int i = 3; i < 6; i++)
		pfree(DatumGetPointer(values[i]));
}

/*
 * Read and delete a table's digest rows, returning their sum; *base tells
 * whether one of them was a base row.  Rows a concurrent compaction took
 * first are simply not returned (they are in its merged row).
 */
static void
take_digest_rows(const char *projection, Oid relid, CqrsBuckets *sum, bool *base, int64 *rows);

/*
 * CqrsDigestEnd
 *		The projection that began last is done applying: write the deltas
 *		of its tables as digest rows, in the current (sub)transaction, or,
 *		when !keep (its batch is being thrown away), forget them.
 */
void
CqrsDigestEnd(bool keep)
{
	Applying	a;

	if (napplying == 0)
		return;
	a = applying[--napplying];
	if (!keep)
	{
		forget_deltas(a.ntables, a.tables);
		return;
	}
	if (deltas == NIL)
		return;

	for (int i = 0; i < a.ntables; i++)
	{
		ListCell   *lc;
		LevelDelta *first = NULL;
		CqrsBuckets *total = NULL;

		/*
		 * Usually one delta, at our own level (subtransactions below us
		 * have been merged into it); a sum only when there are more.
		 */
		foreach(lc, deltas)
		{
			LevelDelta *d = lfirst(lc);

			if (d->relid != a.tables[i])
				continue;
			if (first == NULL)
				first = d;
			else
			{
				if (total == NULL)
				{
					total = palloc(sizeof(CqrsBuckets));
					memcpy(total, &first->buckets, sizeof(CqrsBuckets));
				}
				CqrsBucketsAdd(total, &d->buckets, 1);
			}
		}
		if (first != NULL)
			insert_digest_row(a.projection, a.tables[i], false,
							  total ? total : &first->buckets);
		if (total != NULL)
			pfree(total);
	}
	forget_deltas(a.ntables, a.tables);

	/*
	 * Every so often, fold the digest rows of these tables into one, so
	 * that a busy sync projection does not leave a row per append until the
	 * next verify.  Compaction commutes with everything, so any backend may
	 * do it at any time.
	 */
	if (++flushes % 256 == 0)
		for (int i = 0; i < a.ntables; i++)
			CqrsDigestCompact(a.projection, a.tables[i]);
}

/* ----------------------------------------------------------------
 * The row trigger
 * ----------------------------------------------------------------
 */


/* The owned table a write to relid counts for, or InvalidOid. */
static Oid
counted_table(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	Applying   *a;

	if (napplying == 0)
		return InvalidOid;
	a = &applying[napplying - 1];
	for (int i = 0; i < a->ntables; i++)
		if (a->tables[i] == relid)
			return relid;
	if (rel->rd_rel->relispartition)
	{
		List	   *ancestors = get_partition_ancestors(relid);
		ListCell   *lc;

		foreach(lc, ancestors)
			for (int i = 0; i < a->ntables; i++)
				if (a->tables[i] == lfirst_oid(lc))
					return a->tables[i];
	}
	return InvalidOid;
}

static void
count_row(LevelDelta *d, Relation rel, TupleTableSlot *slot, int sign)
{
	CqrsRowShape shape;
	int			bucket;
	uint64		h;

	CqrsRowShapeInit(&shape, rel);
	h = CqrsRowHash(&shape, slot, &bucket);
	d->buckets.count[bucket] += sign;
	d->buckets.rows += sign;
	if (sign > 0)
		d->buckets.sum[bucket] += h;
	else
		d->buckets.sum[bucket] -= h;
}

/*
 * cqrs.digest_row() RETURNS trigger
 *
 * AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW on a projection's
 * tables: fold the change into the digest delta of the applying projection.
 */
Datum
cqrs_digest_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			relid;
	LevelDelta *d;
	TriggerEvent ev;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.digest_row() must be called as an AFTER ... FOR EACH ROW trigger")));

	relid = counted_table(trigdata->tg_relation);
	if (!OidIsValid(relid))
		return PointerGetDatum(NULL);

	d = delta_for(relid);
	ev = trigdata->tg_event;
	if (TRIGGER_FIRED_BY_INSERT(ev))
		count_row(d, trigdata->tg_relation, trigdata->tg_trigslot, 1);
	else if (TRIGGER_FIRED_BY_DELETE(ev))
		count_row(d, trigdata->tg_relation, trigdata->tg_trigslot, -1);
	else if (TRIGGER_FIRED_BY_UPDATE(ev))
	{
		count_row(d, trigdata->tg_relation, trigdata->tg_trigslot, -1);
		count_row(d, trigdata->tg_relation, trigdata->tg_newslot, 1);
	}
	return PointerGetDatum(NULL);
}

/* ----------------------------------------------------------------
 * Stored digests
 * ----------------------------------------------------------------
 */

static void
add_digest_arrays(CqrsBuckets *into, Datum buckets, Datum counts, Datum sums)
{
	Datum	   *bv,
			   *cv,
			   *sv;
	int			nb,
				nc,
				ns;

	deconstruct_array(DatumGetArrayTypeP(buckets), INT4OID, 4, true, TYPALIGN_INT, &bv, NULL, &nb);
	deconstruct_array(DatumGetArrayTypeP(counts), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &cv, NULL, &nc);
	deconstruct_array(DatumGetArrayTypeP(sums), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &sv, NULL, &ns);
	if (nb != nc || nb != ns)
		elog(ERROR, "pg_cqrs: malformed digest row");
	for (int i = 0; i < nb; i++)
	{
		int			b = DatumGetInt32(bv[i]);

		if (b < 0 || b >= CQRS_DIGEST_BUCKETS)
			elog(ERROR, "pg_cqrs: malformed digest row");
		into->count[b] += DatumGetInt64(cv[i]);
		into->rows += DatumGetInt64(cv[i]);
		into->sum[b] += (uint64) DatumGetInt64(sv[i]);
	}
}

static void
sum_result_rows(CqrsBuckets *sum, bool *base)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		b,
					c,
					s;

		if (DatumGetBool(SPI_getbinval(t, desc, 1, &isnull)))
			*base = true;
		b = SPI_getbinval(t, desc, 2, &isnull);
		c = SPI_getbinval(t, desc, 3, &isnull);
		s = SPI_getbinval(t, desc, 4, &isnull);
		add_digest_arrays(sum, b, c, s);
	}
}

/*
 * CqrsDigestLoad
 *		The digest of a projection's table as of snapshot; false when it is
 *		unknown (never established).  *rows is the number of digest rows.
 */
bool
CqrsDigestLoad(const char *projection, Oid relid, Snapshot snapshot,
			   CqrsBuckets *into, int64 *rows)
{
	Oid			argtypes[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	SPIPlanPtr	plan;
	bool		base = false;
	int			rc;
	CqrsCatalogScope scope;

	CqrsCatalogConnect(&scope);
	plan = SPI_prepare("SELECT base, buckets, counts, sums FROM cqrs.projection_digests"
					   " WHERE projection OPERATOR(pg_catalog.=) $1"
					   " AND \"table\" OPERATOR(pg_catalog.=) $2::pg_catalog.regclass",
					   2, argtypes);
	if (plan == NULL)
		elog(ERROR, "pg_cqrs: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	values[0] = CStringGetTextDatum(projection);
	values[1] = ObjectIdGetDatum(relid);
	rc = SPI_execute_snapshot(plan, values, NULL, snapshot, InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading digests failed: %s", SPI_result_code_string(rc));
	memset(into, 0, sizeof(*into));
	*rows = SPI_processed;
	sum_result_rows(into, &base);
	SPI_freeplan(plan);
	CqrsCatalogDisconnect(&scope);
	return base;
}

static void
take_digest_rows(const char *projection, Oid relid, CqrsBuckets *sum, bool *base, int64 *rows)
{
	Oid			argtypes[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	int			rc;

	values[0] = CStringGetTextDatum(projection);
	values[1] = ObjectIdGetDatum(relid);
	rc = SPI_execute_with_args("DELETE FROM cqrs.projection_digests"
							   " WHERE projection OPERATOR(pg_catalog.=) $1"
							   " AND \"table\" OPERATOR(pg_catalog.=) $2::pg_catalog.regclass"
							   " RETURNING base, buckets, counts, sums",
							   2, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "pg_cqrs: compacting digests failed: %s", SPI_result_code_string(rc));
	memset(sum, 0, sizeof(*sum));
	*base = false;
	*rows = SPI_processed;
	sum_result_rows(sum, base);
}

/*
 * Lock a table's digest against concurrent rewrites (compaction, reset),
 * to the end of the transaction: an object lock whose class is
 * cqrs.projection_digests and whose object is the owned table, which
 * nothing else takes.  With !wait, returns false at once when another
 * transaction holds it.
 */
static bool
digest_lock(Oid relid, bool wait)
{
	Oid			digests = CqrsEventLog()->projection_digests;

	if (!wait)
		return ConditionalLockDatabaseObject(digests, relid, 0, ExclusiveLock);
	LockDatabaseObject(digests, relid, 0, ExclusiveLock);
	return true;
}

/*
 * CqrsDigestCompact
 *		Fold a table's digest rows into one, unless another transaction is
 *		rewriting them: compaction is only an optimisation, never worth a
 *		wait.
 */
void
CqrsDigestCompact(const char *projection, Oid relid)
{
	CqrsBuckets *sum;
	bool		base;
	int64		rows;
	CqrsCatalogScope scope;

	if (XactReadOnly || !digest_lock(relid, false))
		return;
	sum = palloc(sizeof(CqrsBuckets));
	CqrsCatalogConnect(&scope);
	take_digest_rows(projection, relid, sum, &base, &rows);
	if (rows > 0)
		insert_digest_row(projection, relid, base, sum);
	CqrsCatalogDisconnect(&scope);
	pfree(sum);
}

/*
 * CqrsDigestSet
 *		Replace a table's digest by the given one (NULL: empty), established.
 */
void
CqrsDigestSet(const char *projection, Oid relid, const CqrsBuckets *digest)
{
	CqrsBuckets *old = palloc(sizeof(CqrsBuckets));
	CqrsBuckets *empty = NULL;
	bool		base;
	int64		rows;
	CqrsCatalogScope scope;

	if (!CqrsDigestsInstalled())
		return;
	if (digest == NULL)
		digest = empty = palloc0(sizeof(CqrsBuckets));
	/* after a concurrent compaction has committed, so we see its row */
	(void) digest_lock(relid, true);
	CqrsCatalogConnect(&scope);
	take_digest_rows(projection, relid, old, &base, &rows);
	insert_digest_row(projection, relid, true, digest);
	CqrsCatalogDisconnect(&scope);
	pfree(old);
	if (empty)
		pfree(empty);
}

/* ----------------------------------------------------------------
 * The trigger on owned tables
 * ----------------------------------------------------------------
 */

#define DIGEST_TRIGGER "cqrs_digest"

static void
execute_as_catalog_owner(const char *sql)
{
	CqrsCatalogScope scope;
	int			rc;

	CqrsCatalogConnect(&scope);
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "pg_cqrs: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
	CqrsCatalogDisconnect(&scope);
}

/*
 * CqrsDigestAttach
 *		Put the digest trigger on an owned table, unless it is there.
 *
 * Created by the extension's owner (the projection's creator need not own
 * the table), ENABLE ALWAYS so that session_replication_role does not
 * silence it, and auto-dependent on the extension, so that DROP EXTENSION
 * takes it along instead of refusing.  pg_dump dumps it with the table.
 */
void
CqrsDigestAttach(Oid relid)
{
	char	   *qname;
	ObjectAddress trigger;
	ObjectAddress extension;

	if (!CqrsDigestsInstalled() ||
		OidIsValid(get_trigger_oid(relid, DIGEST_TRIGGER, true)))
		return;
	qname = CqrsQualifiedName(relid);
	execute_as_catalog_owner(psprintf("CREATE TRIGGER " DIGEST_TRIGGER
									  " AFTER INSERT OR UPDATE OR DELETE ON %s"
									  " FOR EACH ROW EXECUTE FUNCTION cqrs.digest_row()", qname));
	execute_as_catalog_owner(psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER " DIGEST_TRIGGER, qname));
	CommandCounterIncrement();

	ObjectAddressSet(trigger, TriggerRelationId, get_trigger_oid(relid, DIGEST_TRIGGER, false));
	ObjectAddressSet(extension, ExtensionRelationId, get_extension_oid("pg_cqrs", false));
	recordDependencyOn(&trigger, &extension, DEPENDENCY_AUTO);
}

/*
 * CqrsDigestDetach
 *		Remove the digest trigger from a table that is no longer owned.
 */
void
CqrsDigestDetach(Oid relid)
{
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)) ||
		!OidIsValid(get_trigger_oid(relid, DIGEST_TRIGGER, true)))
		return;
	execute_as_catalog_owner(psprintf("DROP TRIGGER " DIGEST_TRIGGER " ON %s",
									  CqrsQualifiedName(relid)));
}

/*
 * CqrsDigestSuspend
 *		Disable the digest trigger of a table, for the rest of the current
 *		(sub)transaction: a rebuild computes the digest afterwards with one
 *		scan, cheaper than counting a million writes one by one.  Takes
 *		ShareRowExclusiveLock, which readers do not conflict with; other
 *		sessions never see the trigger disabled, as the caller enables it
 *		again (CqrsDigestResume) or rolls back before committing.
 */
void
CqrsDigestSuspend(Oid relid)
{
	if (!CqrsDigestsInstalled() ||
		!OidIsValid(get_trigger_oid(relid, DIGEST_TRIGGER, true)))
		return;
	execute_as_catalog_owner(psprintf("ALTER TABLE %s DISABLE TRIGGER " DIGEST_TRIGGER,
									  CqrsQualifiedName(relid)));
}

void
CqrsDigestResume(Oid relid)
{
	if (!CqrsDigestsInstalled() ||
		!OidIsValid(get_trigger_oid(relid, DIGEST_TRIGGER, true)))
		return;
	execute_as_catalog_owner(psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER " DIGEST_TRIGGER,
									  CqrsQualifiedName(relid)));
}
