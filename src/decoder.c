/*-------------------------------------------------------------------------
 *
 * decoder.c
 *		The logical decoding output plugin: committed events as JSON lines.
 *
 *		SELECT pg_create_logical_replication_slot('outbox', 'pg_cqrs');
 *
 * For every committed transaction, in commit order, the plugin writes one
 * JSON object per row inserted into cqrs.events and one per message written
 * by cqrs.publish(), in the order they were written within the transaction.
 * Nothing else: other tables, the extension's bookkeeping tables, rolled-back
 * transactions and subtransactions, and transactions with nothing to say
 * produce no output at all (not even BEGIN/COMMIT lines).
 *
 * Each object is its own OutputPluginPrepareWrite/OutputPluginWrite: one row
 * of pg_logical_slot_get_changes, one line of pg_recvlogical -f -.  Nothing
 * is buffered per transaction: the reorder buffer already spills big
 * transactions to disk, and everything we allocate for a change lives in a
 * private memory context that is reset after that change, so a transaction
 * of a million events streams in constant memory.
 *
 * Finding cqrs.events.  Changes arrive with the relation as the historic
 * snapshot sees it.  A relation is the event log when its name is "events",
 * its schema's name is "cqrs", its first eight columns have the log's types
 * and pg_depend, read under the historic snapshot, makes it a member of the
 * extension pg_cqrs: after DROP EXTENSION anybody may create a look-alike
 * cqrs.events, whose rows must not stream as events.  The answer is cached
 * per relation OID (one positive and one negative entry suffice: "events"
 * tables are rare) and forgotten on any relcache invalidation of that
 * relation and on any change to a schema (ALTER SCHEMA ... RENAME sends no
 * relcache invalidation).  Decoding executes the invalidations of the
 * transactions it decodes, so DROP and CREATE EXTENSION in the decoded
 * history are noticed at the right point.  (ALTER EXTENSION ... DROP TABLE
 * sends none; only the extension's owner can run it.)  Other relations cost
 * one comparison of their name.
 *
 * Published messages.  Only transactional messages with the prefix
 * "pg_cqrs" that cqrs.publish wrote in the transaction being decoded are
 * emitted (outbox.c authenticates them); the others are dropped with one
 * WARNING per transaction, never an error, which would stop the slot.
 *
 * Every line is one JSON object written here: strings escaped, jsonb
 * printed from its binary form, a message's payload parsed and written out
 * again token by token (outbox.c).  No caller text is copied verbatim, so
 * no value, however crafted, can end a line or start another.
 *
 * Size.  The JSON writers are the hot path of every event and stay in this
 * file, static, so that they are inlined into the change callback; that
 * makes the file a little longer than 900 lines.
 *
 * Options (all optional; unknown options and bad values are errors, as in
 * test_decoding, raised when decoding starts):
 *	categories			comma-separated categories: only their events
 *	types				comma-separated event types: only these events
 *	topics				comma-separated topics: only these published messages
 *	include-metadata	boolean, default true: emit the metadata field
 *	format				json (default) or debezium
 *	transaction-end		boolean, default false: end every transaction that
 *						wrote a line with a commit line (below)
 * Filters apply before any formatting.  categories and types apply to
 * events only, topics to messages only: an event filter never hides a
 * message and vice versa.
 *
 * Transaction end.  With transaction-end, the commit callback writes one
 * more line for a transaction that wrote at least one:
 *	{"commit":{"lsn":"<end of the commit record>","xid":N,"lines":K}}
 * K counts the lines written for that transaction before it.  The line is
 * what a consumer needs to checkpoint safely: the lsn every line carries is
 * the end of the commit record, and confirming it skips the whole
 * transaction on reconnect (logical decoding replays a transaction only if
 * its commit record starts at or after the confirmed LSN), so confirming it
 * before the last line is processed loses the rest.  The replication
 * message of a change line starts at that change's own record, which
 * replays the whole transaction; the commit line's message starts at the
 * end of the commit record (the commit callback's write location), the
 * same LSN its lsn field gives.  README, "Outbox streaming", states the
 * rule; test/t/018_outbox_transaction_end.pl checks it.
 *
 * Progress.  A slot whose every change is filtered out writes nothing, yet
 * its consumer must be able to confirm the WAL it has passed, or the slot
 * pins WAL forever.  The walsender's keepalives carry the position it has
 * decoded up to (pg_recvlogical confirms it when idle); we call
 * OutputPluginUpdateProgress at every commit, saying whether the transaction
 * was skipped (as pgoutput does, for synchronous replication), and on
 * PostgreSQL 15 also every 100 changes inside a transaction, so that a huge
 * filtered transaction does not let the connection time out.  PostgreSQL 16
 * moved that in-transaction keepalive into the reorder buffer (see
 * CQRS_DECODER_PROGRESS_IN_TXN in compat.h).
 *
 * The plugin keeps no state across transactions except the option values
 * and the relation cache; the slot's confirmed position is the only
 * checkpoint.  When the library is preloaded it also records, per slot, the
 * highest event position of recently decoded transactions (outbox.c), from
 * which cqrs.outbox_status derives its lag in events.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/decoder.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/scansup.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "replication/reorderbuffer.h"
#include "replication/slot.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "compat.h"
#include "pg_cqrs.h"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

typedef enum DecoderFormat
{
	DECODER_FORMAT_JSON,
	DECODER_FORMAT_DEBEZIUM
} DecoderFormat;

/* A comma-separated option value: no items means "no filter". */
typedef struct DecoderFilter
{
	int			nitems;
	int		   *lens;
	char	  **items;
} DecoderFilter;

