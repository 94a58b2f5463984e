/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The launcher and the per-database workers that apply deferred
 *		projections.
 *
 * With shared_preload_libraries = 'pg_cqrs' the postmaster starts one
 * "pg_cqrs launcher".  It connects to no database, reads pg_database and
 * starts a dynamic "pg_cqrs worker" for every database that accepts
 * connections, once.  A worker whose database lacks the extension, or has
 * no running deferred projection, exits at once (so that it does not hold
 * DROP DATABASE up).  After that the launcher starts a database's worker
 * again only when that database asks (a wake names its database, see
 * wakeup.c): the install script, and creating, resuming or un-failing a
 * deferred projection, wake it when their transaction commits, and so does
 * an append a deferred projection wants in a database that has no worker
 * at that moment.  LAUNCHER_RECHECK is a safety net.
 *
 * Worker slots are max_worker_processes, shared with everything else.
 * When a start fails for want of one, the launcher tries that database
 * again after 1 s, 2 s, 4 s ... at most a minute, or as soon as one of our
 * workers exits (the database waiting longest first), and warns at most
 * once a minute per database.  While some database waits, a worker that
 * finds nothing to do gives its slot up (with care not to lose a wake; see
 * cqrs_worker_main), so that more databases than slots are all served in
 * turn.
 *
 * A worker loops: apply one batch of each running deferred projection, each
 * batch in its own transaction (apply.c), as long as batches come back
 * full; then sleep on its latch for cqrs.naptime.  A transaction that
 * appended events a running deferred projection wants (its filters) sets
 * the latch of its database's worker when it commits (horizon.c, through
 * wakeup.c), so under light load an event is applied within milliseconds,
 * and appends no deferred projection reads cost the worker nothing.  After
 * each batch the worker broadcasts the progress condition variable, on
 * which cqrs.wait_for_projection sleeps.
 *
 * The same loop runs the database's retention rules (retention.c): every
 * cqrs.retention_naptime a pass, one batch of each rule per turn, between
 * the projections' batches; a database with rules keeps its worker.
 *
 * A worker that fails outside a handler (a handler's errors are caught per
 * batch) logs the error, aborts the transaction, and goes on with the next
 * projection: one broken definition never stops the others.
 *
 * The table of which worker serves which database, the idle exits, the
 * launcher's wake set and whether it waits for a slot live in wakeup.c's
 * shared memory.  This file calls down into retention.c (one entry point),
 * apply.c, catalog.c, horizon.c, eventlog.c and wakeup.c; only _PG_init
 * calls it.
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

/*
 * What the launcher knows of one database, in its own memory.
 *
 * wake_pending: someone asked for a worker here (the database was in the
 * wake set) and no worker has been started since.  A worker that was
 * running when the wake came may have read the catalog before the waking
 * commit and then leave for want of work; the pending wake starts it again.
 *
 * fails, next_try: consecutive failed starts (no free background worker
 * slot) and when to try again: 1 s, 2 s, 4 s ... at most
 * LAUNCHER_BACKOFF_MAX_MS after the last failure; a start resets them.
 * When a worker we started exits, its slot goes to the database that has
 * waited longest (the earliest next_try), before its backoff is over.
 * last_warning, suppressed: the "could not start a worker" warning is
 * logged at most once per LAUNCHER_WARNING_INTERVAL_MS per database, with
 * the number of failures not logged since.
 */
typedef struct LaunchedDb
{
	Oid			dboid;
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	bool		wake_pending;
	bool		seen;			/* in pg_database at the last scan */
	bool		exit_seen;		/* we noticed its worker's exit */
	int			fails;
	TimestampTz next_try;
	TimestampTz last_warning;	/* 0: never warned */
	int			suppressed;
} LaunchedDb;

#define LAUNCHER_BACKOFF_MIN_MS		1000
#define LAUNCHER_BACKOFF_MAX_MS		(60 * 1000)
#define LAUNCHER_WARNING_INTERVAL_MS	(60 * 1000)

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

