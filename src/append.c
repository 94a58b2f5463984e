/*-------------------------------------------------------------------------
 *
 * append.c
 *		cqrs.append and cqrs.append_events: versioned, idempotent appends.
 *
 * An append, in order:
 *	 0. checks that the caller may append (INSERT on cqrs.events: a table
 *		privilege, so \dp, GRANT, REVOKE and role membership work as for any
 *		table) and that the transaction may write.  First thing: a refused
 *		caller learns nothing (no version, no "which stream holds this id")
 *		and burns no position;
 *	 1. validates every argument; bad input is an error before anything is
 *		locked or written;
 *	 2. takes the stream's short lock (eventlog.c) and reads its head with a
 *		dirty snapshot; if another transaction's uncommitted append is the
 *		head, lets go, waits for that transaction to end, and starts over.
 *		So appends to one stream run one at a time, appends to other
 *		streams are not held up, and nothing is held per stream until
 *		commit;
 *	 3. looks up the ids the caller gave, the same way: an event already
 *		recorded in this stream makes the call an idempotent no-op returning
 *		the original (version, position); one recorded elsewhere is an
 *		error;
 *	 4. checks expected_version against the head (40001 on a mismatch);
 *	 5. publishes the transaction's floor (horizon.c), takes positions from
 *		the sequence, inserts the rows with a prepared plan, and releases
 *		the short lock.
 *
 * Inserting goes through the executor (SPI) rather than heap_insert so that
 * triggers on the log, such as those of sync projections, fire as for any
 * INSERT, and row-level security WITH CHECK policies apply to the caller.
 * The plans are prepared once per backend and kept; they are fully
 * qualified and run with search_path = pg_catalog, pg_temp.  Just before
 * executing one, we tell the guard (guard.c) that the next INSERT on the
 * log is ours: every other INSERT or COPY by an ordinary role is refused.
 *
 * Limits.  A stream name takes at most CQRS_MAX_STREAM_LEN bytes, so that it
 * always fits the (stream, version) index, whose entries must fit a third
 * of a page even when the name does not compress; a type at most
 * CQRS_MAX_TYPE_LEN.  cqrs.max_event_size bounds the uncompressed size of
 * the stream, type, data and metadata together.  All three raise 54000.
 *
 * Under REPEATABLE READ or SERIALIZABLE, a head newer than the transaction
 * snapshot means another transaction appended to the stream since ours
 * began: we raise a serialization failure, as UPDATE would, rather than
 * append on top of state the caller could not have seen.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/append.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/table.h"
#include "access/xact.h"
#include "access/detoast.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_append);
PG_FUNCTION_INFO_V1(cqrs_append_events);

/* One event to append, validated. */
typedef struct NewEvent
{
	text	   *type;
	Jsonb	   *data;
	Jsonb	   *metadata;
	bool		has_id;
	pg_uuid_t	id;
} NewEvent;

/* Result of an append: the last event's version and position. */
typedef struct AppendResult
{
	int64		version;
	int64		position;
} AppendResult;

static SPIPlanPtr insert_one_plan = NULL;
static SPIPlanPtr insert_many_plan = NULL;

/* ----------------------------------------------------------------
 * Validation
 * ----------------------------------------------------------------
 */

/*
 * What any append checks first, before it looks at its arguments: that the
 * current user may append (INSERT on cqrs.events, 42501) and that the
 * transaction may write (25006, naming the function rather than the
 * nextval() or INSERT it would otherwise fail in).
 */
static void
check_may_append(const char *function)
{
	CqrsCheckEventLogPrivilege(ACL_INSERT);
	PreventCommandDuringRecovery(function);
	PreventCommandIfReadOnly(function);
}

/*
 * A stream or type: at most maxlen bytes (54000).  what names it in
 * messages; where, the event.
 */
static void
check_name_length(text *t, int maxlen, const char *what)
{
	int			len = VARSIZE_ANY_EXHDR(t);

	if (len > maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", what),
				 errdetail("It takes %d bytes; the limit is %d bytes.", len, maxlen)));
}

static text *
check_name_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	text	   *t;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	t = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(t) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	return t;
}

