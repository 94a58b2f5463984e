/*-------------------------------------------------------------------------
 *
 * pg_cqrs.c
 *		Module entry point: _PG_init, settings and shared-memory hooks.
 *
 * pg_cqrs puts an event log, projections and an outbox inside PostgreSQL.
 * This file only wires the library into the server; each capability lives
 * in its own file (see pg_cqrs.h for the glossary and the file map).
 *
 * The library is loaded in three ways, and _PG_init must cope with each:
 * from shared_preload_libraries (shared memory available), on first use of
 * one of its SQL functions in a backend (no shared memory of ours), and by
 * a walsender as a logical decoding output plugin.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/pg_cqrs.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/rmgr.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "pg_cqrs.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* cqrs.max_event_size: limit on the raw size of data plus metadata */
int			cqrs_max_event_size = 16 * 1024 * 1024;

/* cqrs.batch_size: events a deferred projection examines per batch */
int			cqrs_batch_size = 1000;

/* cqrs.naptime: how long an idle worker sleeps between looks, in ms */
int			cqrs_naptime = 1000;

/* cqrs.handler_timeout: longest one handler call may take, in ms; 0: no limit */
int			cqrs_handler_timeout = 10000;

/*
 * cqrs.wal_rmgr_id: the custom WAL resource manager id under which appends
 * log their floors for hot standbys (standby.c); 0: do not log them
 */
int			cqrs_wal_rmgr_id = 128;

/* cqrs.max_causation_depth: longest chain of handler-made events (apply.c) */
int			cqrs_max_causation_depth = 100;

/*
 * cqrs.lifecycle_idle_timeout: how long a transaction holding the lock of a
 * sync projection's lifecycle may sit idle, in ms (catalog.c); 0: no bound
 */
int			cqrs_lifecycle_idle_timeout = 10000;

/* cqrs.retention_batch_size: events a retention batch looks at per scan */
int			cqrs_retention_batch_size = 1000;

/* cqrs.retention_naptime: time between the worker's retention passes, ms */
int			cqrs_retention_naptime = 60 * 1000;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void cqrs_shmem_request(void);
static void cqrs_shmem_startup(void);
static bool check_wal_rmgr_id(int *newval, void **extra, GucSource source);

void
_PG_init(void)
{
	DefineCustomIntVariable("cqrs.max_event_size",
							"Largest event accepted by cqrs.append, counting stream, type, data and metadata.",
							"Measured on the uncompressed size of the event's stream name, type, data and metadata together.",
							&cqrs_max_event_size,
							16 * 1024 * 1024,
							1,
							MaxAllocSize / 2,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.batch_size",
							"Events a deferred projection examines per batch.",
							"Each batch commits together with the projection's checkpoint.",
							&cqrs_batch_size,
							1000,
							1,
							1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.naptime",
							"How long an idle pg_cqrs worker sleeps between looks at the log.",
							"Commits that append events wake the worker sooner.",
							&cqrs_naptime,
							1000,
							10,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.handler_timeout",
							"Longest time one call of a projection's handler may take.",
							"A handler call that takes longer is cancelled: a sync projection's append fails, "
							"a deferred projection fails at that event and the others go on. Zero disables the limit.",
							&cqrs_handler_timeout,
							10000,
							0,
							PG_INT32_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.max_causation_depth",
							"Longest chain of events appended by projection handlers.",
							"An event a handler appends is one step deeper than the event the handler was called on; "
							"an append deeper than this fails, so a projection that feeds itself stops.",
							&cqrs_max_causation_depth,
							100,
							1,
							1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.lifecycle_idle_timeout",
							"Longest idle time of a transaction that stops appends by changing a sync projection.",
							"Creating, dropping, pausing, resuming or replaying a sync projection holds appends until the "
							"transaction ends; its idle_in_transaction_session_timeout is lowered to this for the rest "
							"of the transaction.  0 leaves it alone.",
							&cqrs_lifecycle_idle_timeout,
							10000,
							0,
							PG_INT32_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.wal_rmgr_id",
							"Custom WAL resource manager id of pg_cqrs's records, or 0 for none.",
							"Appends write their floors to WAL under this id so that hot standbys can read the log "
							"by position. Every server replaying this WAL must load pg_cqrs with the same id.",
							&cqrs_wal_rmgr_id,
							128,
							0,
							255,
							PGC_POSTMASTER,
							0,
							check_wal_rmgr_id, NULL, NULL);

	DefineCustomIntVariable("cqrs.retention_batch_size",
							"Events of a category a retention batch looks at, and most events it removes.",
							"Each batch is one transaction of the worker, with its audit row and the rule's new position.",
							&cqrs_retention_batch_size,
							1000,
							1,
							1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cqrs.retention_naptime",
							"Time between the starts of the pg_cqrs worker's retention passes.",
							"A pass runs batches until no rule has anything left to remove, then waits this long. "
							"Zero turns the worker's passes off: rules then run only when cqrs.apply_retention is called.",
							&cqrs_retention_naptime,
							60 * 1000,
							0,
							PG_INT32_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("cqrs");

	CqrsWakeupInit();
	CqrsHorizonInit();
	CqrsWorkerInit();

	if (process_shared_preload_libraries_in_progress)
	{
		CqrsStandbyInit();
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = cqrs_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = cqrs_shmem_startup;
	}
}

static void
cqrs_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	CqrsHorizonShmemRequest();
	CqrsStandbyShmemRequest();
	CqrsWakeupShmemRequest();
	CqrsOutboxShmemRequest();	/* outbox */
}

static void
cqrs_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	CqrsHorizonShmemStartup();
	CqrsStandbyShmemStartup();
	CqrsWakeupShmemStartup();
	CqrsOutboxShmemStartup();	/* outbox */
}

/* 0, or an id PostgreSQL leaves to extensions (RM_MIN_CUSTOM_ID and up) */
static bool
check_wal_rmgr_id(int *newval, void **extra, GucSource source)
{
	if (*newval == 0 || (*newval >= RM_MIN_CUSTOM_ID && *newval <= RM_MAX_CUSTOM_ID))
		return true;
	GUC_check_errdetail("cqrs.wal_rmgr_id must be 0 or between %d and %d.",
						RM_MIN_CUSTOM_ID, RM_MAX_CUSTOM_ID);
	return false;
}
