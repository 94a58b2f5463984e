/*-------------------------------------------------------------------------
 *
 * pg_cqrs.h
 *		Shared declarations of pg_cqrs, grouped by the file defining them.
 *
 * Glossary, used throughout the sources:
 *
 *	event		one row of cqrs.events: something that happened, immutable.
 *	stream		the events of one aggregate ("order-42"), ordered by version.
 *	category	a stream's name up to its first '-' ("order").
 *	version		a stream's event count after an event: 1, 2, 3 ... no gaps.
 *	position	an event's place in the whole log: unique and increasing in
 *				the order positions were handed out, not in commit order;
 *				gaps appear where appends rolled back.
 *	floor		a position below every position an in-flight appending
 *				transaction holds or may still take (see horizon.c).
 *	safe position
 *				the highest position at or below which every event is either
 *				committed and visible, or gone for good; readers that
 *				checkpoint by position never read past it (see horizon.c).
 *
 * Layers.  Each file of src/ calls only the files listed below it, so a
 * reader can start at the bottom and never meet a name defined higher up;
 * "make check" enforces this (test/lib/layers.pl).  Settings are variables
 * of pg_cqrs.c that any file may read.  The declarations below are grouped
 * by the file defining them, bottom-up.
 *
 *	pg_cqrs.c			_PG_init: settings, shared-memory hooks, the launcher
 *	worker.c			the launcher and the per-database workers' loops
 *	retention.c			retention rules per category: set, drop, apply, the worker's passes
 *	replay.c			cqrs.replay, cqrs.reconcile, cqrs.verify
 *	projection.c		the SQL lifecycle of projections, wait_for_projection
 *	capture_trigger.c	the change-capture row trigger and its per-table cache
 *	capture.c			cqrs.capture/uncapture and the cqrs.captures catalog
 *	read.c				read_stream, read_all, stream_version, safe_position
 *	decoder.c			the logical decoding output plugin
 *	import.c			cqrs.import_events: bulk import, many streams per batch
 *	lifecycle.c			cqrs.delete_stream, truncate_stream, erase_stream
 *	archive.c			cqrs.events_archive: monthly partitions, moving events into it
 *	append.c			cqrs.append and cqrs.append_events; sync projections' turn
 *	event_input.c		checking what appends are given: rights, names, sizes
 *	apply.c				calling handlers: sync, deferred batches, rebuilds
 *	digest.c			read-table digests: deltas, their trigger, stored digests
 *	rowhash.c			row image hashes; a table's rows summed per key bucket
 *	horizon.c			the safe read position: appenders' floors in shared memory
 *	standby.c			appenders' floors carried to hot standbys in WAL records
 *	log_security.c		the log's row-level security, carried through pg_dump
 *	audit.c				cqrs.lifecycle_log: who removed or changed which events
 *	catalog.c			cqrs.projections and cqrs.skipped_events, the sync cache
 *	scope.c				acting as the catalog's owner or as a projection's owner
 *	outbox.c			cqrs.publish, the message format, outbox_status
 *	filterscan.c		scans of the log by category or type, in position order
 *	eventlog.c			the log's relations: OIDs, stream locks, index probes
 *	wakeup.c			latches and the progress condition variable
 *	guard.c				the guards of cqrs.events: append-only, written only by append
 *	redact.c			cqrs.redact: values at chosen JSON paths replaced by the erased marker
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/pg_cqrs.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_CQRS_H
#define PG_CQRS_H

#include "postgres.h"

#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "access/xlogdefs.h"
#include "nodes/parsenodes.h"
#include "storage/lockdefs.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"
#include "utils/uuid.h"

/* Attribute numbers of cqrs.events; the install script fixes the order. */
#define Anum_events_position	1
#define Anum_events_stream		2
#define Anum_events_version		3
#define Anum_events_id			4
#define Anum_events_type		5
#define Anum_events_data		6
#define Anum_events_metadata	7
#define Anum_events_recorded_at 8
#define Natts_events			8