typedef struct DecoderState
{
	MemoryContext context;		/* per change: reset after each one */

	/* options */
	DecoderFilter categories;
	DecoderFilter types;
	DecoderFilter topics;
	bool		include_metadata;
	bool		transaction_end;	/* write a commit line per transaction */
	DecoderFormat format;

	/* the current transaction */
	bool		wrote;			/* something was written for it */
	int64		lines;			/* how many lines were written for it */
	int64		max_position;	/* highest event position in it, 0: none */
	char		tail[64];		/* ,"lsn":"…","xid":…} shared by its objects */
	int			tail_len;		/* 0 until computed */
	int			dropped;		/* messages dropped as not authentic */
	XLogRecPtr	dropped_lsn;	/* the first of them */
	const char *dropped_why;	/* why (a static string) */

	/* recorded_at of the previous event, formatted: usually the same */
	TimestampTz last_ts;
	int			last_ts_len;
	char		last_ts_text[MAXDATELEN + 1];

	int			changes;		/* since the last progress update */
	int			outbox_slot;	/* index of our entry in outbox.c, or -1 */

	Datum	   *values;			/* deformed row, MaxHeapAttributeNumber */
	bool	   *nulls;
} DecoderState;

#define DECODER_PROGRESS_EVERY 100

/*
 * Relation cache: the OID last found to be the event log, and the OID last
 * found to be an "events" table that is not.  Process-wide: a backend may
 * decode several times (pg_logical_slot_get_changes), and the invalidation
 * callbacks can only be registered once per process.
 */
static Oid	events_relid = InvalidOid;
static Oid	not_events_relid = InvalidOid;
static bool decoder_callbacks_registered = false;

static void decoder_startup(LogicalDecodingContext *ctx,
							OutputPluginOptions *opt, bool is_init);
static void decoder_shutdown(LogicalDecodingContext *ctx);
static void decoder_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn);
static void decoder_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						   XLogRecPtr commit_lsn);
static void decoder_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						   Relation relation, ReorderBufferChange *change);
static void decoder_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
							XLogRecPtr message_lsn, bool transactional,
							const char *prefix, Size sz, const char *message);

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	AssertVariableIsOfType(&_PG_output_plugin_init, LogicalOutputPluginInit);

	/*
	 * No streaming and no two-phase callbacks: we only ever emit committed
	 * work, so in-progress and prepared transactions are decoded when they
	 * commit, like any other.
	 */
	cb->startup_cb = decoder_startup;
	cb->begin_cb = decoder_begin;
	cb->change_cb = decoder_change;
	cb->message_cb = decoder_message;
	cb->commit_cb = decoder_commit;
	cb->shutdown_cb = decoder_shutdown;
}

