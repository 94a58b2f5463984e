/*-------------------------------------------------------------------------
 *
 * capture.c
 *		Change capture: ordinary tables whose row changes become events.
 *
 * cqrs.capture(source, category) puts two triggers on a write-model table:
 *
 *	cqrs_capture			AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW
 *	cqrs_capture_truncate	BEFORE TRUNCATE FOR EACH STATEMENT
 *
 * both executing cqrs.capture_trigger(), and records the table in the
 * catalog cqrs.captures.  Each row change then appends, in the writing
 * transaction, one event (two for a key change, see below) through
 * CqrsAppendEvent, i.e. with the checks, the stream lock and the sync
 * projections of any append.  There is no second write path to keep in step.
 *
 * The format, fixed here and documented in the README:
 *
 *	stream		<category>-<key>.  <key> is the primary key's text output
 *				(printed with fixed DateStyle, TimeZone etc., so that it
 *				does not depend on the writing session); for a composite
 *				key the column values in key-column order, each with '\'
 *				and ',' escaped by a '\', joined by ','.  Distinct keys
 *				therefore give distinct streams.  The
 *				category may not contain '-' (cqrs.category() must find it
 *				again) and one category belongs to one table.
 *	type		<name>.inserted | <name>.updated | <name>.deleted, <name>
 *				being the table's name when it was captured (renaming the
 *				table later does not change the types consumers filter on).
 *	data		the new row (the old row for deletes) as to_jsonb() makes it.
 *	metadata	{"source": "<schema>.<table>"}, plus "moved_to"/"moved_from"
 *				for the two events of a key change.
 *
 * An UPDATE that changes the key appends <name>.deleted (old row) to the old
 * stream and <name>.inserted (new row) to the new one, so each stream stays
 * the history of one key.  An UPDATE that leaves every column binary
 * identical appends nothing.  TRUNCATE is refused: it fires no row triggers
 * and would leave the streams describing rows that are gone.
 *
 * Privileges.  Only the table's owner may capture or uncapture it.  The
 * events are appended with the rights of the table's owner (as a sync
 * projection's handler runs as its owner), so roles that may write the
 * table need no privilege on cqrs.events -- and cannot forge captured
 * events through cqrs.append either.  The owner must hold INSERT on
 * cqrs.events and USAGE on schema cqrs; capture() checks it.  The trigger
 * function trusts only the catalog: a trigger that nobody registered with
 * capture() refuses to run, so EXECUTE on it can stay granted to PUBLIC
 * (pg_restore and capture() create the triggers with the caller's rights).
 *
 * Dump and restore.  The triggers are ordinary triggers on the user's
 * table: pg_dump dumps them with it and pg_restore creates them after the
 * table's data is loaded, so restored rows append nothing.  cqrs.captures
 * is dumped with the extension (pg_extension_config_dump).  DROP TABLE
 * removes the catalog row through an sql_drop event trigger.
 *
 * Caching.  What the trigger needs per table (category, key columns and
 * their output functions, the to_jsonb call, the event types) is built on
 * first use and kept in a hash by relation OID; a relcache invalidation of
 * the table forgets it.  capture and uncapture create or drop the table's
 * triggers, which invalidates its relcache entry in every backend, and so do
 * renames and column changes.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/capture.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/catalog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_capture);
PG_FUNCTION_INFO_V1(cqrs_uncapture);
PG_FUNCTION_INFO_V1(cqrs_capture_trigger);
PG_FUNCTION_INFO_V1(cqrs_capture_dropped);

#define CAPTURE_ROW_TRIGGER			"cqrs_capture"
#define CAPTURE_TRUNCATE_TRIGGER	"cqrs_capture_truncate"

/* Attribute numbers of cqrs.captures; the install script fixes the order. */
#define Anum_captures_source		1
#define Anum_captures_category		2
#define Anum_captures_type_prefix	3

