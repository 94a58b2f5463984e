/*-------------------------------------------------------------------------
 *
 * standby.c
 *		Appenders' floors carried to hot standbys through WAL.
 *
 * A reader on a standby faces what a reader on the primary faces (see
 * horizon.c): positions commit out of order, so it must stop below every
 * position a transaction still in flight on the primary may commit.  It
 * cannot see the primary's shared memory, so each appending transaction
 * also writes its floor into WAL, in a record of our own resource manager
 * (RegisterCustomRmgr), and the standby's startup process replays those
 * records into a table in the standby's shared memory.
 *
 * Records.
 *	FLOOR	{procno, database, top xid, floor}: written once per appending
 *			transaction, after the floor is published on the primary and
 *			before the transaction's first nextval.
 *	FLOORS	{scanned_from, the floors of every appender}: a scan of all the
 *			primary's slots, written at most once a second while appends
 *			run, so that a standby that starts replay in the middle of
 *			open transactions learns their floors too.
 *
 * Why a reader on the standby may trust the table.  It takes a snapshot S,
 * reads L = the highest position visible in S, and lowers L to the floor of
 * every entry of its database whose transaction S sees as in progress.
 * Take a position p <= L held by a transaction T.  Some transaction that
 * took a position >= p after T took p committed before S; T's FLOOR record
 * was inserted before T took p, so before that commit record, and replay
 * follows WAL order: the table holds T's floor unless a later transaction
 * of the same backend replaced it, which happens only after T ended.  So
 * if S sees T in progress, the result is below p; otherwise T is over and
 * any later snapshot shows p or never will.
 *
 * Readiness.  Replay starts at a checkpoint's redo pointer: the FLOOR
 * records of transactions that began appending before it are not replayed.
 * Until the table is known complete the reader refuses (55000).  It is
 * complete once a FLOORS record scanned at or after the redo pointer has
 * been replayed, or once no transaction older than the checkpoint's next
 * xid can still run (the snapshot's xmin has passed it): a transaction
 * given its xid after that point writes its FLOOR record after the redo
 * pointer.
 *
 * The table is indexed by the primary's PGPROC number: a standby has at
 * least the primary's max_connections and worker counts (hot standby
 * requires it), so the primary's numbers fit; a number that does not fit
 * marks the table unusable rather than dropping a floor.
 *
 * The resource manager's id is cqrs.wal_rmgr_id (128, the id PostgreSQL
 * reserves for experiments, unless set otherwise; 0 turns all this off).
 * Every server that replays this WAL (standbys, and the primary itself
 * after a crash) must load pg_cqrs with that id, or replay stops.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/standby.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "pg_cqrs.h"

#define XLOG_CQRS_FLOOR		0x00
#define XLOG_CQRS_FLOORS	0x10

/* (CqrsWalFloor, one appender's floor as WAL carries it, is in pg_cqrs.h) */

/* XLOG_CQRS_FLOORS: every floor published when the scan began */
typedef struct CqrsWalFloors
{
	XLogRecPtr	scanned_from;	/* insert position read before the scan */
	int32		nfloors;
	CqrsWalFloor floors[FLEXIBLE_ARRAY_MEMBER];
} CqrsWalFloors;

/* The standby's copy of one primary backend's latest floor. */
typedef struct CqrsStandbyEntry
{
	XLogRecPtr	set_at;			/* LSN of the record that set it */
	Oid			dboid;			/* InvalidOid: empty */
	TransactionId xid;
	int64		floor;
} CqrsStandbyEntry;

typedef struct CqrsStandbyShared
{
	LWLock	   *lock;			/* entries, flags below */
	XLogRecPtr	redo_start;		/* where this replay began */
	FullTransactionId first_unseen_xid; /* next xid at redo_start */
	bool		complete;		/* a FLOORS record covered redo_start */
	bool		overflow;		/* a procno did not fit */
	int			nentries;
	CqrsStandbyEntry entries[FLEXIBLE_ARRAY_MEMBER];
} CqrsStandbyShared;

static CqrsStandbyShared *standby = NULL;

static void standby_redo(XLogReaderState *record);
static void standby_desc(StringInfo buf, XLogReaderState *record);
static const char *standby_identify(uint8 info);
static void standby_startup(void);

