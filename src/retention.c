/*-------------------------------------------------------------------------
 *
 * retention.c
 *		Retention rules per category: cqrs.set_retention, drop_retention,
 *		apply_retention, and the worker's background passes.
 *
 * A rule (a row of cqrs.retention_rules) says how much of each stream of a
 * category the log keeps: max_count keeps the last N events of each stream
 * (KurrentDB's $maxCount), max_age removes events recorded longer ago than
 * that ($maxAge); with both, an event goes when either says so.  What a
 * pass never removes, whatever the rule says:
 *
 *	- a stream's head (its highest version): appends number the next event
 *	  from it (see the shared invariants in README, "Long-lived logs"), so
 *	  every statement that deletes re-checks that a higher version of the
 *	  same stream exists;
 *	- anything above the bound: the safe position (horizon.c), so that no
 *	  read_all consumer loses an event that was still to come below it,
 *	  and the lowest checkpoint of the deferred projections subscribed to
 *	  the category (categories NULL or listing it; running, paused or
 *	  failed alike).  We hold retention back for them rather than let a
 *	  projection miss events it has not applied yet: a paused or failed
 *	  projection stops retention of its categories until it is resumed,
 *	  skipped past or dropped, which the README says.  Sync projections
 *	  apply in the appending transaction and never hold anything back.
 *
 * Finding the events without scanning the log on every pass.  A rule has
 * two cursors, positions up to which its work is done; both only move
 * forward, within the bound, and are stored with the rule in the same
 * transaction as the batch's DELETE, so a pass that stops (crash, error,
 * max_events) resumes where it stopped:
 *
 *	scan_position	every event of the category up to here has been looked
 *					at once.  An event y looked at makes at most two older
 *					events of its stream removable: version y - max_count
 *					(it just fell out of the last N) and version y - 1 if
 *					that is older than max_age (y superseded the old head).
 *					Over the whole scan every version at or below head - N
 *					is met this way, so the count rule needs nothing else.
 *	age_position	(max_age only) every event up to here was older than
 *					max_age when passed; the age scan stops at the first
 *					younger one, since an event only gets older.  Each
 *					event it passes is removed unless it is its stream's
 *					head then; a head that is later superseded is removed
 *					by the scan_position scan of its successor (above), or
 *					by this scan if it was still young then.
 *
 * Both rely on position order being about time order (recorded_at is the
 * appending transaction's start): an event recorded out of order only
 * waits a little longer.  Changing a rule restarts both cursors at 0, so a
 * stricter rule reaches events the older one let pass.  The scans filter
 * on cqrs.category(stream), so a (category(stream), position) index is
 * used where one exists; without it the scan walks the position index from
 * the cursor, and each event of the log is looked at once per rule.
 *
 * Locking.  A batch locks its rule's row (FOR UPDATE; the worker SKIP
 * LOCKED) so that two passes of one rule take turns, and deletes rows: row
 * locks only.  Readers are never blocked, appends never wait (they insert
 * and read the head, which is never deleted).  A row deleted by a
 * concurrent operation (helper C's delete_stream) is simply skipped by the
 * DELETE under READ COMMITTED rules.
 *
 * Rights.  Rules are standing removals: setting, dropping and applying
 * them needs DELETE on cqrs.events (and SELECT, which any DELETE with a
 * WHERE clause needs), checked before anything is looked up.  The scans
 * and the DELETE run as the caller, with search_path = pg_catalog,
 * pg_temp and every name qualified; the rule's row and the audit trail are
 * written as the catalog's owner.  With row-level security in force for
 * the caller, all three refuse (see check_may_remove).  The worker runs its
 * passes as the log's owner: rules are the installation's policy, and
 * only a role that may DELETE from the log can set one.  Each batch that
 * removes something writes one audit row (operation 'retention', or
 * 'archive' for an archive rule).
 *
 * Archive rules (0.8.0).  A rule with archive = true moves the events its
 * batch chose into cqrs.events_archive instead of deleting them, under
 * the same head condition, in one statement (archive.c); everything above
 * — scans, bound, locking, cursors — is the same, and changing only the
 * flag keeps the rule's place.
 *
 * Size.  The two scans, the batch that runs them under the rule's row
 * lock, the three SQL functions and the worker's turn share the rule's
 * struct and its locking; split, they would export those internals to
 * each other.  Most of the length is these comments.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/retention.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_set_retention);
PG_FUNCTION_INFO_V1(cqrs_drop_retention);
PG_FUNCTION_INFO_V1(cqrs_apply_retention);

/* One rule, as a batch reads it (its row locked). */
typedef struct RetentionRule
{
	const char *category;
	bool		has_age;
	Interval	max_age;
	bool		has_count;
	int64		max_count;
	int64		scan_position;
	int64		age_position;
	bool		archive;		/* move to cqrs.events_archive (archive.c) */
} RetentionRule;