static bool
check_expected_version(FunctionCallInfo fcinfo, int argno, int64 *expected)
{
	if (PG_ARGISNULL(argno))
		return false;
	*expected = PG_GETARG_INT64(argno);
	if (*expected < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expected_version must not be negative"),
				 errdetail("Use NULL for any version, 0 for a new stream, or the stream's current version.")));
	return true;
}

/* A JSON null at the root: the jsonb 'null'. */
static bool
jsonb_is_null(Jsonb *jb)
{
	JsonbValue	v;

	if (!JB_ROOT_IS_SCALAR(jb))
		return false;
	return JsonbExtractScalar(&jb->root, &v) && v.type == jbvNull;
}

static Jsonb *
empty_object(void)
{
	JsonbValue	v;

	v.type = jbvObject;
	v.val.object.nPairs = 0;
	v.val.object.pairs = NULL;
	return JsonbValueToJsonb(&v);
}

/*
 * An event's metadata must be a JSON object; NULL, in SQL or in JSON, means
 * {}: serializers often write absent optional fields as null.
 */
static Jsonb *
check_metadata(Jsonb *metadata, const char *where)
{
	if (metadata == NULL || jsonb_is_null(metadata))
		return empty_object();
	if (!JB_ROOT_IS_OBJECT(metadata))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata of %s must be a JSON object", where)));
	return metadata;
}

/*
 * The type's length cap, and cqrs.max_event_size over the uncompressed
 * sizes of the event's stream, type, data and metadata.  The stream's own
 * cap is checked once per append, by the caller.
 */
static void
check_event_size(text *stream, NewEvent *ev, const char *where)
{
	Size		size;

	check_name_length(ev->type, CQRS_MAX_TYPE_LEN, "type");
	size = VARSIZE_ANY_EXHDR(stream) + VARSIZE_ANY_EXHDR(ev->type) +
		toast_raw_datum_size(PointerGetDatum(ev->data)) +
		toast_raw_datum_size(PointerGetDatum(ev->metadata));

	if (size > (Size) cqrs_max_event_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too large", where),
				 errdetail("Its stream, type, data and metadata take %zu bytes, more than cqrs.max_event_size (%d bytes).",
						   size, cqrs_max_event_size)));
}

/* ----------------------------------------------------------------
 * Parsing the events array of append_events
 * ----------------------------------------------------------------
 */

static void
batch_error(int n, const char *fmt, const char *arg)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid event %d in events", n),
			 errdetail(fmt, arg),
			 errhint("events must be a non-empty JSON array of objects {\"type\": ..., \"data\": ..., \"metadata\": ..., \"id\": ...}; metadata and id are optional.")));
}

/*
 * Whether s can be given to uuid_in: 32 hex digits, hyphens and an optional
 * pair of braces.  Checked first so that a bad id in a batch gets the same
 * error as any other bad field; uuid_in remains the judge of hyphen placement.
 */
static bool
looks_like_uuid(const char *s, int len)
{
	int			digits = 0;

	for (int i = 0; i < len; i++)
	{
		if (isxdigit((unsigned char) s[i]))
			digits++;
		else if (s[i] != '-' && !(s[i] == '{' && i == 0) && !(s[i] == '}' && i == len - 1))
			return false;
	}
	return digits == 32;
}

/*
 * Parse element n (1-based, for messages) of the events array into ev.
 */