/* pg_cqrs.c */
extern int	cqrs_max_event_size;
extern int	cqrs_batch_size;
extern int	cqrs_naptime;
extern int	cqrs_handler_timeout;
extern int	cqrs_wal_rmgr_id;
extern int	cqrs_retention_batch_size;
extern int	cqrs_retention_naptime;
extern int	cqrs_max_causation_depth;
extern int	cqrs_lifecycle_idle_timeout;

/* The metadata key under which handler-made events record their cause. */
#define CQRS_CAUSATION_KEY "$causation"

/* redact.c */
/* What erase_stream and redact_stream write over erased values. */
#define CQRS_ERASED_MARKER "{\"$erased\": true}"
typedef struct CqrsRedactPaths CqrsRedactPaths;
extern CqrsRedactPaths *CqrsParseRedactPaths(Jsonb *paths);
extern Jsonb *CqrsRedact(Jsonb *data, const CqrsRedactPaths *paths, Jsonb *marker);
extern Jsonb *CqrsErasedMarker(void);

/* guard.c */
extern void CqrsAllowAppendInsert(void);
extern void CqrsEndAppendInsert(void);
extern uint64 CqrsExecuteLogRewrite(SPIPlanPtr plan, Datum *values, Snapshot snapshot,
									int expected_rc);

/* wakeup.c */
extern void CqrsWakeupShmemRequest(void);
extern void CqrsWakeupShmemStartup(void);
extern void CqrsWakeupInit(void);
extern void CqrsWakeWorker(Oid dboid);
extern void CqrsWakeWorkerOrLauncher(Oid dboid);
extern void CqrsWakeWorkerAtCommit(void);
extern bool CqrsTakeWorkerWake(void);
extern void CqrsWakeLauncherAtCommit(void);
extern void CqrsWakeAppliers(void);
extern void CqrsWaitForProgress(long ms);
extern void CqrsWaitForProgressDone(void);
extern void CqrsProgressBroadcast(void);
extern void CqrsLauncherAttach(void);
extern int	CqrsLauncherTakeWakes(Oid *dbs, bool *all);
extern int	CqrsMaxWakes(void);
extern void CqrsSetSlotsWanted(bool wanted);
extern bool CqrsSlotsWanted(void);
extern void CqrsSetIdleExit(Oid dboid, bool idle);
extern bool CqrsExitedIdle(Oid dboid);
extern bool CqrsWorkerAttach(Oid dboid);
extern void CqrsWorkerDetach(void);

/* eventlog.c */
typedef struct CqrsEventLogOids
{
	Oid			events;			/* cqrs.events */
	Oid			position_idx;	/* its primary key, on position */
	Oid			stream_version_idx; /* unique (stream, version) */
	Oid			id_idx;			/* unique (id) */
	Oid			position_seq;	/* cqrs.events_position_seq */
	Oid			projections;	/* cqrs.projections, InvalidOid before 0.2.0 */
	Oid			skipped_events; /* cqrs.skipped_events, likewise */
	Oid			projection_digests; /* cqrs.projection_digests, before
									 * 0.3.0 InvalidOid */
	Oid			forbid_direct_insert;	/* the INSERT guard's function, before
										 * 0.4.0 InvalidOid */
	Oid			category_position_idx;	/* (cqrs.category(stream), position),
										 * InvalidOid before 0.7.0 or dropped */
	Oid			type_position_idx;	/* (type, position), likewise */
} CqrsEventLogOids;

extern Relation CqrsOpenEventLog(LOCKMODE lockmode);
extern const CqrsEventLogOids *CqrsEventLog(void);
extern void CqrsCheckEventLogPrivilege(AclMode mode);
extern bool CqrsDigestsInstalled(void);
extern SPIPlanPtr CqrsPrepareKept(const char *sql, int nargs, Oid *argtypes);
extern ErrorData *CqrsTrySubtransaction(void (*fn) (void *arg), void *arg);
extern void CqrsLockStream(const char *stream, int len);
extern void CqrsUnlockStream(const char *stream, int len);
extern void CqrsLockEventId(const pg_uuid_t *id);
extern void CqrsUnlockEventId(const pg_uuid_t *id);
extern bool CqrsStreamHead(Relation events, text *stream, Snapshot snapshot,
						   int64 *version, int64 *position);