/* ----------------------------------------------------------------------
 * Options
 * ----------------------------------------------------------------------
 */

#define DECODER_VALID_OPTIONS \
	"Valid options are \"categories\", \"types\", \"topics\", \"include-metadata\", \"format\" and \"transaction-end\"."

/*
 * Split a comma-separated list; surrounding blanks are dropped, items are
 * compared as written (categories and types are case-sensitive).  An empty
 * item is an error: "order,,customer" is a typo, not a filter.
 */
static void
parse_filter(DefElem *elem, DecoderFilter *filter)
{
	char	   *s;
	int			n = 1;

	if (elem->arg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"%s\" requires a value", elem->defname),
				 errhint("Give a comma-separated list, for example \"order,customer\".")));

	s = pstrdup(strVal(elem->arg));
	for (char *p = s; *p; p++)
		if (*p == ',')
			n++;
	filter->items = palloc(n * sizeof(char *));
	filter->lens = palloc(n * sizeof(int));
	filter->nitems = 0;

	for (;;)
	{
		char	   *comma = strchr(s, ',');
		char	   *end = comma ? comma : s + strlen(s);

		while (s < end && scanner_isspace(*s))
			s++;
		while (end > s && scanner_isspace(end[-1]))
			end--;
		if (end == s)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for option \"%s\": \"%s\"",
							elem->defname, strVal(elem->arg)),
					 errdetail("The list contains an empty item."),
					 errhint("Give a comma-separated list, for example \"order,customer\".")));
		*end = '\0';
		filter->items[filter->nitems] = s;
		filter->lens[filter->nitems] = end - s;
		filter->nitems++;
		if (comma == NULL)
			break;
		s = comma + 1;
	}
}

static bool
filter_match(const DecoderFilter *filter, const char *s, int len)
{
	for (int i = 0; i < filter->nitems; i++)
		if (filter->lens[i] == len && memcmp(filter->items[i], s, len) == 0)
			return true;
	return false;
}

/*
 * The one place options are parsed.  Runs in the decoding context's memory,
 * so the filters live as long as the decoding session.
 */
static void
parse_options(List *options, DecoderState *st)
{
	ListCell   *lc;
	bool		seen_categories = false,
				seen_types = false,
				seen_topics = false,
				seen_metadata = false,
				seen_format = false,
				seen_transaction_end = false;

	foreach(lc, options)
	{
		DefElem    *elem = lfirst(lc);
		bool	   *seen;

		Assert(elem->arg == NULL || IsA(elem->arg, String));

		if (strcmp(elem->defname, "categories") == 0)
			seen = &seen_categories;
		else if (strcmp(elem->defname, "types") == 0)
			seen = &seen_types;
		else if (strcmp(elem->defname, "topics") == 0)
			seen = &seen_topics;
		else if (strcmp(elem->defname, "include-metadata") == 0)
			seen = &seen_metadata;
		else if (strcmp(elem->defname, "format") == 0)
			seen = &seen_format;
		else if (strcmp(elem->defname, "transaction-end") == 0)
			seen = &seen_transaction_end;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" is unknown to the pg_cqrs output plugin",
							elem->defname),
					 errhint(DECODER_VALID_OPTIONS)));

		if (*seen)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" is given more than once", elem->defname)));
		*seen = true;

		if (seen == &seen_categories)
			parse_filter(elem, &st->categories);
		else if (seen == &seen_types)
			parse_filter(elem, &st->types);
		else if (seen == &seen_topics)
			parse_filter(elem, &st->topics);
		else if (seen == &seen_metadata || seen == &seen_transaction_end)
		{
			bool	   *value = seen == &seen_metadata ?
				&st->include_metadata : &st->transaction_end;

			/* a bare option means true, as in test_decoding */
			if (elem->arg == NULL)
				*value = true;
			else if (!parse_bool(strVal(elem->arg), value))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for option \"%s\": \"%s\"",
								elem->defname, strVal(elem->arg)),
						 errhint("Valid values are \"true\" and \"false\".")));
		}
		else
		{
			const char *v = elem->arg ? strVal(elem->arg) : "";

			if (strcmp(v, "json") == 0)
				st->format = DECODER_FORMAT_JSON;
			else if (strcmp(v, "debezium") == 0)
				st->format = DECODER_FORMAT_DEBEZIUM;
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for option \"%s\": \"%s\"",
								elem->defname, v),
						 errhint("Valid values are \"json\" and \"debezium\".")));
		}
	}
}