/* Whether this installation has cqrs.retention_rules (0.7.0 and up). */
static Oid
rules_relid(void)
{
	Oid			nspid = get_namespace_oid("cqrs", true);

	return OidIsValid(nspid) ? get_relname_relid("retention_rules", nspid) : InvalidOid;
}

/*
 * Refuse unless the current user may DELETE from the log (the documented
 * right) and SELECT from it (what the DELETE's WHERE clause needs), before
 * anything is looked up.
 */
static void
check_may_remove(void)
{
	CqrsCheckEventLogPrivilege(ACL_DELETE);
	CqrsCheckEventLogPrivilege(ACL_SELECT);

	/*
	 * A rule covers every stream of its category and the worker runs it as
	 * the log's owner; a pass moves the rule's shared positions past every
	 * row it scans.  Either would let a role whose policies limit what it
	 * may see or delete remove other rows, so row-level security in force
	 * for the caller is a refusal, not a filter.
	 */
	if (check_enable_rls(CqrsEventLog()->events, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("retention rules cannot be set or applied under row-level security on \"cqrs.events\""),
				 errdetail("A rule removes events of every stream of its category, whatever the role's policies let it see."),
				 errhint("Use a role that bypasses row-level security on the log.")));
}

/* The category argument: not NULL, not empty, without '-'. */
static text *
category_arg(FunctionCallInfo fcinfo, int argno)
{
	text	   *category;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category must not be null")));
	category = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(category) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category must not be empty")));
	CqrsCheckNameLength(category, CQRS_MAX_STREAM_LEN, "category");
	if (memchr(VARDATA_ANY(category), '-', VARSIZE_ANY_EXHDR(category)) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category \"%s\" contains \"-\"", text_to_cstring(category)),
				 errdetail("A stream's category is its name up to the first \"-\", so no stream has this category.")));
	return category;
}

/* A rule as JSON, for the audit trail. */
static void
rule_json(StringInfo buf, const RetentionRule *rule)
{
	appendStringInfoString(buf, "{\"max_age\": ");
	if (rule->has_age)
		escape_json(buf, DatumGetCString(DirectFunctionCall1(interval_out,
															 IntervalPGetDatum(&rule->max_age))));
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ", \"max_count\": ");
	if (rule->has_count)
		appendStringInfo(buf, INT64_FORMAT, rule->max_count);
	else
		appendStringInfoString(buf, "null");
	if (rule->archive)
		appendStringInfoString(buf, ", \"archive\": true");
	appendStringInfoChar(buf, '}');
}

static Jsonb *
json_to_jsonb(StringInfo buf)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data)));
}

/*
 * Read and lock a rule's row (SPI connected).  false when there is no such
 * rule or, with skip_locked, when another pass holds it.
 */
static bool
lock_rule(const char *category, bool skip_locked, RetentionRule *rule)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;
	Datum		d;

	values[0] = CStringGetTextDatum(category);

	/*
	 * The archive column came with 0.8.0; a library newer than the
	 * installed SQL reads every rule of an older installation as deleting.
	 */
	rc = CqrsCatalogExecute(psprintf("SELECT max_age, max_count, scan_position, age_position, %s"
									 " FROM cqrs.retention_rules"
									 " WHERE category OPERATOR(pg_catalog.=) $1 FOR UPDATE%s",
									 OidIsValid(CqrsArchiveRelid()) ? "archive" : "false",
									 skip_locked ? " SKIP LOCKED" : ""),
							1, argtypes, values, NULL, false);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading retention rule failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	rule->category = category;
	d = SPI_getbinval(tup, desc, 1, &isnull);
	rule->has_age = !isnull;
	if (!isnull)
		memcpy(&rule->max_age, DatumGetIntervalP(d), sizeof(Interval));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	rule->has_count = !isnull;
	rule->max_count = isnull ? 0 : DatumGetInt64(d);
	rule->scan_position = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	rule->age_position = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
	rule->archive = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	return true;
}

