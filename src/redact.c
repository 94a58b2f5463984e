/*-------------------------------------------------------------------------
 *
 * redact.c
 *		cqrs.redact(data jsonb, paths jsonb): the values at chosen JSON paths
 *		replaced with {"$erased": true} (0.8.0, issue 13).
 *
 * Erasing a whole payload (erase_stream) is often more than a privacy
 * request asks for: an order event keeps its amounts and items, only the
 * customer's e-mail and address must go.  redact_stream (lifecycle.c)
 * applies this function to a stream's events in the log and the archive;
 * handlers may apply it to their read tables on $StreamRedacted, with the
 * paths the event carries.
 *
 * Paths are a JSON array of paths, each an array of keys and array
 * indexes, as jsonb's #> and jsonb_set take them:
 *
 *		[["customer", "email"], ["items", 0, "card"], ["note"]]
 *
 * A path that is not in the document (a missing key, an index past the
 * end, a key looked up in an array) is skipped, not an error: events of
 * one stream change shape over the years, and a redaction applies to
 * what each one holds.  A value that is already the marker is left alone,
 * so redacting twice changes nothing.  Keys stay; only their values go,
 * so a reader sees what was there and that it was erased.
 *
 * Copyright (c) 2026, pg_cqrs developers
 *
 * IDENTIFICATION
 *		src/redact.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "pg_cqrs.h"

PG_FUNCTION_INFO_V1(cqrs_redact);

/* Paths, each as the text[] jsonb_set takes and its elements. */
struct CqrsRedactPaths
{
	int			n;
	ArrayType **arrays;
	Datum	  **elems;
	int		   *lens;
};

static void
bad_paths(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("paths must be a JSON array of paths, each a non-empty array of keys and array indexes"),
			 errdetail("%s", detail),
			 errhint("For example: [[\"customer\", \"email\"], [\"items\", 0, \"card\"]].")));
}

/* One path element: a key (string) or an array index (integer), as text. */
static Datum
path_element(JsonbValue *v)
{
	if (v->type == jbvString)
		return PointerGetDatum(cstring_to_text_with_len(v->val.string.val, v->val.string.len));
	if (v->type == jbvNumeric)
	{
		char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(v->val.numeric)));

		if (strspn(s, "-0123456789") != strlen(s) || strlen(s) > 10)
			bad_paths(psprintf("An array index must be an integer, not %s.", s));
		return CStringGetTextDatum(s);
	}
	bad_paths("A path element must be a string (a key) or an integer (an array index).");
	return (Datum) 0;			/* keep the compiler quiet */
}

/*
 * CqrsParseRedactPaths
 *		Check and read the paths argument (22023 when it is not as the file
 *		header says).
 */
CqrsRedactPaths *
CqrsParseRedactPaths(Jsonb *paths)
{
	CqrsRedactPaths *rp = palloc0(sizeof(CqrsRedactPaths));
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;
	int			cap = 0;
	int			cap_elems = 0;
	Datum	   *elems = NULL;
	int			nelems = 0;

	if (JB_ROOT_IS_SCALAR(paths) || !JB_ROOT_IS_ARRAY(paths))
		bad_paths("paths is not an array.");
	if (JB_ROOT_COUNT(paths) == 0)
		bad_paths("paths is empty.");

	it = JsonbIteratorInit(&paths->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				if (++depth > 2)
					bad_paths("A path element must be a string (a key) or an integer (an array index).");
				if (depth == 2)
				{
					nelems = 0;
					cap_elems = 8;
					elems = palloc(cap_elems * sizeof(Datum));
				}
				break;
			case WJB_END_ARRAY:
				if (depth-- == 2)
				{
					if (nelems == 0)
						bad_paths("A path is empty.");
					if (rp->n == cap)
					{
						cap = Max(4, cap * 2);
						rp->arrays = rp->arrays ? repalloc(rp->arrays, cap * sizeof(ArrayType *)) :
							palloc(cap * sizeof(ArrayType *));
						rp->elems = rp->elems ? repalloc(rp->elems, cap * sizeof(Datum *)) :
							palloc(cap * sizeof(Datum *));
						rp->lens = rp->lens ? repalloc(rp->lens, cap * sizeof(int)) :
							palloc(cap * sizeof(int));
					}
					rp->arrays[rp->n] = construct_array(elems, nelems, TEXTOID, -1, false,
														TYPALIGN_INT);
					rp->elems[rp->n] = elems;
					rp->lens[rp->n] = nelems;
					rp->n++;
				}
				break;
			case WJB_ELEM:
				if (depth == 1)
					bad_paths("Each path must be an array.");
				if (nelems == cap_elems)
				{
					cap_elems *= 2;
					elems = repalloc(elems, cap_elems * sizeof(Datum));
				}
				elems[nelems++] = path_element(&v);
				break;
			default:
				bad_paths("A path element must be a string (a key) or an integer (an array index).");
		}
	}
	return rp;
}

/*
 * CqrsRedact
 *		data with the value at each path that holds one replaced by the
 *		erased marker; data itself when nothing changed.
 */
Jsonb *
CqrsRedact(Jsonb *data, const CqrsRedactPaths *paths, Jsonb *marker)
{
	Jsonb	   *result = data;

	/* a scalar document has no paths */
	if (JB_ROOT_IS_SCALAR(data))
		return data;
	for (int i = 0; i < paths->n; i++)
	{
		bool		isnull;
		Datum		found;

		/* as #> does: NULL for a path that is not there, never an error */
		found = jsonb_get_element(result, paths->elems[i], paths->lens[i], &isnull, false);
		if (isnull)
			continue;
		if (VARSIZE(DatumGetPointer(found)) == VARSIZE(marker) &&
			memcmp(DatumGetPointer(found), marker, VARSIZE(marker)) == 0)
			continue;
		result = DatumGetJsonbP(DirectFunctionCall4(jsonb_set,
													JsonbPGetDatum(result),
													PointerGetDatum(paths->arrays[i]),
													JsonbPGetDatum(marker),
													BoolGetDatum(false)));
	}
	return result;
}

/*
 * CqrsErasedMarker
 *		{"$erased": true}, what erasure and redaction write.
 */
Jsonb *
CqrsErasedMarker(void)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(CQRS_ERASED_MARKER)));
}

/*
 * cqrs.redact(data jsonb, paths jsonb) RETURNS jsonb
 *		IMMUTABLE STRICT: a pure function of its arguments.
 */
Datum
cqrs_redact(PG_FUNCTION_ARGS)
{
	Jsonb	   *data = PG_GETARG_JSONB_P(0);
	CqrsRedactPaths *paths = CqrsParseRedactPaths(PG_GETARG_JSONB_P(1));

	PG_RETURN_JSONB_P(CqrsRedact(data, paths, CqrsErasedMarker()));
}