enum
{
	OP_INSERTED,
	OP_UPDATED,
	OP_DELETED
};

/* What the trigger needs to know about one captured table. */
typedef struct CaptureInfo
{
	Oid			relid;			/* hash key */
	bool		valid;			/* false once the relcache entry changed */
	MemoryContext cxt;			/* everything below lives here */
	char	   *source;			/* "schema.table", for metadata and messages */
	char	   *category;
	text	   *types[3];		/* <name>.inserted, .updated, .deleted */
	Jsonb	   *metadata;		/* {"source": ...} */
	int			nkeys;
	AttrNumber *keyattrs;		/* primary key columns, in key order */
	FmgrInfo   *keyout;			/* their output functions */
	bool		fixed_style;	/* print the key with fixed settings */
	FmgrInfo	to_jsonb;		/* to_jsonb(<row type>) */
} CaptureInfo;

static HTAB *capture_cache = NULL;

/* Error context while a row change is captured. */
typedef struct CaptureErrorContext
{
	const char *source;
} CaptureErrorContext;

/* ----------------------------------------------------------------
 * The catalog cqrs.captures
 * ----------------------------------------------------------------
 */

static Oid
rel_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* OID of cqrs.captures, or InvalidOid where the extension predates it. */
static Oid
captures_relid(void)
{
	Oid			nspid = get_namespace_oid("cqrs", true);

	if (!OidIsValid(nspid))
		return InvalidOid;
	return get_relname_relid("captures", nspid);
}

static Oid
captures_relid_required(void)
{
	Oid			relid = captures_relid();

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_cqrs is not up to date in this database"),
				 errhint("Run ALTER EXTENSION pg_cqrs UPDATE.")));
	return relid;
}

/*
 * Look up a table's capture in the catalog with a fresh snapshot, so that a
 * capture committed while we waited for the table's lock is seen.  Returns
 * false when the table is not captured; otherwise the category and type
 * prefix, palloc'd in the current context.  The lookup bypasses privileges:
 * the roles writing a captured table need none on the catalog.
 */