/* A stream's life, as its head tells (0.7.0; lifecycle.c writes tombstones). */
#define CQRS_TYPE_STREAM_DELETED	"$StreamDeleted"
#define CQRS_TYPE_STREAM_TRUNCATED	"$StreamTruncated"
#define CQRS_TYPE_STREAM_ERASED		"$StreamErased"
#define CQRS_TYPE_STREAM_REDACTED	"$StreamRedacted"
typedef enum CqrsStreamState
{
	CQRS_STREAM_LIVE,
	CQRS_STREAM_SOFT_DELETED,
	CQRS_STREAM_HARD_DELETED
} CqrsStreamState;

extern bool CqrsStreamHeadState(Relation events, text *stream, Snapshot snapshot,
								int64 *version, int64 *position, CqrsStreamState *state);
extern void CqrsStreamDeletedError(text *stream, int64 version, CqrsStreamState state);
extern TransactionId CqrsStreamHeadForChange(Relation events, text *stream, int64 *version,
											 int64 *position, CqrsStreamState *state);
extern bool CqrsFindEvent(Relation events, pg_uuid_t *id, Snapshot snapshot,
						  text **stream, int64 *version, int64 *position);
extern TransactionId CqrsStreamHeadForAppend(Relation events, text *stream,
											 int64 *version, int64 *position);
extern TransactionId CqrsFindEventForAppend(Relation events, pg_uuid_t *id, bool *found,
											text **stream, int64 *version, int64 *position);
extern int64 CqrsMaxPosition(Relation events, Snapshot snapshot);
extern char *CqrsQualifiedName(Oid relid);

/* filterscan.c */
/* A category and type filter; NULL arrays mean "every". */
typedef struct CqrsEventFilter
{
	int			ncategories;
	text	  **categories;		/* NULL: every category */
	int			ntypes;
	text	  **types;			/* NULL: every type */
} CqrsEventFilter;

typedef struct CqrsFilterScan CqrsFilterScan;

extern bool CqrsEventFilterMatches(const CqrsEventFilter *f, text *stream, text *type);
extern CqrsFilterScan *CqrsFilterScanBegin(Relation events, Snapshot snapshot,
										   const CqrsEventFilter *filter,
										   int64 after, int64 upto);
extern TupleTableSlot *CqrsFilterScanNext(CqrsFilterScan *fs);
extern void CqrsFilterScanEnd(CqrsFilterScan *fs);

/* outbox.c (the output plugin itself is decoder.c, which exports nothing) */
#define CQRS_MESSAGE_PREFIX "pg_cqrs"

typedef struct CqrsPublished
{
	pg_uuid_t	id;
	const char *topic;
	int			topic_len;
	const char *key;			/* NULL: no key */
	int			key_len;
	const char *payload;		/* JSON text, to be parsed by the reader */
	int			payload_len;
} CqrsPublished;

struct ReplicationSlot;
extern const char *CqrsDecodePublished(const char *body, Size size, Oid dboid,
									   TransactionId xid, CqrsPublished *msg);
extern bool CqrsPublishedPayload(const CqrsPublished *msg, StringInfo buf);
extern void CqrsOutboxShmemRequest(void);
extern void CqrsOutboxShmemStartup(void);
extern void CqrsOutboxForgetSlot(const char *name);
extern void CqrsOutboxNoteDecoded(struct ReplicationSlot *slot, int *cache,
								  XLogRecPtr end_lsn, int64 position);

/* scope.c */
/* The search_path of every statement pg_cqrs builds (scope.c). */
#define CQRS_INTERNAL_SEARCH_PATH "pg_catalog, pg_temp"

/* SPI connected, running as the owner of the extension's catalog */
typedef struct CqrsCatalogScope
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} CqrsCatalogScope;

/* running as a projection's owner, as its handler does */
typedef struct CqrsOwnerScope
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} CqrsOwnerScope;