/* Start a worker for a database; NULL when no slot is free. */
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
		return NULL;
	return handle;
}

/*
 * A start failed: back off, and warn unless we did so for this database
 * less than a minute ago.  Retrying at once (as before 0.6.0) logged tens
 * of thousands of warnings when more databases wanted a worker than there
 * were slots: every wake and every worker exit retried every database.
 */
static void
start_failed(LaunchedDb *entry, TimestampTz now)
{
	int			backoff = LAUNCHER_BACKOFF_MIN_MS;

	for (int i = 0; i < entry->fails && backoff < LAUNCHER_BACKOFF_MAX_MS; i++)
		backoff *= 2;
	backoff = Min(backoff, LAUNCHER_BACKOFF_MAX_MS);
	entry->fails++;
	entry->next_try = TimestampTzPlusMilliseconds(now, backoff);

	if (entry->last_warning != 0 &&
		!TimestampDifferenceExceeds(entry->last_warning, now,
									LAUNCHER_WARNING_INTERVAL_MS))
	{
		entry->suppressed++;
		return;
	}
	ereport(WARNING,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("pg_cqrs could not start a worker for database %u", entry->dboid),
			 entry->suppressed > 0 ?
			 errdetail_plural("%d more failed start for this database was not logged in the last minute.",
							  "%d more failed starts for this database were not logged in the last minute.",
							  entry->suppressed, entry->suppressed) : 0,
			 errhint("Raise max_worker_processes.  The launcher tries again in %d s, and logs this at most once a minute per database.",
					 backoff / 1000)));
	entry->last_warning = now;
	entry->suppressed = 0;
}

/*
 * Start a worker for a database (wake_pending and the backoff are the
 * caller's business); false if no slot was free.
 */
static bool
launch(LaunchedDb *entry, TimestampTz now)
{
	CqrsSetIdleExit(entry->dboid, false);
	if (entry->handle != NULL)
		pfree(entry->handle);
	entry->handle = start_db_worker(entry->dboid);
	entry->started_at = now;
	entry->exit_seen = false;
	if (entry->handle == NULL)
	{
		start_failed(entry, now);
		return false;
	}
	entry->wake_pending = false;
	entry->fails = 0;
	return true;
}

static LaunchedDb *
launched_entry(List **launched, Oid dboid, MemoryContext cxt)
{
	ListCell   *lc;
	LaunchedDb *entry;
	MemoryContext old;

	foreach(lc, *launched)
		if (((LaunchedDb *) lfirst(lc))->dboid == dboid)
			return lfirst(lc);
	old = MemoryContextSwitchTo(cxt);
	entry = palloc0(sizeof(LaunchedDb));
	entry->dboid = dboid;
	*launched = lappend(*launched, entry);
	MemoryContextSwitchTo(old);
	return entry;
}

/*
 * The launcher's loop: take the wake set, read pg_database, and start a
 * worker for each database that needs one:
 *
 *	- never started, or its last start failed and its backoff is over;
 *	- its worker left for want of work, and the database was woken since
 *	  (or LAUNCHER_RECHECK passed: a safety net, not the mechanism);
 *	- its worker went away otherwise (terminated, failed): at once, but not
 *	  more than once a second.
 *
 * A wake of one database starts at most that database's worker: the
 * launcher is also woken by every worker's exit (bgw_notify_pid), and
 * neither that nor another database's wake restarts anything else.
 */
