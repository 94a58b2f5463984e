/*-------------------------------------------------------------------------
 *
 * log_security.c
 *		Row-level security on the log, carried through pg_dump.
 *
 * cqrs.events is a table of the extension: pg_dump writes its rows but not
 * its definition, which CREATE EXTENSION recreates on restore.  Nor does it
 * write ENABLE ROW LEVEL SECURITY or the policies on it (PostgreSQL 15 to
 * 18).  A database whose tenants were kept apart by policies on the log
 * would come back from a restore with the log open to every role with
 * SELECT.  So pg_cqrs keeps the log's security in a table of its own that
 * pg_dump does carry (a configuration table), and puts it back when a
 * restore loads that table:
 *
 *	 capture	an event trigger at the end of CREATE/ALTER/DROP POLICY and
 *				ALTER TABLE compares the log's row_security, force and
 *				policies with the last row of cqrs.log_security and appends a
 *				row when they differ.  Policy expressions are written by
 *				pg_get_expr under search_path = pg_catalog, so every name in
 *				them that needs its schema has it.  Nothing is written while
 *				the log has never had any (a fresh installation, and the
 *				restore's own CREATE EXTENSION, leave the table empty for the
 *				dump's rows).
 *	 restore	an AFTER INSERT row trigger on cqrs.log_security makes the
 *				log's security what an inserted row says, unless the row is
 *				the capture's own.  The only other writers are the table's
 *				owner and superusers (nobody else has a right on it): that
 *				is pg_restore loading the dump.  Row-level security is
 *				enabled first and each policy is created in a
 *				subtransaction: a policy that cannot be created (a role that
 *				does not exist in the new cluster) is reported with a WARNING
 *				and left out, so the log fails closed to the roles it would
 *				have admitted, never open.
 *
 * The statements run as the current user: ALTER TABLE and CREATE POLICY on
 * the log need its owner's rights, which a restoring role has.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/log_security.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_log_security_capture);
PG_FUNCTION_INFO_V1(cqrs_save_log_security);
PG_FUNCTION_INFO_V1(cqrs_log_security_restore);

/*
 * True while this backend writes cqrs.log_security itself (capture) or
 * changes the log's security from it (restore): neither must feed the
 * other.
 */
static bool busy = false;

/* The log's security now, as one row; appended when it differs from the last. */
#define CAPTURE_SQL \
	"WITH now AS (" \
	"  SELECT c.relrowsecurity AS rs, c.relforcerowsecurity AS frs," \
	"         (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(" \
	"                   'name', p.polname, 'command', p.polcmd::pg_catalog.text," \
	"                   'permissive', p.polpermissive," \
	"                   'roles', (SELECT pg_catalog.jsonb_agg(CASE WHEN r OPERATOR(pg_catalog.=) 0 THEN 'public'" \
	"                                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r)) END" \
	"                                     ORDER BY 1)" \
	"                              FROM pg_catalog.unnest(p.polroles) r)," \
	"                   'using', pg_catalog.pg_get_expr(p.polqual, p.polrelid)," \
	"                   'check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))" \
	"                 ORDER BY p.polname), '[]'::pg_catalog.jsonb)" \
	"            FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid) AS pol" \
	"    FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1)," \
	" last AS (" \
	"  SELECT l.row_security, l.force_row_security, l.policies FROM cqrs.log_security l" \
	"   ORDER BY l.captured_at DESC, l.id DESC LIMIT 1)" \
	" INSERT INTO cqrs.log_security (row_security, force_row_security, policies)" \
	" SELECT now.rs, now.frs, now.pol FROM now" \
	"  WHERE NOT EXISTS (SELECT FROM last" \
	"                     WHERE last.row_security OPERATOR(pg_catalog.=) now.rs" \
	"                       AND last.force_row_security OPERATOR(pg_catalog.=) now.frs" \
	"                       AND last.policies OPERATOR(pg_catalog.=) now.pol)" \
	"    AND (EXISTS (SELECT FROM last) OR now.rs OR now.frs" \
	"         OR now.pol OPERATOR(pg_catalog.<>) '[]'::pg_catalog.jsonb)"

