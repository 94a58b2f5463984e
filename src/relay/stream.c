/*-------------------------------------------------------------------------
 *
 * stream.c
 *	  the replication protocol, as far as a logical slot's consumer needs it
 *
 * The shape is pg_recvlogical's (src/bin/pg_basebackup/pg_recvlogical.c):
 * a connection with replication=database, START_REPLICATION SLOT s LOGICAL
 * lsn (options), then CopyData messages both ways.  From the server:
 *
 *	  'w' XLogData		walStart(8) walEnd(8) sendTime(8) then one line
 *	  'k' keepalive		walEnd(8) sendTime(8) replyRequested(1)
 *
 * To the server, a standby status update:
 *
 *	  'r' write(8) flush(8) apply(8) sendTime(8) replyRequested(1)
 *
 * Only "flush" moves the slot (confirmed_flush_lsn); the relay sends there
 * what JetStream acknowledged, never merely what it received.  Integers are
 * in network byte order; times are microseconds since 2000-01-01.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "relay.h"

/* seconds from the Unix epoch to PostgreSQL's (2000-01-01) */
#define POSTGRES_EPOCH_OFFSET_S ((int64_t) 946684800)

static uint64_t
get_u64(const char *p)
{
	uint64_t	v = 0;
	int			i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | (unsigned char) p[i];
	return v;
}

static void
put_u64(char *p, uint64_t v)
{
	int			i;

	for (i = 7; i >= 0; i--)
	{
		p[i] = (char) (v & 0xff);
		v >>= 8;
	}
}

static int64_t
pg_now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return ((int64_t) tv.tv_sec - POSTGRES_EPOCH_OFFSET_S) * 1000000 + tv.tv_usec;
}

/*
 * A connection: the user's connection string (or database name), plus
 * replication=database for the stream.  NULL (and a message) on failure.
 */
PGconn *
relay_pg_connect(const RelayConfig *cfg, bool replication)
{
	const char *keys[4];
	const char *vals[4];
	int			n = 0;
	PGconn	   *conn;

	keys[n] = "dbname";
	vals[n++] = cfg->conninfo;
	if (replication)
	{
		keys[n] = "replication";
		vals[n++] = "database";
	}
	keys[n] = "fallback_application_name";
	vals[n++] = "pg_cqrs_relay";
	keys[n] = NULL;
	vals[n] = NULL;
	conn = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		relay_log("could not connect to PostgreSQL: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* 1: the slot exists, 0: it does not, -1: could not tell */
int
relay_slot_exists(PGconn *conn, const char *slot)
{
	PGresult   *res;
	int			found;
	char		sql[512];
	char	   *lit;

	/*
	 * A walsender with a database accepts plain SQL, but only through the
	 * simple query protocol: quote the name ourselves.
	 */
	lit = PQescapeLiteral(conn, slot, strlen(slot));
	if (lit == NULL)
		return -1;
	snprintf(sql, sizeof(sql),
			 "SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
			 lit);
	PQfreemem(lit);
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		relay_log("could not look up slot \"%s\": %s", slot, PQerrorMessage(conn));
		PQclear(res);
		return -1;
	}
	found = PQntuples(res) > 0;
	if (found && strcmp(PQgetvalue(res, 0, 0), "pg_cqrs") != 0)
	{
		relay_log("slot \"%s\" uses the output plugin \"%s\", not pg_cqrs",
				  slot, PQgetvalue(res, 0, 0));
		found = -1;
	}
	PQclear(res);
	return found;
}

/* CREATE_REPLICATION_SLOT s LOGICAL pg_cqrs; its consistent point */
bool
relay_create_slot(PGconn *conn, const char *slot, RelayLsn *consistent)
{
	char	   *ident = PQescapeIdentifier(conn, slot, strlen(slot));
	char		sql[512];
	PGresult   *res;
	RelayLsn	lsn = 0;

	if (ident == NULL)
		return false;
	snprintf(sql, sizeof(sql),
			 "CREATE_REPLICATION_SLOT %s LOGICAL pg_cqrs (SNAPSHOT 'nothing')", ident);
	PQfreemem(ident);
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		relay_log("could not create slot \"%s\": %s", slot, PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 1))
		relay_parse_lsn(PQgetvalue(res, 0, 1), strlen(PQgetvalue(res, 0, 1)), &lsn);
	PQclear(res);
	if (consistent)
		*consistent = lsn;
	relay_log("created slot \"%s\" (consistent at " RELAY_LSN_FMT ")",
			  slot, RELAY_LSN_ARGS(lsn));
	return true;
}

/* append s to the buffer as a quoted literal ('' for ') */
static bool
append_literal(char **o, char *end, const char *s, size_t n)
{
	size_t		i;

	if (*o >= end)
		return false;
	*(*o)++ = '\'';
	for (i = 0; i < n; i++)
	{
		if (*o + 2 >= end)
			return false;
		if (s[i] == '\'')
			*(*o)++ = '\'';
		*(*o)++ = s[i];
	}
	if (*o >= end)
		return false;
	*(*o)++ = '\'';
	return true;
}

/*
 * START_REPLICATION from wherever the slot is (0/0: the server starts at
 * confirmed_flush_lsn), with the plugin options.  A bare "-o name" means
 * what it means to pg_recvlogical: the option without a value.
 */
