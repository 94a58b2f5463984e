/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		cqrs.publish(), the published-message format, and delivery tracking
 *		behind cqrs.outbox_status.
 *
 * Published messages.  cqrs.publish(topic, payload, key) writes a
 * transactional logical decoding message (LogLogicalMessage) with the
 * prefix "pg_cqrs" and no table row.  Logical decoding hands it to output
 * plugins only when its transaction commits, in order with the
 * transaction's changes, and never when the transaction (or the
 * subtransaction that wrote it) rolls back.  The body is binary, versioned,
 * and carries a random id so consumers can deduplicate messages as they do
 * events:
 *
 *	uint8	format version (2)
 *	uint8	flags (bit 0: a key follows)
 *	16		id (uuid)
 *	uint32	topic length, then the topic's bytes
 *	uint32	key length, then the key's bytes (only with flag bit 0)
 *	the payload as JSON text (jsonb's output)
 *	32		authentication code (HMAC-SHA-256, see below)
 *
 * Integers are in the server's byte order: WAL never leaves it.
 *
 * Authentication.  pg_logical_emit_message() is executable by PUBLIC and
 * takes any prefix, so a message with our prefix proves nothing about who
 * wrote it, and WAL records carry no role.  Only cqrs.publish (EXECUTE on
 * it is the publish right, revoked from PUBLIC since 0.4.0) can therefore
 * vouch for a message: it ends the body with
 *
 *	HMAC-SHA-256(key, database OID || top-level full transaction id || body)
 *
 * and the decoder drops every message whose code does not match for the
 * transaction it is decoded in.  The database OID and the 64-bit
 * transaction id (epoch included, so the binding survives xid wraparound)
 * bind the message to the one transaction that wrote it: a genuine body
 * seen by somebody who may read WAL and emitted again in another
 * transaction is refused.
 *
 * The key is HMAC-SHA-256(mock_authentication_nonce, a label).  The nonce
 * is 32 random bytes that initdb writes into pg_control for SCRAM's mock
 * authentication, which depends on its secrecy; it is never exposed to SQL
 * (pg_control_init() and friends leave it out).  Using it rather than a
 * key file of our own gives everything a key file would have to be made
 * to do: it exists from initdb on (no first-use race, no file mode to get
 * right, nothing to fsync), survives restarts and crashes with the WAL it
 * authenticates, and travels with the cluster wherever WAL is decoded --
 * pg_basebackup and pg_rewind copy pg_control, so physical standbys
 * (PostgreSQL 16 decodes on standbys) and promoted replicas hold the same
 * key.  pg_upgrade makes a new cluster and so a new key, which is harmless:
 * no slot carries undecoded WAL across it (PostgreSQL 17 migrates only
 * slots that have consumed everything).  Deriving a key through HMAC keeps
 * ours independent of the nonce's own use.  Who can read pg_control can
 * forge messages: the OS user, superusers and roles allowed to read server
 * files (pg_read_server_files, or EXECUTE on pg_read_binary_file), which
 * PostgreSQL documents as equivalent to superuser anyway.
 *
 * The decoder trusts nothing else either: lengths are checked before
 * anything is read, topic and key must be valid in the database encoding,
 * and the payload is parsed and written out again by the decoder itself, so
 * whatever a body holds, every line is one JSON object (decoder.c).
 *
 * Delivery tracking.  A slot's confirmed_flush_lsn says how far its consumer
 * got in WAL, not in the log.  When the library is preloaded, the decoder
 * records, for each slot, recent pairs (end of a commit record, highest
 * event position in that transaction).  Once the consumer confirms an LSN at
 * or past a pair's, every event of that transaction is delivered (or was
 * filtered out, which is as good): the slot has delivered up to that
 * position.  cqrs.outbox_status subtracts it from the log's head, as
 * projection_status does, to give a lag in positions.  The pairs are kept in
 * a small array per slot; when it is full, one pair merges into the next
 * (the later LSN, the higher position), which can only make the answer
 * later, never wrong.  Which one matters: a walsender decodes far ahead of
 * what its consumer confirms, and merging always the two oldest (as 0.5
 * did) pushed the oldest LSN known past the consumer's confirmed one as soon
 * as it was more than 32 transactions behind -- the lag stayed NULL under
 * any steady load.  So the oldest pair is never merged away, and of the
 * others the one whose neighbours are closest in WAL goes: the pairs stay
 * spread evenly between the oldest and the newest, and a consumer anywhere
 * in between gets an answer about a thirty-second of its backlog late.
 * Right after a server start
 * nothing is known until the decoder has seen a transaction with events and
 * the consumer has confirmed it: the lag is NULL meanwhile.
 *
 * Locking: one LWLock protects the whole array.  The decoder takes it once
 * per decoded transaction that contains events; the status view takes it in
 * shared mode.
 *
 * Who sees it.  cqrs.outbox_status is readable by pg_monitor and by whom
 * the DBA grants SELECT on it.  A view calls functions with its reader's
 * rights, so cqrs.outbox_delivered stays executable by PUBLIC and checks
 * instead that its caller may read the view: the delivered positions tell
 * how far the log goes, which a role that may read neither the view nor
 * cqrs.events has no business knowing.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/outbox.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_control.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "mb/pg_wchar.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_publish);
