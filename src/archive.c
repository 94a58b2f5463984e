/*-------------------------------------------------------------------------
 *
 * archive.c
 *		cqrs.events_archive (0.8.0, issue 13): its monthly partitions, the
 *		move of events out of the log into it, and what the lifecycle
 *		functions do to a stream's archived rows.
 *
 * An archive rule (retention.c) moves the events it selects instead of
 * deleting them: one statement deletes them from the log, through the
 * log's guard, and inserts what it deleted into the archive, so an event
 * is in exactly one of the two at every moment, and a crash leaves it
 * where it was.  Everything retention guarantees holds unchanged, since
 * the same scans choose the same events under the same bound: no head is
 * moved, so appends keep numbering versions from it; positions come from
 * the log's sequence and are never reused; nothing above the safe
 * position or a deferred projection's checkpoint moves.
 *
 * Why an archive table and not a partitioned log.  A partitioned
 * cqrs.events could drop old history by detaching a partition, but a
 * partitioned table cannot enforce UNIQUE (stream, version) or UNIQUE
 * (id) without its partition key, and every reader, the horizon, the
 * decoder (which decodes a partition's changes under the partition's own
 * relation) and the guard would have to learn about partitions.  Here the
 * log keeps its unique indexes and its readers; the price is that the
 * space moved out is reused by later appends rather than handed back to
 * the operating system (VACUUM FULL does that once, under a lock that
 * stops appends; the README gives the measured sizes).  The archive is
 * partitioned by when rows were moved, so a month of archive can be
 * detached, dumped and dropped without touching the rest.
 *
 * Whose rights.  The caller of an archive rule or of a lifecycle function
 * was checked by retention.c or lifecycle.c against cqrs.events (DELETE
 * and SELECT; row-level security must not be in force for an archive
 * rule's caller).  The statements here then run as the log's owner: the
 * archive is not writable by anyone else, and moving history into a
 * place only the owner reads takes less from the caller's reach than
 * deleting it would.  All SQL is qualified and runs with search_path =
 * pg_catalog, pg_temp.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/archive.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "pg_cqrs.h"

/* Acting as the log's owner, restricted (SPI connected). */
typedef struct LogOwnerScope
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} LogOwnerScope;

static void
log_owner_enter(LogOwnerScope *scope)
{
	Relation	events = CqrsOpenEventLog(AccessShareLock);
	Oid			owner = events->rd_rel->relowner;

	table_close(events, NoLock);
	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(owner, scope->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	scope->save_nestlevel = CqrsRestrictSearchPath();
}

static void
log_owner_leave(LogOwnerScope *scope)
{
	CqrsRestoreSearchPath(scope->save_nestlevel);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

/*
 * CqrsArchiveRelid
 *		cqrs.events_archive's OID; InvalidOid before 0.8.0.
 */
Oid
CqrsArchiveRelid(void)
{
	Oid			nspid = get_namespace_oid("cqrs", true);

	return OidIsValid(nspid) ? get_relname_relid("events_archive", nspid) : InvalidOid;
}

/*
 * This month's bounds in UTC, lo and hi, as timestamptz.  The month is
 * added to the UTC timestamp, not to the timestamptz: that would add it
 * in the session's time zone and end the month at another hour.
 */
#define MONTH_BOUNDS \
	"pg_catalog.timezone('UTC', d.m) AS lo," \
	" pg_catalog.timezone('UTC', d.m OPERATOR(pg_catalog.+) '1 month'::pg_catalog.interval) AS hi" \
	" FROM (SELECT pg_catalog.date_trunc('month', pg_catalog.timezone('UTC', pg_catalog.now())) AS m) d"

/*
 * Run a read-only query of ours with a snapshot taken now, not the
 * statement's: after waiting for the archive's lock, the partition that
 * the transaction we waited for made must be seen, even under REPEATABLE
 * READ.
 */
static void
query_latest(const char *sql, int nargs, Oid *argtypes, Datum *values)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);
	int			rc;

	if (plan == NULL)
		elog(ERROR, "pg_cqrs: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							  true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading the archive's partitions failed: %s",
			 SPI_result_code_string(rc));
	SPI_freeplan(plan);
}