void
cqrs_launcher_main(Datum main_arg)
{
	MemoryContext cxt;
	List	   *launched = NIL;
	Oid		   *woken;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	CqrsLauncherAttach();

	cxt = AllocSetContextCreate(TopMemoryContext, "pg_cqrs launcher",
								ALLOCSET_DEFAULT_SIZES);
	woken = MemoryContextAlloc(cxt, CqrsMaxWakes() * sizeof(Oid));

	for (;;)
	{
		List	   *dbs;
		ListCell   *lc;
		TimestampTz now;
		long		nap = LAUNCHER_NAP_MS;
		int			nwoken;
		bool		wake_all;
		bool		waiting = false;
		int			freed;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* our latch was reset before this: a later wake sets it again */
		nwoken = CqrsLauncherTakeWakes(woken, &wake_all);
		for (int i = 0; i < nwoken; i++)
			launched_entry(&launched, woken[i], cxt)->wake_pending = true;

		freed = 0;
		foreach(lc, launched)
		{
			LaunchedDb *entry = lfirst(lc);
			pid_t		pid;

			entry->seen = false;
			if (entry->handle != NULL && !entry->exit_seen &&
				GetBackgroundWorkerPid(entry->handle, &pid) == BGWH_STOPPED)
			{
				entry->exit_seen = true;
				freed++;
			}
		}

		dbs = connectable_databases(CurrentMemoryContext);
		now = GetCurrentTimestamp();
		foreach(lc, dbs)
		{
			Oid			dboid = lfirst_oid(lc);
			LaunchedDb *entry = launched_entry(&launched, dboid, cxt);
			pid_t		pid;

			entry->seen = true;
			if (wake_all)
				entry->wake_pending = true;
			if (entry->handle != NULL &&
				GetBackgroundWorkerPid(entry->handle, &pid) != BGWH_STOPPED)
				continue;		/* running, or about to */

			if (entry->handle == NULL && entry->fails > 0)
			{
				/* waiting for a slot: only when the backoff is over */
				waiting = true;
				if (now < entry->next_try)
				{
					long		ms = (long) ((entry->next_try - now + 999) / 1000);

					nap = Min(nap, Max(ms, 1));
					continue;
				}
			}
			else if (entry->handle != NULL && CqrsExitedIdle(dboid))
			{
				/*
				 * It exited for want of work (no extension, no running
				 * deferred projection, or it gave its slot up): start it again
				 * when somebody asked since it started, or after a long while.
				 */
				if (!entry->wake_pending &&
					!TimestampDifferenceExceeds(entry->started_at, now, LAUNCHER_RECHECK_MS))
					continue;
			}
			else if (entry->handle != NULL &&
					 !TimestampDifferenceExceeds(entry->started_at, now, 1000))
			{
				/* any other exit: at once, but not more than once a second */
				nap = Min(nap, 1000);
				continue;
			}
			if (!launch(entry, now))
			{
				waiting = true;
				nap = Min(nap, (long) ((entry->next_try - now) / 1000));
			}
			else if (freed > 0)
				freed--;		/* it took a slot given back */
		}
		list_free(dbs);

		/* slots our workers gave back: to the databases waiting longest */
		while (freed > 0)
		{
			LaunchedDb *first = NULL;

			foreach(lc, launched)
			{
				LaunchedDb *entry = lfirst(lc);

				if (entry->seen && entry->handle == NULL && entry->fails > 0 &&
					now < entry->next_try &&
					(first == NULL || entry->next_try < first->next_try))
					first = entry;
			}
			if (first == NULL || !launch(first, now))
				break;
			freed--;
		}

		/* forget databases that are gone (and whose worker is) */
		foreach(lc, launched)
		{
			LaunchedDb *entry = lfirst(lc);
			pid_t		pid;

			if (entry->seen ||
				(entry->handle != NULL &&
				 GetBackgroundWorkerPid(entry->handle, &pid) != BGWH_STOPPED))
				continue;
			if (entry->handle != NULL)
				pfree(entry->handle);
			launched = foreach_delete_current(launched, lc);
			pfree(entry);
		}

		/* while some database waits for a slot, idle workers give theirs up */
		CqrsSetSlotsWanted(waiting);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ----------------------------------------------------------------
 * The per-database worker
 * ----------------------------------------------------------------
 */


/*
 * The running deferred projections of our database, and the sync ones
 * catching up (apply.c), or NIL; sets
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
 * whether the batch was full (more may be waiting); sets *worked when it
 * read any event.  Errors are logged and
 * the transaction aborted; the next pass retries.
 */
static bool
worker_apply_one(const char *name, bool *worked)
{
	volatile bool more = false;

	PG_TRY();
	{
		CqrsBatchResult r = {0};

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (OidIsValid(get_extension_oid("pg_cqrs", true)))
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "pg_cqrs: SPI_connect failed");
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, name);
			CqrsApplyBatch(name, cqrs_batch_size, true, &r);
			more = (r.state == 'r' && r.examined >= cqrs_batch_size) ||
				(r.state == 'c' && r.examined > 0);
			if (r.examined > 0)
				*worked = true;
			SPI_finish();
			PopActiveSnapshot();
		}
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);

		/*
		 * A sync projection back in the appends' hands: say how long appends
		 * waited for it, lock wait through commit (README, "Online sync
		 * projections"; bench group online_sync reads this line).
		 */
		if (r.state == 'r' && r.switch_asked != 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			ereport(LOG,
					(errmsg("pg_cqrs: sync projection \"%s\" switched back to in-append application at position %lld",
							name, (long long) r.position),
					 errdetail("Appends were held for at most %.3f ms: %.3f ms waiting for the lock, %.3f ms applying the last %lld events and committing.",
							   (double) (now - r.switch_asked) / 1000.0,
							   (double) (r.switch_locked - r.switch_asked) / 1000.0,
							   (double) (now - r.switch_locked) / 1000.0,
							   (long long) r.applied)));
		}
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

