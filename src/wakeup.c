/*-------------------------------------------------------------------------
 *
 * wakeup.c
 *		Who applies deferred projections where, and how to wake them or
 *		wait for them: latches and the progress condition variable.
 *
 * This is the signalling mechanism under the worker, the apply path and
 * the horizon; it depends on nothing else of pg_cqrs.  Shared memory holds
 * the launcher's process number, the launcher's wake set, the per-database
 * worker table, the databases whose worker left for want of work, whether
 * the launcher waits for a worker slot, and the progress condition
 * variable:
 *
 *	- an appending transaction, as it commits, sets the latch of its
 *	  database's worker (CqrsWakeWorkerOrLauncher, from horizon.c), or, if
 *	  the database has no worker at that moment, puts the database in the
 *	  launcher's wake set;
 *	- creating, resuming or un-failing a deferred projection, and the
 *	  install script, put their database in the wake set when their
 *	  transaction commits (CqrsWakeLauncherAtCommit); the launcher then
 *	  starts a worker for the databases in the set, and only for them;
 *	- a worker broadcasts the progress condition variable after each batch
 *	  (CqrsProgressBroadcast), on which cqrs.wait_for_projection sleeps.
 *
 * The wake set.  A wake names a database.  The set holds up to
 * CQRS_MAX_WAKES of them; a wake that finds it full sets wake_all instead,
 * which the launcher treats as a wake of every database: slower, never
 * wrong.  Wakers add under the spinlock and then set the launcher's latch;
 * the launcher resets its latch before it takes (and empties) the set, so a
 * wake that comes after the take sets the latch again and is seen on the
 * next round: no wake is lost.
 *
 * Shared state: the worker table and the wake set are written under the
 * spinlock.  Committing appenders read the worker table without it, for
 * whom a stale entry only means setting some other process's latch -- with
 * one exception, handled by ordering: a worker that gives up its slot
 * (CqrsWorkerDetach) clears its entry before it looks for work one last
 * time, and an appender reads the table only after its commit is visible,
 * so either the worker's last look sees the events or the appender sees no
 * worker and wakes the launcher.  Without shared_preload_libraries there is
 * no shared memory: wakes do nothing and waits sleep on the caller's own
 * latch.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/wakeup.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_wake_launcher);

#define CQRS_MAX_WORKERS	64
#define CQRS_MAX_WAKES		64

typedef struct CqrsDbWorker
{
	Oid			dboid;			/* InvalidOid: free */
	int			procno;
	pid_t		pid;
} CqrsDbWorker;

typedef struct CqrsWorkerShared
{
	slock_t		mutex;
	int			launcher_procno;	/* -1 while no launcher runs */
	int			nwakes;			/* databases in wakes[] */
	bool		wake_all;		/* wakes[] overflowed: wake every database */
	Oid			wakes[CQRS_MAX_WAKES];	/* databases that asked since the
										 * launcher last took the set */
	pg_atomic_uint32 slots_wanted;	/* the launcher could not start a worker
									 * for some database: idle workers leave */
	Oid			idle_exits[CQRS_MAX_WORKERS];	/* databases whose worker left
												 * for want of work */
	ConditionVariable progress;
	CqrsDbWorker workers[CQRS_MAX_WORKERS];
} CqrsWorkerShared;

static CqrsWorkerShared *workers = NULL;

/* Set by cqrs.wake_launcher(): wake the launcher when we commit. */
static bool wake_launcher_at_commit = false;

static bool waiting_for_progress = false;

static void wakeup_xact_callback(XactEvent event, void *arg);

static void
set_proc_latch(int procno)
{
	if (procno >= 0 && procno < (int) ProcGlobal->allProcCount)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* ----------------------------------------------------------------
 * Shared memory and registration
 * ----------------------------------------------------------------
 */

void
CqrsWakeupShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(CqrsWorkerShared)));
}