/* The first row of the last SPI result, column 1, as text (NULL if none). */
static char *
first_text(void)
{
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * The partition holding this month (UTC) of archived_at, by its bounds;
 * NULL when there is none (SPI connected, as the log's owner).
 */
static char *
find_partition(Oid archive)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(archive)};

	/*
	 * Bounds are compared as pg_get_expr prints them, which is how this
	 * file wrote them (format %L of the same timestamptz values, in the
	 * same session's DateStyle and TimeZone).
	 */
	query_latest(
		"WITH m AS (SELECT " MONTH_BOUNDS ")"
		" SELECT c.relname::pg_catalog.text"
		" FROM pg_catalog.pg_inherits i"
		" JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid, m"
		" WHERE i.inhparent OPERATOR(pg_catalog.=) $1"
		" AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) OPERATOR(pg_catalog.=)"
		"     pg_catalog.format('FOR VALUES FROM (%L) TO (%L)', m.lo, m.hi)",
		1, argtypes, values);
	return first_text();
}

/*
 * Create this month's partition, named events_archive_YYYY_MM, or with a
 * suffix _2, _3, ... when a table kept after a DETACH has the name (SPI
 * connected, as the log's owner, holding ACCESS EXCLUSIVE on the archive).
 */
static char *
create_partition(void)
{
	int			rc;
	char	   *ddl;
	char	   *name;

	query_latest(
		"WITH m AS (SELECT " MONTH_BOUNDS "),"
		" n AS (SELECT 'events_archive_' OPERATOR(pg_catalog.||)"
		"              pg_catalog.to_char(pg_catalog.timezone('UTC', m.lo), 'YYYY_MM') AS base"
		"       FROM m),"
		" free AS (SELECT CASE WHEN s.k OPERATOR(pg_catalog.=) 1 THEN n.base"
		"                 ELSE n.base OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s.k::pg_catalog.text"
		"                 END AS name, s.k"
		"          FROM n, pg_catalog.generate_series(1, 1000) AS s(k)"
		"          WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c"
		"                            WHERE c.relnamespace OPERATOR(pg_catalog.=) 'cqrs'::pg_catalog.regnamespace"
		"                            AND c.relname OPERATOR(pg_catalog.=) (CASE WHEN s.k OPERATOR(pg_catalog.=) 1 THEN n.base"
		"                                ELSE n.base OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s.k::pg_catalog.text END))"
		"          ORDER BY s.k LIMIT 1)"
		" SELECT pg_catalog.format('CREATE TABLE cqrs.%I PARTITION OF cqrs.events_archive"
		"                           FOR VALUES FROM (%L) TO (%L)', free.name, m.lo, m.hi),"
		"        free.name"
		" FROM free, m", 0, NULL, NULL);
	if (SPI_processed != 1)
		elog(ERROR, "pg_cqrs: no free name for the archive's partition");
	ddl = first_text();
	name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

	rc = SPI_execute(ddl, false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "pg_cqrs: creating the archive's partition failed: %s",
			 SPI_result_code_string(rc));

	/*
	 * Its indexes: by position (reading the archive in log order) and by
	 * stream and version (what the lifecycle functions look for); per
	 * partition, not on the parent (see the 0.8.0 update script: pg_dump
	 * and partitioned indexes of an extension's table).  And a partition
	 * read directly is checked against its own privileges and policies,
	 * not the parent's: keep it as closed as the parent, whatever default
	 * privileges the owner has set for new tables.
	 */
	rc = SPI_execute(psprintf("CREATE INDEX ON cqrs.%s (\"position\");"
							  " CREATE INDEX ON cqrs.%s (stream, version);"
							  " REVOKE ALL ON cqrs.%s FROM PUBLIC;"
							  " ALTER TABLE cqrs.%s ENABLE ROW LEVEL SECURITY",
							  quote_identifier(name), quote_identifier(name),
							  quote_identifier(name), quote_identifier(name)), false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "pg_cqrs: closing the archive's partition failed: %s",
			 SPI_result_code_string(rc));
	return name;
}