extern int	CqrsRestrictSearchPath(void);
extern void CqrsRestoreSearchPath(int nestlevel);
extern void CqrsCatalogScopeEnter(CqrsCatalogScope *scope);
extern void CqrsCatalogScopeLeave(CqrsCatalogScope *scope);
extern void CqrsOwnerScopeEnter(Oid owner, const char *search_path, CqrsOwnerScope *scope);
extern void CqrsOwnerScopeLeave(CqrsOwnerScope *scope);

/* catalog.c */
/* A projection's definition, as the appliers need it. */
typedef struct CqrsProjection
{
	char	   *name;
	char	   *handler_sig;	/* qualified signature, as stored */
	Oid			handler;
	Oid			owner;
	bool		sync;
	char		state;			/* 'r'unning, 'p'aused, 'f'ailed, 'c'atching up */
	int64		position;
	char	   *search_path;
	int			ncategories;
	text	  **categories;		/* NULL: every category */
	int			ntypes;
	text	  **types;			/* NULL: every type */
	int			ntables;
	Oid		   *tables;			/* the read tables it owns */
	bool		digest;			/* keeps digests of its tables (digest.c) */
	char	   *broken;			/* why it cannot run, or NULL */
	FmgrInfo	flinfo;
} CqrsProjection;

/* A sorted set of positions a projection was told to skip. */
typedef struct CqrsSkipSet
{
	int			n;
	int64	   *positions;
} CqrsSkipSet;


/* How CqrsProjectionsQuery locks the rows it returns. */
typedef enum CqrsRowLock
{
	CQRS_ROWS_UNLOCKED,
	CQRS_ROWS_FOR_UPDATE,
	CQRS_ROWS_FOR_UPDATE_SKIP_LOCKED
} CqrsRowLock;

extern Oid	CqrsProjectionsRelid(void);
extern List *CqrsLockProjectionsForAppend(List **deferred);
extern Oid	CqrsLockProjections(LOCKMODE mode);
extern void CqrsProjectionsChanged(Oid relid);
extern void CqrsSPIConnect(void);
extern void CqrsCatalogConnect(CqrsCatalogScope *scope);
extern void CqrsCatalogDisconnect(CqrsCatalogScope *scope);
extern int	CqrsCatalogExecute(const char *sql, int nargs, Oid *argtypes, Datum *values,
							   const char *nulls, bool read_only);
extern List *CqrsProjectionsQuery(const char *where, const char *name, CqrsRowLock rowlock);
extern CqrsProjection *CqrsProjectionGet(const char *name, bool for_update);
extern CqrsProjection *CqrsProjectionDraft(Oid *argtypes, Datum *values, const char *nulls);
extern void CqrsProjectionUpdate(const char *name, const char *set, int nargs,
								 Oid *argtypes, Datum *values, const char *nulls);
extern void CqrsSetCheckpoint(const char *name, int64 position);
extern List *CqrsSyncProjections(Oid relid);
extern List *CqrsRunningDeferredNames(MemoryContext cxt);
extern CqrsSkipSet *CqrsLoadSkipSet(const char *name, int64 after);
extern Oid	CqrsProjectionOwner(const char *name);
extern void CqrsCheckProjectionOwner(const char *name, Oid owner);
extern void CqrsRequireProjectionOwner(const char *name);
extern void CqrsCheckProjectionStatusAccess(const CqrsProjection *p);
extern char *CqrsProjectionNameArg(FunctionCallInfo fcinfo, int argno);

/* audit.c */
extern void CqrsAudit(const char *operation, const char *target, int64 events,
					  Jsonb *detail);

/* standby.c */

/* One appender's floor, as WAL carries it to standbys. */
typedef struct CqrsWalFloor
{
	int32		procno;			/* the primary's PGPROC number */
	Oid			dboid;
	TransactionId xid;			/* the appending top-level transaction */
	int64		floor;
} CqrsWalFloor;

