/*-------------------------------------------------------------------------
 *
 * eventlog.c
 *		Access to the cqrs.events relation: its OIDs, stream locks and probes.
 *
 * The hot paths (append, read) reach the log through direct index scans
 * rather than SQL: finding a stream's head, an event by id, or the highest
 * position is one B-tree descent each.
 *
 * The OIDs of the log, its indexes and its sequence are cached per backend
 * and forgotten on any relcache invalidation of the log, so DROP EXTENSION
 * followed by CREATE EXTENSION in another session is noticed.
 *
 * Stream locks.  Appends to one stream serialise; appends to different
 * streams never wait on each other; and a transaction may append to any
 * number of streams without holding anything per stream until it ends (the
 * shared lock table holds some thousands of entries for the whole cluster:
 * one entry per stream until commit filled it, and then every other
 * session of the cluster failed with "out of shared memory").  The design:
 *
 *	 - A *short* lock on a 64-bit hash of the stream name, taken in the
 *	   advisory lock space with a lock class of our own (it never collides
 *	   with applications' pg_advisory_lock keys), covers only the stretch
 *	   from reading the stream's head to the new rows being in the
 *	   (stream, version) index, and is then released (CqrsUnlockStream),
 *	   long before commit.
 *	 - The head is read with a dirty snapshot, which also shows rows of
 *	   transactions still in progress.  If the head row belongs to another
 *	   transaction that has not ended, the appender releases its short locks,
 *	   waits for that transaction (XactLockTableWait, as a unique-index
 *	   check does: the deadlock detector sees the wait) and starts over.
 *
 * Why this serialises a stream exactly as a lock held to commit did.  Let
 * A append version v to stream S and B append to S after it.  A's row is
 * in the index before A releases the short lock, and B reads the head only
 * while holding it, so B sees A's row: while A is in progress B waits for
 * A; once A has committed B sees version v and appends v + 1; if A rolled
 * back, B sees the head below it.  So B never appends on a head that is
 * not final, and two appenders never pick the same version: the
 * (stream, version) index never has to reject one (no spurious failures
 * under expected_version => NULL), and expected_version is checked against
 * the final head.  Rows of our own transaction, including ones of
 * subtransactions still open, are our head; rows of a subtransaction that
 * rolled back are invisible.  Appends to different streams take different
 * short locks, and wait only for a hash collision (2^-64), never for a
 * transaction.
 *
 * Cost: one lock table entry at a time per appender (more, briefly, for a
 * batch of caller-given ids or a bulk import's batch), acquired and
 * released per append; the dirty index probe replaces the fresh snapshot an
 * append used to take after its lock.  Deadlocks are the same as before: a
 * transaction that appended to S and waits for one that waits for S.
 *
 * Privileges.  The SQL entry points act as the caller and check what
 * PostgreSQL would check for the equivalent plain SQL, first thing, before
 * they look anything up: appending needs INSERT on cqrs.events, reading
 * needs SELECT (CqrsCheckEventLogPrivilege).  The check is one syscache
 * lookup, cheap enough for every append.
 *
 * Internal SQL.  The statements the log's functions run through SPI are
 * fully qualified (schemas, OPERATOR(pg_catalog.x), pg_catalog functions)
 * and run with search_path = pg_catalog, pg_temp (CqrsRestrictSearchPath),
 * so no object another role created can stand in for one they name.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/eventlog.c
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
#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "pg_cqrs.h"

/* field4 of our advisory lock tags; pg_advisory_lock uses 1 and 2 */
#define CQRS_LOCKTAG_STREAM		0x4351
#define CQRS_LOCKTAG_EVENT_ID	0x4352
#define CQRS_STREAM_HASH_SEED	UINT64CONST(0x70675f63717273)	/* "pg_cqrs" */

static CqrsEventLogOids eventlog_oids;
static bool eventlog_oids_valid = false;
static bool eventlog_callback_registered = false;