static bool
capture_lookup(Oid relid, char **category, char **type_prefix)
{
	Relation	captures;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	Snapshot	snapshot;
	bool		found = false;

	captures = table_open(captures_relid_required(), AccessShareLock);
	ScanKeyInit(&key, Anum_captures_source, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	/* a sequential scan: the catalog holds one row per captured table */
	scan = systable_beginscan(captures, InvalidOid, false, snapshot, 1, &key);
	if (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(captures);
		bool		isnull;
		Datum		d;

		d = heap_getattr(tuple, Anum_captures_category, desc, &isnull);
		if (category)
			*category = isnull ? NULL : TextDatumGetCString(d);
		d = heap_getattr(tuple, Anum_captures_type_prefix, desc, &isnull);
		if (type_prefix)
			*type_prefix = isnull ? NULL : TextDatumGetCString(d);
		found = true;
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(captures, AccessShareLock);
	return found;
}

/* The table capturing into category, or InvalidOid; a fresh snapshot. */
static Oid
category_owner(const char *category)
{
	Relation	captures;
	SysScanDesc scan;
	HeapTuple	tuple;
	Snapshot	snapshot;
	Oid			result = InvalidOid;

	captures = table_open(captures_relid_required(), AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(captures, InvalidOid, false, snapshot, 0, NULL);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(captures);
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_captures_category, desc, &isnull);

		if (!isnull && strcmp(TextDatumGetCString(d), category) == 0)
		{
			result = DatumGetObjectId(heap_getattr(tuple, Anum_captures_source, desc, &isnull));
			break;
		}
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(captures, AccessShareLock);
	return result;
}

/*
 * Run one parameterised statement on cqrs.captures as the catalog's owner
 * (the extension's owner), as projection.c does for cqrs.projections: the
 * callers have been authorised as the captured table's owner, and need no
 * privilege on the catalog.  The caller is connected to SPI.
 */
static void
catalog_execute(const char *sql, int nargs, Oid *argtypes, Datum *values, int expected)
{
	Oid			save_userid;
	int			save_sec_context;
	int			rc;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel_owner(captures_relid_required()),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, NULL, false, 0);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (rc != expected)
		elog(ERROR, "pg_cqrs: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/* ----------------------------------------------------------------
 * The per-table cache
 * ----------------------------------------------------------------
 */

static void
capture_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CaptureInfo *info;

	if (capture_cache == NULL)
		return;
	if (OidIsValid(relid))
	{
		info = hash_search(capture_cache, &relid, HASH_FIND, NULL);
		if (info)
			info->valid = false;
		return;
	}
	hash_seq_init(&status, capture_cache);
	while ((info = hash_seq_search(&status)) != NULL)
		info->valid = false;
}

static text *
type_name(const char *prefix, const char *op)
{
	return cstring_to_text(psprintf("%s.%s", prefix, op));
}

/* {"source": source}, or with one more key naming a stream. */
static Jsonb *
make_metadata(const char *source, const char *key, text *stream)
{
	JsonbParseState *state = NULL;
	JsonbValue	v;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	v.type = jbvString;
	v.val.string.val = "source";
	v.val.string.len = 6;
	pushJsonbValue(&state, WJB_KEY, &v);
	v.val.string.val = (char *) source;
	v.val.string.len = strlen(source);
	pushJsonbValue(&state, WJB_VALUE, &v);
	if (key)
	{
		v.val.string.val = (char *) key;
		v.val.string.len = strlen(key);
		pushJsonbValue(&state, WJB_KEY, &v);
		v.val.string.val = VARDATA_ANY(stream);
		v.val.string.len = VARSIZE_ANY_EXHDR(stream);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * Fill info for rel from the catalog and the relcache.  Errors (the table is
 * not captured, or lost its primary key) leave info invalid, so the next
 * row tries again.
 */
static void
capture_info_build(CaptureInfo *info, Relation rel, const char *tgname)
{
	char	   *category;
	char	   *type_prefix;
	Oid			pkoid;
	Relation	pk;
	MemoryContext oldcxt;
	FuncExpr   *call;

	if (!capture_lookup(RelationGetRelid(rel), &category, &type_prefix))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not captured",
						RelationGetRelationName(rel)),
				 errdetail("Trigger \"%s\" calls cqrs.capture_trigger(), but cqrs.captures has no row for the table.",
						   tgname),
				 errhint("Drop the triggers \"%s\" and \"%s\" and call cqrs.capture() on the table.",
						 CAPTURE_ROW_TRIGGER, CAPTURE_TRUNCATE_TRIGGER)));

	pkoid = CqrsRelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("captured table \"%s\" has no primary key",
						RelationGetRelationName(rel)),
				 errdetail("Change capture names each row's stream after its primary key."),
				 errhint("Add the primary key back, or call cqrs.uncapture() on the table.")));

	/*
	 * The old contents may still be in use: the trigger can run nested in
	 * itself (a sync projection fed by the table writes to it), and the
	 * invalidation can arrive in between.  Let them live to the end of the
	 * transaction rather than free them under the outer call.
	 */
	if (info->cxt != NULL)
		MemoryContextSetParent(info->cxt, TopTransactionContext);
	info->cxt = AllocSetContextCreate(CacheMemoryContext, "pg_cqrs capture",
									  ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(info->cxt);

	info->source = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											  RelationGetRelationName(rel));
	info->category = pstrdup(category);
	info->types[OP_INSERTED] = type_name(type_prefix, "inserted");
	info->types[OP_UPDATED] = type_name(type_prefix, "updated");
	info->types[OP_DELETED] = type_name(type_prefix, "deleted");
	info->metadata = make_metadata(info->source, NULL, NULL);

	pk = index_open(pkoid, AccessShareLock);
	info->nkeys = pk->rd_index->indnkeyatts;
	info->fixed_style = false;
	info->keyattrs = palloc(info->nkeys * sizeof(AttrNumber));
	info->keyout = palloc(info->nkeys * sizeof(FmgrInfo));
	for (int i = 0; i < info->nkeys; i++)
	{
		AttrNumber	attnum = pk->rd_index->indkey.values[i];
		Oid			outfunc;
		bool		isvarlena;

		Oid			typid = TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atttypid;

		info->keyattrs[i] = attnum;
		getTypeOutputInfo(typid, &outfunc, &isvarlena);
		fmgr_info_cxt(outfunc, &info->keyout[i], info->cxt);
		switch (getBaseType(typid))
		{
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case NUMERICOID:
			case OIDOID:
			case BOOLOID:
			case CHAROID:
			case NAMEOID:
			case TEXTOID:
			case VARCHAROID:
			case BPCHAROID:
			case UUIDOID:
				break;
			default:
				info->fixed_style = true;
		}
	}
	index_close(pk, AccessShareLock);

	/*
	 * PostgreSQL 15 exports no datum-to-jsonb conversion, but to_jsonb() is
	 * an ordinary fmgr function that learns its argument's type from
	 * fn_expr: give it a call expression over the table's row type and call
	 * it directly, with no SPI and no parsing of a JSON text per row.
	 */
	fmgr_info_cxt(F_TO_JSONB, &info->to_jsonb, info->cxt);
	call = makeFuncExpr(F_TO_JSONB, JSONBOID,
						list_make1(makeNullConst(RelationGetForm(rel)->reltype, -1, InvalidOid)),
						InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	info->to_jsonb.fn_expr = (Node *) call;

	MemoryContextSwitchTo(oldcxt);
	info->valid = true;
}

