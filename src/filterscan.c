/*-------------------------------------------------------------------------
 *
 * filterscan.c
 *		Scans of the log by category or type, merged in position order.
 *
 * A reader that wants only some categories or types (read_all with
 * filters, a deferred projection with filters) used to walk every position
 * after its checkpoint and drop what did not match: a consumer of a rare
 * category paid for the whole log.  Since 0.7.0 the log may carry two
 * filter indexes (created by the upgrade script, dropped and re-created
 * with cqrs.drop_filter_indexes / cqrs.create_filter_indexes):
 *
 *	events_category_position_idx	(cqrs.category(stream), "position")
 *	events_type_position_idx		(type, "position")
 *
 * With them, a filter of k names is k B-tree range scans, one per name
 * (name = x AND position > after AND position <= upto), each already in
 * position order; a k-way merge hands their rows out in position order.
 * The cost is then one descent per name plus the matching rows, whatever
 * lies between them.
 *
 * Which index serves a filter with both categories and types: the type
 * index, and the categories are checked on each row it returns.  Types are
 * the finer division in practice (a category has several types, a type
 * rarely spans categories), so this scans fewer rows.  Where the needed
 * index is missing (before 0.7.0, or dropped), or not valid (an
 * interrupted CREATE INDEX CONCURRENTLY by hand), the scan falls back to
 * the position index with every filter checked on each row: the same rows,
 * at the old cost.
 *
 * The rows are the same as the position scan's in every case: each scan
 * is bounded by the same positions and read with the caller's snapshot;
 * names repeated in a filter are scanned once (a row would otherwise come
 * out twice); NULL names were dropped by the caller; an empty filter
 * matches nothing, so it starts no scan at all.
 *
 * The merge picks the smallest head by a linear pass over the k scans:
 * filters name a handful of categories or types, for which this beats a
 * heap.
 *
 * Locking: the caller holds a lock on cqrs.events (CqrsOpenEventLog), so
 * the index OIDs it cached are current (creating or dropping an index
 * invalidates the table's relcache entry, and taking the lock processed
 * that); the indexes are opened here with AccessShareLock.  Memory: the
 * scan's state is allocated in the caller's memory context.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/filterscan.c
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
#include "catalog/pg_index.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "compat.h"
#include "pg_cqrs.h"

/* One index range scan feeding the merge. */
typedef struct SubScan
{
	IndexScanDesc scan;
	TupleTableSlot *slot;
	int64		position;		/* of the row in slot, when !done */
	bool		done;
} SubScan;

struct CqrsFilterScan
{
	Relation	index;			/* the index every sub-scan reads */
	int			nscans;
	SubScan    *scans;
	int			current;		/* the sub-scan whose row was returned last,
								 * to be advanced first; -1: none */
	bool		check_categories;	/* rows still need these checks */
	bool		check_types;
	const CqrsEventFilter *filter;
};

/* Length of the category prefix of a stream name: up to the first '-'. */
static int
category_len(const char *stream, int len)
{
	const char *dash = memchr(stream, '-', len);

	return dash ? (int) (dash - stream) : len;
}

static bool
names_match(text *const *names, int n, const char *s, int len)
{
	for (int i = 0; i < n; i++)
		if (VARSIZE_ANY_EXHDR(names[i]) == len &&
			memcmp(VARDATA_ANY(names[i]), s, len) == 0)
			return true;
	return false;
}

/*
 * CqrsEventFilterMatches
 *		Whether an event of this stream and type passes the filter: its
 *		category among the categories (when they are given) and its type
 *		among the types (likewise).
 */
bool
CqrsEventFilterMatches(const CqrsEventFilter *f, text *stream, text *type)
{
	if (f == NULL)
		return true;
	if (f->categories != NULL &&
		!names_match(f->categories, f->ncategories, VARDATA_ANY(stream),
					 category_len(VARDATA_ANY(stream), VARSIZE_ANY_EXHDR(stream))))
		return false;
	if (f->types != NULL &&
		!names_match(f->types, f->ntypes, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type)))
		return false;
	return true;
}

static bool
slot_matches(CqrsFilterScan *fs, TupleTableSlot *slot)
{
	bool		isnull;
	text	   *t;

	if (fs->check_categories)
	{
		t = DatumGetTextPP(slot_getattr(slot, Anum_events_stream, &isnull));
		if (!names_match(fs->filter->categories, fs->filter->ncategories, VARDATA_ANY(t),
						 category_len(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t))))
			return false;
	}
	if (fs->check_types)
	{
		t = DatumGetTextPP(slot_getattr(slot, Anum_events_type, &isnull));
		if (!names_match(fs->filter->types, fs->filter->ntypes,
						 VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)))
			return false;
	}
	return true;
}

/*
 * Open a filter index if it is there and usable: valid, and of the shape
 * the upgrade script gives it (a key column, then the position).  NULL
 * otherwise, and the caller falls back to the position index.
 */