/*
 * CqrsArchivePartition
 *		The name of the partition of cqrs.events_archive for rows archived
 *		by this transaction (its month of now(), UTC), made if missing.
 *		Making one takes ACCESS EXCLUSIVE on the archive, as CREATE TABLE
 *		... PARTITION OF does; with nowait, returns NULL rather than wait
 *		for it (the worker never waits for a lock someone else holds).
 *		SPI connected.
 */
char *
CqrsArchivePartition(bool nowait)
{
	Oid			archive = CqrsArchiveRelid();
	LogOwnerScope scope;
	char	   *name;

	if (!OidIsValid(archive))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cqrs.events_archive does not exist"),
				 errhint("ALTER EXTENSION pg_cqrs UPDATE to 0.8.0 or later.")));

	log_owner_enter(&scope);
	name = find_partition(archive);
	if (name == NULL)
	{
		if (nowait)
		{
			if (!ConditionalLockRelationOid(archive, AccessExclusiveLock))
			{
				log_owner_leave(&scope);
				return NULL;
			}
		}
		else
			LockRelationOid(archive, AccessExclusiveLock);
		/* someone may have made it while we waited */
		name = find_partition(archive);
		if (name == NULL)
			name = create_partition();
	}
	log_owner_leave(&scope);
	return name;
}

/*
 * CqrsArchiveMove
 *		Move the events at the given positions (an int8[]) from the log to
 *		the archive, each only while a higher version of its stream is in
 *		the log (never a head), reading with snapshot; returns how many
 *		moved.  CqrsArchivePartition must have been called in this
 *		transaction.  SPI connected.
 */
int64
CqrsArchiveMove(Datum positions, Snapshot snapshot)
{
	static const char *sql =
		"WITH moved AS ("
		"  DELETE FROM cqrs.events d"
		"  WHERE d.\"position\" OPERATOR(pg_catalog.=) ANY ($1)"
		"    AND EXISTS (SELECT FROM cqrs.events h"
		"                WHERE h.stream OPERATOR(pg_catalog.=) d.stream"
		"                  AND h.version OPERATOR(pg_catalog.>) d.version)"
		"  RETURNING d.\"position\", d.stream, d.version, d.id, d.type, d.data,"
		"            d.metadata, d.recorded_at)"
		" INSERT INTO cqrs.events_archive"
		" (\"position\", stream, version, id, type, data, metadata, recorded_at, archived_at)"
		" SELECT m.\"position\", m.stream, m.version, m.id, m.type, m.data, m.metadata,"
		"        m.recorded_at, pg_catalog.now()"
		" FROM moved m";
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1] = {positions};
	LogOwnerScope scope;
	SPIPlanPtr	plan;
	int64		moved;

	log_owner_enter(&scope);

	/*
	 * The owner is subject to the log's policies only under FORCE ROW LEVEL
	 * SECURITY; a policy could then keep the DELETE from rows the rule
	 * chose, and the move would quietly do less than it says.
	 */
	if (check_enable_rls(CqrsEventLog()->events, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("archive rules cannot run while row-level security is forced on \"cqrs.events\" for its owner")));

	plan = SPI_prepare(sql, 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "pg_cqrs: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	moved = (int64) CqrsExecuteLogRewrite(plan, values, snapshot, SPI_OK_INSERT);
	SPI_freeplan(plan);
	log_owner_leave(&scope);
	return moved;
}

/*
 * Run one of the lifecycle functions' statements on the archive, as the
 * log's owner (SPI connected; the caller checked the rights, lifecycle.c);
 * 0 before 0.8.0, which has no archive.  Returns the rows processed.
 */