static CaptureInfo *
capture_info(Relation rel, const char *tgname)
{
	Oid			relid = RelationGetRelid(rel);
	CaptureInfo *info;
	bool		found;

	if (capture_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureInfo);
		ctl.hcxt = CacheMemoryContext;
		capture_cache = hash_create("pg_cqrs captured tables", 16, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
	}
	info = hash_search(capture_cache, &relid, HASH_ENTER, &found);
	if (!found)
	{
		info->valid = false;
		info->cxt = NULL;
	}
	if (!info->valid)
		capture_info_build(info, rel, tgname);
	return info;
}

/* ----------------------------------------------------------------
 * The trigger
 * ----------------------------------------------------------------
 */

/* Append the key value s to buf, escaping '\' and ',' (composite keys). */
static void
append_escaped(StringInfo buf, const char *s)
{
	for (; *s; s++)
	{
		if (*s == '\\' || *s == ',')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *s);
	}
}

/*
 * The settings a key is printed with when its type's output may depend on
 * them (dates, times, intervals, floats, bytea, and any type not known to
 * print the same everywhere): the stream of a row must not depend on the
 * writing session's TimeZone or DateStyle.
 */
static const char *const key_style[][2] = {
	{"datestyle", "ISO, YMD"},
	{"intervalstyle", "postgres"},
	{"timezone", "UTC"},
	{"extra_float_digits", "1"},
	{"bytea_output", "hex"},
};

