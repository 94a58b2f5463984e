/*-------------------------------------------------------------------------
 *
 * wakeup.c
 *		Who applies deferred projections where, and how to wake them or
 *		wait for them: latches and the progress condition variable.
 *
 * This is the signalling mechanism under the worker, the apply path and
 * the horizon; it depends on nothing else of pg_cqrs.  Shared memory holds
 * the launcher's process number, the per-database worker table, the
 * databases whose worker left for want of work, and the progress condition
 * variable:
 *
 *	- an appending transaction, as it commits, sets the latch of its
 *	  database's worker (CqrsWakeWorker, from horizon.c);
 *	- creating, resuming or un-failing a deferred projection, and the
 *	  install script, wake the launcher when their transaction commits
 *	  (CqrsWakeLauncherAtCommit), which starts a worker where none runs;
 *	- a worker broadcasts the progress condition variable after each batch
 *	  (CqrsProgressBroadcast), on which cqrs.wait_for_projection sleeps.
 *
 * Shared state: the worker table is written under a spinlock and read
 * without it by committing appenders, for whom a stale entry only means
 * setting some other process's latch.  Without shared_preload_libraries
 * there is no shared memory: wakes do nothing and waits sleep on the
 * caller's own latch.
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
	pg_atomic_uint32 wake_requested;	/* set by cqrs.wake_launcher() */
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
		pg_atomic_init_u32(&workers->wake_requested, 0);
		ConditionVariableInit(&workers->progress);
		for (int i = 0; i < CQRS_MAX_WORKERS; i++)
		{
			workers->workers[i].dboid = InvalidOid;
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
 * CqrsLauncherWakeRequested
 *		Whether someone asked the launcher to look since it last asked;
 *		clears the request.
 */
bool
CqrsLauncherWakeRequested(void)
{
	return pg_atomic_exchange_u32(&workers->wake_requested, 0) != 0;
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

static void
set_proc_latch(int procno)
{
	if (procno >= 0 && procno < (int) ProcGlobal->allProcCount)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
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
	if (event == XACT_EVENT_COMMIT && workers != NULL)
	{
		pg_atomic_write_u32(&workers->wake_requested, 1);
		set_proc_latch(workers->launcher_procno);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		wake_launcher_at_commit = false;
}

/*
 * CqrsWakeLauncherAtCommit
 *		Have the launcher look for databases needing a worker when the
 *		current transaction commits.
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
 * Have the launcher look for databases needing a worker when the calling
 * transaction commits (the install script calls it).
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

static void
worker_detach(int code, Datum arg)
{
	int			slot = DatumGetInt32(arg);

	SpinLockAcquire(&workers->mutex);
	workers->workers[slot].dboid = InvalidOid;
	workers->workers[slot].procno = -1;
	SpinLockRelease(&workers->mutex);
}

/*
 * CqrsWorkerAttach
 *		Take a slot for our database; false if another worker already has
 *		one.  The slot is given back when the process exits.
 */
bool
CqrsWorkerAttach(Oid dboid)
{
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
	on_shmem_exit(worker_detach, Int32GetDatum(free_slot));
	return true;
}
