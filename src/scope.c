/*-------------------------------------------------------------------------
 *
 * scope.c
 *		Acting as another role: the catalog's owner, a projection's owner.
 *
 * pg_cqrs runs code as a role other than the caller's in two places only:
 *
 *	catalog scope	as the owner of the extension's catalog, to read and
 *					write cqrs.projections and its neighbours with our own
 *					schema-qualified SQL.  An application role that may
 *					append needs no privilege on them.
 *	owner scope		as a projection's owner, with SECURITY_RESTRICTED_OPERATION
 *					and the projection's pinned search_path: how handlers run
 *					and how replay and reconcile write read tables, as REFRESH
 *					MATERIALIZED VIEW and amcheck run user code.
 *
 * Search path.  Our own SQL runs with search_path = pg_catalog, pg_temp
 * (CQRS_INTERNAL_SEARCH_PATH) and names everything it uses with its
 * schema, operators included, so no object a role creates in a schema on
 * somebody's path can stand in for ours: the catalog scope always sets it,
 * and so does the owner scope when replay and reconcile write read tables.
 * Only a handler runs with its owner's pinned search_path.
 *
 * Each scope is entered and left in pairs; an error in between is undone
 * by the transaction (or subtransaction) abort, which restores the user id,
 * the security context and the GUC nest level.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/scope.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pg_cqrs.h"

/*
 * CqrsRestrictSearchPath
 *		Set search_path to CQRS_INTERNAL_SEARCH_PATH for the internal SQL that
 *		follows, in a new GUC nest level; returns the level to give to
 *		CqrsRestoreSearchPath.  An error unwinds it with the transaction or
 *		subtransaction, like any SET LOCAL.
 */
int
CqrsRestrictSearchPath(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", CQRS_INTERNAL_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * CqrsRestoreSearchPath
 *		Undo CqrsRestrictSearchPath.
 */
void
CqrsRestoreSearchPath(int nestlevel)
{
	AtEOXact_GUC(true, nestlevel);
}

/*
 * The catalog is read and written as its owner (the extension's owner), not
 * as the caller: an application role that may append must not need
 * privileges on cqrs.projections, nor on the schemas of other roles'
 * handlers, for the sync trigger to find and resolve them.  Only our own
 * schema-qualified SQL runs in this scope.
 */

void
CqrsCatalogScopeEnter(CqrsCatalogScope *scope)
{
	HeapTuple	tup;
	Oid			owner;
	Oid			relid = CqrsEventLog()->projections;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(owner, scope->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	scope->save_nestlevel = CqrsRestrictSearchPath();
}

void
CqrsCatalogScopeLeave(CqrsCatalogScope *scope)
{
	CqrsRestoreSearchPath(scope->save_nestlevel);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

/*
 * CqrsOwnerScopeEnter
 *		Act as a projection's owner, restricted, with the given search_path:
 *		the owner's pinned one for its handler, CQRS_INTERNAL_SEARCH_PATH for
 *		the SQL replay and reconcile run on read tables.
 */
void
CqrsOwnerScopeEnter(Oid owner, const char *search_path, CqrsOwnerScope *scope)
{
	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(owner,
						   scope->save_sec_context | SECURITY_RESTRICTED_OPERATION);
	scope->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", search_path,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
CqrsOwnerScopeLeave(CqrsOwnerScope *scope)
{
	AtEOXact_GUC(false, scope->save_nestlevel);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