/* The stream of a row: <category>-<key>, see the file header. */
static text *
row_stream(CaptureInfo *info, HeapTuple tuple, TupleDesc desc)
{
	StringInfoData buf;
	text	   *result;
	int			nestlevel = -1;

	if (info->fixed_style)
	{
		nestlevel = NewGUCNestLevel();
		for (int i = 0; i < lengthof(key_style); i++)
			(void) set_config_option(key_style[i][0], key_style[i][1],
									 PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
	}

	initStringInfo(&buf);
	appendStringInfoString(&buf, info->category);
	appendStringInfoChar(&buf, '-');
	for (int i = 0; i < info->nkeys; i++)
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, info->keyattrs[i], desc, &isnull);
		char	   *s;

		/* primary key columns are NOT NULL */
		if (isnull)
			elog(ERROR, "primary key column %d of \"%s\" is null",
				 info->keyattrs[i], info->source);
		s = OutputFunctionCall(&info->keyout[i], value);
		if (info->nkeys == 1)
			appendStringInfoString(&buf, s);
		else
		{
			if (i > 0)
				appendStringInfoChar(&buf, ',');
			append_escaped(&buf, s);
		}
	}
	if (nestlevel >= 0)
		AtEOXact_GUC(true, nestlevel);
	result = cstring_to_text_with_len(buf.data, buf.len);
	pfree(buf.data);
	return result;
}

static Jsonb *
row_data(CaptureInfo *info, HeapTuple tuple, TupleDesc desc)
{
	/* flattens TOAST pointers, which a composite datum may not hold */
	Datum		row = heap_copy_tuple_as_datum(tuple, desc);

	return DatumGetJsonbP(FunctionCall1(&info->to_jsonb, row));
}

/*
 * Whether two versions of a row hold binary-identical values in every
 * column.  Values that are equal but stored differently (1.0 and 1.00, or
 * a value toasted anew) count as changed: they may print differently.
 */
static bool
rows_identical(HeapTuple a, HeapTuple b, TupleDesc desc)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		anull,
					bnull;
		Datum		av,
					bv;

		if (att->attisdropped)
			continue;
		av = heap_getattr(a, i + 1, desc, &anull);
		bv = heap_getattr(b, i + 1, desc, &bnull);
		if (anull != bnull)
			return false;
		if (anull || datumIsEqual(av, bv, att->attbyval, att->attlen))
			continue;
		if (att->attlen == -1)
		{
			/* an unchanged value may have been detoasted and stored again */
			struct varlena *ap = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(av));
			struct varlena *bp = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(bv));

			if (VARSIZE_ANY_EXHDR(ap) == VARSIZE_ANY_EXHDR(bp) &&
				memcmp(VARDATA_ANY(ap), VARDATA_ANY(bp), VARSIZE_ANY_EXHDR(ap)) == 0)
				continue;
		}
		return false;
	}
	return true;
}

static void
capture_error_callback(void *arg)
{
	CaptureErrorContext *ctx = (CaptureErrorContext *) arg;

	errcontext("capturing a row change of table %s", ctx->source);
}

/*
 * cqrs.capture_trigger() RETURNS trigger
 *
 * AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW on a captured table:
 * append the row's event(s).  BEFORE TRUNCATE ... FOR EACH STATEMENT:
 * refuse.
 *
 * The events are appended as the table's owner, with
 * SECURITY_RESTRICTED_OPERATION as for any code run on another role's
 * behalf; an error (and the transaction's abort) restores the user id.
 * Everything a row needs is allocated in a memory context of its own,
 * deleted before returning, so a statement changing a million rows uses no
 * more memory than the after-trigger queue PostgreSQL keeps anyway.  A
 * context per call, rather than one reset per call, because the trigger can
 * run nested in itself: a sync projection fed by one captured table may
 * write another.
 */
