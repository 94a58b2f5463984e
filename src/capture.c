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
 * function trusts only the catalog and its own trigger: it refuses to run
 * for a table cqrs.captures does not list, and on a captured table for any
 * trigger but the one capture() created (named cqrs_capture, with exactly
 * capture()'s definition; capture_trigger.c explains why by name and
 * definition rather than by OID).  So a role with the TRIGGER privilege on
 * a captured table cannot make the owner append twice, and EXECUTE on the
 * function can stay granted to PUBLIC (pg_restore and capture() create the
 * triggers with the caller's rights).  Our own statements run with
 * search_path = pg_catalog, pg_temp and are fully qualified.
 *
 * Dump and restore.  The triggers are ordinary triggers on the user's
 * table: pg_dump dumps them with it and pg_restore creates them after the
 * table's data is loaded, so restored rows append nothing.  cqrs.captures
 * is dumped with the extension (pg_extension_config_dump).  DROP TABLE
 * removes the catalog row through an sql_drop event trigger.
 *
 * The trigger and its per-table cache are in capture_trigger.c; this file
 * holds the catalog and the SQL functions that administer it.
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
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_capture);
PG_FUNCTION_INFO_V1(cqrs_uncapture);
PG_FUNCTION_INFO_V1(cqrs_capture_dropped);

/* Attribute numbers of cqrs.captures; the install script fixes the order. */
#define Anum_captures_source		1
#define Anum_captures_category		2
#define Anum_captures_type_prefix	3

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
bool
CqrsCaptureLookup(Oid relid, char **category, char **type_prefix)
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

/*
 * Connect to SPI with search_path = pg_catalog, pg_temp, in a GUC nest
 * level of its own that spi_finish() pops: our statements are fully
 * qualified anyway, and nothing the caller put on its search_path can be
 * found by them.  An error pops the level with the (sub)transaction.
 */
static int
spi_connect(void)
{
	int			nestlevel = CqrsRestrictSearchPath();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
	return nestlevel;
}

static void
spi_finish(int nestlevel)
{
	SPI_finish();
	CqrsRestoreSearchPath(nestlevel);
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
	int			nestlevel;
	Oid			argtypes[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3];

	check_owner(relid);
	rel = relation_open(relid, ShareRowExclusiveLock);
	check_capturable(rel);
	category = check_category(fcinfo, rel);

	if (CqrsCaptureLookup(relid, &captured_category, NULL))
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
	nestlevel = spi_connect();

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
	spi_finish(nestlevel);

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
	int			nestlevel;
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1];

	check_owner(relid);
	rel = relation_open(relid, AccessExclusiveLock);
	if (!CqrsCaptureLookup(relid, NULL, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not captured", RelationGetRelationName(rel))));

	qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										   RelationGetRelationName(rel));
	nestlevel = spi_connect();
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
	spi_finish(nestlevel);

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
	int			nestlevel;

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

	nestlevel = spi_connect();
	catalog_execute("DELETE FROM cqrs.captures c"
					" USING pg_catalog.pg_event_trigger_dropped_objects() d"
					" WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
					"   AND d.objsubid OPERATOR(pg_catalog.=) 0"
					"   AND c.source::pg_catalog.oid OPERATOR(pg_catalog.=) d.objid",
					0, NULL, NULL, SPI_OK_DELETE);
	spi_finish(nestlevel);
	PG_RETURN_VOID();
}