PG_FUNCTION_INFO_V1(cqrs_outbox_delivered);

#define PUBLISHED_VERSION	2
#define PUBLISHED_HAS_KEY	0x01
#define PUBLISHED_HEADER	(1 + 1 + UUID_LEN)
#define PUBLISHED_MAC_LEN	PG_SHA256_DIGEST_LENGTH

/* The label the message key is derived with: changing it changes the key. */
#define PUBLISHED_KEY_LABEL "pg_cqrs outbox message authentication, format 2"

/* ----------------------------------------------------------------------
 * Authentication
 * ----------------------------------------------------------------------
 */

static uint8 message_key[PG_SHA256_DIGEST_LENGTH];
static bool message_key_ready = false;

/* HMAC-SHA-256 of the concatenation of up to three parts. */
static void
hmac_sha256(const uint8 *key, size_t keylen,
			const void *a, size_t alen, const void *b, size_t blen,
			const void *c, size_t clen, uint8 *out)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (pg_hmac_init(ctx, key, keylen) < 0 ||
		pg_hmac_update(ctx, a, alen) < 0 ||
		(blen > 0 && pg_hmac_update(ctx, b, blen) < 0) ||
		(clen > 0 && pg_hmac_update(ctx, c, clen) < 0) ||
		pg_hmac_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
	{
		const char *why = pg_hmac_error(ctx);

		pg_hmac_free(ctx);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute an HMAC-SHA-256: %s", why)));
	}
	pg_hmac_free(ctx);
}

/*
 * The authentication code of a message body (everything before the code)
 * written in database dboid by the transaction fxid.  The key is derived
 * once per process; see the file header.
 */
static void
message_mac(Oid dboid, FullTransactionId fxid, const char *body, Size len,
			uint8 *mac)
{
	uint8		binding[sizeof(Oid) + sizeof(uint64)];
	uint64		xid64 = U64FromFullTransactionId(fxid);

	if (!message_key_ready)
	{
		const char *nonce = GetMockAuthenticationNonce();

		hmac_sha256((const uint8 *) nonce, MOCK_AUTH_NONCE_LEN,
					PUBLISHED_KEY_LABEL, strlen(PUBLISHED_KEY_LABEL),
					NULL, 0, NULL, 0, message_key);
		message_key_ready = true;
	}
	memcpy(binding, &dboid, sizeof(Oid));
	memcpy(binding + sizeof(Oid), &xid64, sizeof(uint64));
	hmac_sha256(message_key, sizeof(message_key), binding, sizeof(binding),
				body, len, NULL, 0, mac);
}

/* ----------------------------------------------------------------------
 * The message format
 * ----------------------------------------------------------------------
 */

static void
append_uint32(StringInfo buf, uint32 v)
{
	appendBinaryStringInfo(buf, (const char *) &v, sizeof(v));
}

/*
 * The full id of a transaction being decoded, which cqrs.publish bound
 * its messages to.  A decoded transaction is older than the next xid and,
 * the slot holding back the catalog's freeze horizon, by less than 2^31:
 * its epoch is the next xid's, or the one before when the 32-bit counter
 * has wrapped since.
 */
static FullTransactionId
decoded_full_xid(TransactionId xid)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint32		epoch = EpochFromFullTransactionId(next);

	if (xid >= XidFromFullTransactionId(next) && epoch > 0)
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

/*
 * CqrsDecodePublished
 *		Read a message body that cqrs.publish wrote in database dboid,
 *		in the transaction being decoded, whose top-level xid is xid.
 *
 * Returns NULL and fills msg when the body is one; otherwise returns why
 * not, as a phrase for a message's detail.  The authentication code is
 * checked before anything else in the body is looked at.  topic, key and
 * payload point into the body; the payload is not parsed here, but by
 * CqrsPublishedPayload as it writes it out again.
 */
