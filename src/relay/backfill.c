/*-------------------------------------------------------------------------
 *
 * backfill.c
 *	  failover on PostgreSQL 15: a re-created slot, back-filled from the log
 *
 * PostgreSQL 15 and 16 have no failover slots: after a promotion the slot
 * is missing on the new primary, and everything committed before it is
 * created again would never be streamed.  With --create-slot --backfill
 * the relay, finding no slot, creates it and then publishes from the log
 * itself, through cqrs.read_all, every event after its checkpoint up to
 * the highest position visible once the slot exists.  An event committed
 * before the slot's consistent point is visible then, so it is either
 * back-filled or below the checkpoint; one committed after is streamed by
 * the slot (and maybe back-filled too: the same Nats-Msg-Id, dropped by
 * JetStream's duplicate window).
 *
 * The checkpoint must be safe in commit order: "the highest position
 * delivered" is not (a lower position may commit later, issue 12).  It is
 * a safe position S that the relay has provably delivered: the relay reads
 * S = cqrs.safe_position() and then W = pg_current_wal_lsn() (every event
 * at or below S committed before W, or never will); once the slot is
 * confirmed at W or beyond, every such event is in JetStream, and S is
 * written to --checkpoint-file (write, fsync, rename).
 *
 * A relay stopped between creating the slot and the end of the back-fill
 * would find the slot on its next start and skip the back-fill: a marker
 * file (--checkpoint-file with ".backfill" appended) is written before the
 * slot is created and removed once the back-fill is acknowledged; while it
 * exists, every start back-fills again.
 *
 * Back-filled lines have the fields of the plugin's json lines except
 * "lsn" and "xid" (not in the log), and "backfill": true.  Messages of
 * cqrs.publish exist only in WAL and cannot be back-filled.  Events lost
 * with an asynchronous standby's lag are not on the new primary at all:
 * use synchronous replication for zero loss (README).
 *
 *-------------------------------------------------------------------------
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

/* the checkpoint candidate: S, valid once the slot is confirmed at W */
static PGconn *ck_conn;
static bool ck_pending;
static long long ck_position;
static RelayLsn ck_wal;
static int64_t ck_last_query_ms;

static long long
read_checkpoint(const RelayConfig *cfg)
{
	FILE	   *f;
	long long	v = 0;

	if (cfg->checkpoint_file == NULL)
		return 0;
	f = fopen(cfg->checkpoint_file, "r");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%lld", &v) != 1)
		v = 0;
	fclose(f);
	return v;
}

static bool
write_checkpoint(const RelayConfig *cfg, long long position)
{
	char		tmp[4096];
	char		buf[64];
	int			fd,
				n;

	snprintf(tmp, sizeof(tmp), "%s.tmp", cfg->checkpoint_file);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return false;
	n = snprintf(buf, sizeof(buf), "%lld\n", position);
	if (write(fd, buf, n) != n || fsync(fd) != 0)
	{
		close(fd);
		return false;
	}
	close(fd);
	return rename(tmp, cfg->checkpoint_file) == 0;
}

static PGresult *
query1(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
		PQgetisnull(res, 0, 0))
	{
		relay_log("%s: %s", sql, PQerrorMessage(conn));
		PQclear(res);
		return NULL;
	}
	return res;
}

/*
 * Called with each status update: write the candidate once the slot is
 * confirmed past its W, and take a new one at most once a second.
 */
void
relay_checkpoint_note(const RelayConfig *cfg, RelayLsn confirmed)
{
	PGresult   *res;
	int64_t		now = relay_now_ms();

	if (ck_pending && confirmed >= ck_wal)
	{
		if (!write_checkpoint(cfg, ck_position))
			relay_log("could not write %s", cfg->checkpoint_file);
		ck_pending = false;
	}
	if (ck_pending || now - ck_last_query_ms < 1000)
		return;
	ck_last_query_ms = now;
	if (ck_conn == NULL || PQstatus(ck_conn) != CONNECTION_OK)
	{
		if (ck_conn)
			PQfinish(ck_conn);
		ck_conn = relay_pg_connect(cfg, false);
		if (ck_conn == NULL)
			return;
	}
	/* two statements, in this order: S first, then W */
	res = query1(ck_conn, "SELECT cqrs.safe_position()");
	if (res == NULL)
		return;
	ck_position = atoll(PQgetvalue(res, 0, 0));
	PQclear(res);
	res = query1(ck_conn, "SELECT pg_current_wal_lsn()");
	if (res == NULL)
		return;
	if (relay_parse_lsn(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0), &ck_wal))
		ck_pending = true;
	PQclear(res);
}