static void
eventlog_relcache_callback(Datum arg, Oid relid)
{
	/*
	 * While a table of a later version is missing, any relation may be it
	 * being created by ALTER EXTENSION UPDATE: look again.
	 */
	if (!OidIsValid(relid) ||
		!OidIsValid(eventlog_oids.projection_digests) ||
		relid == eventlog_oids.events ||
		relid == eventlog_oids.position_idx ||
		relid == eventlog_oids.stream_version_idx ||
		relid == eventlog_oids.id_idx ||
		relid == eventlog_oids.position_seq ||
		relid == eventlog_oids.projections ||
		relid == eventlog_oids.skipped_events ||
		relid == eventlog_oids.projection_digests ||
		relid == eventlog_oids.category_position_idx ||
		relid == eventlog_oids.type_position_idx)
		eventlog_oids_valid = false;
}

static Oid
eventlog_relid(const char *relname, Oid nspid)
{
	Oid			relid = get_relname_relid(relname, nspid);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"cqrs.%s\" does not exist", relname),
				 errhint("The pg_cqrs extension may be damaged: reinstall it.")));
	return relid;
}

/*
 * CqrsEventLog
 *		The OIDs of the log's relations, looked up by name when not cached.
 */
const CqrsEventLogOids *
CqrsEventLog(void)
{
	if (!eventlog_oids_valid)
	{
		Oid			nspid;

		if (!eventlog_callback_registered)
		{
			CacheRegisterRelcacheCallback(eventlog_relcache_callback, (Datum) 0);
			eventlog_callback_registered = true;
		}

		nspid = get_namespace_oid("cqrs", true);
		if (!OidIsValid(nspid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_SCHEMA),
					 errmsg("schema \"cqrs\" does not exist"),
					 errhint("Run CREATE EXTENSION pg_cqrs in this database.")));

		eventlog_oids.events = eventlog_relid("events", nspid);
		eventlog_oids.position_idx = eventlog_relid("events_pkey", nspid);
		eventlog_oids.stream_version_idx = eventlog_relid("events_stream_version_key", nspid);
		eventlog_oids.id_idx = eventlog_relid("events_id_key", nspid);
		eventlog_oids.position_seq = eventlog_relid("events_position_seq", nspid);
		/* absent until the extension is updated to 0.2.0 */
		eventlog_oids.projections = get_relname_relid("projections", nspid);
		eventlog_oids.skipped_events = get_relname_relid("skipped_events", nspid);
		eventlog_oids.projection_digests = get_relname_relid("projection_digests", nspid);
		eventlog_oids.forbid_direct_insert =
			LookupFuncName(list_make2(makeString("cqrs"), makeString("forbid_direct_insert")),
						   0, NULL, true);
		/* absent before 0.7.0, or dropped (filterscan.c falls back) */
		eventlog_oids.category_position_idx =
			get_relname_relid("events_category_position_idx", nspid);
		eventlog_oids.type_position_idx = get_relname_relid("events_type_position_idx", nspid);
		eventlog_oids_valid = true;
	}
	return &eventlog_oids;
}

/*
 * CqrsDigestsInstalled
 *		Whether the extension's installed version keeps digests: the
 *		library may be newer than the SQL objects until ALTER EXTENSION.
 */
bool
CqrsDigestsInstalled(void)
{
	return OidIsValid(CqrsEventLog()->projection_digests);
}

/*
 * CqrsOpenEventLog
 *		Open and lock cqrs.events; the cached OIDs are valid while it is held.
 *
 * Locking the relation processes pending invalidations, which may tell us
 * that the OIDs we just used are stale (the extension was re-created by
 * another session); then we look them up again and retry.
 */
Relation
CqrsOpenEventLog(LOCKMODE lockmode)
{
	for (;;)
	{
		Oid			relid = CqrsEventLog()->events;
		Relation	rel = try_table_open(relid, lockmode);

		if (rel != NULL && eventlog_oids_valid && relid == eventlog_oids.events)
		{
			if (RelationGetDescr(rel)->natts < Natts_events)
				elog(ERROR, "cqrs.events has %d columns, expected at least %d",
					 RelationGetDescr(rel)->natts, Natts_events);
			return rel;
		}
		if (rel != NULL)
			table_close(rel, lockmode);
		eventlog_oids_valid = false;
	}
}