Datum
cqrs_capture_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent event;
	Relation	rel;
	TupleDesc	desc;
	CaptureInfo *info;
	MemoryContext rowcxt,
				oldcxt;
	Oid			save_userid;
	int			save_sec_context;
	ErrorContextCallback errcallback;
	CaptureErrorContext errctx;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.capture_trigger() must be called as a trigger")));
	event = trigdata->tg_event;
	rel = trigdata->tg_relation;

	if (TRIGGER_FIRED_BY_TRUNCATE(event))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot truncate captured table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("TRUNCATE removes rows without appending their \"deleted\" events."),
				 errhint("Use DELETE, or call cqrs.uncapture() on the table first.")));

	if (!TRIGGER_FIRED_AFTER(event) || !TRIGGER_FIRED_FOR_ROW(event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.capture_trigger() must be called AFTER, FOR EACH ROW, or BEFORE TRUNCATE")));

	info = capture_info(rel, trigdata->tg_trigger->tgname);
	desc = RelationGetDescr(rel);

	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "pg_cqrs captured row",
								   ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(rowcxt);

	errctx.source = info->source;
	errcallback.callback = capture_error_callback;
	errcallback.arg = &errctx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);

	if (TRIGGER_FIRED_BY_INSERT(event))
	{
		HeapTuple	row = trigdata->tg_trigtuple;

		CqrsAppendEvent(row_stream(info, row, desc), info->types[OP_INSERTED],
						row_data(info, row, desc), info->metadata, false);
	}
	else if (TRIGGER_FIRED_BY_DELETE(event))
	{
		HeapTuple	row = trigdata->tg_trigtuple;

		CqrsAppendEvent(row_stream(info, row, desc), info->types[OP_DELETED],
						row_data(info, row, desc), info->metadata, false);
	}
	else if (TRIGGER_FIRED_BY_UPDATE(event))
	{
		HeapTuple	oldrow = trigdata->tg_trigtuple;
		HeapTuple	newrow = trigdata->tg_newtuple;
		text	   *oldstream = row_stream(info, oldrow, desc);
		text	   *newstream = row_stream(info, newrow, desc);

		if (VARSIZE_ANY_EXHDR(oldstream) != VARSIZE_ANY_EXHDR(newstream) ||
			memcmp(VARDATA_ANY(oldstream), VARDATA_ANY(newstream),
				   VARSIZE_ANY_EXHDR(oldstream)) != 0)
		{
			/* a key change: end the old stream, start the new one */
			CqrsAppendEvent(oldstream, info->types[OP_DELETED],
							row_data(info, oldrow, desc),
							make_metadata(info->source, "moved_to", newstream), false);
			CqrsAppendEvent(newstream, info->types[OP_INSERTED],
							row_data(info, newrow, desc),
							make_metadata(info->source, "moved_from", oldstream), false);
		}
		else if (!rows_identical(oldrow, newrow, desc))
			CqrsAppendEvent(newstream, info->types[OP_UPDATED],
							row_data(info, newrow, desc), info->metadata, false);
	}

	SetUserIdAndSecContext(save_userid, save_sec_context);
	error_context_stack = errcallback.previous;
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(rowcxt);

	return PointerGetDatum(NULL);
}

/* ----------------------------------------------------------------
 * capture, uncapture
 * ----------------------------------------------------------------
 */

static Oid
source_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source must not be null")));
	return PG_GETARG_OID(0);
}

/*
 * Check that the current user owns relid, before locking it, so that a
 * role that may not capture a table cannot hold it locked either.
 */
static void
check_owner(Oid relid)
{
	char		relkind = get_rel_relkind(relid);

	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (!cqrs_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(relkind),
					   get_rel_name(relid));
}

/*
 * Refuse what capture cannot serve faithfully: anything but a permanent,
 * ordinary, unpartitioned user table with a primary key, outside the
 * extension.
 */
static void
check_capturable(Relation rel)
{
	const char *name = RelationGetRelationName(rel);
	Form_pg_class form = RelationGetForm(rel);

	if (form->relkind == RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture partitioned table \"%s\"", name),
				 errdetail("Change capture supports ordinary tables only.")));
	if (form->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", name),
				 errdetail("Change capture supports ordinary tables only.")));
	if (form->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture partition \"%s\"", name),
				 errdetail("Change capture supports ordinary tables only.")));
	if (IsCatalogRelation(rel) || IsSystemRelation(rel))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture system table \"%s\"", name)));
	if (form->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture temporary table \"%s\"", name),
				 errdetail("Its events would outlive it, and other sessions could not see it.")));
	if (form->relpersistence == RELPERSISTENCE_UNLOGGED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture unlogged table \"%s\"", name),
				 errdetail("A crash empties it without appending \"deleted\" events, leaving the log describing rows that are gone.")));
	if (getExtensionOfObject(RelationRelationId, RelationGetRelid(rel)) ==
		get_extension_oid("pg_cqrs", true) ||
		RelationGetNamespace(rel) == get_namespace_oid("cqrs", true))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture table \"%s\"", name),
				 errdetail("It belongs to the pg_cqrs extension.")));
	if (!OidIsValid(CqrsRelationGetPrimaryKeyIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key", name),
				 errdetail("Change capture names each row's stream after its primary key."),
				 errhint("Add a primary key to the table.")));
}