extern void CqrsStandbyInit(void);
extern void CqrsStandbyShmemRequest(void);
extern void CqrsStandbyShmemStartup(void);
extern bool CqrsStandbyLogging(void);
extern void CqrsStandbyLogFloor(int64 floor);
extern void CqrsStandbyLogAllFloors(XLogRecPtr scanned_from, const CqrsWalFloor *floors, int n);
extern bool CqrsStandbySafePosition(Relation events, int64 *safe);

/* horizon.c */
extern void CqrsHorizonShmemRequest(void);
extern void CqrsHorizonShmemStartup(void);
extern void CqrsHorizonInit(void);
extern bool CqrsHorizonAvailable(void);
extern void CqrsRequireHorizon(void);
extern void CqrsHorizonBeginAppend(Relation events);
extern void CqrsHorizonNoteAllocated(int64 position);
extern TransactionId CqrsHorizonHolder(int64 position);
extern int64 CqrsSafePosition(Relation events);
extern bool CqrsSafePositionIfKnown(Relation events, int64 *safe);

/* rowhash.c */
#define CQRS_DIGEST_BUCKETS 1024

/* Rows per key bucket and the sum of their image hashes, modulo 2^64. */
typedef struct CqrsBuckets
{
	int64		rows;
	int64		count[CQRS_DIGEST_BUCKETS];
	uint64		sum[CQRS_DIGEST_BUCKETS];
} CqrsBuckets;

/* A table's primary key columns, for hashing its rows. */
typedef struct CqrsRowShape
{
	int			nkeys;
	AttrNumber	keys[INDEX_MAX_KEYS];
} CqrsRowShape;

typedef void (*CqrsRowVisitor) (void *arg, Relation rel, TupleTableSlot *slot,
								int bucket, uint64 hash);

extern void CqrsRowShapeInit(CqrsRowShape *shape, Relation rel);
extern uint64 CqrsRowHash(const CqrsRowShape *shape, TupleTableSlot *slot, int *bucket);
extern void CqrsBucketsAdd(CqrsBuckets *into, const CqrsBuckets *from, int sign);
extern void CqrsScanBuckets(Oid relid, Snapshot snapshot, CqrsBuckets *into,
							const bool *wanted, CqrsRowVisitor visit, void *arg);

/* digest.c */
extern void CqrsDigestBegin(const char *projection, int ntables, Oid *tables);
extern void CqrsDigestEnd(bool keep);
extern bool CqrsDigestLoad(const char *projection, Oid relid, Snapshot snapshot,
						   CqrsBuckets *into, int64 *rows);
extern void CqrsDigestCompact(const char *projection, Oid relid);
extern void CqrsDigestSet(const char *projection, Oid relid, const CqrsBuckets *digest);
extern void CqrsDigestAttach(Oid relid);
extern void CqrsDigestDetach(Oid relid);
extern void CqrsDigestSuspend(Oid relid);
extern void CqrsDigestResume(Oid relid);

/* apply.c */
typedef struct CqrsBatchResult
{
	char		state;			/* the projection's state afterwards, or 'b'
								 * (busy) when nowait found it locked */
	bool		failed;			/* a handler failed in this batch */
	int64		examined;		/* events read from the log */
	int64		applied;		/* events handed to the handler and kept */
	int64		position;		/* checkpoint afterwards */
	int64		safe;			/* the safe position the batch stopped at */
	TimestampTz switch_asked;	/* a catching-up sync projection's switch:
								 * when its lock was asked for, and got (0:
								 * no switch in this batch) */
	TimestampTz switch_locked;
} CqrsBatchResult;

/* What replay and reconcile need to know about a projection. */
typedef struct CqrsRebuildTarget
{
	char	   *name;
	bool		sync;
	char		state;			/* 'r'unning, 'p'aused, 'f'ailed, 'c'atching up */
	int64		position;		/* its checkpoint (a running sync: the head) */
	Oid			owner;
	char	   *search_path;
	int			ntables;
	Oid		   *tables;
	bool		digest;			/* keeps digests of its tables */
} CqrsRebuildTarget;