/*
 * CqrsCheckEventLogPrivilege
 *		Raise "permission denied for table events" (42501) unless the current
 *		user may do what mode says (ACL_INSERT to append, ACL_SELECT to read)
 *		on cqrs.events, as a plain INSERT or SELECT * would require: the
 *		right on the table, or on every one of its columns.
 *
 * Called before any lock, lookup or nextval, so a refused caller learns
 * nothing and takes nothing.  Takes no lock itself: a stale cached OID
 * (the extension was re-created by another session) shows as a missing
 * relation, and then the OIDs are looked up again.
 */
void
CqrsCheckEventLogPrivilege(AclMode mode)
{
	Oid			userid = GetUserId();

	for (int attempt = 0;; attempt++)
	{
		Oid			relid = CqrsEventLog()->events;
		bool		missing = false;
		AclResult	result = pg_class_aclcheck_ext(relid, userid, mode, &missing);

		if (missing)
		{
			if (attempt > 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_TABLE),
						 errmsg("relation \"cqrs.events\" does not exist")));
			eventlog_oids_valid = false;
			continue;
		}
		if (result == ACLCHECK_OK)
			return;
		/* the slow path: column privileges, only for the refused */
		if (pg_attribute_aclcheck_all(relid, userid, mode, ACLMASK_ALL) == ACLCHECK_OK)
			return;
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, get_rel_name(relid));
	}
}

/*
 * CqrsTrySubtransaction
 *		Run fn(arg) in an internal subtransaction.  On success the
 *		subtransaction is released (its writes and locks become the
 *		caller's) and NULL is returned; on an error it is rolled back and
 *		the error, copied into the caller's memory context, is returned
 *		instead of raised: the caller decides whether to record it (a
 *		failed projection), warn, or raise it again (ReThrowError).
 */
ErrorData *
CqrsTrySubtransaction(void (*fn) (void *arg), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_END_TRY();
	return edata;
}

/*
 * CqrsPrepareKept
 *		Prepare a statement on the log and keep its plan for the life of
 *		the backend (appends and the readers' row-level security path).
 *		Called SPI-connected; an error if it does not prepare.
 */
SPIPlanPtr
CqrsPrepareKept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "pg_cqrs: SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "pg_cqrs: SPI_keepplan failed");
	return plan;
}

static void
stream_locktag(LOCKTAG *tag, const char *stream, int len)
{
	uint64		h = hash_bytes_extended((const unsigned char *) stream, len,
										CQRS_STREAM_HASH_SEED);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 CQRS_LOCKTAG_STREAM);
}

static void
event_id_locktag(LOCKTAG *tag, const pg_uuid_t *id)
{
	uint64		h = hash_bytes_extended(id->data, UUID_LEN, CQRS_STREAM_HASH_SEED);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 CQRS_LOCKTAG_EVENT_ID);
}

/*
 * CqrsLockStream
 *		Take the stream's short append lock (see the file header); release
 *		it with CqrsUnlockStream once the new rows are inserted.  An error
 *		in between releases it with the (sub)transaction.
 */
void
CqrsLockStream(const char *stream, int len)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream, len);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

void
CqrsUnlockStream(const char *stream, int len)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream, len);
	LockRelease(&tag, ExclusiveLock, false);
}

/*
 * CqrsLockEventId
 *		Take the short lock on a caller-given event id.
 *
 * Two transactions appending the same id to different streams would
 * otherwise both find it unrecorded, and the second would only learn of the
 * first from the unique index, with a generic message.  Holding this lock
 * from the lookup until its row is inserted, the second finds the first's
 * row (in progress: it waits for it), then names its stream.
 */
void
CqrsLockEventId(const pg_uuid_t *id)
{
	LOCKTAG		tag;

	event_id_locktag(&tag, id);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

void
CqrsUnlockEventId(const pg_uuid_t *id)
{
	LOCKTAG		tag;

	event_id_locktag(&tag, id);
	LockRelease(&tag, ExclusiveLock, false);
}

/*
 * One-row probe of an index of cqrs.events.  Returns whether a tuple was
 * found, leaving it in slot.  The index lock is kept until end of
 * transaction, as usual.
 */
static bool
eventlog_probe(Relation events, Oid indexoid, Snapshot snapshot,
			   ScanKey key, int nkeys, ScanDirection dir,
			   TupleTableSlot *slot)
{
	Relation	index = index_open(indexoid, AccessShareLock);
	IndexScanDesc scan;
	bool		found;

	if (nkeys > 0)
		key->sk_collation = index->rd_indcollation[key->sk_attno - 1];

	scan = cqrs_index_beginscan(events, index, snapshot, nkeys);
	index_rescan(scan, key, nkeys, NULL, 0);
	found = index_getnext_slot(scan, dir, slot);
	index_endscan(scan);
	index_close(index, NoLock);

	return found;
}

static int64
slot_int64(TupleTableSlot *slot, AttrNumber attnum)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, attnum, &isnull);

	Assert(!isnull);
	return DatumGetInt64(d);
}