/*
 * Whether no append in flight holds the safe position below a committed
 * event, i.e. every event committed so far is final for the projections.
 * On error (the extension being dropped, say), not quiet.
 */
static bool
log_quiet(void)
{
	volatile bool quiet = false;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (OidIsValid(get_extension_oid("pg_cqrs", true)) &&
			ConditionalLockRelationOid(CqrsEventLog()->events, AccessShareLock))
		{
			Relation	events = CqrsOpenEventLog(NoLock);
			int64		safe = CqrsSafePosition(events);

			quiet = CqrsMaxPosition(events, GetLatestSnapshot()) <= safe;
			table_close(events, NoLock);
		}
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		quiet = false;
	}
	PG_END_TRY();
	return quiet;
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
		bool		worked = false;
		bool		rules;
		bool		retention_more = false;
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

		/* retention rules (retention.c): a batch of each when a pass is due */
		rules = installed && CqrsRetentionWork(pass_cxt, &retention_more);

		/*
		 * Nothing to do here: leave, rather than stay connected and make
		 * DROP DATABASE fail.  Creating or resuming a deferred projection,
		 * and setting a retention rule, wake the launcher, which brings us
		 * back.
		 */
		if (!installed || (names == NIL && !busy && !rules))
		{
			CqrsSetIdleExit(dboid, true);
			proc_exit(0);
		}

		foreach(lc, names)
			more |= worker_apply_one((const char *) lfirst(lc), &worked);

		if (more || (rules && retention_more))
			continue;

		/*
		 * Nothing came in since our last look, and another database waits
		 * for a background worker slot: give ours up.  Appends that commit
		 * from now on find no worker here and wake the launcher for this
		 * database (CqrsWakeWorkerOrLauncher); one more look covers those
		 * that set our latch before we detached.  Stay if that look finds
		 * work, or if an append in flight holds the safe position below a
		 * committed event (its commit may wake nobody: it may append only
		 * what no deferred projection wants).
		 */
		if (!worked && CqrsSlotsWanted())
		{
			CqrsWorkerDetach();
			foreach(lc, names)
				(void) worker_apply_one((const char *) lfirst(lc), &worked);
			if (!worked && log_quiet())
			{
				CqrsSetIdleExit(dboid, true);
				proc_exit(0);
			}
			if (!CqrsWorkerAttach(dboid))
				proc_exit(0);	/* the launcher started another one */
			if (worked)
				continue;

			/*
			 * Not quiet (an append in flight, or the log locked): sleep, or
			 * a long transaction would have us detach and attach in a loop.
			 * Appends that committed while we were detached woke the
			 * launcher, which leaves us be: we see them within naptime.
			 */
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 cqrs_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