/*
 * The events are appended as the table's owner: that role must be able to
 * append.  Checked here for a clear message; the append checks again.
 */
static void
check_owner_may_append(Relation rel)
{
	Oid			owner = rel->rd_rel->relowner;
	Oid			events = CqrsEventLog()->events;

	if (cqrs_namespace_aclcheck(get_rel_namespace(events), owner, ACL_USAGE) != ACLCHECK_OK ||
		pg_class_aclcheck(events, owner, ACL_INSERT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("owner of table \"%s\" cannot append events",
						RelationGetRelationName(rel)),
				 errdetail("Captured changes are appended with the rights of the table's owner, role \"%s\".",
						   GetUserNameFromId(owner, false)),
				 errhint("Grant USAGE ON SCHEMA cqrs and INSERT ON cqrs.events to that role.")));
}

/*
 * The category: the given one, or the table's name.  It must be non-empty
 * and free of '-', or cqrs.category() would not find it in the stream
 * names again.
 */
static char *
check_category(FunctionCallInfo fcinfo, Relation rel)
{
	char	   *category;
	bool		given = !PG_ARGISNULL(1);

	category = given ? text_to_cstring(PG_GETARG_TEXT_PP(1))
		: pstrdup(RelationGetRelationName(rel));
	if (category[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category must not be empty")));
	if (strchr(category, '-') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category \"%s\" contains \"-\"", category),
				 errdetail("A stream's category is its name up to the first \"-\"."),
				 given ? 0 : errhint("Pass a category without \"-\" to cqrs.capture().")));
	return category;
}

static void
spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
}

static void
spi_execute(const char *sql)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "pg_cqrs: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * cqrs.capture(source regclass, category text DEFAULT NULL) RETURNS void
 *
 * Start capturing the changes of table source into streams of category
 * (the table's name by default).  The caller must own the table.  Takes
 * ShareRowExclusiveLock on it, as CREATE TRIGGER does, so that every write
 * committed after capture() commits is captured and none before.  Rows
 * already in the table get no events.
 */
Datum
cqrs_capture(PG_FUNCTION_ARGS)
{
	Oid			relid = source_arg(fcinfo);
	Relation	rel;
	char	   *category;
	char	   *captured_category;
	char	   *qualified;
	Oid			other;
	Oid			argtypes[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3];

	check_owner(relid);
	rel = relation_open(relid, ShareRowExclusiveLock);
	check_capturable(rel);
	category = check_category(fcinfo, rel);

	if (capture_lookup(relid, &captured_category, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already captured", RelationGetRelationName(rel)),
				 errdetail("Its changes go to category \"%s\".", captured_category)));
	other = category_owner(category);
	if (OidIsValid(other))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("category \"%s\" is already captured from table \"%s\"",
						category, get_rel_name(other)),
				 errdetail("Each captured table needs a category of its own, or their rows' streams would mix."),
				 errhint("Pass another category to cqrs.capture().")));
	check_owner_may_append(rel);

	qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										   RelationGetRelationName(rel));
	spi_connect();

	/* as the caller, who owns the table: CREATE TRIGGER checks that again */
	spi_execute(psprintf("CREATE TRIGGER " CAPTURE_ROW_TRIGGER
						 " AFTER INSERT OR UPDATE OR DELETE ON %s"
						 " FOR EACH ROW EXECUTE FUNCTION cqrs.capture_trigger()",
						 qualified));
	spi_execute(psprintf("CREATE TRIGGER " CAPTURE_TRUNCATE_TRIGGER
						 " BEFORE TRUNCATE ON %s"
						 " FOR EACH STATEMENT EXECUTE FUNCTION cqrs.capture_trigger()",
						 qualified));

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(category);
	values[2] = CStringGetTextDatum(RelationGetRelationName(rel));
	catalog_execute("INSERT INTO cqrs.captures (source, category, type_prefix)"
					" VALUES ($1::pg_catalog.regclass, $2, $3)",
					3, argtypes, values, SPI_OK_INSERT);
	SPI_finish();

	relation_close(rel, NoLock);
	PG_RETURN_VOID();
}