/* ----------------------------------------------------------------------
 * Finding the event log
 * ----------------------------------------------------------------------
 */

static void
decoder_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == events_relid)
		events_relid = InvalidOid;
	if (!OidIsValid(relid) || relid == not_events_relid)
		not_events_relid = InvalidOid;
}

static void
decoder_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	events_relid = InvalidOid;
	not_events_relid = InvalidOid;
}

/* The column types of cqrs.events, in attribute number order. */
static const Oid events_types[Natts_events] = {
	INT8OID, TEXTOID, INT8OID, UUIDOID, TEXTOID, JSONBOID, JSONBOID, TIMESTAMPTZOID
};

/*
 * Is this relation, as the historic snapshot sees it, cqrs.events?  The
 * catalog lookups (schema name, extension membership) run only for a
 * relation named "events" not seen before, under the historic snapshot.
 */
static bool
is_event_log(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	desc;
	char	   *nspname;
	bool		match;

	if (relid == events_relid)
		return true;
	if (relid == not_events_relid ||
		strcmp(NameStr(rel->rd_rel->relname), "events") != 0)
		return false;

	nspname = get_namespace_name(RelationGetNamespace(rel));
	match = nspname != NULL && strcmp(nspname, "cqrs") == 0;
	if (nspname != NULL)
		pfree(nspname);
	desc = RelationGetDescr(rel);
	if (match && desc->natts < Natts_events)
		match = false;
	for (int i = 0; match && i < Natts_events; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != events_types[i])
			match = false;
	}

	/* the log is the extension's own table, not any look-alike */
	if (match)
	{
		Oid			ext = get_extension_oid("pg_cqrs", true);

		match = OidIsValid(ext) &&
			getExtensionOfObject(RelationRelationId, relid) == ext;
	}

	if (match)
		events_relid = relid;
	else
		not_events_relid = relid;
	return match;
}

/* ----------------------------------------------------------------------
 * JSON
 * ----------------------------------------------------------------------
 */

/*
 * Append s[0..len) as a JSON string.  Like escape_json(), but with a length,
 * so text datums need no NUL-terminated copy, and copying runs of ordinary
 * bytes at once.  Text never contains NUL; everything from U+0080 up is
 * valid UTF-8 already and is passed through.
 */
static void
append_json_string(StringInfo buf, const char *s, int len)
{
	const char *end = s + len;
	const char *run = s;

	enlargeStringInfo(buf, len + 2);
	appendStringInfoCharMacro(buf, '"');
	for (const char *p = s; p < end; p++)
	{
		unsigned char c = (unsigned char) *p;
		const char *esc;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		if (p > run)
			appendBinaryStringInfo(buf, run, p - run);
		run = p + 1;
		switch (c)
		{
			case '"':
				esc = "\\\"";
				break;
			case '\\':
				esc = "\\\\";
				break;
			case '\b':
				esc = "\\b";
				break;
			case '\f':
				esc = "\\f";
				break;
			case '\n':
				esc = "\\n";
				break;
			case '\r':
				esc = "\\r";
				break;
			case '\t':
				esc = "\\t";
				break;
			default:
				appendStringInfo(buf, "\\u%04x", c);
				continue;
		}
		appendBinaryStringInfo(buf, esc, 2);
	}
	if (end > run)
		appendBinaryStringInfo(buf, run, end - run);
	appendStringInfoCharMacro(buf, '"');
}

