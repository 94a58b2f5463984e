/*-------------------------------------------------------------------------
 *
 * rowhash.c
 *		Row image hashes, and a table's rows summed per key bucket.
 *
 * What digests (digest.c), verify and reconcile (replay.c) compare.
 *
 * Row image hash.  A row's hash combines the binary images of all its
 * columns (by-value datums, detoasted varlena contents), not their text nor
 * their equality operators, so every type works, including those without
 * equality, and two rows hash alike only when they are image-identical (as
 * record_image_eq compares).  The key hash combines the primary key's
 * columns alike and picks the row's bucket.
 *
 * Buckets.  Per bucket, the number of rows and the sum of their hashes
 * modulo 2^64: sums are additive and commute, so deltas can be added and
 * subtracted in any order (CqrsBucketsAdd), and a scan of the table
 * (CqrsScanBuckets) gives the same sums as the deltas that built it.
 *
 * Depends on nothing else of pg_cqrs.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/rowhash.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "compat.h"
#include "pg_cqrs.h"

/* ----------------------------------------------------------------
 * Row images
 * ----------------------------------------------------------------
 */

/* A 64-bit finaliser (MurmurHash3's fmix64): by-value images are 8 bytes. */
static inline uint64
mix64(uint64 x)
{
	x ^= x >> 33;
	x *= UINT64CONST(0xff51afd7ed558ccd);
	x ^= x >> 33;
	x *= UINT64CONST(0xc4ceb9fe1a85ec53);
	x ^= x >> 33;
	return x;
}

static uint64
datum_image_hash(Datum value, Form_pg_attribute att, uint64 seed)
{
	if (att->attbyval)
	{
		uint64		v;

		switch (att->attlen)
		{
			case 1:
				v = (uint8) DatumGetChar(value);
				break;
			case 2:
				v = (uint16) DatumGetInt16(value);
				break;
			case 4:
				v = (uint32) DatumGetInt32(value);
				break;
			default:
				v = (uint64) DatumGetInt64(value);
				break;
		}
		return mix64(v ^ mix64(seed));
	}
	if (att->attlen > 0)
		return hash_bytes_extended((const unsigned char *) DatumGetPointer(value),
								   att->attlen, seed);
	if (att->attlen == -1)
	{
		struct varlena *v = PG_DETOAST_DATUM_PACKED(value);
		uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(v),
											VARSIZE_ANY_EXHDR(v), seed);

		if ((Pointer) v != DatumGetPointer(value))
			pfree(v);
		return h;
	}
	/* cstring */
	return hash_bytes_extended((const unsigned char *) DatumGetCString(value),
							   strlen(DatumGetCString(value)), seed);
}

/* The image hash of column attnum (or of its NULL). */
static inline uint64
column_hash(TupleTableSlot *slot, int attnum)
{
	if (slot->tts_isnull[attnum - 1])
		return UINT64CONST(0x9E3779B97F4A7C15) ^ (uint64) attnum;
	return datum_image_hash(slot->tts_values[attnum - 1],
							TupleDescAttr(slot->tts_tupleDescriptor, attnum - 1),
							(uint64) attnum);
}

/*
 * CqrsRowShapeInit
 *		What hashing a table's rows needs: its primary key's columns, in
 *		attribute number order (from the relcache, so cheap per row).
 */
void
CqrsRowShapeInit(CqrsRowShape *shape, Relation rel)
{
	Bitmapset  *pk = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	int			x = -1;

	if (pk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("read table \"%s\" has no primary key", RelationGetRelationName(rel))));
	shape->nkeys = 0;
	while ((x = bms_next_member(pk, x)) >= 0)
		shape->keys[shape->nkeys++] = x + FirstLowInvalidHeapAttributeNumber;
	bms_free(pk);
}

/*
 * CqrsRowHash
 *		The image hash of the row in slot, and its key's bucket.  Each
 *		column is hashed once; the key's columns (in attribute order, as
 *		CqrsRowShapeInit lists them) also make the key hash.
 */
uint64
CqrsRowHash(const CqrsRowShape *shape, TupleTableSlot *slot, int *bucket)
{
	int			natts = slot->tts_tupleDescriptor->natts;
	uint64		key = 0;
	uint64		row = 0;
	int			k = 0;

	slot_getallattrs(slot);
	for (int attnum = 1; attnum <= natts; attnum++)
	{
		uint64		c;

		if (TupleDescAttr(slot->tts_tupleDescriptor, attnum - 1)->attisdropped)
			continue;
		c = column_hash(slot, attnum);
		row = hash_combine64(row, c);
		if (k < shape->nkeys && shape->keys[k] == attnum)
		{
			key = hash_combine64(key, c);
			k++;
		}
	}
	*bucket = (int) ((key >> 32) % CQRS_DIGEST_BUCKETS);
	return row;
}

/*
 * CqrsBucketsAdd
 *		into += sign * from, bucket by bucket.
 */
void
CqrsBucketsAdd(CqrsBuckets *into, const CqrsBuckets *from, int sign)
{
	into->rows += sign * from->rows;
	for (int b = 0; b < CQRS_DIGEST_BUCKETS; b++)
	{
		into->count[b] += sign * from->count[b];
		if (sign > 0)
			into->sum[b] += from->sum[b];
		else
			into->sum[b] -= from->sum[b];
	}
}

/* ----------------------------------------------------------------
 * Scanning a table
 * ----------------------------------------------------------------
 */

/*
 * CqrsScanBuckets
 *		Sum a table's rows (all its leaf partitions' rows, if partitioned)
 *		per bucket as of snapshot; hand each row of a wanted bucket (every
 *		row, if wanted is NULL) to visit, if given.
 */
void
CqrsScanBuckets(Oid relid, Snapshot snapshot, CqrsBuckets *into,
				const bool *wanted, CqrsRowVisitor visit, void *arg)
{
	List	   *rels;
	ListCell   *lc;

	memset(into, 0, sizeof(*into));
	if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE)
		rels = find_all_inheritors(relid, AccessShareLock, NULL);
	else
		rels = list_make1_oid(relid);

	foreach(lc, rels)
	{
		Relation	rel = table_open(lfirst_oid(lc), AccessShareLock);
		CqrsRowShape shape;
		TableScanDesc scan;
		TupleTableSlot *slot;

		if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		{
			table_close(rel, AccessShareLock);
			continue;
		}
		CqrsRowShapeInit(&shape, rel);
		slot = table_slot_create(rel, NULL);
		scan = table_beginscan(rel, snapshot, 0, NULL);
		while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
		{
			int			bucket;
			uint64		h = CqrsRowHash(&shape, slot, &bucket);

			CHECK_FOR_INTERRUPTS();
			into->count[bucket]++;
			into->sum[bucket] += h;
			into->rows++;
			if (visit != NULL && (wanted == NULL || wanted[bucket]))
				visit(arg, rel, slot, bucket, h);
		}
		table_endscan(scan);
		ExecDropSingleTupleTableSlot(slot);
		table_close(rel, NoLock);
	}
}