const char *
CqrsDecodePublished(const char *body, Size size, Oid dboid, TransactionId xid,
					CqrsPublished *msg)
{
	const char *p = body;
	const char *end;
	int			encoding = GetDatabaseEncoding();
	uint8		mac[PUBLISHED_MAC_LEN];
	uint8		flags;
	uint32		len;

	if (size < PUBLISHED_HEADER + sizeof(uint32) + PUBLISHED_MAC_LEN)
		return "It is too short to be one.";
	if (p[0] != PUBLISHED_VERSION)
		return "Its format version is not the one this pg_cqrs writes.";
	end = body + size - PUBLISHED_MAC_LEN;
	message_mac(dboid, decoded_full_xid(xid), body, end - body, mac);
	if (timingsafe_bcmp(mac, end, PUBLISHED_MAC_LEN) != 0)
		return "Its authentication code does not match its transaction.";

	/*
	 * Authenticated: cqrs.publish wrote it, in this transaction.  Checked
	 * all the same, so that a bug cannot turn into reading out of bounds.
	 */
	flags = (uint8) p[1];
	if ((flags & ~PUBLISHED_HAS_KEY) != 0)
		return "Its flags are unknown.";
	memcpy(msg->id.data, p + 2, UUID_LEN);
	p += PUBLISHED_HEADER;

	memcpy(&len, p, sizeof(len));
	p += sizeof(len);
	if (len == 0 || len > end - p ||
		pg_encoding_verifymbstr(encoding, p, len) != len)
		return "Its topic is malformed.";
	msg->topic = p;
	msg->topic_len = len;
	p += len;

	msg->key = NULL;
	msg->key_len = 0;
	if (flags & PUBLISHED_HAS_KEY)
	{
		if (end - p < sizeof(len))
			return "Its key is malformed.";
		memcpy(&len, p, sizeof(len));
		p += sizeof(len);
		if (len > end - p ||
			pg_encoding_verifymbstr(encoding, p, len) != len)
			return "Its key is malformed.";
		msg->key = p;
		msg->key_len = len;
		p += len;
	}

	msg->payload = p;
	msg->payload_len = end - p;
	if (msg->payload_len == 0)
		return "Its payload is empty.";
	return NULL;
}

/*
 * A JSON text written out again, token by token: the JSON of a published
 * message's payload.  The lexer checks the text and hands over each token
 * (strings de-escaped); we write every token ourselves in jsonb's text
 * layout ("{"a": 1, "b": [true, null]}"), escaping strings anew.  So the
 * output is always one JSON value on one line, whatever the input's
 * whitespace and escapes were; for what cqrs.publish writes (jsonb's output
 * already) it is the same text.
 */
typedef struct ReemitState
{
	StringInfo	out;
	bool		first;			/* no member or element yet in the current
								 * object or array */
} ReemitState;

static CqrsJsonAction
reemit_object_start(void *arg)
{
	ReemitState *rs = arg;

	appendStringInfoCharMacro(rs->out, '{');
	rs->first = true;
	CQRS_JSON_ACTION_DONE;
}

static CqrsJsonAction
reemit_object_end(void *arg)
{
	ReemitState *rs = arg;

	appendStringInfoCharMacro(rs->out, '}');
	rs->first = false;
	CQRS_JSON_ACTION_DONE;
}

static CqrsJsonAction
reemit_array_start(void *arg)
{
	ReemitState *rs = arg;

	appendStringInfoCharMacro(rs->out, '[');
	rs->first = true;
	CQRS_JSON_ACTION_DONE;
}

static CqrsJsonAction
reemit_array_end(void *arg)
{
	ReemitState *rs = arg;

	appendStringInfoCharMacro(rs->out, ']');
	rs->first = false;
	CQRS_JSON_ACTION_DONE;
}

static CqrsJsonAction
reemit_field_start(void *arg, char *fname, bool isnull)
{
	ReemitState *rs = arg;

	if (!rs->first)
		appendBinaryStringInfo(rs->out, ", ", 2);
	rs->first = false;
	escape_json(rs->out, fname);
	appendBinaryStringInfo(rs->out, ": ", 2);
	CQRS_JSON_ACTION_DONE;
}

static CqrsJsonAction
reemit_element_start(void *arg, bool isnull)
{
	ReemitState *rs = arg;

	if (!rs->first)
		appendBinaryStringInfo(rs->out, ", ", 2);
	rs->first = false;
	CQRS_JSON_ACTION_DONE;
}