static void
parse_event(text *stream, JsonbValue *elem, int n, NewEvent *ev)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		has_type = false,
				has_data = false;
	char		where[64];

	if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
		batch_error(n, "%s", "It is not a JSON object.");

	memset(ev, 0, sizeof(*ev));
	it = JsonbIteratorInit(elem->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;
		JsonbValue	val;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		tok = JsonbIteratorNext(&it, &val, true);
		Assert(tok == WJB_VALUE);

		if (strcmp(key, "type") == 0)
		{
			if (val.type != jbvString)
				batch_error(n, "%s", "Its \"type\" is not a JSON string.");
			if (val.val.string.len == 0)
				batch_error(n, "%s", "Its \"type\" is empty.");
			ev->type = cstring_to_text_with_len(val.val.string.val, val.val.string.len);
			has_type = true;
		}
		else if (strcmp(key, "data") == 0)
		{
			if (val.type == jbvNull)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("data of event %d in events must not be null", n)));
			ev->data = JsonbValueToJsonb(&val);
			has_data = true;
		}
		else if (strcmp(key, "metadata") == 0)
		{
			if (val.type == jbvNull)
				continue;
			if (val.type != jbvBinary || !JsonContainerIsObject(val.val.binary.data))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("metadata of event %d in events must be a JSON object", n)));
			ev->metadata = JsonbValueToJsonb(&val);
		}
		else if (strcmp(key, "id") == 0)
		{
			Datum		d;

			if (val.type == jbvNull)
				continue;
			if (val.type != jbvString || !looks_like_uuid(val.val.string.val, val.val.string.len))
				batch_error(n, "%s", "Its \"id\" is not a JSON string holding a UUID.");
			d = DirectFunctionCall1(uuid_in,
									CStringGetDatum(pnstrdup(val.val.string.val,
															 val.val.string.len)));
			memcpy(&ev->id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
			ev->has_id = true;
		}
		else
			batch_error(n, "It has an unknown key \"%s\".", key);
	}

	if (!has_type)
		batch_error(n, "%s", "It has no \"type\".");
	if (!has_data)
		batch_error(n, "%s", "It has no \"data\".");

	snprintf(where, sizeof(where), "event %d in events", n);
	ev->metadata = check_metadata(ev->metadata, where);
	check_event_size(stream, ev, where);
}

/* ----------------------------------------------------------------
 * Writing
 * ----------------------------------------------------------------
 */

/*
 * Run one of our INSERT plans, the only statement the guard lets through
 * for an ordinary role (guard.c).  The permission is withdrawn afterwards
 * even on error, in case the statement failed before the guard consumed
 * it: a caught error must not leave the door open for the next INSERT.
 */
static int
execute_insert(SPIPlanPtr plan, Datum *values, const char *nulls)
{
	volatile int rc = 0;

	CqrsAllowAppendInsert();
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		CqrsEndAppendInsert();
	}
	PG_END_TRY();
	return rc;
}