static void
append_json_text(StringInfo buf, Datum d, bool isnull)
{
	text	   *t;

	if (isnull)
	{
		appendBinaryStringInfo(buf, "null", 4);
		return;
	}
	t = DatumGetTextPP(d);
	append_json_string(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
}

static void
append_json_int64(StringInfo buf, Datum d, bool isnull)
{
	char		num[MAXINT8LEN + 1];
	int			len;

	if (isnull)
	{
		appendBinaryStringInfo(buf, "null", 4);
		return;
	}
	len = pg_lltoa(DatumGetInt64(d), num);
	appendBinaryStringInfo(buf, num, len);
}

static void
append_json_uuid(StringInfo buf, const pg_uuid_t *uuid)
{
	static const char hex[] = "0123456789abcdef";
	char		out[UUID_LEN * 2 + 6];
	char	   *o = out;

	*o++ = '"';
	for (int i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*o++ = '-';
		*o++ = hex[uuid->data[i] >> 4];
		*o++ = hex[uuid->data[i] & 0x0F];
	}
	*o++ = '"';
	appendBinaryStringInfo(buf, out, o - out);
}

/* jsonb as JSON text; reorderbuffer has reassembled any TOASTed value. */
static void
append_json_jsonb(StringInfo buf, Datum d, bool isnull)
{
	Jsonb	   *jb;

	if (isnull)
	{
		appendBinaryStringInfo(buf, "null", 4);
		return;
	}
	jb = DatumGetJsonbP(d);
	(void) JsonbToCString(buf, &jb->root, VARSIZE(jb));
}

/*
 * recorded_at in ISO 8601, always in UTC ("2026-01-02T03:04:05.678901+00:00"),
 * so the output does not depend on the consuming session's TimeZone.  The
 * events of a transaction usually share their timestamp: the last one is
 * kept formatted.
 */
static void
append_json_timestamptz(DecoderState *st, StringInfo buf, Datum d, bool isnull)
{
	TimestampTz ts;

	if (isnull)
	{
		appendBinaryStringInfo(buf, "null", 4);
		return;
	}
	ts = DatumGetTimestampTz(d);
	if (st->last_ts_len == 0 || ts != st->last_ts)
	{
		int			utc = 0;

		JsonEncodeDateTime(st->last_ts_text, d, TIMESTAMPTZOID, &utc);
		st->last_ts = ts;
		st->last_ts_len = strlen(st->last_ts_text);
	}
	appendStringInfoCharMacro(buf, '"');
	appendBinaryStringInfo(buf, st->last_ts_text, st->last_ts_len);
	appendStringInfoCharMacro(buf, '"');
}

/*
 * The end every object of a transaction shares: the LSN that ends its
 * commit record (what a consumer confirms to move past it; non-decreasing
 * along the stream) and its top-level xid.
 */
static void
append_tail(DecoderState *st, StringInfo buf, ReorderBufferTXN *txn)
{
	if (st->tail_len == 0)
		st->tail_len = snprintf(st->tail, sizeof(st->tail),
								",\"lsn\":\"%X/%X\",\"xid\":%u}",
								LSN_FORMAT_ARGS(txn->end_lsn), txn->xid);
	appendBinaryStringInfo(buf, st->tail, st->tail_len);
}

#define APPEND_LITERAL(buf, lit) appendBinaryStringInfo((buf), (lit), sizeof(lit) - 1)

/* ----------------------------------------------------------------------
 * Callbacks
 * ----------------------------------------------------------------------
 */

static void
decoder_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt,
				bool is_init)
{
	DecoderState *st = palloc0(sizeof(DecoderState));

	st->context = AllocSetContextCreate(ctx->context,
										"pg_cqrs decoder change context",
										ALLOCSET_DEFAULT_SIZES);
	st->include_metadata = true;
	st->format = DECODER_FORMAT_JSON;
	st->outbox_slot = -1;
	st->values = palloc(MaxHeapAttributeNumber * sizeof(Datum));
	st->nulls = palloc(MaxHeapAttributeNumber * sizeof(bool));
	ctx->output_plugin_private = st;

	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;

	if (!decoder_callbacks_registered)
	{
		CacheRegisterRelcacheCallback(decoder_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, decoder_namespace_callback,
									  (Datum) 0);
		decoder_callbacks_registered = true;
	}

	parse_options(ctx->output_plugin_options, st);

	/* A new slot of this name starts with no delivery history. */
	if (is_init && ctx->slot != NULL)
		CqrsOutboxForgetSlot(NameStr(ctx->slot->data.name));
}

