/*-------------------------------------------------------------------------
 *
 * horizon.c
 *		The safe read position: how far a position-checkpointing reader may go.
 *
 * Positions come from a sequence, so they are handed out in real-time order
 * but committed in any order: transaction A takes position 5, B takes 6,
 * B commits first.  A reader that returned 6 and remembered "6" would never
 * see 5.  So readers (read_all, and later the projection worker) must stop
 * below every position an in-flight transaction may still commit.
 *
 * The usual trick, keeping xid8 per event and stopping at the snapshot's
 * xmin, is not enough: a transaction that got its xid early (say by an
 * earlier append to another stream) may take a position after a younger
 * transaction did, and then commit before it.  Instead each appending
 * backend publishes, in shared memory, a *floor*: a position strictly below
 * every position it holds or will take, valid until its transaction ends.
 *
 * Protocol.  The appender, at its transaction's first append:
 *	 1. reads F = the highest position appenders of its database have taken
 *		so far (they note each one in shared memory after nextval; seeded
 *		from the highest visible position); F < any position the sequence
 *		gives us from here on;
 *	 2. publishes F in its slot, then a full memory barrier;
 *	 3. only then calls nextval.
 * and clears the slot from an xact callback, which runs after
 * ProcArrayEndTransaction: its events are visible before the floor goes.
 *
 * The reader:
 *	 1. takes a fresh snapshot and reads L = the highest position in it;
 *	 2. reads every slot of its database: H = min(L, floors);
 *	 3. takes another fresh snapshot and returns what it shows up to H.
 * (The reader skips its own slot: its own uncommitted events are visible to
 * it, and any position it takes later is above everything it has seen.)
 * Every position p <= L was handed out before step 1 (its holder, or a later
 * position's holder, committed before the snapshot), hence published before
 * step 2 saw the slots.  If p's transaction was still running at step 2, H
 * is at most its floor < p; if it had ended, step 3's snapshot shows it or
 * it aborted.  Either way nothing at or below H can still appear.
 *
 * The sequence must not cache values per backend (CACHE 1), or "handed out
 * before" would not follow real time.  Floors of rolled-back subtransactions
 * stay until the top-level transaction ends, which is merely conservative.
 * A transaction that appended cannot be prepared for two-phase commit: its
 * floor would vanish with the backend's transaction while it stays in doubt.
 *
 * Locking: slots are single-writer (the owning backend) and read without
 * locks through atomics.  Shared memory exists only when the library is in
 * shared_preload_libraries; without it appends publish nothing and the
 * readers that need a safe position refuse to run.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/horizon.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pg_cqrs.h"

/*
 * One slot per PGPROC.  floor holds the published floor plus one, so that
 * zero means "not appending".
 */
typedef struct CqrsAppendSlot
{
	pg_atomic_uint64 floor;
	pg_atomic_uint32 dboid;
	pg_atomic_uint32 xid;		/* the appending top-level transaction */
} CqrsAppendSlot;

/*
 * The highest position appenders of one database have taken from its
 * position sequence, as they report after each nextval.  It never exceeds
 * the sequence's last value, so it is a valid floor for a position not yet
 * taken, found without an index probe.  Keyed by the sequence's OID as well:
 * a re-created extension starts its sequence again at 1, and a floor from
 * the old one would be too high, which is unsafe (too low is only slow).
 */
#define CQRS_MAX_DATABASES 64

typedef struct CqrsDbHead
{
	Oid			dboid;			/* InvalidOid: free */
	Oid			seqoid;
	pg_atomic_uint64 allocated;
} CqrsDbHead;

typedef struct CqrsHorizonShared
{
	slock_t		mutex;			/* protects claiming a CqrsDbHead */
	pg_atomic_uint64 floors_logged_at;	/* when all floors last went to WAL */
	CqrsDbHead	heads[CQRS_MAX_DATABASES];
	int			nslots;
	CqrsAppendSlot slots[FLEXIBLE_ARRAY_MEMBER];
} CqrsHorizonShared;

