/*-------------------------------------------------------------------------
 *
 * guard.c
 *		The triggers that keep cqrs.events append-only, and append the only
 *		way in.
 *
 * Events are facts: a wrong one is corrected by appending a compensating
 * event, never by editing history, which projections, consumers and the
 * outbox have already acted upon.  The install script attaches
 * cqrs.forbid_change() as a statement-level BEFORE UPDATE OR DELETE trigger
 * and a BEFORE TRUNCATE trigger, both ENABLE ALWAYS so that
 * session_replication_role = replica does not disable them.  Statement
 * level: the error comes before any row is touched, even for a statement
 * that matches no rows.
 *
 * Append is the only door (0.4.0).  A row written by INSERT or COPY could
 * choose its position (one far ahead moves the safe position past events
 * still to come, so position-checkpointing readers skip them), its version
 * (breaking the stream's numbering), its id and timestamp, and bypass the
 * checks of cqrs.append.  So cqrs.forbid_direct_insert(), a statement-level
 * BEFORE INSERT trigger (ENABLE ALWAYS; COPY FROM fires it too), refuses
 * every INSERT except:
 *
 *	 (a) the one statement append.c runs for an append: it calls
 *		 CqrsAllowAppendInsert() just before executing its own INSERT and
 *		 CqrsEndAppendInsert() after it, success or error.  The trigger
 *		 consumes the permission, so it covers that one statement only:
 *		 anything that runs during it (the AFTER triggers of sync
 *		 projections, their handlers) is refused if it INSERTs directly,
 *		 and appends through cqrs.append like everyone else.  Between the
 *		 two calls no user code can run before the trigger: the statement
 *		 is prepared, fully qualified, and its parameters are values.
 *	 (b) a superuser, or a role with the privileges of the log's owner:
 *		 pg_restore and pg_dump's COPY (whole or data-only) run as one of
 *		 them, and they could drop the trigger anyway.
 *
 * The permission is a backend-local flag, not a setting or anything
 * stored, so no SQL can set it.  The append itself still runs as the
 * caller: INSERT privilege and row-level security WITH CHECK policies
 * apply to it as to any INSERT.
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
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_forbid_change);
PG_FUNCTION_INFO_V1(cqrs_forbid_direct_insert);

/* (a) above: the next INSERT statement on the log is append.c's own */
static bool append_insert_allowed = false;

/*
 * The next UPDATE or DELETE statement on the log is one of the lifecycle
 * operations' own (0.7.0: deleting, truncating, erasing, retention,
 * archiving).  These are the controlled exceptions to append-only: each is
 * a C function that checks its caller's right, writes its audit row and
 * runs one prepared, fully qualified statement through
 * CqrsExecuteLogRewrite(), which gives the permission for that statement
 * only, as append does for its INSERT.  TRUNCATE is never let through.
 */
static bool log_rewrite_allowed = false;

/*
 * CqrsAllowAppendInsert
 *		Let the next INSERT statement on cqrs.events through the guard.
 *		Call immediately before executing append.c's INSERT.
 */
void
CqrsAllowAppendInsert(void)
{
	append_insert_allowed = true;
}

/*
 * CqrsEndAppendInsert
 *		Withdraw the permission, whether or not the guard consumed it (the
 *		statement may have failed before its BEFORE STATEMENT triggers).
 *		Call after the INSERT, also when it raised an error.
 */
void
CqrsEndAppendInsert(void)
{
	append_insert_allowed = false;
}

/*
 * CqrsExecuteLogRewrite
 *		Execute one of pg_cqrs's own UPDATE or DELETE statements on
 *		cqrs.events (a lifecycle operation's, a retention or archive batch's)
 *		through the guard: the permission is given immediately before and
 *		withdrawn after, also on error, so a caught error cannot leave it
 *		open.  With a snapshot, the statement reads with it (SPI_execute_
 *		snapshot); else as usual.  SPI connected; raises an error unless
 *		the result is expected_rc; returns the rows processed.
 */
uint64
CqrsExecuteLogRewrite(SPIPlanPtr plan, Datum *values, Snapshot snapshot, int expected_rc)
{
	volatile int rc = 0;

	log_rewrite_allowed = true;
	PG_TRY();
	{
		if (snapshot != NULL)
			rc = SPI_execute_snapshot(plan, values, NULL, snapshot, InvalidSnapshot,
									  false, true, 0);
		else
			rc = SPI_execute_plan(plan, values, NULL, false, 0);
	}
	PG_FINALLY();
	{
		log_rewrite_allowed = false;
	}
	PG_END_TRY();
	if (rc != expected_rc)
		elog(ERROR, "pg_cqrs: rewriting the event log failed: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

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

	/* a lifecycle operation's own statement: consume the permission */
	if (log_rewrite_allowed &&
		(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		 TRIGGER_FIRED_BY_DELETE(trigdata->tg_event)))
	{
		log_rewrite_allowed = false;
		return PointerGetDatum(NULL);
	}

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

/*
 * cqrs.forbid_direct_insert() RETURNS trigger
 *
 * BEFORE INSERT ... FOR EACH STATEMENT on cqrs.events; see the file header.
 */
Datum
cqrs_forbid_direct_insert(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.forbid_direct_insert() must be called as a BEFORE INSERT ... FOR EACH STATEMENT trigger")));

	/* append.c's own statement: consume the permission */
	if (append_insert_allowed)
	{
		append_insert_allowed = false;
		return PointerGetDatum(NULL);
	}

	/* restores: superusers and the log's owner */
	rel = trigdata->tg_relation;
	if (superuser() || has_privs_of_role(GetUserId(), rel->rd_rel->relowner))
		return PointerGetDatum(NULL);

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("cannot insert into the event log \"%s.%s\" directly",
					get_namespace_name(RelationGetNamespace(rel)),
					RelationGetRelationName(rel)),
			 errdetail("Events are written only by cqrs.append and cqrs.append_events, which choose their positions, versions, ids and timestamps."),
			 errhint("Use cqrs.append() or cqrs.append_events(); INSERT on the log is the right to call them.")));

	return PointerGetDatum(NULL);	/* keep compiler quiet */
}