struct Tuplestorestate;
extern bool CqrsProjectionWantsEvent(CqrsProjection *p, text *stream, text *type);
extern bool CqrsCurrentCause(pg_uuid_t *id, int32 *depth, const char **projection);
extern int64 CqrsApplyEvents(CqrsProjection *p, struct Tuplestorestate *events, TupleDesc desc,
							 CqrsSkipSet *skip, int64 stop_before);
extern int64 CqrsCollectEvents(Relation events, const CqrsEventFilter *filter, int64 after,
							   int64 upto, int64 limit, struct Tuplestorestate *store,
							   int64 *last);
extern int64 CqrsSyncCatchUp(CqrsProjection *p);
extern int64 CqrsSyncCatchUpOnline(CqrsProjection *p, int64 near);
extern void CqrsApplyBatch(const char *name, int64 limit, bool nowait,
						   CqrsBatchResult *result);
extern void CqrsRebuildLock(const char *name, CqrsRebuildTarget *target);
extern void CqrsRebuildDescribe(const char *name, CqrsRebuildTarget *target);
extern int64 CqrsRebuildApply(const char *name, int64 upto);
extern void CqrsRebuildEmpty(const CqrsRebuildTarget *t);
extern int64 CqrsRebuildTables(const CqrsRebuildTarget *t, int64 upto);
extern void CqrsRebuildFinish(const CqrsRebuildTarget *target, int64 position);

/* event_input.c */
/* length caps in bytes (54000 beyond); a stream must fit its btree index */
#define CQRS_MAX_STREAM_LEN		1024
#define CQRS_MAX_TYPE_LEN		256

/* One event to append, checked; version and position once written. */
typedef struct CqrsNewEvent
{
	text	   *stream;
	text	   *type;
	Jsonb	   *data;
	Jsonb	   *metadata;
	bool		has_id;
	pg_uuid_t	id;
	int64		version;
	int64		position;
} CqrsNewEvent;

extern void CqrsCheckMayAppend(const char *function);
extern void CqrsCheckNameLength(text *t, int maxlen, const char *what);
extern text *CqrsCheckNameArg(FunctionCallInfo fcinfo, int argno, const char *what);
extern bool CqrsCheckExpectedVersion(FunctionCallInfo fcinfo, int argno, int64 *expected);
extern bool CqrsJsonbIsNull(Jsonb *jb);
extern Jsonb *CqrsCheckMetadata(Jsonb *metadata, const char *where);
extern void CqrsCheckEventSize(text *stream, CqrsNewEvent *ev, const char *where);
extern void CqrsParseEvent(text *stream, JsonbValue *elem, int n, CqrsNewEvent *ev);

/* append.c */
extern void CqrsWriteEvents(Relation events, CqrsNewEvent *evs, int n);
extern void CqrsIdRecordedElsewhere(const pg_uuid_t *id, text *other, text *stream);
extern void CqrsCheckHeadSinceSnapshot(Relation events, text *stream, int64 head_version);
extern int64 CqrsAppendEvent(text *stream, text *type, Jsonb *data,
							 Jsonb *metadata);

/* archive.c */
extern Oid	CqrsArchiveRelid(void);
extern char *CqrsArchivePartition(bool nowait);
extern int64 CqrsArchiveMove(Datum positions, Snapshot snapshot);
extern int64 CqrsArchiveErase(text *stream, int64 from, int64 to, Jsonb *marker,
							  bool keep_metadata);
extern int64 CqrsArchiveDelete(text *stream, int64 before_version);
extern int64 CqrsArchiveRedact(text *stream, int64 from, int64 to, Jsonb *paths);

/* lifecycle.c exports only its SQL functions */

/* capture.c */
#define CAPTURE_ROW_TRIGGER			"cqrs_capture"
#define CAPTURE_TRUNCATE_TRIGGER	"cqrs_capture_truncate"

extern bool CqrsCaptureLookup(Oid relid, char **category, char **type_prefix);

/* retention.c */
extern bool CqrsRetentionWork(MemoryContext cxt, bool *more);

/* worker.c */
extern void CqrsWorkerInit(void);

#endif							/* PG_CQRS_H */