static Datum
int8_array(int64 *values, int n)
{
	Datum	   *d = palloc(n * sizeof(Datum));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(values[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Insert n events of one stream at the given positions and versions.  One
 * row goes through a VALUES plan; more go through one INSERT ... SELECT
 * over unnest(), so a batch costs one executor run, not n.
 */
static void
insert_events(text *stream, NewEvent *evs, int n, int64 *positions, int64 *versions)
{
	int			rc;
	int			nestlevel;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_cqrs: SPI_connect failed");
	nestlevel = CqrsRestrictSearchPath();

	if (n == 1)
	{
		Datum		values[7];
		char		nulls[7];

		memset(nulls, ' ', sizeof(nulls));
		if (insert_one_plan == NULL)
		{
			Oid			types[7] = {INT8OID, TEXTOID, INT8OID, UUIDOID, TEXTOID, JSONBOID, JSONBOID};

			insert_one_plan = CqrsPrepareKept(
				"INSERT INTO cqrs.events"
				" (\"position\", stream, version, id, type, data, metadata)"
				" VALUES ($1, $2, $3, $4, $5, $6, $7)", 7, types);
		}
		values[0] = Int64GetDatum(positions[0]);
		values[1] = PointerGetDatum(stream);
		values[2] = Int64GetDatum(versions[0]);
		values[3] = UUIDPGetDatum(&evs[0].id);
		values[4] = PointerGetDatum(evs[0].type);
		values[5] = JsonbPGetDatum(evs[0].data);
		values[6] = JsonbPGetDatum(evs[0].metadata);
		rc = execute_insert(insert_one_plan, values, nulls);
	}
	else
	{
		Datum		values[7];
		char		nulls[7];
		Datum	   *ids = palloc(n * sizeof(Datum));
		Datum	   *types = palloc(n * sizeof(Datum));
		Datum	   *datas = palloc(n * sizeof(Datum));
		Datum	   *metas = palloc(n * sizeof(Datum));

		memset(nulls, ' ', sizeof(nulls));

		if (insert_many_plan == NULL)
		{
			Oid			argtypes[7] = {TEXTOID, INT8ARRAYOID, INT8ARRAYOID, UUIDARRAYOID,
			TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID};

			insert_many_plan = CqrsPrepareKept(
				"INSERT INTO cqrs.events"
				" (\"position\", stream, version, id, type, data, metadata)"
				" SELECT u.p, $1, u.v, u.i, u.t, u.d, u.m"
				" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3),"
				"  pg_catalog.unnest($4), pg_catalog.unnest($5),"
				"  pg_catalog.unnest($6), pg_catalog.unnest($7)) AS u(p, v, i, t, d, m)",
				7, argtypes);
		}
		for (int i = 0; i < n; i++)
		{
			ids[i] = UUIDPGetDatum(&evs[i].id);
			types[i] = PointerGetDatum(evs[i].type);
			datas[i] = JsonbPGetDatum(evs[i].data);
			metas[i] = JsonbPGetDatum(evs[i].metadata);
		}
		values[0] = PointerGetDatum(stream);
		values[1] = int8_array(positions, n);
		values[2] = int8_array(versions, n);
		values[3] = PointerGetDatum(construct_array(ids, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
		values[4] = PointerGetDatum(construct_array(types, n, TEXTOID, -1, false, TYPALIGN_INT));
		values[5] = PointerGetDatum(construct_array(datas, n, JSONBOID, -1, false, TYPALIGN_INT));
		values[6] = PointerGetDatum(construct_array(metas, n, JSONBOID, -1, false, TYPALIGN_INT));
		rc = execute_insert(insert_many_plan, values, nulls);
	}

	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "pg_cqrs: inserting %d events failed: %s",
			 n, SPI_result_code_string(rc));
	CqrsRestoreSearchPath(nestlevel);
	SPI_finish();
}

/* ----------------------------------------------------------------
 * The append itself
 * ----------------------------------------------------------------
 */

static int
uuid_cmp_qsort(const void *a, const void *b)
{
	return memcmp(((const pg_uuid_t *) a)->data, ((const pg_uuid_t *) b)->data, UUID_LEN);
}

/*
 * A batch with at most this many caller-given ids takes a short lock on
 * each (CqrsLockEventId), so that two transactions giving the same id to
 * different streams meet on our message naming the stream.  A larger batch
 * leaves that race, between two transactions, to the unique index on id,
 * whose error has the same SQLSTATE: a batch must not occupy a lock table
 * entry per event, even briefly.
 */
#define CQRS_MAX_ID_LOCKS 64

/* What an append holds while it reads the head and inserts. */
typedef struct AppendLocks
{
	text	   *stream;
	pg_uuid_t  *ids;			/* the caller-given ids, sorted */
	int			nids;
	bool		lock_ids;		/* nids <= CQRS_MAX_ID_LOCKS */
} AppendLocks;

/*
 * The batch's caller-given ids, sorted (the order in which they are
 * locked, so that two batches sharing ids cannot deadlock on them); an id
 * given twice is an error.
 */
static void
collect_ids(text *stream, NewEvent *evs, int n, AppendLocks *locks)
{
	locks->stream = stream;
	locks->ids = palloc(n * sizeof(pg_uuid_t));
	locks->nids = 0;
	for (int i = 0; i < n; i++)
		if (evs[i].has_id)
			locks->ids[locks->nids++] = evs[i].id;
	qsort(locks->ids, locks->nids, sizeof(pg_uuid_t), uuid_cmp_qsort);
	for (int i = 1; i < locks->nids; i++)
		if (memcmp(locks->ids[i - 1].data, locks->ids[i].data, UUID_LEN) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("event %s appears twice in the batch for stream \"%s\"",
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&locks->ids[i]))),
							text_to_cstring(stream))));
	locks->lock_ids = locks->nids <= CQRS_MAX_ID_LOCKS;
}