static CqrsHorizonShared *horizon = NULL;

/* Whether this backend's slot holds a floor for the current transaction. */
static bool floor_published = false;

static void horizon_xact_callback(XactEvent event, void *arg);
static void log_all_floors_now_and_then(void);

static int
horizon_nslots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS;
}

static Size
horizon_shmem_size(void)
{
	return add_size(offsetof(CqrsHorizonShared, slots),
					mul_size(horizon_nslots(), sizeof(CqrsAppendSlot)));
}

void
CqrsHorizonShmemRequest(void)
{
	RequestAddinShmemSpace(horizon_shmem_size());
}

void
CqrsHorizonShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	horizon = ShmemInitStruct("pg_cqrs horizon", horizon_shmem_size(), &found);
	if (!found)
	{
		SpinLockInit(&horizon->mutex);
		pg_atomic_init_u64(&horizon->floors_logged_at, 0);
		for (int i = 0; i < CQRS_MAX_DATABASES; i++)
		{
			horizon->heads[i].dboid = InvalidOid;
			horizon->heads[i].seqoid = InvalidOid;
			pg_atomic_init_u64(&horizon->heads[i].allocated, 0);
		}
		horizon->nslots = horizon_nslots();
		for (int i = 0; i < horizon->nslots; i++)
		{
			pg_atomic_init_u64(&horizon->slots[i].floor, 0);
			pg_atomic_init_u32(&horizon->slots[i].dboid, InvalidOid);
			pg_atomic_init_u32(&horizon->slots[i].xid, InvalidTransactionId);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init in every process that loads the library. */
void
CqrsHorizonInit(void)
{
	RegisterXactCallback(horizon_xact_callback, NULL);
}

bool
CqrsHorizonAvailable(void)
{
	return horizon != NULL;
}

/* Raise the explanatory error when the horizon is not available. */
void
CqrsRequireHorizon(void)
{
	if (horizon == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_cqrs must be loaded via shared_preload_libraries to read the log by position"),
				 errhint("Add pg_cqrs to shared_preload_libraries and restart the server.")));
}

static CqrsAppendSlot *
my_slot(void)
{
	int			i = CqrsMyProcIndex();

	if (i < 0 || i >= horizon->nslots)
		elog(ERROR, "pg_cqrs: process index %d outside the horizon array", i);
	return &horizon->slots[i];
}

/* Raise head->allocated to position, if below. */
static void
head_note(CqrsDbHead *head, int64 position)
{
	uint64		old = pg_atomic_read_u64(&head->allocated);

	while (old < (uint64) position &&
		   !pg_atomic_compare_exchange_u64(&head->allocated, &old, (uint64) position))
		;
}

/*
 * This database's CqrsDbHead for the given sequence, claimed if there is
 * none and, given the log, seeded from it.  NULL when all are taken.
 */
static CqrsDbHead *
db_head(Relation events, Oid seqoid)
{
	static CqrsDbHead *cached = NULL;
	CqrsDbHead *head = NULL;

	if (cached != NULL && cached->dboid == MyDatabaseId && cached->seqoid == seqoid)
		return cached;

	SpinLockAcquire(&horizon->mutex);
	for (int i = 0; i < CQRS_MAX_DATABASES && head == NULL; i++)
		if (horizon->heads[i].dboid == MyDatabaseId)
			head = &horizon->heads[i];
	for (int i = 0; i < CQRS_MAX_DATABASES && head == NULL; i++)
		if (horizon->heads[i].dboid == InvalidOid)
			head = &horizon->heads[i];
	if (head != NULL && (head->dboid != MyDatabaseId || head->seqoid != seqoid))
	{
		/* new, or the extension was re-created: start from nothing */
		head->dboid = MyDatabaseId;
		head->seqoid = seqoid;
		pg_atomic_write_u64(&head->allocated, 0);
	}
	SpinLockRelease(&horizon->mutex);

	/* Seed it from the log; a floor of 0 would hold readers back. */
	if (head != NULL && events != NULL && pg_atomic_read_u64(&head->allocated) == 0)
		head_note(head, CqrsMaxPosition(events, GetLatestSnapshot()));
	cached = head;
	return head;
}

/*
 * CqrsHorizonNoteAllocated
 *		Record a position just taken from the sequence (after nextval).
 */
void
CqrsHorizonNoteAllocated(int64 position)
{
	CqrsDbHead *head;

	if (horizon == NULL)
		return;
	head = db_head(NULL, CqrsEventLog()->position_seq);
	if (head != NULL)
		head_note(head, position);
}

/*
 * CqrsHorizonBeginAppend
 *		Publish this transaction's floor, once, before it takes a position.
 *
 * Must be called before every nextval on the position sequence; cheap after
 * the first call of a transaction.  Does nothing without shared memory.
 */
void
CqrsHorizonBeginAppend(Relation events)
{
	CqrsAppendSlot *slot;
	CqrsDbHead *head;
	int64		floor;

	if (horizon == NULL || floor_published)
		return;

	/*
	 * The highest position taken so far: our nextval will be above it.
	 * Without a free CqrsDbHead, the highest visible position serves too.
	 */
	head = db_head(events, CqrsEventLog()->position_seq);
	if (head != NULL)
		floor = (int64) pg_atomic_read_u64(&head->allocated);
	else
		floor = CqrsMaxPosition(events, GetLatestSnapshot());

	slot = my_slot();
	pg_atomic_write_u32(&slot->dboid, MyDatabaseId);
	/* so that a reader held back by us can wait for us (below) */
	pg_atomic_write_u32(&slot->xid, XidFromFullTransactionId(GetTopFullTransactionId()));
	pg_write_barrier();
	pg_atomic_write_u64(&slot->floor, (uint64) floor + 1);
	floor_published = true;
	/* The floor must be visible to readers before our nextval is. */
	pg_memory_barrier();

	/* and to standbys: WAL order puts it before our position's commit */
	CqrsStandbyLogFloor(floor);
	log_all_floors_now_and_then();
}

/*
 * At most once a second, some appender writes every published floor to
 * WAL, so that a standby starting its replay in the middle of open
 * transactions learns their floors (standby.c).
 */
static void
log_all_floors_now_and_then(void)
{
	/* the transaction's start is recent enough, and costs no clock read */
	uint64		now = (uint64) GetCurrentTransactionStartTimestamp();
	uint64		last = pg_atomic_read_u64(&horizon->floors_logged_at);
	CqrsWalFloor *floors;
	XLogRecPtr	scanned_from;
	int			n = 0;

	if (!CqrsStandbyLogging() || now < last + USECS_PER_SEC ||
		!pg_atomic_compare_exchange_u64(&horizon->floors_logged_at, &last, now))
		return;

	floors = palloc(horizon->nslots * sizeof(CqrsWalFloor));
	/* before the scan: a floor published after it has its own record */
	scanned_from = GetXLogInsertRecPtr();
	pg_memory_barrier();
	for (int i = 0; i < horizon->nslots; i++)
	{
		CqrsAppendSlot *slot = &horizon->slots[i];
		uint64		f = pg_atomic_read_u64(&slot->floor);

		if (f == 0)
			continue;
		pg_read_barrier();

		/*
		 * The slot may change hands between these reads: the xid may be of
		 * a later transaction than the floor, whose floor is no lower.
		 */
		floors[n].procno = i;
		floors[n].dboid = pg_atomic_read_u32(&slot->dboid);
		floors[n].xid = pg_atomic_read_u32(&slot->xid);
		floors[n].floor = (int64) (f - 1);
		n++;
	}
	CqrsStandbyLogAllFloors(scanned_from, floors, n);
	pfree(floors);
}

/*
 * CqrsSafePositionIfKnown
 *		The highest position at or below which every event is final, if
 *		this server can tell: false on a standby that cannot know it yet.
 *
 * "Final" means committed (and visible to any snapshot taken after this
 * returns) or never to be committed.  Callers then read with a snapshot
 * taken after this call.  Errors out without shared memory.  On a hot
 * standby the floors come from WAL (standby.c).
 */
bool
CqrsSafePositionIfKnown(Relation events, int64 *safe_out)
{
	int64		safe;

	CqrsRequireHorizon();
	if (RecoveryInProgress())
		return CqrsStandbySafePosition(events, safe_out);

	safe = CqrsMaxPosition(events, GetLatestSnapshot());
	pg_memory_barrier();

	for (int i = 0; i < horizon->nslots; i++)
	{
		CqrsAppendSlot *slot = &horizon->slots[i];
		uint64		f;

		/*
		 * Our own floor does not hold us back: our uncommitted events are
		 * visible to us, and positions we take later are above all we see.
		 */
		if (i == CqrsMyProcIndex())
			continue;
		f = pg_atomic_read_u64(&slot->floor);

		/*
		 * A slot may change hands between the two reads; then we either skip
		 * a floor whose transaction has ended or count one of another
		 * database.  Both are safe.
		 */
		if (f == 0)
			continue;
		pg_read_barrier();
		if (pg_atomic_read_u32(&slot->dboid) != MyDatabaseId)
			continue;
		if ((int64) (f - 1) < safe)
			safe = (int64) (f - 1);
	}

	*safe_out = safe;
	return true;
}

/*
 * CqrsSafePosition
 *		The safe position, or an error on a standby that cannot know it yet.
 */
int64
CqrsSafePosition(Relation events)
{
	int64		safe;

	if (!CqrsSafePositionIfKnown(events, &safe))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this standby cannot compute a safe read position yet"),
				 errdetail("Transactions that were appending on the primary when this standby started replay are still open, "
						   "or the primary does not log its appenders' floors (cqrs.wal_rmgr_id = 0, or more backends than this standby has)."),
				 errhint("Retry shortly: the primary logs every open floor once a second while appends run.")));
	return safe;
}

