/*-------------------------------------------------------------------------
 *
 * event_input.c
 *		Checking what callers give to append: rights, names, sizes,
 *		metadata, and the events array of append_events.
 *
 * Every way into the log (cqrs.append, cqrs.append_events, change capture,
 * cqrs.import_events) checks its events here, so one event is accepted or
 * refused, with the same error, whichever way it comes.  Bad input is an
 * error before anything is locked or written.
 *
 * Limits.  A stream name takes at most CQRS_MAX_STREAM_LEN bytes, so that it
 * always fits the (stream, version) index, whose entries must fit a third
 * of a page even when the name does not compress; a type at most
 * CQRS_MAX_TYPE_LEN.  cqrs.max_event_size bounds the uncompressed size of
 * the stream, type, data and metadata together.  All three raise 54000.
 * Types starting with "$" belong to the extension's system events (0.7.0,
 * lifecycle.c): callers get 22023 for them, whichever way they come.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/event_input.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/detoast.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "pg_cqrs.h"

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
void
CqrsCheckMayAppend(const char *function)
{
	CqrsCheckEventLogPrivilege(ACL_INSERT);
	PreventCommandDuringRecovery(function);
	PreventCommandIfReadOnly(function);
}

/*
 * A stream or type: at most maxlen bytes (54000).  what names it in
 * messages; where, the event.
 */
void
CqrsCheckNameLength(text *t, int maxlen, const char *what)
{
	int			len = VARSIZE_ANY_EXHDR(t);

	if (len > maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", what),
				 errdetail("It takes %d bytes; the limit is %d bytes.", len, maxlen)));
}

text *
CqrsCheckNameArg(FunctionCallInfo fcinfo, int argno, const char *what)
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

bool
CqrsCheckExpectedVersion(FunctionCallInfo fcinfo, int argno, int64 *expected)
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
bool
CqrsJsonbIsNull(Jsonb *jb)
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
 * Inside a handler call, an appended event records what caused it, under
 * the "$causation" key of its metadata (replacing one the handler gave),
 * and may go no deeper than cqrs.max_causation_depth: see apply.c,
 * "Causation".  Outside handlers the metadata is the caller's, untouched.
 */
static Jsonb *
add_causation(Jsonb *metadata)
{
	pg_uuid_t	id;
	int32		depth;
	const char *projection;
	StringInfoData buf;

	if (!CqrsCurrentCause(&id, &depth, &projection))
		return metadata;
	if (depth > cqrs_max_causation_depth)
		ereport(ERROR,
				(errcode(ERRCODE_STATEMENT_TOO_COMPLEX),
				 errmsg("causation chain too deep: the handler of projection \"%s\" appends an event at causation depth %d",
						projection, depth),
				 errdetail("Every event a handler appends records the event that caused it; cqrs.max_causation_depth is %d.",
						   cqrs_max_causation_depth),
				 errhint("A projection that consumes the events its own handler appends feeds itself: filter them out by category or type.")));

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"%s\": {\"id\": \"%s\", \"projection\": ",
					 CQRS_CAUSATION_KEY,
					 DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&id))));
	escape_json(&buf, projection);
	appendStringInfo(&buf, ", \"depth\": %d}}", depth);
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(metadata),
											  DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data))));
}

/*
 * An event's metadata must be a JSON object; NULL, in SQL or in JSON, means
 * {}: serializers often write absent optional fields as null.
 */
Jsonb *
CqrsCheckMetadata(Jsonb *metadata, const char *where)
{
	if (metadata == NULL || CqrsJsonbIsNull(metadata))
		metadata = empty_object();
	else if (!JB_ROOT_IS_OBJECT(metadata))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata of %s must be a JSON object", where)));
	return add_causation(metadata);
}

/*
 * Types starting with "$" are the extension's system events (0.7.0:
 * $StreamDeleted, $StreamTruncated, $StreamErased, written by lifecycle.c
 * straight through CqrsWriteEvents).  Readers and handlers trust them: a
 * "$StreamDeleted" head makes a stream deleted (eventlog.c), so no caller
 * may write one, by any way in (22023).
 */
static void
check_type_not_reserved(text *type, const char *where)
{
	if (VARSIZE_ANY_EXHDR(type) > 0 && *VARDATA_ANY(type) == '$')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("type of %s must not start with \"$\"", where),
				 errdetail("Types starting with \"$\" are reserved for pg_cqrs's system events, such as $StreamDeleted.")));
}

/*
 * The type's length cap, that it is not a system event's,
 * and cqrs.max_event_size over the uncompressed
 * sizes of the event's stream, type, data and metadata.  The stream's own
 * cap is checked once per append, by the caller.
 */
void
CqrsCheckEventSize(text *stream, CqrsNewEvent *ev, const char *where)
{
	Size		size;

	CqrsCheckNameLength(ev->type, CQRS_MAX_TYPE_LEN, "type");
	check_type_not_reserved(ev->type, where);
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
void
CqrsParseEvent(text *stream, JsonbValue *elem, int n, CqrsNewEvent *ev)
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
	ev->metadata = CqrsCheckMetadata(ev->metadata, where);
	CqrsCheckEventSize(stream, ev, where);
}