/*
 * cqrs.uncapture(source regclass) RETURNS void
 *
 * Stop capturing: drop the triggers and the catalog row.  The events
 * already appended stay in the log.  Takes AccessExclusiveLock on the
 * table, which dropping its triggers needs anyway.
 */
Datum
cqrs_uncapture(PG_FUNCTION_ARGS)
{
	Oid			relid = source_arg(fcinfo);
	Relation	rel;
	char	   *qualified;
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1];

	check_owner(relid);
	rel = relation_open(relid, AccessExclusiveLock);
	if (!capture_lookup(relid, NULL, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not captured", RelationGetRelationName(rel))));

	qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										   RelationGetRelationName(rel));
	spi_connect();
	/* either may have been dropped by hand; that is what we want anyway */
	if (OidIsValid(get_trigger_oid(relid, CAPTURE_ROW_TRIGGER, true)))
		spi_execute(psprintf("DROP TRIGGER " CAPTURE_ROW_TRIGGER " ON %s", qualified));
	if (OidIsValid(get_trigger_oid(relid, CAPTURE_TRUNCATE_TRIGGER, true)))
		spi_execute(psprintf("DROP TRIGGER " CAPTURE_TRUNCATE_TRIGGER " ON %s", qualified));
	/* the triggers changing invalidates the table's relcache entry, and so our cache */
	values[0] = ObjectIdGetDatum(relid);
	catalog_execute("DELETE FROM cqrs.captures"
					" WHERE source OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
					1, argtypes, values, SPI_OK_DELETE);
	SPI_finish();

	relation_close(rel, NoLock);
	PG_RETURN_VOID();
}

/*
 * cqrs.capture_dropped() RETURNS event_trigger
 *
 * ON sql_drop: forget the captures of dropped tables, so that the catalog
 * never names a table that is gone (and an OID reused later is not taken
 * for a captured table).  Runs for every DROP in the database, so it first
 * checks, without SPI, that something is captured at all.
 */
Datum
cqrs_capture_dropped(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	captures;
	SysScanDesc scan;
	Snapshot	snapshot;
	bool		empty;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.capture_dropped() must be called as an event trigger")));

	/* DROP EXTENSION pg_cqrs: the catalog itself may be gone */
	relid = captures_relid();
	if (!OidIsValid(relid))
		PG_RETURN_VOID();

	captures = table_open(relid, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(captures, InvalidOid, false, snapshot, 0, NULL);
	empty = !HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(captures, AccessShareLock);
	if (empty)
		PG_RETURN_VOID();

	spi_connect();
	catalog_execute("DELETE FROM cqrs.captures c"
					" USING pg_catalog.pg_event_trigger_dropped_objects() d"
					" WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
					"   AND d.objsubid OPERATOR(pg_catalog.=) 0"
					"   AND c.source::pg_catalog.oid OPERATOR(pg_catalog.=) d.objid",
					0, NULL, NULL, SPI_OK_DELETE);
	SPI_finish();
	PG_RETURN_VOID();
}