static void
marker_path(const RelayConfig *cfg, char *buf, size_t size)
{
	snprintf(buf, size, "%s.backfill", cfg->checkpoint_file);
}

/* whether a back-fill was started and not finished */
bool
relay_backfill_pending(const RelayConfig *cfg)
{
	char		path[4096];

	if (cfg->checkpoint_file == NULL)
		return false;
	marker_path(cfg, path, sizeof(path));
	return access(path, F_OK) == 0;
}

/* the marker: before the slot is created (true), after the back-fill (false) */
bool
relay_backfill_mark(const RelayConfig *cfg, bool pending)
{
	char		path[4096];
	int			fd;

	if (cfg->checkpoint_file == NULL)
		return true;
	marker_path(cfg, path, sizeof(path));
	if (!pending)
		return unlink(path) == 0;
	fd = open(path, O_WRONLY | O_CREAT, 0644);
	if (fd < 0 || fsync(fd) != 0)
	{
		relay_log("could not write %s", path);
		if (fd >= 0)
			close(fd);
		return false;
	}
	close(fd);
	return true;
}

/* publish every event after the checkpoint up to the highest visible now */
bool
relay_backfill(const RelayConfig *cfg, RelayNats *rn, volatile int *stop)
{
	PGconn	   *conn = relay_pg_connect(cfg, false);
	PGresult   *res;
	long long	after = read_checkpoint(cfg);
	long long	upto;
	long long	count = 0;
	char		sql[1024];
	char		subject[1024];
	bool		ok = false;

	if (conn == NULL)
		return false;
	if (cfg->checkpoint_file == NULL)
		relay_log("no --checkpoint-file: back-filling the whole log");
	res = query1(conn, "SELECT coalesce(max(position), 0) FROM cqrs.events");
	if (res == NULL)
		goto out;
	upto = atoll(PQgetvalue(res, 0, 0));
	PQclear(res);
	relay_log("back-filling events after position %lld up to %lld", after, upto);

	while (after < upto && !*stop)
	{
		int			i,
					n;

		snprintf(sql, sizeof(sql),
				 "SELECT e.position, e.stream, e.id, e.type,"
				 " json_build_object('position', e.position, 'stream', e.stream,"
				 " 'version', e.version, 'id', e.id, 'type', e.type, 'data', e.data,"
				 " 'metadata', e.metadata, 'recorded_at',"
				 " to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'),"
				 " 'backfill', true)::text"
				 " FROM cqrs.read_all(after_position => %lld, max_count => 5000) e",
				 after);
		res = PQexec(conn, sql);
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
		{
			relay_log("back-fill: %s", PQerrorMessage(conn));
			PQclear(res);
			goto out;
		}
		n = PQntuples(res);
		for (i = 0; i < n; i++)
		{
			RelayLine	line;
			const char *body = PQgetvalue(res, i, 4);

			memset(&line, 0, sizeof(line));
			line.stream.p = PQgetvalue(res, i, 1);
			line.stream.len = PQgetlength(res, i, 1);
			line.type.p = PQgetvalue(res, i, 3);
			line.type.len = PQgetlength(res, i, 3);
			if (!relay_build_subject(cfg->subject, &line, subject, sizeof(subject)) ||
				!relay_nats_publish(rn, subject, body, PQgetlength(res, i, 4),
									PQgetvalue(res, i, 2)))
			{
				PQclear(res);
				goto out;
			}
			after = atoll(PQgetvalue(res, i, 0));
			count++;
		}
		PQclear(res);
		/* nothing yet: a lower position is still in flight */
		if (n == 0)
			usleep(100 * 1000);
	}
	if (!relay_nats_wait_acked(rn, cfg->ack_timeout_ms))
	{
		relay_log("back-fill: JetStream did not acknowledge everything");
		goto out;
	}
	relay_log("back-filled %lld events", count);
	ok = !*stop;
out:
	PQfinish(conn);
	return ok;
}