/*
 * A scalar.  A number's token is the text the lexer matched against JSON's
 * number grammar (digits, '-', '+', '.', 'e', 'E' only); true, false and
 * null are written as literals.
 */
static CqrsJsonAction
reemit_scalar(void *arg, char *token, JsonTokenType tokentype)
{
	ReemitState *rs = arg;

	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			escape_json(rs->out, token);
			break;
		case JSON_TOKEN_NUMBER:
			appendStringInfoString(rs->out, token);
			break;
		case JSON_TOKEN_TRUE:
			appendBinaryStringInfo(rs->out, "true", 4);
			break;
		case JSON_TOKEN_FALSE:
			appendBinaryStringInfo(rs->out, "false", 5);
			break;
		default:
			appendBinaryStringInfo(rs->out, "null", 4);
			break;
	}
	CQRS_JSON_ACTION_DONE;
}

/*
 * CqrsPublishedPayload
 *		Append the payload of a decoded message to buf, written out again
 *		(above).  False, with buf in an unspecified state, when it is not
 *		valid JSON.
 */
bool
CqrsPublishedPayload(const CqrsPublished *msg, StringInfo buf)
{
	ReemitState rs;
	JsonSemAction sem;

	memset(&sem, 0, sizeof(sem));
	rs.out = buf;
	rs.first = true;
	sem.semstate = &rs;
	sem.object_start = reemit_object_start;
	sem.object_end = reemit_object_end;
	sem.array_start = reemit_array_start;
	sem.array_end = reemit_array_end;
	sem.object_field_start = reemit_field_start;
	sem.array_element_start = reemit_element_start;
	sem.scalar = reemit_scalar;
	return CqrsJsonParse(msg->payload, msg->payload_len, GetDatabaseEncoding(),
						 true, &sem);
}

/*
 * cqrs.publish(topic text, payload jsonb, key text DEFAULT NULL) RETURNS pg_lsn
 *
 * Writes a transactional message for outbox consumers; returns its LSN.
 * Not STRICT: NULL arguments are errors (the key may be NULL).  EXECUTE is
 * the publish right (revoked from PUBLIC); the body is authenticated for
 * this transaction (see the file header), which assigns it an xid if it
 * has none yet -- writing the message would anyway.
 */