static Relation
open_filter_index(Oid indexoid, AttrNumber keycol)
{
	Relation	index;
	Form_pg_index form;

	if (!OidIsValid(indexoid))
		return NULL;
	index = index_open(indexoid, AccessShareLock);
	form = index->rd_index;
	if (form->indisvalid && form->indnkeyatts == 2 &&
		form->indkey.values[0] == keycol &&
		form->indkey.values[1] == Anum_events_position)
		return index;
	index_close(index, AccessShareLock);
	return NULL;
}

/* Advance one sub-scan to its next row, skipping rows the checks refuse. */
static void
advance(CqrsFilterScan *fs, SubScan *s)
{
	while (index_getnext_slot(s->scan, ForwardScanDirection, s->slot))
	{
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		if (!slot_matches(fs, s->slot))
			continue;
		s->position = DatumGetInt64(slot_getattr(s->slot, Anum_events_position, &isnull));
		return;
	}
	s->done = true;
}

static void
start_subscan(CqrsFilterScan *fs, Relation events, Snapshot snapshot, SubScan *s,
			  int nkeys, ScanKey keys)
{
	s->slot = table_slot_create(events, NULL);
	s->scan = cqrs_index_beginscan(events, fs->index, snapshot, nkeys);
	index_rescan(s->scan, keys, nkeys, NULL, 0);
	s->done = false;
	advance(fs, s);
}

/*
 * CqrsFilterScanBegin
 *		Start a scan of the events in (after, upto] that pass filter (NULL:
 *		every event), read with snapshot, in position order.  The filter's
 *		arrays must outlive the scan.
 */
CqrsFilterScan *
CqrsFilterScanBegin(Relation events, Snapshot snapshot, const CqrsEventFilter *filter,
					int64 after, int64 upto)
{
	const CqrsEventLogOids *oids = CqrsEventLog();
	CqrsFilterScan *fs = palloc0(sizeof(CqrsFilterScan));
	text	   *const *names = NULL;
	int			nnames = 0;

	fs->filter = filter;
	fs->current = -1;
	fs->check_categories = filter != NULL && filter->categories != NULL;
	fs->check_types = filter != NULL && filter->types != NULL;

	/* the type index first: see the file header */
	if (fs->check_types &&
		(fs->index = open_filter_index(oids->type_position_idx, Anum_events_type)) != NULL)
	{
		names = filter->types;
		nnames = filter->ntypes;
		fs->check_types = false;
	}
	else if (fs->check_categories &&
			 (fs->index = open_filter_index(oids->category_position_idx, 0)) != NULL)
	{
		names = filter->categories;
		nnames = filter->ncategories;
		fs->check_categories = false;
	}

	if (fs->index != NULL)
	{
		fs->scans = palloc0(Max(nnames, 1) * sizeof(SubScan));
		for (int i = 0; i < nnames; i++)
		{
			ScanKeyData keys[3];
			bool		repeated = false;

			for (int j = 0; j < i && !repeated; j++)
				repeated = VARSIZE_ANY_EXHDR(names[j]) == VARSIZE_ANY_EXHDR(names[i]) &&
					memcmp(VARDATA_ANY(names[j]), VARDATA_ANY(names[i]),
						   VARSIZE_ANY_EXHDR(names[i])) == 0;
			if (repeated)
				continue;

			ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ,
						PointerGetDatum(names[i]));
			keys[0].sk_collation = fs->index->rd_indcollation[0];
			ScanKeyInit(&keys[1], 2, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
			ScanKeyInit(&keys[2], 2, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(upto));
			start_subscan(fs, events, snapshot, &fs->scans[fs->nscans++], 3, keys);
		}
	}
	else
	{
		ScanKeyData keys[2];

		fs->index = index_open(oids->position_idx, AccessShareLock);
		fs->scans = palloc0(sizeof(SubScan));
		ScanKeyInit(&keys[0], 1, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
		ScanKeyInit(&keys[1], 1, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(upto));
		start_subscan(fs, events, snapshot, &fs->scans[fs->nscans++], 2, keys);
	}
	return fs;
}

/*
 * CqrsFilterScanNext
 *		The next matching event, in a slot owned by the scan and valid until
 *		the next call; NULL when there are no more.
 */
TupleTableSlot *
CqrsFilterScanNext(CqrsFilterScan *fs)
{
	int			best = -1;

	if (fs->current >= 0)
		advance(fs, &fs->scans[fs->current]);
	for (int i = 0; i < fs->nscans; i++)
		if (!fs->scans[i].done &&
			(best < 0 || fs->scans[i].position < fs->scans[best].position))
			best = i;
	fs->current = best;
	if (best < 0)
		return NULL;
	return fs->scans[best].slot;
}

/*
 * CqrsFilterScanEnd
 *		End the scan and free it.  The index lock is kept until the end of
 *		the transaction, as usual.
 */
void
CqrsFilterScanEnd(CqrsFilterScan *fs)
{
	for (int i = 0; i < fs->nscans; i++)
	{
		index_endscan(fs->scans[i].scan);
		ExecDropSingleTupleTableSlot(fs->scans[i].slot);
	}
	index_close(fs->index, NoLock);
	pfree(fs->scans);
	pfree(fs);
}