/*
 * The highest position this rule's batch may remove: the safe position,
 * and the lowest checkpoint of the projections applied after commit that
 * read the category: deferred ones, and sync ones catching up after an
 * online replay (apply.c), which are applied the same way until they
 * switch back (SPI connected).
 */
static int64
rule_bound(const char *category)
{
	Relation	events = CqrsOpenEventLog(AccessShareLock);
	int64		bound = CqrsSafePosition(events);
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	int			rc;

	table_close(events, NoLock);

	values[0] = CStringGetTextDatum(category);
	rc = CqrsCatalogExecute("SELECT pg_catalog.min(\"position\") FROM cqrs.projections"
							" WHERE (mode OPERATOR(pg_catalog.=) 'deferred'"
							"        OR state OPERATOR(pg_catalog.=) 'catching up')"
							" AND (categories IS NULL"
							"      OR $1 OPERATOR(pg_catalog.=) ANY (categories))",
							1, argtypes, values, NULL, true);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pg_cqrs: reading projection checkpoints failed: %s",
			 SPI_result_code_string(rc));
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			bound = Min(bound, DatumGetInt64(d));
	}
	return bound;
}

/* Prepare one statement of ours on the log, as the caller; freed by the caller. */
static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "pg_cqrs: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	return plan;
}

/* Collected positions to remove, and the scanned range, of one batch. */
typedef struct Victims
{
	int64	   *positions;
	int			n;
	int			cap;
} Victims;

static void
victims_add(Victims *v, int64 position)
{
	if (v->n == v->cap)
	{
		v->cap = Max(64, v->cap * 2);
		v->positions = v->positions ?
			repalloc(v->positions, v->cap * sizeof(int64)) :
			palloc(v->cap * sizeof(int64));
	}
	v->positions[v->n++] = position;
}

/*
 * The scan_position scan (see the file header): look at up to limit events
 * of the category after the cursor, collect the events they make
 * removable, at most budget of them, whole scanned events at a time.
 * Sets *cursor to where the scan got and returns whether it stopped short
 * of the bound.
 */
static bool
scan_new_events(const RetentionRule *rule, int64 bound, int64 limit, int64 budget,
				Snapshot snapshot, Victims *victims, int64 *cursor)
{
	static const char *sql =
		"SELECT s.\"position\", d.\"position\""
		" FROM (SELECT e.\"position\", e.stream, e.version FROM cqrs.events e"
		"       WHERE e.\"position\" OPERATOR(pg_catalog.>) $1"
		"         AND e.\"position\" OPERATOR(pg_catalog.<=) $2"
		"         AND cqrs.category(e.stream) OPERATOR(pg_catalog.=) $3"
		"       ORDER BY e.\"position\" LIMIT $4) s"
		" LEFT JOIN cqrs.events d"
		"   ON d.stream OPERATOR(pg_catalog.=) s.stream"
		"  AND d.\"position\" OPERATOR(pg_catalog.<=) $2"
		"  AND (d.version OPERATOR(pg_catalog.=) (s.version OPERATOR(pg_catalog.-) $5)"
		"       OR (d.version OPERATOR(pg_catalog.=) (s.version OPERATOR(pg_catalog.-) 1::pg_catalog.int8)"
		"           AND d.recorded_at OPERATOR(pg_catalog.<)"
		"               (pg_catalog.now() OPERATOR(pg_catalog.-) $6)))"
		" ORDER BY s.\"position\", d.\"position\"";
	Oid			argtypes[6] = {INT8OID, INT8OID, TEXTOID, INT8OID, INT8OID, INTERVALOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	SPIPlanPtr	plan = prepare(sql, 6, argtypes);
	int			rc;
	int64		scanned = 0;
	int64		group = -1;
	int			group_start = victims->n;
	bool		cut = false;

	values[0] = Int64GetDatum(rule->scan_position);
	values[1] = Int64GetDatum(bound);
	values[2] = CStringGetTextDatum(rule->category);
	values[3] = Int64GetDatum(limit);
	values[4] = Int64GetDatum(rule->max_count);
	if (!rule->has_count)
		nulls[4] = 'n';
	values[5] = IntervalPGetDatum(&rule->max_age);
	if (!rule->has_age)
		nulls[5] = 'n';

	rc = SPI_execute_snapshot(plan, values, nulls, snapshot, InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: retention scan failed: %s", SPI_result_code_string(rc));

	*cursor = rule->scan_position;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		int64		s = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		Datum		d = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);

		if (s != group)
		{
			/* the previous scanned event is done: its victims are in */
			if (group >= 0)
				*cursor = group;
			group = s;
			group_start = victims->n;
			scanned++;
		}
		if (!isnull)
		{
			/*
			 * This scanned event's victims do not all fit: leave it to the
			 * next batch, unless it is the first (a batch always gets past
			 * one event, or a budget of 1 and two victims would never move).
			 */
			if (victims->n >= budget && scanned > 1)
			{
				victims->n = group_start;
				cut = true;
				break;
			}
			victims_add(victims, DatumGetInt64(d));
		}
	}
	if (!cut && group >= 0)
		*cursor = group;
	SPI_freetuptable(SPI_tuptable);
	SPI_freeplan(plan);

	if (cut || scanned >= limit)
		return true;
	*cursor = bound;			/* every event up to the bound was looked at */
	return false;
}