/* Append the log's current security to cqrs.log_security if it changed. */
static void
capture(void)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1];
	int			rc;

	values[0] = ObjectIdGetDatum(CqrsEventLog()->events);
	CqrsSPIConnect();
	busy = true;
	PG_TRY();
	{
		rc = CqrsCatalogExecute(CAPTURE_SQL, 1, argtypes, values, NULL, false);
	}
	PG_FINALLY();
	{
		busy = false;
	}
	PG_END_TRY();
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "pg_cqrs: recording the log's row-level security failed: %s",
			 SPI_result_code_string(rc));
	SPI_finish();
}

/* Whether the 0.7.0 table exists: an event trigger fires in any state. */
static bool
installed(void)
{
	return OidIsValid(get_namespace_oid("cqrs", true)) &&
		OidIsValid(get_relname_relid("log_security", get_namespace_oid("cqrs", true))) &&
		OidIsValid(CqrsEventLog()->events);
}

/*
 * cqrs.log_security_capture() RETURNS event_trigger
 */
Datum
cqrs_log_security_capture(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.log_security_capture() must be called as an event trigger")));
	if (busy || creating_extension || !installed())
		PG_RETURN_VOID();
	capture();
	PG_RETURN_VOID();
}

/*
 * cqrs.save_log_security() RETURNS void
 *
 * The capture, run by the update script for logs secured before 0.7.0.
 */
Datum
cqrs_save_log_security(PG_FUNCTION_ARGS)
{
	if (installed())
		capture();
	PG_RETURN_VOID();
}

/* Run one DDL statement as the current user, search_path pinned. */
static void
run_ddl(const char *sql)
{
	int			nestlevel = CqrsRestrictSearchPath();
	int			rc = SPI_execute(sql, false, 0);

	CqrsRestoreSearchPath(nestlevel);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "pg_cqrs: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/* A JSON string member of an object; NULL when absent or JSON null. */
static char *
member(JsonbContainer *obj, const char *key)
{
	JsonbValue	v;

	if (getKeyJsonValueFromContainer(obj, key, strlen(key), &v) == NULL ||
		v.type != jbvString)
		return NULL;
	return pnstrdup(v.val.string.val, v.val.string.len);
}

static const char *
command_keyword(const char *cmd)
{
	switch (cmd ? cmd[0] : '*')
	{
		case 'r':
			return "SELECT";
		case 'a':
			return "INSERT";
		case 'w':
			return "UPDATE";
		case 'd':
			return "DELETE";
		default:
			return "ALL";
	}
}

/* CREATE POLICY for one stored policy object. */
static char *
policy_sql(JsonbContainer *pol)
{
	StringInfoData buf;
	JsonbValue	v;
	char	   *name = member(pol, "name");
	char	   *qual = member(pol, "using");
	char	   *check = member(pol, "check");
	bool		permissive = true;

	if (getKeyJsonValueFromContainer(pol, "permissive", 10, &v) != NULL && v.type == jbvBool)
		permissive = v.val.boolean;

	initStringInfo(&buf);
	appendStringInfo(&buf, "CREATE POLICY %s ON cqrs.events AS %s FOR %s TO ",
					 quote_identifier(name ? name : "restored"),
					 permissive ? "PERMISSIVE" : "RESTRICTIVE",
					 command_keyword(member(pol, "command")));
	if (getKeyJsonValueFromContainer(pol, "roles", 5, &v) != NULL && v.type == jbvBinary)
	{
		JsonbIterator *it = JsonbIteratorInit(v.val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;
		bool		first = true;

		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok != WJB_ELEM || elem.type != jbvString)
				continue;
			/* stored quoted by quote_ident, or the keyword public */
			appendStringInfo(&buf, "%s%.*s", first ? "" : ", ",
							 elem.val.string.len, elem.val.string.val);
			first = false;
		}
		if (first)
			appendStringInfoString(&buf, "public");
	}
	else
		appendStringInfoString(&buf, "public");
	if (qual)
		appendStringInfo(&buf, " USING (%s)", qual);
	if (check)
		appendStringInfo(&buf, " WITH CHECK (%s)", check);
	return buf.data;
}

