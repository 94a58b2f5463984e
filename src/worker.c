/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The launcher and the per-database workers that apply deferred
 *		projections.
 *
 * With shared_preload_libraries = 'pg_cqrs' the postmaster starts one
 * "pg_cqrs launcher".  It connects to no database, reads pg_database and
 * starts a dynamic "pg_cqrs worker" for every database that accepts
 * connections and has none.  A worker whose database lacks the extension,
 * or has no running deferred projection, exits at once (so that it does not
 * hold DROP DATABASE up); the launcher tries such a database again after
 * LAUNCHER_RECHECK, or as soon as it is woken: the install script, and
 * creating, resuming or un-failing a deferred projection, wake it when
 * their transaction commits.
 *
 * A worker loops: apply one batch of each running deferred projection, each
 * batch in its own transaction (apply.c), as long as batches come back
 * full; then sleep on its latch for cqrs.naptime.  A transaction that
 * appended events a running deferred projection wants (its filters) sets
 * the latch of its database's worker when it commits (horizon.c, through
 * wakeup.c), so under light load an event is applied within milliseconds,
 * and appends no deferred projection reads cost the worker nothing.  After each batch the worker broadcasts the progress
 * condition variable, on which cqrs.wait_for_projection sleeps.
 *
 * A worker that fails outside a handler (a handler's errors are caught per
 * batch) logs the error, aborts the transaction, and goes on with the next
 * projection: one broken definition never stops the others.
 *
 * The table of which worker serves which database, the idle exits and the
 * launcher's wake request live in wakeup.c's shared memory.  This file
 * calls down into apply.c, catalog.c and wakeup.c; only _PG_init calls it.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "pg_cqrs.h"


PGDLLEXPORT void cqrs_launcher_main(Datum main_arg);
PGDLLEXPORT void cqrs_worker_main(Datum main_arg);

#define LAUNCHER_RECHECK_MS (5 * 60 * 1000)
#define LAUNCHER_NAP_MS		(10 * 1000)


/* Called from _PG_init; registers the launcher when preloading. */
void
CqrsWorkerInit(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_cqrs");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cqrs_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_cqrs launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_cqrs launcher");
	RegisterBackgroundWorker(&worker);
}

/* ----------------------------------------------------------------
 * The launcher
 * ----------------------------------------------------------------
 */

typedef struct LaunchedDb
{
	Oid			dboid;
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
} LaunchedDb;

/* Databases that accept connections, from the shared catalog. */
static List *
connectable_databases(MemoryContext cxt)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			result = lappend_oid(result, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

static BackgroundWorkerHandle *
start_db_worker(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_cqrs");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cqrs_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_cqrs worker for database %u", dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_cqrs worker");
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("pg_cqrs could not start a worker for database %u", dboid),
				 errhint("Raise max_worker_processes.")));
		return NULL;
	}
	return handle;
}