/*
 * The age_position scan (see the file header): pass the events of the
 * category after the cursor that are older than max_age, up to limit of
 * them, stopping at the first younger one; collect those that are not
 * their stream's head, at most budget.  Sets *cursor; returns whether
 * the scan stopped at the limit or the budget (more to do now).
 */
static bool
scan_aged_events(const RetentionRule *rule, int64 bound, int64 limit, int64 budget,
				 Snapshot snapshot, Victims *victims, int64 *cursor)
{
	static const char *sql =
		"SELECT e.\"position\","
		"       e.recorded_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $4),"
		"       EXISTS (SELECT FROM cqrs.events h"
		"               WHERE h.stream OPERATOR(pg_catalog.=) e.stream"
		"                 AND h.version OPERATOR(pg_catalog.>) e.version)"
		" FROM cqrs.events e"
		" WHERE e.\"position\" OPERATOR(pg_catalog.>) $1"
		"   AND e.\"position\" OPERATOR(pg_catalog.<=) $2"
		"   AND cqrs.category(e.stream) OPERATOR(pg_catalog.=) $3"
		" ORDER BY e.\"position\" LIMIT $5";
	Oid			argtypes[5] = {INT8OID, INT8OID, TEXTOID, INTERVALOID, INT8OID};
	Datum		values[5];
	SPIPlanPtr	plan = prepare(sql, 5, argtypes);
	int			rc;
	bool		stopped = false;
	bool		cut = false;

	values[0] = Int64GetDatum(rule->age_position);
	values[1] = Int64GetDatum(bound);
	values[2] = CStringGetTextDatum(rule->category);
	values[3] = IntervalPGetDatum(&rule->max_age);
	values[4] = Int64GetDatum(limit);

	rc = SPI_execute_snapshot(plan, values, NULL, snapshot, InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: retention age scan failed: %s", SPI_result_code_string(rc));

	*cursor = rule->age_position;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		p = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		bool		old = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		bool		superseded = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));

		if (!old)
		{
			stopped = true;		/* younger from here on: wait for it to age */
			break;
		}
		if (superseded)
		{
			if (victims->n >= budget)
			{
				cut = true;
				break;
			}
			victims_add(victims, p);
		}
		*cursor = p;
	}
	if (!stopped && !cut && SPI_processed < (uint64) limit)
		*cursor = bound;
	SPI_freetuptable(SPI_tuptable);
	SPI_freeplan(plan);
	return cut || (!stopped && SPI_processed >= (uint64) limit);
}

