/*-------------------------------------------------------------------------
 *
 * capture_trigger.c
 *		The change-capture trigger: a captured table's row changes appended
 *		as events, in the writing transaction.
 *
 * cqrs.capture_trigger() runs AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW
 * and BEFORE TRUNCATE on every table cqrs.capture() registered (capture.c,
 * whose header fixes the events' format and the privilege rules).  It
 * appends through CqrsAppendEvent (append.c), as the table's owner, and
 * keeps per table what it needs in a cache that relcache invalidations
 * clear.  It calls down into capture.c (the catalog) and append.c.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/capture_trigger.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
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
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_capture_trigger);

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

/*
 * Is this the row trigger cqrs.capture() creates: its name, and exactly its
 * definition (AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, no column
 * list, no WHEN, no arguments, not a constraint trigger, no transition
 * tables)?
 *
 * Trigger names are unique per table and only the table's owner can drop
 * or rename a trigger, so while capture()'s trigger exists no other can
 * pass; a role that may only create triggers (the TRIGGER privilege) can
 * add cqrs.capture_trigger() under another name, and that trigger refuses
 * to run.  Should the owner drop cqrs_capture by hand, a trigger recreated
 * under that name passes only if it does exactly what capture()'s did.  We
 * check the definition rather than an OID recorded by capture() because
 * pg_dump and pg_restore recreate the trigger under a new OID, with no
 * moment at which the restored trigger could be told from one made by
 * somebody else.  tgenabled is not checked: only the owner can change it.
 */
static bool
is_capture_row_trigger(const Trigger *trigger)
{
	int16		type = trigger->tgtype;

	return strcmp(trigger->tgname, CAPTURE_ROW_TRIGGER) == 0 &&
		TRIGGER_FOR_ROW(type) && TRIGGER_FOR_AFTER(type) &&
		TRIGGER_FOR_INSERT(type) && TRIGGER_FOR_UPDATE(type) &&
		TRIGGER_FOR_DELETE(type) && !TRIGGER_FOR_TRUNCATE(type) &&
		!trigger->tgisinternal &&
		!OidIsValid(trigger->tgconstraint) &&
		!trigger->tgdeferrable &&
		trigger->tgnargs == 0 &&
		trigger->tgnattr == 0 &&
		trigger->tgqual == NULL &&
		trigger->tgoldtable == NULL &&
		trigger->tgnewtable == NULL;
}

/* Error context while a row change is captured. */
typedef struct CaptureErrorContext
{
	const char *source;
} CaptureErrorContext;

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

	if (!CqrsCaptureLookup(RelationGetRelid(rel), &category, &type_prefix))
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
	if (!is_capture_row_trigger(trigdata->tg_trigger))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" is not the capture trigger of the table",
						trigdata->tg_trigger->tgname, RelationGetRelationName(rel)),
				 errdetail("Row changes are captured only by the trigger \"%s\" that cqrs.capture() created.", CAPTURE_ROW_TRIGGER),
				 errhint("Drop trigger \"%s\".", trigdata->tg_trigger->tgname)));
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
						row_data(info, row, desc), info->metadata);
	}
	else if (TRIGGER_FIRED_BY_DELETE(event))
	{
		HeapTuple	row = trigdata->tg_trigtuple;

		CqrsAppendEvent(row_stream(info, row, desc), info->types[OP_DELETED],
						row_data(info, row, desc), info->metadata);
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
							make_metadata(info->source, "moved_to", newstream));
			CqrsAppendEvent(newstream, info->types[OP_INSERTED],
							row_data(info, newrow, desc),
							make_metadata(info->source, "moved_from", oldstream));
		}
		else if (!rows_identical(oldrow, newrow, desc))
			CqrsAppendEvent(newstream, info->types[OP_UPDATED],
							row_data(info, newrow, desc), info->metadata);
	}

	SetUserIdAndSecContext(save_userid, save_sec_context);
	error_context_stack = errcallback.previous;
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(rowcxt);

	return PointerGetDatum(NULL);
}