void
CqrsWakeupShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	workers = ShmemInitStruct("pg_cqrs workers", sizeof(CqrsWorkerShared), &found);
	if (!found)
	{
		SpinLockInit(&workers->mutex);
		workers->launcher_procno = -1;
		workers->nwakes = 0;
		workers->wake_all = false;
		pg_atomic_init_u32(&workers->slots_wanted, 0);
		ConditionVariableInit(&workers->progress);
		for (int i = 0; i < CQRS_MAX_WORKERS; i++)
		{
			workers->workers[i].dboid = InvalidOid;
			workers->workers[i].procno = -1;
			workers->workers[i].pid = 0;
			workers->idle_exits[i] = InvalidOid;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init, in every process that loads the library. */
void
CqrsWakeupInit(void)
{
	RegisterXactCallback(wakeup_xact_callback, NULL);
}

/*
 * CqrsLauncherAttach
 *		The launcher says where it can be woken.
 */
void
CqrsLauncherAttach(void)
{
	SpinLockAcquire(&workers->mutex);
	workers->launcher_procno = CqrsMyProcIndex();
	SpinLockRelease(&workers->mutex);
}

/*
 * CqrsLauncherTakeWakes
 *		The databases woken since the launcher last asked, into dbs[] (room
 *		for CqrsMaxWakes() of them); returns their number and sets *all when
 *		the set overflowed (every database counts as woken).  Empties the
 *		set.  The launcher resets its latch before calling this.
 */
int
CqrsLauncherTakeWakes(Oid *dbs, bool *all)
{
	int			n;

	SpinLockAcquire(&workers->mutex);
	n = workers->nwakes;
	memcpy(dbs, workers->wakes, n * sizeof(Oid));
	*all = workers->wake_all;
	workers->nwakes = 0;
	workers->wake_all = false;
	SpinLockRelease(&workers->mutex);
	return n;
}

int
CqrsMaxWakes(void)
{
	return CQRS_MAX_WAKES;
}

/*
 * CqrsSetSlotsWanted / CqrsSlotsWanted
 *		Whether the launcher has a database it could not start a worker for
 *		(no free background worker slot).  While it does, a worker with
 *		nothing to do gives its slot up (worker.c).
 */
void
CqrsSetSlotsWanted(bool wanted)
{
	pg_atomic_write_u32(&workers->slots_wanted, wanted ? 1 : 0);
}

bool
CqrsSlotsWanted(void)
{
	return pg_atomic_read_u32(&workers->slots_wanted) != 0;
}

/*
 * Put a database in the launcher's wake set and set its latch.  Called
 * after the waking transaction's commit is visible, so that the worker the
 * launcher starts sees what the transaction did.
 */
static void
wake_launcher(Oid dboid)
{
	int			procno;

	if (workers == NULL)
		return;
	SpinLockAcquire(&workers->mutex);
	if (!workers->wake_all)
	{
		int			i;

		for (i = 0; i < workers->nwakes; i++)
			if (workers->wakes[i] == dboid)
				break;
		if (i == workers->nwakes)
		{
			if (workers->nwakes < CQRS_MAX_WAKES)
				workers->wakes[workers->nwakes++] = dboid;
			else
				workers->wake_all = true;
		}
	}
	procno = workers->launcher_procno;
	SpinLockRelease(&workers->mutex);
	set_proc_latch(procno);
}

/*
 * CqrsProgressBroadcast
 *		A worker finished a batch: wake whoever waits for progress.
 */
void
CqrsProgressBroadcast(void)
{
	if (workers != NULL)
		ConditionVariableBroadcast(&workers->progress);
}

/*
 * CqrsWakeAppliers
 *		Have a deferred projection's applier look at it: the database's
 *		worker, or, at commit, the launcher if the database has none yet.
 */
void
CqrsWakeAppliers(void)
{
	CqrsWakeWorker(MyDatabaseId);
	CqrsWakeLauncherAtCommit();
}

/*
 * CqrsWakeWorker
 *		Set the latch of the worker serving a database, if there is one.
 */
void
CqrsWakeWorker(Oid dboid)
{
	if (workers == NULL)
		return;
	for (int i = 0; i < CQRS_MAX_WORKERS; i++)
		if (workers->workers[i].dboid == dboid)
			set_proc_latch(workers->workers[i].procno);
}

/*
 * CqrsWakeWorkerOrLauncher
 *		After a commit that appended events a deferred projection wants: set
 *		the latch of the database's worker, or, if it has none (it left, or
 *		never got a slot), have the launcher start one.
 *
 * The barrier orders our read of the worker table after our commit became
 * visible; see the header comment for the worker's side.
 */
void
CqrsWakeWorkerOrLauncher(Oid dboid)
{
	bool		found = false;

	if (workers == NULL)
		return;
	pg_memory_barrier();
	for (int i = 0; i < CQRS_MAX_WORKERS; i++)
		if (workers->workers[i].dboid == dboid)
		{
			set_proc_latch(workers->workers[i].procno);
			found = true;
		}
	if (!found)
		wake_launcher(dboid);
}

/*
 * Whether this transaction appended an event a running deferred projection
 * wants.  Set by appends (CqrsWakeWorkerAtCommit); read and cleared when
 * the transaction ends by horizon.c, which wakes the worker only then,
 * after withdrawing its floor, so that the worker can get past our events.
 */
static bool wake_worker_at_commit = false;

void
CqrsWakeWorkerAtCommit(void)
{
	wake_worker_at_commit = true;
}

bool
CqrsTakeWorkerWake(void)
{
	bool		wake = wake_worker_at_commit;

	wake_worker_at_commit = false;
	return wake;
}

static void
wakeup_xact_callback(XactEvent event, void *arg)
{
	if (!wake_launcher_at_commit)
		return;
	if (event == XACT_EVENT_COMMIT)
		wake_launcher(MyDatabaseId);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		wake_launcher_at_commit = false;
}

/*
 * CqrsWakeLauncherAtCommit
 *		Have the launcher start a worker for our database, if it has none,
 *		when the current transaction commits.
 */
void
CqrsWakeLauncherAtCommit(void)
{
	wake_launcher_at_commit = true;
}

/*
 * cqrs.projections_changed() RETURNS trigger
 *
 * AFTER INSERT OR UPDATE OF state ON cqrs.projections, per statement: a
 * deferred projection may have become runnable, including through
 * pg_restore, which bypasses the lifecycle functions.
 */
PG_FUNCTION_INFO_V1(cqrs_projections_changed);

Datum
cqrs_projections_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.projections_changed() must be called as a trigger")));
	CqrsWakeWorker(MyDatabaseId);
	wake_launcher_at_commit = true;
	return PointerGetDatum(NULL);
}

/*
 * cqrs.wake_launcher() RETURNS void
 *
 * Have the launcher start a worker for the calling database, if it has
 * none, when the calling transaction commits (the install script calls
 * it).
 */
Datum
cqrs_wake_launcher(PG_FUNCTION_ARGS)
{
	wake_launcher_at_commit = true;
	PG_RETURN_VOID();
}

/*
 * Sleep until a worker reports progress or ms pass.  Without shared memory,
 * just sleep on our latch.
 */
void
CqrsWaitForProgress(long ms)
{
	if (workers != NULL)
	{
		if (!waiting_for_progress)
		{
			ConditionVariablePrepareToSleep(&workers->progress);
			waiting_for_progress = true;
		}
		(void) ConditionVariableTimedSleep(&workers->progress, ms, PG_WAIT_EXTENSION);
	}
	else
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

void
CqrsWaitForProgressDone(void)
{
	if (waiting_for_progress)
	{
		ConditionVariableCancelSleep();
		waiting_for_progress = false;
	}
}

/* ----------------------------------------------------------------
 * Who serves which database
 * ----------------------------------------------------------------
 */

/*
 * Idle exits.  A worker that leaves because its database has nothing for it
 * records so; the launcher then starts it again only when woken (or after
 * LAUNCHER_RECHECK).  A worker that went away otherwise (terminated by an
 * administrator, failed) is replaced at once.
 */
void
CqrsSetIdleExit(Oid dboid, bool idle)
{
	int			free_slot = -1;

	SpinLockAcquire(&workers->mutex);
	for (int i = 0; i < CQRS_MAX_WORKERS; i++)
	{
		if (workers->idle_exits[i] == dboid)
		{
			if (!idle)
				workers->idle_exits[i] = InvalidOid;
			SpinLockRelease(&workers->mutex);
			return;
		}
		if (free_slot < 0 && workers->idle_exits[i] == InvalidOid)
			free_slot = i;
	}
	if (idle && free_slot >= 0)
		workers->idle_exits[free_slot] = dboid;
	SpinLockRelease(&workers->mutex);
}

bool
CqrsExitedIdle(Oid dboid)
{
	bool		idle = false;

	SpinLockAcquire(&workers->mutex);
	for (int i = 0; i < CQRS_MAX_WORKERS; i++)
		if (workers->idle_exits[i] == dboid)
			idle = true;
	SpinLockRelease(&workers->mutex);
	return idle;
}

/*
 * CqrsWorkerDetach
 *		Give up our entry in the worker table: from now on, committing
 *		appenders wake the launcher instead of us.  The barrier orders the
 *		cleared entry before whatever we read next (the worker's last look
 *		for work).  Also our on_shmem_exit callback.
 */
void
CqrsWorkerDetach(void)
{
	SpinLockAcquire(&workers->mutex);
	for (int i = 0; i < CQRS_MAX_WORKERS; i++)
		if (workers->workers[i].pid == MyProcPid &&
			workers->workers[i].dboid != InvalidOid)
		{
			workers->workers[i].dboid = InvalidOid;
			workers->workers[i].procno = -1;
			workers->workers[i].pid = 0;
		}
	SpinLockRelease(&workers->mutex);
	pg_memory_barrier();
}

static void
worker_detach(int code, Datum arg)
{
	CqrsWorkerDetach();
}

/*
 * CqrsWorkerAttach
 *		Take a slot for our database; false if another worker already has
 *		one.  The slot is given back when the process exits, or by
 *		CqrsWorkerDetach; a worker may attach again after detaching.
 */
bool
CqrsWorkerAttach(Oid dboid)
{
	static bool exit_callback = false;
	int			free_slot = -1;

	SpinLockAcquire(&workers->mutex);
	for (int i = 0; i < CQRS_MAX_WORKERS; i++)
	{
		if (workers->workers[i].dboid == dboid)
		{
			SpinLockRelease(&workers->mutex);
			return false;
		}
		if (free_slot < 0 && workers->workers[i].dboid == InvalidOid)
			free_slot = i;
	}
	if (free_slot < 0)
	{
		SpinLockRelease(&workers->mutex);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("pg_cqrs serves at most %d databases", CQRS_MAX_WORKERS)));
		return false;
	}
	workers->workers[free_slot].dboid = dboid;
	workers->workers[free_slot].procno = CqrsMyProcIndex();
	workers->workers[free_slot].pid = MyProcPid;
	SpinLockRelease(&workers->mutex);
	if (!exit_callback)
	{
		on_shmem_exit(worker_detach, (Datum) 0);
		exit_callback = true;
	}
	return true;
}