/* The collected positions as an int8[]. */
static Datum
victims_array(Victims *victims)
{
	Datum	   *elems = palloc(victims->n * sizeof(Datum));

	for (int i = 0; i < victims->n; i++)
		elems[i] = Int64GetDatum(victims->positions[i]);
	return PointerGetDatum(construct_array(elems, victims->n, INT8OID,
										   sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Delete the collected positions, each only while a higher version of its
 * stream is in the log (never a head), through the log's guard.  (An
 * archive rule moves them instead: CqrsArchiveMove, same condition.)
 */
static int64
delete_victims(Datum positions, Snapshot snapshot)
{
	static const char *sql =
		"DELETE FROM cqrs.events d"
		" WHERE d.\"position\" OPERATOR(pg_catalog.=) ANY ($1)"
		"   AND EXISTS (SELECT FROM cqrs.events h"
		"               WHERE h.stream OPERATOR(pg_catalog.=) d.stream"
		"                 AND h.version OPERATOR(pg_catalog.>) d.version)";
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1] = {positions};
	SPIPlanPtr	plan = prepare(sql, 1, argtypes);
	int64		removed;

	removed = (int64) CqrsExecuteLogRewrite(plan, values, snapshot, SPI_OK_DELETE);
	SPI_freeplan(plan);
	return removed;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * One batch of one rule, in the current transaction (SPI connected, as the
 * role whose rights apply).  Looks at no more than limit events per scan
 * and removes at most budget events.  Returns the number removed; sets
 * *more when a scan stopped short of its end (another batch has work),
 * and *found to whether the rule exists (and was not locked, with
 * skip_locked).
 */
static int64
retention_batch(const char *category, bool skip_locked, int64 limit, int64 budget,
				bool *more, bool *found)
{
	RetentionRule rule;
	int64		bound;
	Snapshot	snapshot;
	Victims		victims = {0};
	int64		scan_to;
	int64		age_to;
	int64		removed;
	int			save_nestlevel;
	bool		more_new = false;
	bool		more_age = false;
	char	   *partition = NULL;

	*more = false;
	*found = lock_rule(category, skip_locked, &rule);
	if (!*found)
		return 0;

	/* the worker's own check (the SQL functions checked their caller) */
	if (check_enable_rls(CqrsEventLog()->events, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("retention rules cannot be set or applied under row-level security on \"cqrs.events\"")));

	/* the bound first; then a snapshot that shows every event below it */
	bound = rule_bound(category);
	snapshot = RegisterSnapshot(GetLatestSnapshot());

	save_nestlevel = CqrsRestrictSearchPath();
	scan_to = rule.scan_position;
	if (rule.scan_position < bound)
		more_new = scan_new_events(&rule, bound, limit, budget, snapshot, &victims, &scan_to);
	age_to = rule.age_position;
	if (rule.has_age && rule.age_position < bound && victims.n < budget)
		more_age = scan_aged_events(&rule, bound, limit, budget, snapshot, &victims, &age_to);
	else if (rule.has_age && rule.age_position < bound)
		more_age = true;

	/* the two scans may name one event twice */
	if (victims.n > 1)
	{
		int			n = 1;

		qsort(victims.positions, victims.n, sizeof(int64), cmp_int64);
		for (int i = 1; i < victims.n; i++)
			if (victims.positions[i] != victims.positions[n - 1])
				victims.positions[n++] = victims.positions[i];
		victims.n = n;
	}
	/*
	 * An archive rule needs this month's partition of the archive.  Making
	 * it takes a lock the worker does not wait for: then the batch is
	 * dropped, positions unmoved, and the next pass tries again.
	 */
	if (rule.archive && victims.n > 0)
	{
		partition = CqrsArchivePartition(skip_locked);
		if (partition == NULL)
		{
			UnregisterSnapshot(snapshot);
			CqrsRestoreSearchPath(save_nestlevel);
			return 0;
		}
	}

	/*
	 * Delete with the scans' snapshot, not the transaction's: in a
	 * REPEATABLE READ caller, the latter may not show events the scans
	 * found, which the rule's positions are about to pass.
	 */
	if (victims.n == 0)
		removed = 0;
	else if (rule.archive)
		removed = CqrsArchiveMove(victims_array(&victims), snapshot);
	else
		removed = delete_victims(victims_array(&victims), snapshot);
	UnregisterSnapshot(snapshot);
	CqrsRestoreSearchPath(save_nestlevel);

	if (removed > 0)
	{
		StringInfoData detail;

		initStringInfo(&detail);
		appendStringInfoString(&detail, "{\"rule\": ");
		rule_json(&detail, &rule);
		appendStringInfo(&detail,
						 ", \"first_position\": " INT64_FORMAT
						 ", \"last_position\": " INT64_FORMAT
						 ", \"scan_position\": [" INT64_FORMAT ", " INT64_FORMAT "]"
						 ", \"age_position\": [" INT64_FORMAT ", " INT64_FORMAT "]"
						 ", \"bound\": " INT64_FORMAT,
						 victims.positions[0], victims.positions[victims.n - 1],
						 rule.scan_position, scan_to, rule.age_position, age_to, bound);
		if (partition != NULL)
		{
			appendStringInfoString(&detail, ", \"partition\": ");
			escape_json(&detail, partition);
		}
		appendStringInfoChar(&detail, '}');
		CqrsAudit(rule.archive ? "archive" : "retention", category, removed,
				  json_to_jsonb(&detail));
	}

	if (removed > 0 || scan_to != rule.scan_position || age_to != rule.age_position)
	{
		Oid			argtypes[4] = {TEXTOID, INT8OID, INT8OID, INT8OID};
		Datum		values[4];
		int			rc;

		values[0] = CStringGetTextDatum(category);
		values[1] = Int64GetDatum(scan_to);
		values[2] = Int64GetDatum(age_to);
		values[3] = Int64GetDatum(removed);
		rc = CqrsCatalogExecute("UPDATE cqrs.retention_rules"
								" SET scan_position = $2, age_position = $3,"
								"     removed = removed OPERATOR(pg_catalog.+) $4,"
								"     last_run_at = pg_catalog.now()"
								" WHERE category OPERATOR(pg_catalog.=) $1",
								4, argtypes, values, NULL, false);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "pg_cqrs: updating retention rule failed: %s", SPI_result_code_string(rc));
	}

	*more = more_new || more_age;
	return removed;
}

/* The categories of all rules, sorted (SPI connected). */
static List *
rule_categories(MemoryContext cxt)
{
	List	   *result = NIL;
	int			rc;

	rc = CqrsCatalogExecute("SELECT category FROM cqrs.retention_rules ORDER BY category",
							0, NULL, NULL, NULL, true);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading retention rules failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		result = lappend(result, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(old);
	}
	return result;
}

/*
 * cqrs.set_retention(category text, max_age interval DEFAULT NULL,
 *					  max_count bigint DEFAULT NULL,
 *					  archive boolean DEFAULT false) RETURNS void
 *
 * Creates or replaces the category's rule.  A changed limit starts its
 * scans again from the beginning of the log (see the file header); a
 * changed archive flag alone does not (it changes where events go, not
 * which).  archive needs 0.8.0's SQL (the 0.7.0 function has three
 * arguments, so it never passes one).  Wakes
 * the launcher at commit, so that the database has a worker to run it.
 */
Datum
cqrs_set_retention(PG_FUNCTION_ARGS)
{
	text	   *category;
	RetentionRule rule = {0};
	Oid			argtypes[5] = {TEXTOID, INTERVALOID, INT8OID, NAMEOID, BOOLOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	NameData	who;
	StringInfoData detail;
	int			rc;

	check_may_remove();
	category = category_arg(fcinfo, 0);
	rule.category = text_to_cstring(category);
	rule.has_age = !PG_ARGISNULL(1);
	rule.has_count = !PG_ARGISNULL(2);
	if (PG_NARGS() > 3)
	{
		if (PG_ARGISNULL(3))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("archive must not be null")));
		rule.archive = PG_GETARG_BOOL(3);
	}
	if (!rule.has_age && !rule.has_count)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a retention rule needs max_age or max_count"),
				 errhint("Use cqrs.drop_retention() to remove a rule.")));
	if (rule.has_age)
	{
		Interval   *age = PG_GETARG_INTERVAL_P(1);
		Interval	zero = {0};

		if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(age),
											  IntervalPGetDatum(&zero))) <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_age must be positive")));
		memcpy(&rule.max_age, age, sizeof(Interval));
	}
	if (rule.has_count)
	{
		rule.max_count = PG_GETARG_INT64(2);
		if (rule.max_count < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_count must be at least 1")));
	}

	values[0] = PointerGetDatum(category);
	values[1] = rule.has_age ? IntervalPGetDatum(&rule.max_age) : (Datum) 0;
	nulls[1] = rule.has_age ? ' ' : 'n';
	values[2] = Int64GetDatum(rule.max_count);
	nulls[2] = rule.has_count ? ' ' : 'n';
	namestrcpy(&who, GetUserNameFromId(GetUserId(), false));
	values[3] = NameGetDatum(&who);
	values[4] = BoolGetDatum(rule.archive);

	CqrsSPIConnect();
	/* a changed rule rescans from the start; an unchanged one keeps its place */
	/* 0.7.0's SQL (three arguments) has no archive column to write */
	rc = CqrsCatalogExecute(psprintf("INSERT INTO cqrs.retention_rules AS r"
									 " (category, max_age, max_count, set_by%s)"
									 " VALUES ($1, $2, $3, $4%s)"
									 " ON CONFLICT (category) DO UPDATE"
									 " SET max_age = EXCLUDED.max_age, max_count = EXCLUDED.max_count,%s"
									 "     set_by = EXCLUDED.set_by, set_at = pg_catalog.now(),"
									 "     scan_position = CASE WHEN r.max_age IS NOT DISTINCT FROM EXCLUDED.max_age"
									 "                          AND r.max_count IS NOT DISTINCT FROM EXCLUDED.max_count"
									 "                     THEN r.scan_position ELSE 0 END,"
									 "     age_position = CASE WHEN r.max_age IS NOT DISTINCT FROM EXCLUDED.max_age"
									 "                          AND r.max_count IS NOT DISTINCT FROM EXCLUDED.max_count"
									 "                     THEN r.age_position ELSE 0 END",
									 PG_NARGS() > 3 ? ", archive" : "",
									 PG_NARGS() > 3 ? ", $5" : "",
									 PG_NARGS() > 3 ? " archive = EXCLUDED.archive," : ""),
							PG_NARGS() > 3 ? 5 : 4, argtypes, values, nulls, false);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: storing retention rule failed: %s", SPI_result_code_string(rc));

	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"rule\": ");
	rule_json(&detail, &rule);
	appendStringInfoChar(&detail, '}');
	CqrsAudit("set_retention", rule.category, 0, json_to_jsonb(&detail));
	SPI_finish();

	CqrsWakeLauncherAtCommit();
	PG_RETURN_VOID();
}