Datum
cqrs_publish(PG_FUNCTION_ARGS)
{
	text	   *topic;
	text	   *key = NULL;
	Jsonb	   *payload;
	StringInfoData buf;
	pg_uuid_t	id;
	XLogRecPtr	lsn;
	uint8		flags = 0;
	uint8		mac[PUBLISHED_MAC_LEN];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("To publish the JSON value null, pass 'null'::jsonb.")));
	topic = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(topic) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must not be empty")));
	if (!PG_ARGISNULL(2))
	{
		key = PG_GETARG_TEXT_PP(2);
		if (VARSIZE_ANY_EXHDR(key) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("key must not be empty"),
					 errhint("Pass NULL for a message without a key.")));
		flags |= PUBLISHED_HAS_KEY;
	}
	payload = PG_GETARG_JSONB_P(1);

	if (VARSIZE(payload) > (Size) cqrs_max_event_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("message is too large"),
				 errdetail("Its payload takes %zu bytes, more than cqrs.max_event_size (%d bytes).",
						   (Size) VARSIZE(payload), cqrs_max_event_size)));

	/*
	 * A message is written to WAL only: at a wal_level below logical no slot
	 * can exist to decode it and it would be lost without a trace.
	 */
	if (!XLogLogicalInfoActive())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cqrs.publish requires wal_level = logical"),
				 errhint("Set wal_level = logical and restart the server.")));
	PreventCommandIfReadOnly("cqrs.publish()");
	PreventCommandDuringRecovery("cqrs.publish()");

	if (!pg_strong_random(id.data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random message id")));
	id.data[6] = (id.data[6] & 0x0f) | 0x40;	/* version 4 */
	id.data[8] = (id.data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */

	initStringInfo(&buf);
	appendStringInfoChar(&buf, PUBLISHED_VERSION);
	appendStringInfoChar(&buf, (char) flags);
	appendBinaryStringInfo(&buf, (const char *) id.data, UUID_LEN);
	append_uint32(&buf, VARSIZE_ANY_EXHDR(topic));
	appendBinaryStringInfo(&buf, VARDATA_ANY(topic), VARSIZE_ANY_EXHDR(topic));
	if (key != NULL)
	{
		append_uint32(&buf, VARSIZE_ANY_EXHDR(key));
		appendBinaryStringInfo(&buf, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key));
	}
	(void) JsonbToCString(&buf, &payload->root, VARSIZE(payload));

	message_mac(MyDatabaseId, GetTopFullTransactionId(), buf.data, buf.len, mac);
	appendBinaryStringInfo(&buf, (const char *) mac, PUBLISHED_MAC_LEN);

	lsn = CqrsLogLogicalMessage(CQRS_MESSAGE_PREFIX, buf.data, buf.len, true);
	pfree(buf.data);

	PG_RETURN_LSN(lsn);
}

/* ----------------------------------------------------------------------
 * Delivery tracking in shared memory
 * ----------------------------------------------------------------------
 */

#define OUTBOX_PAIRS 32

typedef struct OutboxPair
{
	XLogRecPtr	end_lsn;		/* end of the commit record */
	int64		position;		/* highest event position of that transaction */
} OutboxPair;

typedef struct OutboxSlot
{
	NameData	name;			/* the slot's name; empty: entry free */
	int64		delivered;		/* highest position known delivered, or -1 */
	int			npairs;
	OutboxPair	pairs[OUTBOX_PAIRS + 1];	/* oldest first, end_lsn
											 * increasing; one more while
											 * merging */
} OutboxSlot;

typedef struct OutboxShared
{
	LWLock	   *lock;
	int			nslots;
	OutboxSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} OutboxShared;

static OutboxShared *outbox = NULL;

static Size
outbox_shmem_size(void)
{
	return add_size(offsetof(OutboxShared, slots),
					mul_size(Max(max_replication_slots, 1), sizeof(OutboxSlot)));
}

void
CqrsOutboxShmemRequest(void)
{
	RequestAddinShmemSpace(outbox_shmem_size());
	RequestNamedLWLockTranche("pg_cqrs outbox", 1);
}

void
CqrsOutboxShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	outbox = ShmemInitStruct("pg_cqrs outbox", outbox_shmem_size(), &found);
	if (!found)
	{
		outbox->lock = &(GetNamedLWLockTranche("pg_cqrs outbox"))->lock;
		outbox->nslots = Max(max_replication_slots, 1);
		for (int i = 0; i < outbox->nslots; i++)
		{
			MemSet(&outbox->slots[i], 0, sizeof(OutboxSlot));
			outbox->slots[i].delivered = -1;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The entry of a slot, or -1.  Caller holds the lock. */
static int
outbox_find(const char *name)
{
	for (int i = 0; i < outbox->nslots; i++)
		if (strcmp(NameStr(outbox->slots[i].name), name) == 0)
			return i;
	return -1;
}

/*
 * The entry of a slot, claimed if need be: a free one, or one whose slot no
 * longer exists (entries are not freed when slots are dropped).  -1 if none;
 * there are as many entries as replication slots, so that means a race with
 * a slot being dropped, and tracking merely stays unknown.  Caller holds the
 * lock exclusively.
 */
static int
outbox_claim(const char *name)
{
	int			i = outbox_find(name);

	if (i >= 0)
		return i;
	for (i = 0; i < outbox->nslots; i++)
	{
		OutboxSlot *e = &outbox->slots[i];

		if (NameStr(e->name)[0] == '\0' ||
			SearchNamedReplicationSlot(NameStr(e->name), true) == NULL)
		{
			namestrcpy(&e->name, name);
			e->delivered = -1;
			e->npairs = 0;
			return i;
		}
	}
	return -1;
}

/*
 * CqrsOutboxForgetSlot
 *		A slot of this name was just created: drop what an older slot of the
 *		same name left.
 */
void
CqrsOutboxForgetSlot(const char *name)
{
	int			i;

	if (outbox == NULL)
		return;
	LWLockAcquire(outbox->lock, LW_EXCLUSIVE);
	i = outbox_find(name);
	if (i >= 0)
	{
		outbox->slots[i].delivered = -1;
		outbox->slots[i].npairs = 0;
	}
	LWLockRelease(outbox->lock);
}

/*
 * CqrsOutboxNoteDecoded
 *		The decoder has decoded a committed transaction whose highest event
 *		position is position and whose commit record ends at end_lsn.
 *
 * Folds the pairs the consumer has confirmed into the entry's delivered
 * position first, then appends the new pair.  *cache remembers the entry's
 * index for the decoding session.
 */
void
CqrsOutboxNoteDecoded(ReplicationSlot *slot, int *cache, XLogRecPtr end_lsn,
					  int64 position)
{
	OutboxSlot *e;
	XLogRecPtr	confirmed;
	int			keep;

	if (outbox == NULL)
		return;

	SpinLockAcquire(&slot->mutex);
	confirmed = slot->data.confirmed_flush;
	SpinLockRelease(&slot->mutex);

	LWLockAcquire(outbox->lock, LW_EXCLUSIVE);
	if (*cache < 0 || *cache >= outbox->nslots ||
		strcmp(NameStr(outbox->slots[*cache].name), NameStr(slot->data.name)) != 0)
		*cache = outbox_claim(NameStr(slot->data.name));
	if (*cache < 0)
	{
		LWLockRelease(outbox->lock);
		return;
	}
	e = &outbox->slots[*cache];

	/* fold what the consumer confirmed */
	keep = 0;
	for (int i = 0; i < e->npairs; i++)
	{
		if (e->pairs[i].end_lsn <= confirmed)
			e->delivered = Max(e->delivered, e->pairs[i].position);
		else
			e->pairs[keep++] = e->pairs[i];
	}
	e->npairs = keep;

	/* decoding again after a reconnect: the pair may be known already */
	if (e->npairs > 0 && e->pairs[e->npairs - 1].end_lsn >= end_lsn)
	{
		LWLockRelease(outbox->lock);
		return;
	}

	e->pairs[e->npairs].end_lsn = end_lsn;
	e->pairs[e->npairs].position = position;
	e->npairs++;

	/*
	 * Full: merge one pair into its successor, which only delays what we
	 * report (see the file header): never the oldest, whose LSN is the
	 * first the consumer can reach, and never the one just added; of the
	 * others, the one whose neighbours are closest in WAL.
	 */
	if (e->npairs == OUTBOX_PAIRS + 1)
	{
		int			victim = 1;
		uint64		best = PG_UINT64_MAX;

		for (int i = 1; i < e->npairs - 1; i++)
		{
			uint64		span = e->pairs[i + 1].end_lsn - e->pairs[i - 1].end_lsn;

			if (span < best)
			{
				best = span;
				victim = i;
			}
		}
		e->pairs[victim + 1].position = Max(e->pairs[victim].position,
											e->pairs[victim + 1].position);
		memmove(&e->pairs[victim], &e->pairs[victim + 1],
				(e->npairs - victim - 1) * sizeof(OutboxPair));
		e->npairs--;
	}
	LWLockRelease(outbox->lock);
}

/*
 * cqrs.outbox_delivered(slot_name name, confirmed pg_lsn) RETURNS bigint
 *
 * The highest event position the slot's consumer is known to have received
 * (or skipped by its filters), given the LSN it confirmed; NULL when not
 * known (library not preloaded, server restarted since, nothing decoded).
 * The caller must be allowed to read cqrs.outbox_status or cqrs.events
 * (42501 otherwise), checked before anything is looked at.
 */
Datum
cqrs_outbox_delivered(PG_FUNCTION_ARGS)
{
	Name		name = PG_GETARG_NAME(0);
	XLogRecPtr	confirmed = PG_GETARG_LSN(1);
	int64		delivered = -1;
	int			i;
	Oid			nspid = get_namespace_oid("cqrs", false);
	Oid			view = get_relname_relid("outbox_status", nspid);
	Oid			events = get_relname_relid("events", nspid);

	if ((!OidIsValid(view) ||
		 pg_class_aclcheck(view, GetUserId(), ACL_SELECT) != ACLCHECK_OK) &&
		(!OidIsValid(events) ||
		 pg_class_aclcheck(events, GetUserId(), ACL_SELECT) != ACLCHECK_OK))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for view outbox_status"),
				 errhint("Grant pg_monitor, or SELECT on cqrs.outbox_status, to the role.")));

	if (outbox == NULL)
		PG_RETURN_NULL();

	LWLockAcquire(outbox->lock, LW_SHARED);
	i = outbox_find(NameStr(*name));
	if (i >= 0)
	{
		OutboxSlot *e = &outbox->slots[i];

		delivered = e->delivered;
		for (int j = 0; j < e->npairs; j++)
			if (e->pairs[j].end_lsn <= confirmed)
				delivered = Max(delivered, e->pairs[j].position);
	}
	LWLockRelease(outbox->lock);

	if (delivered < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(delivered);
}
