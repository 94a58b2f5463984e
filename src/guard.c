/*-------------------------------------------------------------------------
 *
 * guard.c
 *		The trigger that keeps cqrs.events append-only.
 *
 * Events are facts: a wrong one is corrected by appending a compensating
 * event, never by editing history, which projections, consumers and the
 * outbox have already acted upon.  The install script attaches this
 * function as a statement-level BEFORE UPDATE OR DELETE trigger and a
 * BEFORE TRUNCATE trigger, both ENABLE ALWAYS so that
 * session_replication_role = replica does not disable them.  Statement
 * level: the error comes before any row is touched, even for a statement
 * that matches no rows.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/guard.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_forbid_change);

/*
 * cqrs.forbid_change() RETURNS trigger
 */
Datum
cqrs_forbid_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *verb;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.forbid_change() must be called as a trigger")));

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		verb = "update";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		verb = "delete from";
	else if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		verb = "truncate";
	else
		verb = "change";

	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot %s the event log \"%s.%s\"", verb,
					get_namespace_name(RelationGetNamespace(trigdata->tg_relation)),
					RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("The event log is append-only: events are never changed or removed."),
			 errhint("Append a compensating event instead.")));

	PG_RETURN_NULL();			/* keep compiler quiet */
}