static void
decoder_shutdown(LogicalDecodingContext *ctx)
{
	DecoderState *st = ctx->output_plugin_private;

	/* everything else lives in ctx->context, which goes with the context */
	MemoryContextDelete(st->context);
}

static void
decoder_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	DecoderState *st = ctx->output_plugin_private;

	st->wrote = false;
	st->lines = 0;
	st->max_position = 0;
	st->tail_len = 0;
	st->dropped = 0;
}

static void
decoder_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   XLogRecPtr commit_lsn)
{
	DecoderState *st = ctx->output_plugin_private;

	/* one warning per transaction, however many messages it forged */
	if (st->dropped > 0)
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg_plural("skipped %d logical decoding message with prefix \"%s\" that cqrs.publish did not write",
							   "skipped %d logical decoding messages with prefix \"%s\" that cqrs.publish did not write",
							   st->dropped, st->dropped, CQRS_MESSAGE_PREFIX),
				 errdetail_plural("Transaction %u wrote it at %X/%X. %s",
								  "Transaction %u wrote them, the first at %X/%X. %s",
								  st->dropped, txn->xid,
								  LSN_FORMAT_ARGS(st->dropped_lsn), st->dropped_why),
				 errhint("Only cqrs.publish() can write messages that the pg_cqrs output plugin emits.")));

	/*
	 * The commit line.  The commit callback's write location, which the
	 * walsender sends as the message's start, is txn->end_lsn: the same LSN
	 * as the lsn field, and safe to confirm once this line is processed.
	 */
	if (st->transaction_end && st->wrote)
	{
		OutputPluginPrepareWrite(ctx, true);
		appendStringInfo(ctx->out,
						 "{\"commit\":{\"lsn\":\"%X/%X\",\"xid\":%u,\"lines\":" INT64_FORMAT "}}",
						 LSN_FORMAT_ARGS(txn->end_lsn), txn->xid, st->lines);
		OutputPluginWrite(ctx, true);
	}

	if (st->max_position > 0 && ctx->slot != NULL)
		CqrsOutboxNoteDecoded(ctx->slot, &st->outbox_slot, txn->end_lsn,
							  st->max_position);

	/* for lag tracking, and a keepalive for skipped transactions */
	OutputPluginUpdateProgress(ctx, !st->wrote);
	st->changes = 0;
}

/* On PostgreSQL 15, keep the connection alive inside huge transactions. */
static inline void
decoder_tick(LogicalDecodingContext *ctx, DecoderState *st)
{
#if CQRS_DECODER_PROGRESS_IN_TXN
	if (++st->changes >= DECODER_PROGRESS_EVERY)
	{
		OutputPluginUpdateProgress(ctx, false);
		st->changes = 0;
	}
#endif
}

/*
 * One row inserted into some table.  Rows of cqrs.events that pass the
 * filters become one JSON object each.
 *
 * Memory: everything allocated here (detoasted values, the jsonb output)
 * goes into st->context, which is reset before returning.
 */