static RmgrData standby_rmgr = {
	.rm_name = "pg_cqrs",
	.rm_redo = standby_redo,
	.rm_desc = standby_desc,
	.rm_identify = standby_identify,
	.rm_startup = standby_startup,
};

static int
standby_nentries(void)
{
	/* the primary's backends and auxiliary processes, with room to spare */
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts + 64;
}

static Size
standby_shmem_size(void)
{
	return add_size(offsetof(CqrsStandbyShared, entries),
					mul_size(standby_nentries(), sizeof(CqrsStandbyEntry)));
}

/*
 * CqrsStandbyInit
 *		Register the resource manager; from shared_preload_libraries only.
 */
void
CqrsStandbyInit(void)
{
	if (cqrs_wal_rmgr_id != 0)
		RegisterCustomRmgr((RmgrId) cqrs_wal_rmgr_id, &standby_rmgr);
}

void
CqrsStandbyShmemRequest(void)
{
	RequestAddinShmemSpace(standby_shmem_size());
	RequestNamedLWLockTranche("pg_cqrs standby", 1);
}

void
CqrsStandbyShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	standby = ShmemInitStruct("pg_cqrs standby", standby_shmem_size(), &found);
	if (!found)
	{
		standby->lock = &(GetNamedLWLockTranche("pg_cqrs standby"))->lock;
		standby->redo_start = InvalidXLogRecPtr;
		standby->first_unseen_xid = InvalidFullTransactionId;
		standby->complete = false;
		standby->overflow = false;
		standby->nentries = standby_nentries();
		for (int i = 0; i < standby->nentries; i++)
		{
			standby->entries[i].set_at = InvalidXLogRecPtr;
			standby->entries[i].dboid = InvalidOid;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Whether appends write their floors to WAL. */
bool
CqrsStandbyLogging(void)
{
	return cqrs_wal_rmgr_id != 0 && standby != NULL && XLogIsNeeded();
}

/*
 * CqrsStandbyLogFloor
 *		Write this transaction's floor to WAL; called once per appending
 *		transaction, after the floor is published and before its nextval.
 */
void
CqrsStandbyLogFloor(int64 floor)
{
	CqrsWalFloor rec;

	if (!CqrsStandbyLogging())
		return;
	rec.procno = CqrsMyProcIndex();
	rec.dboid = MyDatabaseId;
	rec.xid = GetTopTransactionId();
	rec.floor = floor;
	XLogBeginInsert();
	XLogRegisterData((char *) &rec, sizeof(rec));
	(void) XLogInsert((RmgrId) cqrs_wal_rmgr_id, XLOG_CQRS_FLOOR);
}

/*
 * CqrsStandbyLogAllFloors
 *		Write the floors horizon.c found in its slots, in a scan that began
 *		after it read scanned_from with GetXLogInsertRecPtr().
 */
void
CqrsStandbyLogAllFloors(XLogRecPtr scanned_from, const CqrsWalFloor *floors, int n)
{
	CqrsWalFloors head;

	if (!CqrsStandbyLogging())
		return;
	head.scanned_from = scanned_from;
	head.nfloors = n;
	XLogBeginInsert();
	XLogRegisterData((char *) &head, offsetof(CqrsWalFloors, floors));
	if (n > 0)
		XLogRegisterData((char *) floors, n * sizeof(CqrsWalFloor));
	XLogSetRecordFlags(XLOG_MARK_UNIMPORTANT);
	(void) XLogInsert((RmgrId) cqrs_wal_rmgr_id, XLOG_CQRS_FLOORS);
}

/* Store one floor replayed at lsn; only_older: keep entries set since. */
static void
store_floor(const CqrsWalFloor *f, XLogRecPtr lsn, XLogRecPtr only_older)
{
	CqrsStandbyEntry *e;

	if (f->procno < 0 || f->procno >= standby->nentries)
	{
		standby->overflow = true;
		return;
	}
	e = &standby->entries[f->procno];

	/*
	 * In a FLOORS record, a slot's value is at least as new as any FLOOR
	 * record inserted before the scan began, but a FLOOR record inserted
	 * after that may be newer than what the scan saw: keep it.
	 */
	if (!XLogRecPtrIsInvalid(only_older) && e->set_at >= only_older)
		return;
	e->set_at = lsn;
	e->dboid = f->dboid;
	e->xid = f->xid;
	e->floor = f->floor;
}

static void
standby_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	XLogRecPtr	lsn = record->ReadRecPtr;

	if (standby == NULL)
		return;					/* loaded without shared memory: nothing to keep */

	switch (info)
	{
		case XLOG_CQRS_FLOOR:
			LWLockAcquire(standby->lock, LW_EXCLUSIVE);
			store_floor((CqrsWalFloor *) XLogRecGetData(record), lsn, InvalidXLogRecPtr);
			LWLockRelease(standby->lock);
			break;
		case XLOG_CQRS_FLOORS:
			{
				CqrsWalFloors *rec = (CqrsWalFloors *) XLogRecGetData(record);

				LWLockAcquire(standby->lock, LW_EXCLUSIVE);
				for (int i = 0; i < rec->nfloors; i++)
					store_floor(&rec->floors[i], lsn, rec->scanned_from);
				if (rec->scanned_from >= standby->redo_start)
					standby->complete = true;
				LWLockRelease(standby->lock);
			}
			break;
		default:
			elog(PANIC, "pg_cqrs redo: unknown record type %u", info);
	}
}

static void
standby_desc(StringInfo buf, XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;

	if (info == XLOG_CQRS_FLOOR)
	{
		CqrsWalFloor *f = (CqrsWalFloor *) XLogRecGetData(record);

		appendStringInfo(buf, "procno %d db %u xid %u floor " INT64_FORMAT,
						 f->procno, f->dboid, f->xid, f->floor);
	}
	else if (info == XLOG_CQRS_FLOORS)
	{
		CqrsWalFloors *rec = (CqrsWalFloors *) XLogRecGetData(record);

		appendStringInfo(buf, "scanned from %X/%X, %d floors",
						 LSN_FORMAT_ARGS(rec->scanned_from), rec->nfloors);
	}
}

static const char *
standby_identify(uint8 info)
{
	switch (info & ~XLR_INFO_MASK)
	{
		case XLOG_CQRS_FLOOR:
			return "FLOOR";
		case XLOG_CQRS_FLOORS:
			return "FLOORS";
	}
	return NULL;
}

/*
 * Replay begins (crash recovery, archive recovery or a standby's start):
 * forget what an earlier replay learnt and note where this one starts.
 */
static void
standby_startup(void)
{
	if (standby == NULL)
		return;
	LWLockAcquire(standby->lock, LW_EXCLUSIVE);
	for (int i = 0; i < standby->nentries; i++)
	{
		standby->entries[i].set_at = InvalidXLogRecPtr;
		standby->entries[i].dboid = InvalidOid;
	}
	standby->redo_start = GetRedoRecPtr();
	standby->first_unseen_xid = ReadNextFullTransactionId();
	standby->complete = false;
	standby->overflow = false;
	LWLockRelease(standby->lock);
}

/*
 * CqrsStandbySafePosition
 *		The safe position on a hot standby (see the top of the file), or
 *		false if this standby cannot know it yet.
 */
bool
CqrsStandbySafePosition(Relation events, int64 *safe)
{
	Snapshot	snapshot;
	int64		result;
	bool		known = true;

	if (standby == NULL)
		return false;
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	result = CqrsMaxPosition(events, snapshot);

	LWLockAcquire(standby->lock, LW_SHARED);
	if (standby->overflow)
		known = false;
	else if (!standby->complete)
	{
		/* no transaction from before the replay's start can still run */
		TransactionId first = XidFromFullTransactionId(standby->first_unseen_xid);

		known = FullTransactionIdIsValid(standby->first_unseen_xid) &&
			TransactionIdFollowsOrEquals(snapshot->xmin, first);
	}
	if (known)
	{
		for (int i = 0; i < standby->nentries; i++)
		{
			CqrsStandbyEntry *e = &standby->entries[i];

			if (e->dboid != MyDatabaseId || e->floor >= result)
				continue;
			if (XidInMVCCSnapshot(e->xid, snapshot))
				result = e->floor;
		}
	}
	LWLockRelease(standby->lock);
	UnregisterSnapshot(snapshot);

	*safe = result;
	return known;
}