void
cqrs_launcher_main(Datum main_arg)
{
	MemoryContext cxt;
	List	   *launched = NIL;
	TimestampTz last_wake = GetCurrentTimestamp();

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	CqrsLauncherAttach();

	cxt = AllocSetContextCreate(TopMemoryContext, "pg_cqrs launcher",
								ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		List	   *dbs;
		ListCell   *lc;
		TimestampTz now = GetCurrentTimestamp();
		long		nap = LAUNCHER_NAP_MS;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		dbs = connectable_databases(CurrentMemoryContext);
		foreach(lc, dbs)
		{
			Oid			dboid = lfirst_oid(lc);
			LaunchedDb *entry = NULL;
			ListCell   *lc2;
			pid_t		pid;

			foreach(lc2, launched)
				if (((LaunchedDb *) lfirst(lc2))->dboid == dboid)
					entry = lfirst(lc2);
			if (entry == NULL)
			{
				MemoryContext old = MemoryContextSwitchTo(cxt);

				entry = palloc0(sizeof(LaunchedDb));
				entry->dboid = dboid;
				launched = lappend(launched, entry);
				MemoryContextSwitchTo(old);
			}
			if (entry->handle != NULL &&
				GetBackgroundWorkerPid(entry->handle, &pid) != BGWH_STOPPED)
				continue;		/* running, or about to */
			/*
			 * It exited for want of work (no extension, no running deferred
			 * projection): start it again when somebody asked since it
			 * started, or after a long while.  (Its exit also sets our latch,
			 * through bgw_notify_pid; that alone must not restart it, or idle
			 * databases would churn.)  Any other exit: at once, but not more
			 * than once a second.
			 */
			if (entry->handle != NULL && CqrsExitedIdle(dboid) &&
				last_wake < entry->started_at &&
				!TimestampDifferenceExceeds(entry->started_at, now, LAUNCHER_RECHECK_MS))
				continue;
			if (entry->handle != NULL && !CqrsExitedIdle(dboid) &&
				!TimestampDifferenceExceeds(entry->started_at, now, 1000))
			{
				nap = 1000;
				continue;
			}
			CqrsSetIdleExit(dboid, false);

			if (entry->handle != NULL)
				pfree(entry->handle);
			entry->handle = start_db_worker(dboid);
			entry->started_at = now;
		}
		list_free(dbs);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (CqrsLauncherWakeRequested())
			last_wake = GetCurrentTimestamp();
	}
}

/* ----------------------------------------------------------------
 * The per-database worker
 * ----------------------------------------------------------------
 */


/*
 * The running deferred projections of our database, or NIL; sets
 * *installed to whether the extension (with projections) is here at all,
 * and *busy when the catalog is locked (by DROP EXTENSION, say): the worker
 * never waits for a lock of the extension's (see CqrsApplyBatch).
 */
static List *
deferred_projection_names(MemoryContext cxt, bool *installed, bool *busy)
{
	List	   *names = NIL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	*installed = OidIsValid(get_extension_oid("pg_cqrs", true));
	*busy = false;
	if (*installed && OidIsValid(CqrsProjectionsRelid()) &&
		!ConditionalLockRelationOid(CqrsProjectionsRelid(), AccessShareLock))
		*busy = true;
	else if (*installed && OidIsValid(CqrsProjectionsRelid()))
		names = CqrsRunningDeferredNames(cxt);
	CommitTransactionCommand();
	return names;
}

/*
 * One batch of one projection in a transaction of its own.  Returns
 * whether the batch was full (more may be waiting).  Errors are logged and
 * the transaction aborted; the next pass retries.
 */
static bool
worker_apply_one(const char *name)
{
	volatile bool more = false;

	PG_TRY();
	{
		CqrsBatchResult r;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (OidIsValid(get_extension_oid("pg_cqrs", true)))
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "pg_cqrs: SPI_connect failed");
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, name);
			CqrsApplyBatch(name, cqrs_batch_size, true, &r);
			more = r.state == 'r' && r.examined >= cqrs_batch_size;
			SPI_finish();
			PopActiveSnapshot();
		}
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		more = false;
	}
	PG_END_TRY();

	CqrsProgressBroadcast();
	return more;
}

void
cqrs_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext pass_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	if (!CqrsWorkerAttach(dboid))
	{
		/* another worker serves this database: let the launcher wait */
		CqrsSetIdleExit(dboid, true);
		proc_exit(0);
	}
	pgstat_report_appname("pg_cqrs worker");

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "pg_cqrs worker pass",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		bool		installed;
		bool		busy;
		bool		more = false;
		List	   *names;
		ListCell   *lc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		MemoryContextReset(pass_cxt);
		names = deferred_projection_names(pass_cxt, &installed, &busy);

		/*
		 * Nothing to do here: leave, rather than stay connected and make
		 * DROP DATABASE fail.  Creating or resuming a deferred projection
		 * wakes the launcher, which brings us back.
		 */
		if (!installed || (names == NIL && !busy))
		{
			CqrsSetIdleExit(dboid, true);
			proc_exit(0);
		}

		foreach(lc, names)
			more |= worker_apply_one((const char *) lfirst(lc));

		if (more)
			continue;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 cqrs_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