static void
ddl_step(void *arg)
{
	run_ddl((const char *) arg);
}

/* Try one statement in a subtransaction; a WARNING instead of an error. */
static void
try_ddl(const char *sql, const char *what)
{
	ErrorData  *edata = CqrsTrySubtransaction(ddl_step, (void *) sql);

	if (edata == NULL)
		return;
	ereport(WARNING,
			(errmsg("could not restore %s on the event log: %s", what, edata->message),
			 errdetail("Row-level security stays enabled on cqrs.events: the roles this policy admitted see nothing until it is created again."),
			 errhint("Create the missing roles or objects, then the policy (%s).", sql)));
	FreeErrorData(edata);
}

/* Make the log's row-level security what one row of cqrs.log_security says. */
static void
apply(bool row_security, bool force, Jsonb *policies)
{
	int			rc;

	/* fail closed: security first, then the policies that admit roles */
	if (row_security)
		run_ddl("ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY");
	run_ddl(force ? "ALTER TABLE cqrs.events FORCE ROW LEVEL SECURITY"
			: "ALTER TABLE cqrs.events NO FORCE ROW LEVEL SECURITY");

	/* the policies there now give way to the stored ones */
	rc = SPI_execute("SELECT pg_catalog.format('DROP POLICY %I ON cqrs.events', p.polname)"
					 "  FROM pg_catalog.pg_policy p"
					 " WHERE p.polrelid OPERATOR(pg_catalog.=) 'cqrs.events'::pg_catalog.regclass",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_cqrs: reading the log's policies failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		SPITupleTable *tuptable = SPI_tuptable;
		uint64		n = SPI_processed;

		for (uint64 i = 0; i < n; i++)
			run_ddl(SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 1));
	}

	if (JB_ROOT_IS_ARRAY(policies))
	{
		JsonbIterator *it = JsonbIteratorInit(&policies->root);
		JsonbValue	elem;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			char	   *name;

			if (tok != WJB_ELEM || elem.type != jbvBinary)
				continue;
			name = member(elem.val.binary.data, "name");
			try_ddl(policy_sql(elem.val.binary.data),
					psprintf("policy \"%s\"", name ? name : "?"));
		}
	}

	if (!row_security)
		run_ddl("ALTER TABLE cqrs.events DISABLE ROW LEVEL SECURITY");
}

/*
 * cqrs.log_security_restore() RETURNS trigger
 *
 * AFTER INSERT ... FOR EACH ROW on cqrs.log_security; see the file header.
 */
Datum
cqrs_log_security_restore(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	bool		row_security;
	bool		force;
	Jsonb	   *policies;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cqrs.log_security_restore() must be called as an AFTER INSERT ... FOR EACH ROW trigger")));

	/* the capture's own row describes what is already there */
	if (busy)
		return PointerGetDatum(NULL);

	tuple = trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	row_security = DatumGetBool(heap_getattr(tuple, SPI_fnumber(desc, "row_security"), desc, &isnull));
	force = DatumGetBool(heap_getattr(tuple, SPI_fnumber(desc, "force_row_security"), desc, &isnull));
	policies = DatumGetJsonbP(heap_getattr(tuple, SPI_fnumber(desc, "policies"), desc, &isnull));

	CqrsSPIConnect();
	busy = true;
	PG_TRY();
	{
		apply(row_security, force, policies);
	}
	PG_FINALLY();
	{
		busy = false;
	}
	PG_END_TRY();
	SPI_finish();
	return PointerGetDatum(NULL);
}