static void
decoder_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   Relation relation, ReorderBufferChange *change)
{
	DecoderState *st = ctx->output_plugin_private;
	HeapTuple	tuple;
	Datum	   *values = st->values;
	bool	   *nulls = st->nulls;
	MemoryContext old;
	StringInfo	out;

	decoder_tick(ctx, st);

	/* the log is append-only: only inserts are events */
	if (change->action != REORDER_BUFFER_CHANGE_INSERT ||
		!is_event_log(relation))
		return;
	tuple = CqrsChangeNewTuple(change);
	if (tuple == NULL)
		return;

	old = MemoryContextSwitchTo(st->context);

	heap_deform_tuple(tuple, RelationGetDescr(relation), values, nulls);

	/* every event counts for delivery, filtered or not */
	if (!nulls[Anum_events_position - 1])
		st->max_position = Max(st->max_position,
							   DatumGetInt64(values[Anum_events_position - 1]));

	if (st->categories.nitems > 0)
	{
		text	   *stream;
		const char *s;
		const char *dash;
		int			len;

		if (nulls[Anum_events_stream - 1])
			goto done;
		stream = DatumGetTextPP(values[Anum_events_stream - 1]);
		s = VARDATA_ANY(stream);
		len = VARSIZE_ANY_EXHDR(stream);
		dash = memchr(s, '-', len);
		if (!filter_match(&st->categories, s, dash ? dash - s : len))
			goto done;
	}
	if (st->types.nitems > 0)
	{
		text	   *type;

		if (nulls[Anum_events_type - 1])
			goto done;
		type = DatumGetTextPP(values[Anum_events_type - 1]);
		if (!filter_match(&st->types, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type)))
			goto done;
	}

	OutputPluginPrepareWrite(ctx, true);
	out = ctx->out;

	if (st->format == DECODER_FORMAT_JSON)
	{
		APPEND_LITERAL(out, "{\"position\":");
		append_json_int64(out, values[0], nulls[0]);
		APPEND_LITERAL(out, ",\"stream\":");
		append_json_text(out, values[1], nulls[1]);
		APPEND_LITERAL(out, ",\"version\":");
		append_json_int64(out, values[2], nulls[2]);
		APPEND_LITERAL(out, ",\"id\":");
		if (nulls[3])
			APPEND_LITERAL(out, "null");
		else
			append_json_uuid(out, DatumGetUUIDP(values[3]));
		APPEND_LITERAL(out, ",\"type\":");
		append_json_text(out, values[4], nulls[4]);
		APPEND_LITERAL(out, ",\"data\":");
		append_json_jsonb(out, values[5], nulls[5]);
		if (st->include_metadata)
		{
			APPEND_LITERAL(out, ",\"metadata\":");
			append_json_jsonb(out, values[6], nulls[6]);
		}
		APPEND_LITERAL(out, ",\"recorded_at\":");
		append_json_timestamptz(st, out, values[7], nulls[7]);
	}
	else
	{
		/*
		 * The row an outbox table has for Debezium's outbox event router
		 * (io.debezium.transforms.outbox.EventRouter) under its default
		 * field names: id, aggregatetype (routes to a topic), aggregateid
		 * (the message key), type and payload; then the rest of the event.
		 */
		APPEND_LITERAL(out, "{\"id\":");
		if (nulls[3])
			APPEND_LITERAL(out, "null");
		else
			append_json_uuid(out, DatumGetUUIDP(values[3]));
		APPEND_LITERAL(out, ",\"aggregatetype\":");
		if (nulls[1])
			APPEND_LITERAL(out, "null");
		else
		{
			text	   *stream = DatumGetTextPP(values[1]);
			const char *s = VARDATA_ANY(stream);
			int			len = VARSIZE_ANY_EXHDR(stream);
			const char *dash = memchr(s, '-', len);

			append_json_string(out, s, dash ? dash - s : len);
		}
		APPEND_LITERAL(out, ",\"aggregateid\":");
		append_json_text(out, values[1], nulls[1]);
		APPEND_LITERAL(out, ",\"type\":");
		append_json_text(out, values[4], nulls[4]);
		APPEND_LITERAL(out, ",\"payload\":");
		append_json_jsonb(out, values[5], nulls[5]);
		APPEND_LITERAL(out, ",\"position\":");
		append_json_int64(out, values[0], nulls[0]);
		APPEND_LITERAL(out, ",\"version\":");
		append_json_int64(out, values[2], nulls[2]);
		if (st->include_metadata)
		{
			APPEND_LITERAL(out, ",\"metadata\":");
			append_json_jsonb(out, values[6], nulls[6]);
		}
		APPEND_LITERAL(out, ",\"recorded_at\":");
		append_json_timestamptz(st, out, values[7], nulls[7]);
	}
	append_tail(st, out, txn);

	OutputPluginWrite(ctx, true);
	st->wrote = true;
	st->lines++;