bool
relay_start_replication(PGconn *conn, const RelayConfig *cfg)
{
	char		sql[8192];
	char	   *o = sql;
	char	   *end = sql + sizeof(sql) - 4;
	char	   *ident = PQescapeIdentifier(conn, cfg->slot, strlen(cfg->slot));
	PGresult   *res;
	int			i;
	bool		first = true;

	if (ident == NULL)
		return false;
	o += snprintf(o, end - o, "START_REPLICATION SLOT %s LOGICAL 0/0", ident);
	PQfreemem(ident);
	for (i = -1; i < cfg->n_plugin_options; i++)
	{
		const char *opt;
		const char *eq;
		size_t		nlen;

		if (i < 0)
		{
			if (!cfg->transaction_end)
				continue;
			opt = "transaction-end=true";
		}
		else
			opt = cfg->plugin_options[i];
		eq = strchr(opt, '=');
		nlen = eq ? (size_t) (eq - opt) : strlen(opt);
		if (end - o < (long) nlen + 8)
			return false;
		o += snprintf(o, end - o, "%s\"%.*s\"", first ? " (" : ", ", (int) nlen, opt);
		first = false;
		if (eq)
		{
			*o++ = ' ';
			if (!append_literal(&o, end, eq + 1, strlen(eq + 1)))
				return false;
		}
	}
	if (!first)
		*o++ = ')';
	*o = '\0';
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_COPY_BOTH)
	{
		relay_log("could not start replication on slot \"%s\": %s",
				  cfg->slot, PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	PQclear(res);
	return true;
}

/*
 * The next message from the server, waiting at most timeout_ms.  A DATA
 * message's line stays valid until relay_message_done().
 */
RelayMsgKind
relay_next_message(PGconn *conn, int timeout_ms, RelayMsg *msg)
{
	char	   *buf = NULL;
	int			r;

	memset(msg, 0, sizeof(*msg));
	r = PQgetCopyData(conn, &buf, 1);
	if (r == 0)
	{
		struct pollfd pfd;

		pfd.fd = PQsocket(conn);
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, timeout_ms) < 0 && errno != EINTR)
		{
			relay_log("poll failed: %s", strerror(errno));
			return msg->kind = RELAY_MSG_ERROR;
		}
		if (!PQconsumeInput(conn))
		{
			relay_log("lost the connection to PostgreSQL: %s", PQerrorMessage(conn));
			return msg->kind = RELAY_MSG_ERROR;
		}
		r = PQgetCopyData(conn, &buf, 1);
		if (r == 0)
			return msg->kind = RELAY_MSG_NONE;
	}
	if (r == -1)
	{
		PGresult   *res = PQgetResult(conn);

		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			relay_log("replication ended: %s", PQerrorMessage(conn));
		PQclear(res);
		return msg->kind = RELAY_MSG_END;
	}
	if (r == -2)
	{
		relay_log("could not read from PostgreSQL: %s", PQerrorMessage(conn));
		return msg->kind = RELAY_MSG_ERROR;
	}
	if (buf[0] == 'w' && r >= 25)
	{
		/* data points into buf, freed by relay_message_done() */
		msg->kind = RELAY_MSG_DATA;
		msg->wal_start = get_u64(buf + 1);
		msg->wal_end = get_u64(buf + 9);
		msg->data = buf + 25;
		msg->len = r - 25;
		return RELAY_MSG_DATA;
	}
	if (buf[0] == 'k' && r >= 18)
	{
		msg->kind = RELAY_MSG_KEEPALIVE;
		msg->wal_end = get_u64(buf + 1);
		msg->reply_requested = buf[17] != 0;
		PQfreemem(buf);
		return RELAY_MSG_KEEPALIVE;
	}
	relay_log("unexpected replication message '%c' of %d bytes", buf[0], r);
	PQfreemem(buf);
	return msg->kind = RELAY_MSG_ERROR;
}

void
relay_message_done(RelayMsg *msg)
{
	if (msg->kind == RELAY_MSG_DATA && msg->data)
		PQfreemem((char *) msg->data - 25);
	msg->data = NULL;
}

/* a standby status update; false when it could not be sent */
bool
relay_send_feedback(PGconn *conn, RelayLsn written, RelayLsn flushed, bool reply)
{
	char		buf[1 + 8 * 4 + 1];

	buf[0] = 'r';
	put_u64(buf + 1, written);
	put_u64(buf + 9, flushed);
	put_u64(buf + 17, flushed);
	put_u64(buf + 25, (uint64_t) pg_now_us());
	buf[33] = reply ? 1 : 0;
	if (PQputCopyData(conn, buf, sizeof(buf)) <= 0 || PQflush(conn) != 0)
	{
		relay_log("could not send a status update: %s", PQerrorMessage(conn));
		return false;
	}
	return true;
}

/* a polite end: CopyDone, then the server's results */
void
relay_end_replication(PGconn *conn)
{
	PGresult   *res;

	if (PQputCopyEnd(conn, NULL) <= 0 || PQflush(conn) != 0)
		return;
	/* the server may still send data before its CopyDone: drop it */
	for (;;)
	{
		char	   *buf = NULL;
		int			r = PQgetCopyData(conn, &buf, 0);

		if (buf)
			PQfreemem(buf);
		if (r < 0)
			break;
	}
	while ((res = PQgetResult(conn)) != NULL)
		PQclear(res);
}