static void
take_locks(AppendLocks *locks)
{
	CqrsLockStream(VARDATA_ANY(locks->stream), VARSIZE_ANY_EXHDR(locks->stream));
	if (locks->lock_ids)
		for (int i = 0; i < locks->nids; i++)
			CqrsLockEventId(&locks->ids[i]);
}

static void
release_locks(AppendLocks *locks)
{
	if (locks->lock_ids)
		for (int i = locks->nids - 1; i >= 0; i--)
			CqrsUnlockEventId(&locks->ids[i]);
	CqrsUnlockStream(VARDATA_ANY(locks->stream), VARSIZE_ANY_EXHDR(locks->stream));
}

/*
 * Decide whether the batch was already appended.  Returns true (and the
 * original result) when every event has an id recorded in this stream, in
 * order and with consecutive versions; false when none of the given ids is
 * recorded.  Anything in between is an error, as is an id recorded in
 * another stream.  An event without an id is never recorded, so "recorded
 * == n" also means that every event has one: a batch mixing recorded ids
 * and events without ids is an error too.
 *
 * Called holding the append's short locks.  Rows still in progress count:
 * when an id is in another transaction's uncommitted row, returns false
 * with *wait_for set, and the caller waits for that transaction and asks
 * again.
 */
static bool
find_recorded(Relation events, text *stream, NewEvent *evs, int n,
			  AppendResult *result, TransactionId *wait_for)
{
	int			recorded = 0;
	bool		in_order = true;
	int64		prev_version = 0;

	for (int i = 0; i < n; i++)
	{
		text	   *other;
		int64		version,
					position;
		bool		found;

		if (!evs[i].has_id)
			continue;
		*wait_for = CqrsFindEventForAppend(events, &evs[i].id, &found,
										   &other, &version, &position);
		if (TransactionIdIsValid(*wait_for))
			return false;
		if (!found)
			continue;

		if (VARSIZE_ANY_EXHDR(other) != VARSIZE_ANY_EXHDR(stream) ||
			memcmp(VARDATA_ANY(other), VARDATA_ANY(stream), VARSIZE_ANY_EXHDR(stream)) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("event %s is already recorded in stream \"%s\"",
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&evs[i].id))),
							text_to_cstring(other)),
					 errdetail("It cannot also be appended to stream \"%s\".",
							   text_to_cstring(stream))));

		if (recorded > 0 && version != prev_version + 1)
			in_order = false;
		prev_version = version;
		recorded++;
		result->version = version;
		result->position = position;
	}

	if (recorded == 0)
		return false;
	if (recorded == n && in_order)
		return true;

	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("batch repeats only some of the events already recorded in stream \"%s\"",
					text_to_cstring(stream)),
			 errdetail("%d of its %d events are already recorded%s.", recorded, n,
					   recorded == n ? ", but not in this order" : ""),
			 errhint("Retry the whole original batch, or append only new events with new ids.")));
	return false;				/* keep compiler quiet */
}

/*
 * Append n validated events to stream.  See the file header for the steps,
 * and eventlog.c for why the stream's short lock and the dirty head make
 * appends to one stream run one at a time.
 */