done:
	MemoryContextSwitchTo(old);
	MemoryContextReset(st->context);
}

/*
 * A logical decoding message.  Only transactional messages with our prefix
 * are ours; they arrive here only once their transaction has committed, in
 * order with its changes, and are emitted only if cqrs.publish wrote them
 * in that transaction (outbox.c checks).
 */
static void
decoder_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				XLogRecPtr message_lsn, bool transactional,
				const char *prefix, Size sz, const char *message)
{
	DecoderState *st = ctx->output_plugin_private;
	CqrsPublished msg;
	MemoryContext old;
	StringInfoData payload;
	StringInfo	out;
	const char *why;

	decoder_tick(ctx, st);

	if (!transactional || strcmp(prefix, CQRS_MESSAGE_PREFIX) != 0)
		return;

	old = MemoryContextSwitchTo(st->context);

	why = CqrsDecodePublished(message, sz, MyDatabaseId, txn->xid, &msg);
	if (why == NULL)
	{
		if (st->topics.nitems > 0 &&
			!filter_match(&st->topics, msg.topic, msg.topic_len))
			goto done;

		/* the payload, written out again before anything goes out */
		initStringInfo(&payload);
		if (!CqrsPublishedPayload(&msg, &payload))
			why = "Its payload is not valid JSON.";
	}
	if (why != NULL)
	{
		/* warned about at commit: see decoder_commit */
		if (st->dropped++ == 0)
		{
			st->dropped_lsn = message_lsn;
			st->dropped_why = why;
		}
		goto done;
	}

	OutputPluginPrepareWrite(ctx, true);
	out = ctx->out;

	if (st->format == DECODER_FORMAT_JSON)
	{
		APPEND_LITERAL(out, "{\"topic\":");
		append_json_string(out, msg.topic, msg.topic_len);
		APPEND_LITERAL(out, ",\"key\":");
		if (msg.key == NULL)
			APPEND_LITERAL(out, "null");
		else
			append_json_string(out, msg.key, msg.key_len);
		APPEND_LITERAL(out, ",\"payload\":");
		appendBinaryStringInfo(out, payload.data, payload.len);
		APPEND_LITERAL(out, ",\"id\":");
		append_json_uuid(out, &msg.id);
	}
	else
	{
		/* the topic routes, the key keys; no event type */
		APPEND_LITERAL(out, "{\"id\":");
		append_json_uuid(out, &msg.id);
		APPEND_LITERAL(out, ",\"aggregatetype\":");
		append_json_string(out, msg.topic, msg.topic_len);
		APPEND_LITERAL(out, ",\"aggregateid\":");
		if (msg.key == NULL)
			APPEND_LITERAL(out, "null");
		else
			append_json_string(out, msg.key, msg.key_len);
		APPEND_LITERAL(out, ",\"type\":null,\"payload\":");
		appendBinaryStringInfo(out, payload.data, payload.len);
	}
	append_tail(st, out, txn);

	OutputPluginWrite(ctx, true);
	st->wrote = true;
	st->lines++;

done:
	MemoryContextSwitchTo(old);
	MemoryContextReset(st->context);
}