static int64
archive_execute(const char *sql, int nargs, Oid *argtypes, Datum *values, int expected_rc)
{
	LogOwnerScope scope;
	int			rc;

	if (!OidIsValid(CqrsArchiveRelid()))
		return 0;
	log_owner_enter(&scope);
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, NULL, false, 0);
	if (rc != expected_rc)
		elog(ERROR, "pg_cqrs: changing the stream's archived events failed: %s",
			 SPI_result_code_string(rc));
	log_owner_leave(&scope);
	return (int64) SPI_processed;
}

/*
 * CqrsArchiveErase
 *		erase_stream's reach into the archive: overwrite data (and metadata
 *		unless kept) of the stream's archived events in [from, to] with
 *		marker, leaving system events and rows already erased alone; returns
 *		how many changed.  Nothing before 0.8.0.  SPI connected; the caller
 *		checked the rights (lifecycle.c).
 */
int64
CqrsArchiveErase(text *stream, int64 from, int64 to, Jsonb *marker, bool keep_metadata)
{
	Oid			argtypes[5] = {TEXTOID, INT8OID, INT8OID, JSONBOID, BOOLOID};
	Datum		values[5] = {PointerGetDatum(stream), Int64GetDatum(from), Int64GetDatum(to),
		JsonbPGetDatum(marker), BoolGetDatum(keep_metadata)};

	return archive_execute(
		"UPDATE cqrs.events_archive a"
		" SET data = $4,"
		" metadata = CASE WHEN $5 THEN a.metadata ELSE $4 END"
		" WHERE a.stream OPERATOR(pg_catalog.=) $1"
		" AND a.version OPERATOR(pg_catalog.>=) $2"
		" AND a.version OPERATOR(pg_catalog.<=) $3"
		" AND NOT pg_catalog.starts_with(a.type, '$')"
		" AND NOT (a.data OPERATOR(pg_catalog.=) $4"
		"  AND ($5 OR a.metadata OPERATOR(pg_catalog.=) $4))",
		5, argtypes, values, SPI_OK_UPDATE);
}

/*
 * CqrsArchiveDelete
 *		delete_stream (hard) and truncate_stream's reach into the archive:
 *		delete the stream's archived events below before_version; returns
 *		how many went.  As CqrsArchiveErase.
 */
int64
CqrsArchiveDelete(text *stream, int64 before_version)
{
	Oid			argtypes[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {PointerGetDatum(stream), Int64GetDatum(before_version)};

	return archive_execute(
		"DELETE FROM cqrs.events_archive a"
		" WHERE a.stream OPERATOR(pg_catalog.=) $1"
		" AND a.version OPERATOR(pg_catalog.<) $2",
		2, argtypes, values, SPI_OK_DELETE);
}

/*
 * CqrsArchiveRedact
 *		redact_stream's reach into the archive: cqrs.redact() the data of
 *		the stream's archived events in [from, to] (system events left
 *		alone); returns how many changed.  As CqrsArchiveErase.
 */
int64
CqrsArchiveRedact(text *stream, int64 from, int64 to, Jsonb *paths)
{
	Oid			argtypes[4] = {TEXTOID, INT8OID, INT8OID, JSONBOID};
	Datum		values[4] = {PointerGetDatum(stream), Int64GetDatum(from), Int64GetDatum(to),
		JsonbPGetDatum(paths)};

	return archive_execute(
		"UPDATE cqrs.events_archive a"
		" SET data = cqrs.redact(a.data, $4)"
		" WHERE a.stream OPERATOR(pg_catalog.=) $1"
		" AND a.version OPERATOR(pg_catalog.>=) $2"
		" AND a.version OPERATOR(pg_catalog.<=) $3"
		" AND NOT pg_catalog.starts_with(a.type, '$')"
		" AND cqrs.redact(a.data, $4) OPERATOR(pg_catalog.<>) a.data",
		4, argtypes, values, SPI_OK_UPDATE);
}
