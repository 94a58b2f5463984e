/*-------------------------------------------------------------------------
 *
 * audit.c
 *		The audit trail of the log's lifecycle operations: cqrs.lifecycle_log.
 *
 * The log is append-only except through a few controlled operations
 * (deleting, truncating and erasing streams, retention, archiving; see
 * guard.c for how their statements get past the log's guard).  Each one
 * records what it did here, in the same transaction as the change itself,
 * so the trail and the change commit or vanish together.  The row names
 * the role whose rights were checked (the current user) and the session's
 * login role, since a SECURITY DEFINER wrapper would otherwise hide who
 * asked.
 *
 * The table belongs to the extension's owner; the operations write it
 * as that owner (catalog.c's scope), so no role needs, or gets, a right to
 * write or change it.  pg_monitor may read it.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/audit.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "pg_cqrs.h"

/*
 * CqrsAudit
 *		Record one lifecycle operation.  target may be NULL; detail may be
 *		NULL (stored as {}).  SPI must be connected.
 */
void
CqrsAudit(const char *operation, const char *target, int64 events, Jsonb *detail)
{
	Oid			argtypes[6] = {TEXTOID, TEXTOID, INT8OID, JSONBOID, NAMEOID, NAMEOID};
	Datum		values[6];
	char		nulls[6];
	NameData	performed_by;
	NameData	session_role;
	int			rc;

	memset(nulls, ' ', sizeof(nulls));
	namestrcpy(&performed_by, GetUserNameFromId(GetUserId(), false));
	namestrcpy(&session_role, GetUserNameFromId(GetSessionUserId(), false));

	values[0] = CStringGetTextDatum(operation);
	if (target)
		values[1] = CStringGetTextDatum(target);
	else
	{
		values[1] = (Datum) 0;
		nulls[1] = 'n';
	}
	values[2] = Int64GetDatum(events);
	if (detail)
		values[3] = JsonbPGetDatum(detail);
	else
		values[3] = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	values[4] = NameGetDatum(&performed_by);
	values[5] = NameGetDatum(&session_role);

	rc = CqrsCatalogExecute("INSERT INTO cqrs.lifecycle_log"
							" (operation, target, events, detail, performed_by, session_role)"
							" VALUES ($1, $2, $3, $4, $5, $6)",
							6, argtypes, values, nulls, false);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: recording a lifecycle operation failed: %s",
			 SPI_result_code_string(rc));
}