/*
 * Whether the head row in slot is a tombstone (0.7.0, lifecycle.c): an
 * event of type CQRS_TYPE_STREAM_DELETED, hard when its data says
 * {"hard": true}.  Only the extension writes "$" types (event_input.c
 * refuses them from callers), so the type alone is proof.  Comparing the
 * type costs appends one attribute fetch from a row already in hand.
 */
static CqrsStreamState
head_state(TupleTableSlot *slot)
{
	static const char tombstone[] = CQRS_TYPE_STREAM_DELETED;
	bool		isnull;
	text	   *type;
	Jsonb	   *data;
	JsonbValue *hard;

	type = DatumGetTextPP(slot_getattr(slot, Anum_events_type, &isnull));
	if (isnull || VARSIZE_ANY_EXHDR(type) != sizeof(tombstone) - 1 ||
		memcmp(VARDATA_ANY(type), tombstone, sizeof(tombstone) - 1) != 0)
		return CQRS_STREAM_LIVE;

	data = DatumGetJsonbP(slot_getattr(slot, Anum_events_data, &isnull));
	if (isnull || !JB_ROOT_IS_OBJECT(data))
		return CQRS_STREAM_SOFT_DELETED;
	hard = getKeyJsonValueFromContainer(&data->root, "hard", 4, NULL);
	if (hard != NULL && hard->type == jbvBool && hard->val.boolean)
		return CQRS_STREAM_HARD_DELETED;
	return CQRS_STREAM_SOFT_DELETED;
}

/*
 * The head probe behind CqrsStreamHead and its variants; state, when not
 * NULL, tells whether the head is a tombstone.
 */
static bool
stream_head(Relation events, text *stream, Snapshot snapshot,
			int64 *version, int64 *position, CqrsStreamState *state)
{
	ScanKeyData key;
	TupleTableSlot *slot = table_slot_create(events, NULL);
	bool		found;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream));
	found = eventlog_probe(events, CqrsEventLog()->stream_version_idx, snapshot,
						   &key, 1, BackwardScanDirection, slot);
	*version = found ? slot_int64(slot, Anum_events_version) : 0;
	*position = found ? slot_int64(slot, Anum_events_position) : 0;
	if (state != NULL)
		*state = found ? head_state(slot) : CQRS_STREAM_LIVE;
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/*
 * CqrsStreamHead
 *		The last event of a stream as seen by snapshot: its version and
 *		position.  Returns false (version 0) for a stream with no events.
 */
bool
CqrsStreamHead(Relation events, text *stream, Snapshot snapshot,
			   int64 *version, int64 *position)
{
	return stream_head(events, stream, snapshot, version, position, NULL);
}

/*
 * CqrsStreamHeadState
 *		CqrsStreamHead, also telling whether the stream is deleted (its head
 *		is a tombstone); for readers, which show a deleted stream as its
 *		tombstone only.
 */
bool
CqrsStreamHeadState(Relation events, text *stream, Snapshot snapshot,
					int64 *version, int64 *position, CqrsStreamState *state)
{
	return stream_head(events, stream, snapshot, version, position, state);
}

/*
 * CqrsStreamDeletedError
 *		The error for an append to a deleted stream (55000).  A deleted
 *		stream is never re-created, soft-deleted or not: its tombstone stays
 *		its head, so no event can follow it and its versions never restart.
 */
void
CqrsStreamDeletedError(text *stream, int64 version, CqrsStreamState state)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("stream \"%s\" is deleted", text_to_cstring(stream)),
			 errdetail("It was %s deleted at version %lld; a deleted stream takes no more events.",
					   state == CQRS_STREAM_HARD_DELETED ? "hard" : "soft",
					   (long long) version),
			 errhint("Append to a stream with another name.")));
}