static AppendResult
append_to_stream(text *stream, NewEvent *evs, int n,
				 bool has_expected, int64 expected)
{
	Relation	events;
	AppendResult result;
	AppendLocks locks;
	int64		head_version,
				head_position;
	int64	   *positions;
	int64	   *versions;
	Oid			seq;

	events = CqrsOpenEventLog(RowExclusiveLock);
	collect_ids(stream, evs, n, &locks);

	for (;;)
	{
		TransactionId wait_for = InvalidTransactionId;

		take_locks(&locks);
		if (locks.nids > 0 && find_recorded(events, stream, evs, n, &result, &wait_for))
		{
			release_locks(&locks);
			table_close(events, NoLock);
			return result;
		}
		if (!TransactionIdIsValid(wait_for))
			wait_for = CqrsStreamHeadForAppend(events, stream, &head_version, &head_position);
		if (!TransactionIdIsValid(wait_for))
			break;
		/* another transaction's append is not final yet: wait for its end */
		release_locks(&locks);
		XactLockTableWait(wait_for, events, NULL, XLTW_None);
	}

	if (IsolationUsesXactSnapshot())
	{
		int64		seen_version,
					seen_position;

		CqrsStreamHead(events, stream, GetTransactionSnapshot(),
					   &seen_version, &seen_position);
		if (seen_version != head_version)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent append to stream \"%s\"",
							text_to_cstring(stream)),
					 errdetail("The transaction's snapshot shows version %lld, but the stream is at version %lld.",
							   (long long) seen_version, (long long) head_version)));
	}

	if (has_expected && expected != head_version)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("wrong expected version for stream \"%s\"",
						text_to_cstring(stream)),
				 errdetail("Expected version %lld, but the stream is at version %lld.",
						   (long long) expected, (long long) head_version),
				 errhint("Reload the stream and retry the command.")));

	/* before any position: see "Locking for sync projections" in projection.c */
	CqrsLockProjectionsForAppend();
	CqrsHorizonBeginAppend(events);

	seq = CqrsEventLog()->position_seq;
	positions = palloc(n * sizeof(int64));
	versions = palloc(n * sizeof(int64));
	for (int i = 0; i < n; i++)
	{
		positions[i] = nextval_internal(seq, false);
		CqrsHorizonNoteAllocated(positions[i]);
		versions[i] = head_version + i + 1;
		if (!evs[i].has_id)
		{
			Datum		u = DirectFunctionCall1(gen_random_uuid, (Datum) 0);

			memcpy(&evs[i].id, DatumGetUUIDP(u), sizeof(pg_uuid_t));
		}
	}

	insert_events(stream, evs, n, positions, versions);
	/* our rows are in the index: the next appender will see them */
	release_locks(&locks);
	table_close(events, NoLock);

	result.version = versions[n - 1];
	result.position = positions[n - 1];
	return result;
}

/* ----------------------------------------------------------------
 * Appending from C (change capture)
 * ----------------------------------------------------------------
 */

/*
 * CqrsAppendEvent
 *		Append one event to stream, at whatever version the stream is at, with
 *		a generated id; return its position.
 *
 * For callers inside the extension that build events themselves (the
 * capture triggers of capture.c).  The event gets the same checks as one
 * given to cqrs.append: INSERT on cqrs.events for the current user id
 * (capture appends as the captured table's owner), non-empty stream and
 * type within their length caps, metadata an object (NULL means {}), and
 * cqrs.max_event_size.  Memory is allocated in the caller's context.
 *
 *
 * Capture used to skip the stream lock, which then lasted until commit: a
 * bulk write to a captured table, one stream per row, filled the shared
 * lock table.  The short lock (eventlog.c) holds nothing per stream, so
 * capture now serialises like every other append.
 */
int64
CqrsAppendEvent(text *stream, text *type, Jsonb *data, Jsonb *metadata)
{
	NewEvent	ev;

	check_may_append("cqrs.append()");
	if (stream == NULL || VARSIZE_ANY_EXHDR(stream) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream must not be empty")));
	if (type == NULL || VARSIZE_ANY_EXHDR(type) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("type must not be empty")));
	if (data == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("data must not be null")));

	stream = pg_detoast_datum_packed(stream);
	check_name_length(stream, CQRS_MAX_STREAM_LEN, "stream name");
	memset(&ev, 0, sizeof(ev));
	ev.type = pg_detoast_datum_packed(type);
	ev.data = data;
	ev.metadata = check_metadata(metadata, "the event");
	check_event_size(stream, &ev, "the event");

	return append_to_stream(stream, &ev, 1, false, 0).position;
}

/*
 * The (version bigint, position bigint) row type of both append functions,
 * built and blessed once per backend.
 */
static TupleDesc
result_tupdesc(void)
{
	static TupleDesc tupdesc = NULL;

	if (tupdesc == NULL)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(TopMemoryContext);
		TupleDesc	desc = CreateTemplateTupleDesc(2);

		TupleDescInitEntry(desc, 1, "version", INT8OID, -1, 0);
		TupleDescInitEntry(desc, 2, "position", INT8OID, -1, 0);
		tupdesc = BlessTupleDesc(desc);
		MemoryContextSwitchTo(oldcontext);
	}
	return tupdesc;
}