/*
 * CqrsHorizonHolder
 *		A transaction of another backend of this database whose floor is
 *		below position, or InvalidTransactionId if there is none.
 *
 * A reader that must get past position waits for that transaction with
 * XactLockTableWait rather than by polling, so that the deadlock detector
 * sees the wait: the holder may itself be waiting for the reader (for a
 * stream lock, say).
 */
TransactionId
CqrsHorizonHolder(int64 position)
{
	if (horizon == NULL)
		return InvalidTransactionId;
	for (int i = 0; i < horizon->nslots; i++)
	{
		CqrsAppendSlot *slot = &horizon->slots[i];
		uint64		f;

		if (i == CqrsMyProcIndex())
			continue;
		f = pg_atomic_read_u64(&slot->floor);
		if (f == 0 || (int64) (f - 1) >= position)
			continue;
		pg_read_barrier();
		if (pg_atomic_read_u32(&slot->dboid) != MyDatabaseId)
			continue;
		return (TransactionId) pg_atomic_read_u32(&slot->xid);
	}
	return InvalidTransactionId;
}

/*
 * Withdraw the floor when the transaction ends.  XACT_EVENT_COMMIT and
 * _ABORT are delivered after ProcArrayEndTransaction, so our events are
 * already visible (or gone) when the floor disappears.
 */
static void
horizon_xact_callback(XactEvent event, void *arg)
{
	if (!floor_published)
		return;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
			pg_atomic_write_u64(&my_slot()->floor, 0);
			floor_published = false;
			/*
			 * events a deferred projection wants: the worker has work (or
			 * the launcher, if the database has no worker right now)
			 */
			if (CqrsTakeWorkerWake())
				CqrsWakeWorkerOrLauncher(MyDatabaseId);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			pg_atomic_write_u64(&my_slot()->floor, 0);
			floor_published = false;
			(void) CqrsTakeWorkerWake();
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that has appended events"),
					 errdetail("Readers of the log must know when such a transaction ends.")));
			break;
		default:
			break;
	}
}
