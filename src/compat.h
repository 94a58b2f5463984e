/*-------------------------------------------------------------------------
 *
 * compat.h
 *		Every PostgreSQL-version difference pg_cqrs depends on, in one place.
 *
 * pg_cqrs builds against PostgreSQL 15, 16, 17 and 18.  15, 17 and 18 are
 * built with -Werror and tested by "make check-all"; no Debian release
 * ships 16, so it is not compiled here: each shim says in which release
 * its difference appeared, checked against the 15 and 17 headers on either
 * side of 16.  Code elsewhere uses only the names defined here, never
 * PG_VERSION_NUM directly.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/compat.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_CQRS_COMPAT_H
#define PG_CQRS_COMPAT_H

#include "access/genam.h"
#include "storage/proc.h"

#if PG_VERSION_NUM < 150000
#error "pg_cqrs requires PostgreSQL 15 or later"
#endif

/* Index of this backend's PGPROC: 0-based, below MaxBackends for backends. */
#if PG_VERSION_NUM >= 170000
#define CqrsMyProcIndex()	((int) MyProcNumber)
#else
#define CqrsMyProcIndex()	(MyProc->pgprocno)
#endif

/* index_beginscan() grew an instrumentation argument in 18. */
#if PG_VERSION_NUM >= 180000
#define cqrs_index_beginscan(heap, index, snapshot, nkeys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), 0)
#else
#define cqrs_index_beginscan(heap, index, snapshot, nkeys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), 0)
#endif

/*
 * PG16 folded pg_proc_aclcheck(), pg_class_ownercheck() and
 * pg_namespace_aclcheck() into object_aclcheck() and object_ownercheck(),
 * which name the catalog by its OID: hence the catalog headers.
 */
#if PG_VERSION_NUM >= 160000
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "utils/acl.h"

#define cqrs_proc_aclcheck(procoid, roleid, mode) \
	object_aclcheck(ProcedureRelationId, (procoid), (roleid), (mode))
#define cqrs_proc_ownercheck(procoid, roleid) \
	object_ownercheck(ProcedureRelationId, (procoid), (roleid))
#define cqrs_class_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#define cqrs_namespace_aclcheck(nspid, roleid, mode) \
	object_aclcheck(NamespaceRelationId, (nspid), (roleid), (mode))
#else
#define cqrs_proc_aclcheck(procoid, roleid, mode) \
	pg_proc_aclcheck((procoid), (roleid), (mode))
#define cqrs_proc_ownercheck(procoid, roleid) \
	pg_proc_ownercheck((procoid), (roleid))
#define cqrs_class_ownercheck(relid, roleid) \
	pg_class_ownercheck((relid), (roleid))
#define cqrs_namespace_aclcheck(nspid, roleid, mode) \
	pg_namespace_aclcheck((nspid), (roleid), (mode))
#endif

/*
 * PG18 taught RelationGetPrimaryKeyIndex() about deferrable primary keys
 * (deferrable_ok); we want only keys that are checked immediately, as
 * before.
 */
#if PG_VERSION_NUM >= 180000
#define CqrsRelationGetPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex((rel), false)
#else
#define CqrsRelationGetPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex(rel)
#endif

/*
 * Logical decoding (decoder.c, outbox.c).
 *
 * PG17 hands output plugins the new tuple of a change as a HeapTuple
 * rather than a ReorderBufferTupleBuf.
 */
#if PG_VERSION_NUM >= 170000
#define CqrsChangeNewTuple(change) ((change)->data.tp.newtuple)
#else
#define CqrsChangeNewTuple(change) \
	((change)->data.tp.newtuple ? &(change)->data.tp.newtuple->tuple : NULL)
#endif

/* PG17 added a "flush" argument to LogLogicalMessage(). */
#if PG_VERSION_NUM >= 170000
#define CqrsLogLogicalMessage(prefix, message, size, transactional) \
	LogLogicalMessage((prefix), (message), (size), (transactional), false)
#else
#define CqrsLogLogicalMessage(prefix, message, size, transactional) \
	LogLogicalMessage((prefix), (message), (size), (transactional))
#endif

/*
 * Up to PG15 an output plugin that filters out most changes of a large
 * transaction must itself call OutputPluginUpdateProgress now and then
 * (pgoutput's update_replication_progress()), or the walsender sends
 * nothing for so long that the receiver times out.  PG16 moved that into
 * the reorder buffer (update_progress_txn), so plugins no longer do it.
 */
#if PG_VERSION_NUM < 160000
#define CQRS_DECODER_PROGRESS_IN_TXN 1
#else
#define CQRS_DECODER_PROGRESS_IN_TXN 0
#endif

/*
 * Parse s[0..len) as JSON with the semantic actions sem (NULL: only check
 * it); true when it is valid.  need_escapes: hand string tokens to the
 * actions de-escaped.  PG17 reworked the lexer's constructor, and PG16 made
 * semantic actions return a JsonParseErrorType: write them as
 * "static CqrsJsonAction f(...) { ... CQRS_JSON_ACTION_DONE; }".
 */
#include "common/jsonapi.h"

#if PG_VERSION_NUM >= 160000
typedef JsonParseErrorType CqrsJsonAction;
#define CQRS_JSON_ACTION_DONE return JSON_SUCCESS
#else
typedef void CqrsJsonAction;
#define CQRS_JSON_ACTION_DONE return
#endif

static inline bool
CqrsJsonParse(const char *s, int len, int encoding, bool need_escapes,
			  JsonSemAction *sem)
{
#if PG_VERSION_NUM >= 170000
	JsonLexContext lex;
	bool		ok;

	makeJsonLexContextCstringLen(&lex, s, len, encoding, need_escapes);
	ok = pg_parse_json(&lex, sem ? sem : &nullSemAction) == JSON_SUCCESS;
	freeJsonLexContext(&lex);
	return ok;
#else
	JsonLexContext *lex = makeJsonLexContextCstringLen((char *) s, len, encoding, need_escapes);
	bool		ok = pg_parse_json(lex, sem ? sem : &nullSemAction) == JSON_SUCCESS;

	pfree(lex);
	return ok;
#endif
}

/* ExecInsertIndexTuples() grew onlySummarizing in 16. */
#if PG_VERSION_NUM >= 160000
#define cqrs_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define cqrs_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

#endif							/* PG_CQRS_COMPAT_H */
