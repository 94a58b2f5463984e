/*-------------------------------------------------------------------------
 *
 * line.c
 *	  the outbox's JSON lines, as far as the relay needs to read them
 *
 * The relay publishes each line as it came (the message body is the raw
 * line) and reads only a few top-level fields: "id" (the Nats-Msg-Id),
 * "stream" and "type" (the subject), "topic" (a cqrs.publish message),
 * "commit" (the end of a transaction, with transaction-end).  A full JSON
 * parser would cost more than the rest of the relay together: this one
 * walks the top level, skips nested values by counting brackets outside
 * strings, and fails on anything that is not one JSON object.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>
#include <stdio.h>

#include "relay.h"

static const char *
skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p is at the opening quote; returns past the closing one, or NULL */
static const char *
skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++)
	{
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/* any value; returns past it, or NULL */
static const char *
skip_value(const char *p, const char *end)
{
	int			depth = 0;

	if (p >= end)
		return NULL;
	if (*p == '"')
		return skip_string(p, end);
	if (*p != '{' && *p != '[')
	{
		/* number, true, false, null */
		while (p < end && *p != ',' && *p != '}' && *p != ']' &&
			   *p != ' ' && *p != '\n' && *p != '\t' && *p != '\r')
			p++;
		return p;
	}
	while (p < end)
	{
		if (*p == '"')
		{
			p = skip_string(p, end);
			if (p == NULL)
				return NULL;
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']')
		{
			if (--depth == 0)
				return p + 1;
		}
		p++;
	}
	return NULL;
}

static bool
key_is(const char *k, int klen, const char *name)
{
	return (int) strlen(name) == klen && memcmp(k, name, klen) == 0;
}

/*
 * Fill *line with the top-level fields of one JSON object.  Fields absent
 * stay empty (p == NULL).  False when buf is not one object.
 */
bool
relay_parse_line(const char *buf, int len, RelayLine *line)
{
	const char *p = buf;
	const char *end = buf + len;

	memset(line, 0, sizeof(*line));
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return false;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return skip_ws(p + 1, end) == end;
	for (;;)
	{
		const char *k,
				   *v,
				   *vend;
		int			klen;
		RelaySpan  *slot = NULL;

		if (p >= end || *p != '"')
			return false;
		k = p + 1;
		p = skip_string(p, end);
		if (p == NULL)
			return false;
		klen = (int) (p - 1 - k);
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return false;
		v = skip_ws(p + 1, end);
		vend = skip_value(v, end);
		if (vend == NULL || vend == v)
			return false;

		if (key_is(k, klen, "id"))
			slot = &line->id;
		else if (key_is(k, klen, "stream"))
			slot = &line->stream;
		else if (key_is(k, klen, "type"))
			slot = &line->type;
		else if (key_is(k, klen, "topic"))
			slot = &line->topic;
		else if (key_is(k, klen, "lsn"))
			slot = &line->lsn;
		else if (key_is(k, klen, "position"))
			slot = &line->position;
		else if (key_is(k, klen, "commit"))
			slot = &line->commit;
		if (slot)
		{
			if (*v == '"')
			{
				slot->p = v + 1;
				slot->len = (int) (vend - v - 2);
			}
			else
			{
				slot->p = v;
				slot->len = (int) (vend - v);
			}
		}

		p = skip_ws(vend, end);
		if (p >= end)
			return false;
		if (*p == '}')
			return skip_ws(p + 1, end) == end;
		if (*p != ',')
			return false;
		p = skip_ws(p + 1, end);
	}
}

/* "X/Y" in hex, as PostgreSQL prints an LSN */
bool
relay_parse_lsn(const char *p, int len, RelayLsn *lsn)
{
	char		buf[40];
	unsigned	hi,
				lo;
	int			n;

	if (p == NULL || len <= 0 || len >= (int) sizeof(buf))
		return false;
	memcpy(buf, p, len);
	buf[len] = '\0';
	if (sscanf(buf, "%X/%X%n", &hi, &lo, &n) != 2 || n != len)
		return false;
	*lsn = ((RelayLsn) hi << 32) | lo;
	return true;
}

/*
 * A subject token from a value: NATS subjects are dot-separated tokens,
 * and '*' and '>' are wildcards, so those, white space and control
 * characters become '_' (a category "eu.order" would otherwise be two
 * tokens).  An empty value becomes "_".
 */
static bool
append_token(char **o, char *oend, const char *v, int vlen)
{
	int			i;

	if (v == NULL || vlen == 0)
	{
		v = "_";
		vlen = 1;
	}
	if (vlen >= oend - *o)
		return false;
	for (i = 0; i < vlen; i++)
	{
		unsigned char c = (unsigned char) v[i];

		*(*o)++ = (c <= ' ' || c == '.' || c == '*' || c == '>' || c == '\\' ||
				   c == 127) ? '_' : (char) c;
	}
	return true;
}

/* the placeholders a template may use */
static const char *const placeholders[] = {
	"{category}", "{stream}", "{type}", "{topic}", NULL
};

/*
 * Whether a template is usable: every '{' starts a known placeholder, and
 * an event template names no {topic}, a message template no stream field.
 */
bool
relay_check_template(const char *tmpl, bool message, const char **bad)
{
	const char *p;

	for (p = tmpl; *p; p++)
	{
		int			i;
		bool		ok = false;

		if (*p != '{')
			continue;
		for (i = 0; placeholders[i]; i++)
			if (strncmp(p, placeholders[i], strlen(placeholders[i])) == 0)
			{
				bool		is_msg = (i >= 3);

				ok = (is_msg == message);
				break;
			}
		if (!ok)
		{
			*bad = p;
			return false;
		}
	}
	return *tmpl != '\0';
}

/*
 * Expand a subject template for a line.  {category} is the stream up to its
 * first '-' (the README's definition; a stream without '-' is its own
 * category).
 */
bool
relay_build_subject(const char *tmpl, const RelayLine *line,
					char *out, size_t outsize)
{
	char	   *o = out;
	char	   *oend = out + outsize - 1;
	const char *p;

	for (p = tmpl; *p;)
	{
		if (*p == '{')
		{
			const char *v = NULL;
			int			vlen = 0;

			if (strncmp(p, "{category}", 10) == 0)
			{
				const char *dash;

				v = line->stream.p;
				vlen = line->stream.len;
				dash = v ? memchr(v, '-', vlen) : NULL;
				if (dash)
					vlen = (int) (dash - v);
				p += 10;
			}
			else if (strncmp(p, "{stream}", 8) == 0)
			{
				v = line->stream.p;
				vlen = line->stream.len;
				p += 8;
			}
			else if (strncmp(p, "{type}", 6) == 0)
			{
				v = line->type.p;
				vlen = line->type.len;
				p += 6;
			}
			else if (strncmp(p, "{topic}", 7) == 0)
			{
				v = line->topic.p;
				vlen = line->topic.len;
				p += 7;
			}
			else
				return false;
			if (!append_token(&o, oend, v, vlen))
				return false;
			continue;
		}
		if (o >= oend)
			return false;
		*o++ = *p++;
	}
	*o = '\0';
	return true;
}
