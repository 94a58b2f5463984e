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
 *	uint8	format version (1)
 *	uint8	flags (bit 0: a key follows)
 *	16		id (uuid)
 *	uint32	topic length, then the topic's bytes
 *	uint32	key length, then the key's bytes (only with flag bit 0)
 *	the payload as JSON text (jsonb's output), to the end of the message
 *
 * Integers are in the server's byte order: WAL never leaves it.  Anybody
 * may call pg_logical_emit_message() with our prefix, so the decoder
 * trusts nothing in a message: lengths are checked, topic and key must be
 * valid in the database encoding, and the payload must parse as JSON
 * before a byte of it is written (jsonb's binary form would have been
 * cheaper to carry, but cannot be checked cheaply and would be read
 * blindly by JsonbToCString).
 *
 * Delivery tracking.  A slot's confirmed_flush_lsn says how far its consumer
 * got in WAL, not in the log.  When the library is preloaded, the decoder
 * records, for each slot, recent pairs (end of a commit record, highest
 * event position in that transaction).  Once the consumer confirms an LSN at
 * or past a pair's, every event of that transaction is delivered (or was
 * filtered out, which is as good): the slot has delivered up to that
 * position.  cqrs.outbox_status subtracts it from the log's head, as
 * projection_status does, to give a lag in positions.  The pairs are kept in
 * a small array per slot; when it is full the two oldest pairs merge, which
 * can only make the answer later, never wrong.  Right after a server start
 * nothing is known until the decoder has seen a transaction with events and
 * the consumer has confirmed it: the lag is NULL meanwhile.
 *
 * Locking: one LWLock protects the whole array.  The decoder takes it once
 * per decoded transaction that contains events; the status view takes it in
 * shared mode.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/outbox.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "mb/pg_wchar.h"
#include "utils/jsonb.h"
#include "utils/pg_lsn.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_publish);
PG_FUNCTION_INFO_V1(cqrs_outbox_delivered);

#define PUBLISHED_VERSION	1
#define PUBLISHED_HAS_KEY	0x01
#define PUBLISHED_HEADER	(1 + 1 + UUID_LEN)

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
 * CqrsDecodePublished
 *		Read a message body written by cqrs.publish.  Returns false when it
 *		is not one.  topic, key and payload point into the body.
 */
bool
CqrsDecodePublished(const char *body, Size size, CqrsPublished *msg)
{
	const char *p = body;
	const char *end = body + size;
	int			encoding = GetDatabaseEncoding();
	uint8		flags;
	uint32		len;

	if (size < PUBLISHED_HEADER + sizeof(uint32) || p[0] != PUBLISHED_VERSION)
		return false;
	flags = (uint8) p[1];
	if ((flags & ~PUBLISHED_HAS_KEY) != 0)
		return false;
	memcpy(msg->id.data, p + 2, UUID_LEN);
	p += PUBLISHED_HEADER;

	memcpy(&len, p, sizeof(len));
	p += sizeof(len);
	if (len == 0 || len > end - p ||
		pg_encoding_verifymbstr(encoding, p, len) != len)
		return false;
	msg->topic = p;
	msg->topic_len = len;
	p += len;

	msg->key = NULL;
	msg->key_len = 0;
	if (flags & PUBLISHED_HAS_KEY)
	{
		if (end - p < sizeof(len))
			return false;
		memcpy(&len, p, sizeof(len));
		p += sizeof(len);
		if (len > end - p ||
			pg_encoding_verifymbstr(encoding, p, len) != len)
			return false;
		msg->key = p;
		msg->key_len = len;
		p += len;
	}

	msg->payload = p;
	msg->payload_len = end - p;
	return msg->payload_len > 0 &&
		pg_encoding_verifymbstr(encoding, p, msg->payload_len) == msg->payload_len &&
		CqrsJsonIsValid(p, msg->payload_len, encoding);
}

/*
 * cqrs.publish(topic text, payload jsonb, key text DEFAULT NULL) RETURNS pg_lsn
 *
 * Writes a transactional message for outbox consumers; returns its LSN.
 * Not STRICT: NULL arguments are errors (the key may be NULL).
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
	OutboxPair	pairs[OUTBOX_PAIRS];	/* oldest first, end_lsn increasing */
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

	/* full: merge the two oldest, which only delays what we report */
	if (e->npairs == OUTBOX_PAIRS)
	{
		e->pairs[1].position = Max(e->pairs[0].position, e->pairs[1].position);
		memmove(&e->pairs[0], &e->pairs[1], (OUTBOX_PAIRS - 1) * sizeof(OutboxPair));
		e->npairs--;
	}
	e->pairs[e->npairs].end_lsn = end_lsn;
	e->pairs[e->npairs].position = position;
	e->npairs++;
	LWLockRelease(outbox->lock);
}

/*
 * cqrs.outbox_delivered(slot_name name, confirmed pg_lsn) RETURNS bigint
 *
 * The highest event position the slot's consumer is known to have received
 * (or skipped by its filters), given the LSN it confirmed; NULL when not
 * known (library not preloaded, server restarted since, nothing decoded).
 */
Datum
cqrs_outbox_delivered(PG_FUNCTION_ARGS)
{
	Name		name = PG_GETARG_NAME(0);
	XLogRecPtr	confirmed = PG_GETARG_LSN(1);
	int64		delivered = -1;
	int			i;

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