/*
 * Return the one (version, position) row of an append, value-per-call so
 * that nothing outlives the call: appends are often made in a loop within
 * one long query or transaction.
 */
static Datum
append_srf(FunctionCallInfo fcinfo, AppendResult (*work) (FunctionCallInfo))
{
	FuncCallContext *funcctx;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext oldcontext;
		TupleDesc	tupdesc;
		AppendResult r;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		funcctx = SRF_FIRSTCALL_INIT();
		r = work(fcinfo);

		tupdesc = result_tupdesc();
		oldcontext = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		values[0] = Int64GetDatum(r.version);
		values[1] = Int64GetDatum(r.position);
		funcctx->user_fctx = heap_form_tuple(tupdesc, values, nulls);
		MemoryContextSwitchTo(oldcontext);
	}

	funcctx = SRF_PERCALL_SETUP();
	if (funcctx->user_fctx != NULL)
	{
		HeapTuple	tuple = (HeapTuple) funcctx->user_fctx;

		funcctx->user_fctx = NULL;
		SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(tuple));
	}
	SRF_RETURN_DONE(funcctx);
}

static AppendResult
append_one(FunctionCallInfo fcinfo)
{
	text	   *stream;
	NewEvent	ev;
	bool		has_expected;
	int64		expected = 0;

	check_may_append("cqrs.append()");
	stream = check_name_arg(fcinfo, 0, "stream");
	check_name_length(stream, CQRS_MAX_STREAM_LEN, "stream name");
	memset(&ev, 0, sizeof(ev));
	ev.type = check_name_arg(fcinfo, 1, "type");
	if (PG_ARGISNULL(2) || jsonb_is_null(PG_GETARG_JSONB_P(2)))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("data must not be null"),
				 errhint("Use an empty object {} for an event without payload.")));
	ev.data = PG_GETARG_JSONB_P(2);
	ev.metadata = check_metadata(PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3), "the event");
	has_expected = check_expected_version(fcinfo, 4, &expected);
	if (!PG_ARGISNULL(5))
	{
		memcpy(&ev.id, PG_GETARG_UUID_P(5), sizeof(pg_uuid_t));
		ev.has_id = true;
	}
	check_event_size(stream, &ev, "the event");

	return append_to_stream(stream, &ev, 1, has_expected, expected);
}

static AppendResult
append_many(FunctionCallInfo fcinfo)
{
	text	   *stream;
	Jsonb	   *batch;
	NewEvent   *evs;
	int			n;
	bool		has_expected;
	int64		expected = 0;

	check_may_append("cqrs.append_events()");
	stream = check_name_arg(fcinfo, 0, "stream");
	check_name_length(stream, CQRS_MAX_STREAM_LEN, "stream name");

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be null")));
	batch = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_ARRAY(batch) || JB_ROOT_IS_SCALAR(batch))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON array"),
				 errhint("Pass a non-empty array of objects {\"type\": ..., \"data\": ...}.")));
	n = JB_ROOT_COUNT(batch);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must not be an empty array")));
	has_expected = check_expected_version(fcinfo, 2, &expected);

	evs = palloc(n * sizeof(NewEvent));
	for (int i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&batch->root, i);

		parse_event(stream, elem, i + 1, &evs[i]);
	}

	return append_to_stream(stream, evs, n, has_expected, expected);
}

/*
 * cqrs.append(stream text, type text, data jsonb, metadata jsonb,
 *			   expected_version bigint, id uuid)
 *	  RETURNS TABLE (version bigint, "position" bigint)
 */
Datum
cqrs_append(PG_FUNCTION_ARGS)
{
	return append_srf(fcinfo, append_one);
}

/*
 * cqrs.append_events(stream text, events jsonb, expected_version bigint)
 *	  RETURNS TABLE (version bigint, "position" bigint)
 */
Datum
cqrs_append_events(PG_FUNCTION_ARGS)
{
	return append_srf(fcinfo, append_many);
}