/*
 * CqrsFindEvent
 *		Look an event up by id; on success return its stream (palloc'd),
 *		version and position.
 */
bool
CqrsFindEvent(Relation events, pg_uuid_t *id, Snapshot snapshot,
			  text **stream, int64 *version, int64 *position)
{
	ScanKeyData key;
	TupleTableSlot *slot = table_slot_create(events, NULL);
	bool		found;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(id));
	found = eventlog_probe(events, CqrsEventLog()->id_idx, snapshot,
						   &key, 1, ForwardScanDirection, slot);
	if (found)
	{
		bool		isnull;

		*stream = DatumGetTextPCopy(slot_getattr(slot, Anum_events_stream, &isnull));
		*version = slot_int64(slot, Anum_events_version);
		*position = slot_int64(slot, Anum_events_position);
	}
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/*
 * A dirty snapshot for a probe: it shows rows still in progress, and its
 * xmin tells, after the probe, the inserter of the row returned when that
 * is another transaction still in progress; InvalidTransactionId for a
 * committed row or one of our own transaction.
 */
static inline void
dirty_init(SnapshotData *dirty)
{
	InitDirtySnapshot(*dirty);
	/* InitDirtySnapshot sets only the type; the probe sets these per row */
	dirty->xmin = InvalidTransactionId;
	dirty->xmax = InvalidTransactionId;
}

/*
 * CqrsStreamHeadForAppend
 *		The stream's head including rows still in progress, read under its
 *		short lock.  Returns the transaction to wait for when the head row
 *		is another's, uncommitted; then version and position are not final.
 */
TransactionId
CqrsStreamHeadForAppend(Relation events, text *stream, int64 *version, int64 *position)
{
	SnapshotData dirty;
	CqrsStreamState state;

	dirty_init(&dirty);
	if (!stream_head(events, stream, &dirty, version, position, &state))
		return InvalidTransactionId;
	/* a final tombstone: the stream is deleted, for good */
	if (!TransactionIdIsValid(dirty.xmin) && state != CQRS_STREAM_LIVE)
		CqrsStreamDeletedError(stream, *version, state);
	return dirty.xmin;
}

/*
 * CqrsStreamHeadForChange
 *		CqrsStreamHeadForAppend for the lifecycle operations (lifecycle.c):
 *		the same dirty probe under the stream's short lock, telling rather
 *		than refusing a tombstone.
 */
TransactionId
CqrsStreamHeadForChange(Relation events, text *stream, int64 *version, int64 *position,
						CqrsStreamState *state)
{
	SnapshotData dirty;

	dirty_init(&dirty);
	if (!stream_head(events, stream, &dirty, version, position, state))
		return InvalidTransactionId;
	return dirty.xmin;
}

/*
 * CqrsFindEventForAppend
 *		CqrsFindEvent including rows still in progress.  Returns the
 *		transaction to wait for when the row found is another's,
 *		uncommitted; then *found is not final.
 */
TransactionId
CqrsFindEventForAppend(Relation events, pg_uuid_t *id, bool *found,
					   text **stream, int64 *version, int64 *position)
{
	SnapshotData dirty;

	dirty_init(&dirty);
	*found = CqrsFindEvent(events, id, &dirty, stream, version, position);
	return *found ? dirty.xmin : InvalidTransactionId;
}

/*
 * CqrsMaxPosition
 *		The highest position visible to snapshot, 0 for an empty log.
 */
int64
CqrsMaxPosition(Relation events, Snapshot snapshot)
{
	TupleTableSlot *slot = table_slot_create(events, NULL);
	int64		result = 0;

	if (eventlog_probe(events, CqrsEventLog()->position_idx, snapshot,
					   NULL, 0, BackwardScanDirection, slot))
		result = slot_int64(slot, Anum_events_position);
	ExecDropSingleTupleTableSlot(slot);
	return result;
}

/*
 * CqrsQualifiedName
 *		A relation's schema-qualified, quoted name, for the SQL we build.
 */
char *
CqrsQualifiedName(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}