/*
 * cqrs.drop_retention(category text) RETURNS void
 *
 * Removes the category's rule (42704 when there is none).  Events already
 * removed stay removed.
 */
Datum
cqrs_drop_retention(PG_FUNCTION_ARGS)
{
	text	   *category;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;

	check_may_remove();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category must not be null")));
	category = PG_GETARG_TEXT_PP(0);
	values[0] = PointerGetDatum(category);

	CqrsSPIConnect();
	rc = CqrsCatalogExecute("DELETE FROM cqrs.retention_rules WHERE category OPERATOR(pg_catalog.=) $1",
							1, argtypes, values, NULL, false);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "pg_cqrs: dropping retention rule failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no retention rule for category \"%s\"", text_to_cstring(category))));
	CqrsAudit("drop_retention", text_to_cstring(category), 0, NULL);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * cqrs.apply_retention(category text DEFAULT NULL, max_events bigint
 *						DEFAULT NULL) RETURNS bigint
 *
 * Runs the rule of category (or every rule) now, in the caller's
 * transaction and as the caller, in batches of cqrs.retention_batch_size
 * events, until the rules have nothing more to remove up to the bound or
 * max_events events have been removed; returns how many were removed.
 * A batch never stops halfway through what one scanned event frees, so
 * with both limits set a call may remove one event more than max_events.
 * Waits for a batch the worker is running on the same rule.
 */
Datum
cqrs_apply_retention(PG_FUNCTION_ARGS)
{
	int64		budget = PG_INT64_MAX;
	int64		total = 0;
	List	   *categories;
	ListCell   *lc;

	check_may_remove();
	if (!PG_ARGISNULL(1))
	{
		budget = PG_GETARG_INT64(1);
		if (budget < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_events must be at least 1")));
	}
	CqrsRequireHorizon();

	CqrsSPIConnect();
	if (PG_ARGISNULL(0))
		categories = rule_categories(CurrentMemoryContext);
	else
		categories = list_make1(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	foreach(lc, categories)
	{
		const char *category = lfirst(lc);
		bool		more = true;
		bool		found;

		while (more && total < budget)
		{
			CHECK_FOR_INTERRUPTS();
			total += retention_batch(category, false, cqrs_retention_batch_size,
									 budget - total, &more, &found);
			if (!found)
			{
				if (!PG_ARGISNULL(0))
					ereport(ERROR,
							(errcode(ERRCODE_UNDEFINED_OBJECT),
							 errmsg("no retention rule for category \"%s\"", category)));
				break;			/* dropped meanwhile */
			}
		}
	}
	SPI_finish();
	PG_RETURN_INT64(total);
}

/* ----------------------------------------------------------------
 * The worker's entry point
 * ----------------------------------------------------------------
 */

/* when the next pass is due, and whether one is under way */
static TimestampTz next_pass_at = 0;
static bool pass_running = false;
static bool rules_present = false;

/* The categories with rules, in a transaction of its own; NIL on error. */
static List *
worker_rule_categories(MemoryContext cxt)
{
	List	   *volatile result = NIL;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		/* never wait for a lock of the extension's (DROP EXTENSION, say) */
		if (OidIsValid(get_extension_oid("pg_cqrs", true)) && OidIsValid(rules_relid()) &&
			ConditionalLockRelationOid(rules_relid(), AccessShareLock))
		{
			CqrsSPIConnect();
			result = rule_categories(cxt);
			SPI_finish();
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		result = NIL;
	}
	PG_END_TRY();
	return result;
}

/*
 * Take, without waiting, the locks a batch takes: the worker never waits
 * for a lock of the extension's, which DROP EXTENSION or ALTER EXTENSION
 * may hold (and would then wait for us).
 */
static bool
worker_may_lock(void)
{
	Oid			nspid;
	Oid			rels[5];
	LOCKMODE	modes[5] = {RowExclusiveLock, RowExclusiveLock, AccessShareLock, RowExclusiveLock,
	RowExclusiveLock};

	if (!OidIsValid(get_extension_oid("pg_cqrs", true)) || !OidIsValid(rules_relid()))
		return false;
	nspid = get_namespace_oid("cqrs", false);
	rels[0] = rules_relid();
	rels[1] = get_relname_relid("events", nspid);
	rels[2] = get_relname_relid("projections", nspid);
	rels[3] = get_relname_relid("lifecycle_log", nspid);
	rels[4] = CqrsArchiveRelid();	/* InvalidOid before 0.8.0: not needed */
	for (int i = 0; i < lengthof(rels); i++)
		if ((i < 4 && !OidIsValid(rels[i])) ||
			(OidIsValid(rels[i]) && !ConditionalLockRelationOid(rels[i], modes[i])))
			return false;
	return true;
}

/* One batch of one rule in a transaction of its own, as the log's owner. */
static bool
worker_batch(const char *category)
{
	volatile bool more = false;

	PG_TRY();
	{
		Relation	events;
		Oid			owner;
		Oid			save_userid;
		int			save_sec_context;
		bool		found;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		/* the extension being changed or dropped: try on another turn */
		if (worker_may_lock())
		{
			bool		batch_more;

			pgstat_report_activity(STATE_RUNNING, "pg_cqrs retention");
			events = CqrsOpenEventLog(AccessShareLock);
			owner = events->rd_rel->relowner;
			table_close(events, NoLock);
			GetUserIdAndSecContext(&save_userid, &save_sec_context);
			SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
			CqrsSPIConnect();
			(void) retention_batch(category, true, cqrs_retention_batch_size,
								   cqrs_retention_batch_size, &batch_more, &found);
			more = batch_more;
			SPI_finish();
			SetUserIdAndSecContext(save_userid, save_sec_context);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		more = false;
	}
	PG_END_TRY();
	return more;
}

/*
 * CqrsRetentionWork
 *		The worker's turn for retention: when a pass is due (every
 *		cqrs.retention_naptime; never when it is 0) or under way, run one
 *		batch of each rule,
 *		each in its own transaction.  Sets *more when some rule has more
 *		to do at once; returns whether the database has retention rules
 *		(as of the last look), so that the worker stays for them.
 *
 * Called by the worker outside any transaction; allocates in cxt, which
 * the worker resets per loop.
 */
bool
CqrsRetentionWork(MemoryContext cxt, bool *more)
{
	List	   *categories;
	ListCell   *lc;
	bool		any_more = false;

	*more = false;
	if (cqrs_retention_naptime == 0)
	{
		/* background retention is off: rules run only by apply_retention */
		pass_running = false;
		next_pass_at = 0;
		return false;
	}
	if (!pass_running && GetCurrentTimestamp() < next_pass_at)
		return rules_present;

	categories = worker_rule_categories(cxt);
	rules_present = categories != NIL;
	foreach(lc, categories)
		any_more |= worker_batch((const char *) lfirst(lc));

	pass_running = any_more;
	if (!any_more)
		next_pass_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   cqrs_retention_naptime);
	*more = any_more;
	return rules_present;
}
