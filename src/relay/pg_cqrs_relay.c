/*-------------------------------------------------------------------------
 *
 * pg_cqrs_relay.c
 *	  the relay's options, its session loop, confirming and progress
 *
 * A session: connect to NATS and to PostgreSQL, START_REPLICATION on the
 * slot from its confirmed position, publish each line, confirm what
 * JetStream acknowledged.  Any failure (PostgreSQL restarted, nats-server
 * gone, a negative ack, no ack for --ack-timeout) ends the session; the
 * next starts a second later from the slot's confirmed position.  So the
 * relay itself keeps no state that matters: kill -9 loses nothing, and
 * what was sent but not confirmed is sent again with the same Nats-Msg-Id.
 *
 * Confirming.  The session keeps a queue of checkpoints (lsn, n): "once
 * the first n messages of this session are acknowledged, the slot may be
 * confirmed up to lsn".  A checkpoint is made
 *
 *	  - at a commit line (transaction-end): lsn is the transaction's commit
 *		end, n every message published so far -- its own and all before;
 *	  - at a keepalive: lsn is the server's position (walEnd), n every
 *		message so far.  The walsender sends a keepalive only between
 *		records, so every line of a transaction whose commit ends at or
 *		before walEnd came before it; a transaction still being sent ends
 *		after walEnd and is sent again whole if we stop there;
 *	  - without transaction-end (an older plugin), when a line of a new
 *		transaction arrives: the previous one's lsn, n the messages before
 *		this line.
 *
 * Never at an event line's own "lsn": that is the end of its transaction,
 * and confirming it before the transaction's last line lost the rest
 * (issue 12).
 *
 *-------------------------------------------------------------------------
 */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relay.h"

static volatile int stop_requested = 0;

static void
on_signal(int sig)
{
	stop_requested = 1;
}

int64_t
relay_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
relay_log(const char *fmt,...)
{
	va_list		ap;
	char		buf[2048];
	size_t		n;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* libpq's messages end in a newline already */
	n = strlen(buf);
	while (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	fprintf(stderr, "pg_cqrs_relay: %s\n", buf);
}

/* what the progress lines count, over all sessions */
typedef struct RelayStats
{
	uint64_t	events;
	uint64_t	messages;
	uint64_t	sessions;
	RelayLsn	confirmed;
	uint64_t	last_events;	/* at the last progress line */
	RelayLsn	last_confirmed;
	int64_t		last_ms;
} RelayStats;

typedef struct Checkpoint
{
	RelayLsn	lsn;
	uint64_t	n;
} Checkpoint;

typedef struct CheckpointQueue
{
	Checkpoint *items;
	size_t		cap;
	size_t		head;			/* oldest */
	size_t		count;
} CheckpointQueue;

static void
cq_push(CheckpointQueue *q, RelayLsn lsn, uint64_t n)
{
	if (q->count > 0)
	{
		Checkpoint *last = &q->items[(q->head + q->count - 1) % q->cap];

		if (lsn <= last->lsn)
			return;
		/* same messages behind it: one checkpoint, the further one */
		if (last->n == n)
		{
			last->lsn = lsn;
			return;
		}
	}
	if (q->count == q->cap)
	{
		size_t		ncap = q->cap ? q->cap * 2 : 1024;
		Checkpoint *items = calloc(ncap, sizeof(Checkpoint));
		size_t		i;

		if (items == NULL)
		{
			relay_log("out of memory");
			exit(1);
		}
		for (i = 0; i < q->count; i++)
			items[i] = q->items[(q->head + i) % q->cap];
		free(q->items);
		q->items = items;
		q->cap = ncap;
		q->head = 0;
	}
	q->items[(q->head + q->count) % q->cap] = (Checkpoint) {lsn, n};
	q->count++;
}

/* the furthest checkpoint whose messages are all acknowledged, or 0 */
static RelayLsn
cq_pop_acked(CheckpointQueue *q, uint64_t acked)
{
	RelayLsn	lsn = 0;

	while (q->count > 0 && q->items[q->head].n <= acked)
	{
		lsn = q->items[q->head].lsn;
		q->head = (q->head + 1) % q->cap;
		q->count--;
	}
	return lsn;
}

static void
progress(const RelayConfig *cfg, RelayStats *st, RelayNats *rn, bool force)
{
	int64_t		now = relay_now_ms();
	int64_t		dt = now - st->last_ms;
	uint64_t	done = st->events + st->messages;

	if (!force && (cfg->progress_ms <= 0 || dt < cfg->progress_ms))
		return;
	/* an idle relay says so every 10 s, not at every interval */
	if (!force && done == st->last_events && st->confirmed == st->last_confirmed &&
		dt < 10000)
		return;
	st->last_confirmed = st->confirmed;
	fprintf(stderr, "pg_cqrs_relay: %llu events, %llu messages, %.0f/s, confirmed "
			RELAY_LSN_FMT ", in flight %llu\n",
			(unsigned long long) st->events, (unsigned long long) st->messages,
			dt > 0 ? (double) (done - st->last_events) * 1000.0 / dt : 0.0,
			RELAY_LSN_ARGS(st->confirmed),
			rn ? (unsigned long long) (relay_nats_published(rn) - relay_nats_acked(rn, NULL)) : 0ULL);
	st->last_events = done;
	st->last_ms = now;
}

typedef enum
{
	SESSION_RETRY,				/* something failed: a new session */
	SESSION_DONE,				/* stopped, or reached --endpos */
	SESSION_FATAL				/* a mistake no retry fixes */
} SessionResult;

static SessionResult
run_session(const RelayConfig *cfg, RelayStats *st)
{
	RelayNats  *rn = NULL;
	PGconn	   *conn = NULL;
	CheckpointQueue q = {0};
	SessionResult result = SESSION_RETRY;
	RelayLsn	received = 0,
				confirmed = 0,
				sent_confirmed = 0,
				txn_lsn = 0;
	bool		saw_commit_line = false;
	bool		reply_due = false;
	int			lines_since_check = 0;
	int64_t		last_feedback = relay_now_ms();
	char		subject[1024];
	char		msgid[256];
	char		why[256];
	int			exists;

	st->sessions++;
	rn = relay_nats_connect(cfg);
	if (rn == NULL)
		goto out;
	if (cfg->create_stream && !relay_nats_ensure_stream(rn, cfg))
		goto out;
	conn = relay_pg_connect(cfg, true);
	if (conn == NULL)
		goto out;
	exists = relay_slot_exists(conn, cfg->slot);
	if (exists < 0)
		goto out;
	if (exists == 0)
	{
		if (!cfg->create_slot)
		{
			relay_log("slot \"%s\" does not exist (--create-slot creates it; after a "
					  "failover, --create-slot --backfill)", cfg->slot);
			result = SESSION_FATAL;
			goto out;
		}
		if (cfg->backfill && !relay_backfill_mark(cfg, true))
			goto out;
		if (!relay_create_slot(conn, cfg->slot, NULL))
			goto out;
	}
	/* a new slot, or one whose back-fill did not finish (backfill.c) */
	if (cfg->backfill && (exists == 0 || relay_backfill_pending(cfg)))
	{
		if (!relay_backfill(cfg, rn, &stop_requested))
			goto out;
		relay_backfill_mark(cfg, false);
	}
	if (!relay_start_replication(conn, cfg))
		goto out;
	if (cfg->verbose)
		relay_log("streaming slot \"%s\" into %s", cfg->slot, cfg->nats_url);

	while (!stop_requested)
	{
		RelayMsg	m;
		RelayMsgKind k = relay_next_message(conn, 100, &m);
		uint64_t	acked;
		int64_t		last_progress,
					now;
		RelayLsn	c;

		if (k == RELAY_MSG_ERROR || k == RELAY_MSG_END)
			goto out;
		if (k == RELAY_MSG_DATA)
		{
			RelayLine	line;

			if (m.wal_start > received)
				received = m.wal_start;
			if (!relay_parse_line(m.data, m.len, &line))
			{
				relay_log("not a JSON object at " RELAY_LSN_FMT ": %.*s",
						  RELAY_LSN_ARGS(m.wal_start), m.len > 200 ? 200 : m.len, m.data);
				relay_message_done(&m);
				result = SESSION_FATAL;
				goto out;
			}
			if (line.commit.p)
			{
				RelayLine	inner;
				RelayLsn	lsn;

				if (!relay_parse_line(line.commit.p, line.commit.len, &inner) ||
					!relay_parse_lsn(inner.lsn.p, inner.lsn.len, &lsn))
				{
					relay_log("a commit line without an lsn: %.*s", m.len, m.data);
					relay_message_done(&m);
					result = SESSION_FATAL;
					goto out;
				}
				saw_commit_line = true;
				cq_push(&q, lsn, relay_nats_published(rn));
				relay_message_done(&m);
			}
			else
			{
				bool		message = line.topic.p != NULL && line.stream.p == NULL;
				RelayLsn	lsn = 0;

				if (!saw_commit_line &&
					relay_parse_lsn(line.lsn.p, line.lsn.len, &lsn) && lsn != txn_lsn)
				{
					if (txn_lsn != 0)
						cq_push(&q, txn_lsn, relay_nats_published(rn));
					txn_lsn = lsn;
				}
				if (!relay_build_subject(message ? cfg->message_subject : cfg->subject,
										 &line, subject, sizeof(subject)))
				{
					relay_log("subject too long at " RELAY_LSN_FMT, RELAY_LSN_ARGS(m.wal_start));
					relay_message_done(&m);
					result = SESSION_FATAL;
					goto out;
				}
				if (line.id.p == NULL || line.id.len <= 0 || line.id.len >= (int) sizeof(msgid))
				{
					relay_log("a line without an id at " RELAY_LSN_FMT " (format=json is needed)",
							  RELAY_LSN_ARGS(m.wal_start));
					relay_message_done(&m);
					result = SESSION_FATAL;
					goto out;
				}
				memcpy(msgid, line.id.p, line.id.len);
				msgid[line.id.len] = '\0';
				if (!relay_nats_publish(rn, subject, m.data, m.len, msgid))
				{
					relay_message_done(&m);
					goto out;
				}
				if (message)
					st->messages++;
				else
					st->events++;
				relay_message_done(&m);
			}
		}
		else if (k == RELAY_MSG_KEEPALIVE)
		{
			if (m.wal_end > received)
				received = m.wal_end;
			cq_push(&q, m.wal_end, relay_nats_published(rn));
			if (m.reply_requested)
				reply_due = true;
		}

		/*
		 * The window's state is shared with the ack thread: look at it every
		 * 64 lines while lines stream in, and at every other turn.
		 */
		if (k == RELAY_MSG_DATA && ++lines_since_check < 64)
			continue;
		lines_since_check = 0;
		if (relay_nats_failed(rn, why, sizeof(why)))
		{
			relay_log("%s", why);
			goto out;
		}
		acked = relay_nats_acked(rn, &last_progress);
		now = relay_now_ms();
		if (now - last_progress > cfg->ack_timeout_ms)
		{
			relay_log("no JetStream ack for %d ms", cfg->ack_timeout_ms);
			goto out;
		}
		c = cq_pop_acked(&q, acked);
		if (c > confirmed)
			confirmed = c;
		if (confirmed > st->confirmed)
			st->confirmed = confirmed;

		/*
		 * Report a new confirmed position soon (a tenth of a second: a
		 * status update is 34 bytes), and something every status interval
		 * or when asked.
		 */
		if (reply_due ||
			(confirmed > sent_confirmed && now - last_feedback >= 100) ||
			now - last_feedback >= cfg->status_interval_ms)
		{
			if (!relay_send_feedback(conn, received > confirmed ? received : confirmed,
									 confirmed, false))
				goto out;
			sent_confirmed = confirmed;
			last_feedback = now;
			reply_due = false;
			if (cfg->checkpoint_file)
				relay_checkpoint_note(cfg, confirmed);
		}
		progress(cfg, st, rn, false);
		if (cfg->endpos && confirmed >= cfg->endpos && sent_confirmed >= cfg->endpos)
		{
			result = SESSION_DONE;
			break;
		}
	}

	if (stop_requested)
	{
		/* a clean stop: let the window drain, confirm it, say goodbye */
		RelayLsn	c;

		if (relay_nats_wait_acked(rn, cfg->ack_timeout_ms))
		{
			c = cq_pop_acked(&q, relay_nats_acked(rn, NULL));
			if (c > confirmed)
				confirmed = c;
			if (confirmed > st->confirmed)
				st->confirmed = confirmed;
			relay_send_feedback(conn, received > confirmed ? received : confirmed,
								confirmed, false);
		}
		result = SESSION_DONE;
	}
	relay_end_replication(conn);

out:
	if (conn)
		PQfinish(conn);
	relay_nats_close(rn);
	free(q.items);
	return result;
}

static void
usage(void)
{
	printf("pg_cqrs_relay streams a pg_cqrs outbox slot into NATS JetStream.\n\n"
		   "Usage:\n  pg_cqrs_relay -d CONNSTR [OPTION]...\n"
		   "  pg_cqrs_relay --verify [--server URL] [--stream NAME]\n\n"
		   "Options:\n"
		   "  -d, --dbname=CONNSTR       database (a name or a connection string)\n"
		   "  -S, --slot=NAME            the slot (default outbox)\n"
		   "  -s, --server=URL           NATS (default nats://127.0.0.1:4222)\n"
		   "      --stream=NAME          JetStream stream (default CQRS)\n"
		   "      --create-stream        create the stream when missing\n"
		   "      --stream-subjects=S    its subjects (default cqrs.>)\n"
		   "      --duplicate-window=SEC its duplicate window (default 120)\n"
		   "      --subject=TEMPLATE     events' subject (default cqrs.events.{category});\n"
		   "                             {category} {stream} {type}\n"
		   "      --message-subject=T    cqrs.publish messages' subject\n"
		   "                             (default cqrs.messages.{topic})\n"
		   "  -o, --option=NAME[=VALUE]  an option for the output plugin\n"
		   "      --no-transaction-end   do not ask the plugin for commit lines\n"
		   "      --window=N             unacknowledged messages at most (default 4096)\n"
		   "      --ack-timeout=MS       no ack that long: start again (default 10000)\n"
		   "      --status-interval=SEC  status updates at least that often (default 10)\n"
		   "      --progress=SEC         a progress line that often (default 10, 0: none)\n"
		   "      --create-slot          create the slot when it is missing\n"
		   "      --backfill             and then back-fill from the log (failover)\n"
		   "      --checkpoint-file=F    where the back-fill checkpoint is kept\n"
		   "  -E, --endpos=LSN           stop once confirmed up to LSN\n"
		   "      --verify               print the stream's messages, count duplicate ids\n"
		   "      --count                only say how many messages the stream holds\n"
		   "  -v, --verbose\n"
		   "  -?, --help\n");
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"dbname", required_argument, NULL, 'd'},
		{"slot", required_argument, NULL, 'S'},
		{"server", required_argument, NULL, 's'},
		{"option", required_argument, NULL, 'o'},
		{"endpos", required_argument, NULL, 'E'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, '?'},
		{"stream", required_argument, NULL, 1},
		{"create-stream", no_argument, NULL, 2},
		{"stream-subjects", required_argument, NULL, 3},
		{"duplicate-window", required_argument, NULL, 4},
		{"subject", required_argument, NULL, 5},
		{"message-subject", required_argument, NULL, 6},
		{"no-transaction-end", no_argument, NULL, 7},
		{"window", required_argument, NULL, 8},
		{"ack-timeout", required_argument, NULL, 9},
		{"status-interval", required_argument, NULL, 10},
		{"progress", required_argument, NULL, 11},
		{"create-slot", no_argument, NULL, 12},
		{"backfill", no_argument, NULL, 13},
		{"checkpoint-file", required_argument, NULL, 14},
		{"verify", no_argument, NULL, 15},
		{"count", no_argument, NULL, 16},
		{NULL, 0, NULL, 0}
	};
	RelayConfig cfg = {
		.slot = "outbox",
		.nats_url = "nats://127.0.0.1:4222",
		.stream = "CQRS",
		.stream_subjects = "cqrs.>",
		.duplicate_window_s = 120,
		.subject = "cqrs.events.{category}",
		.message_subject = "cqrs.messages.{topic}",
		.transaction_end = true,
		.window = 4096,
		.status_interval_ms = 10000,
		.progress_ms = 10000,
		.ack_timeout_ms = 10000,
	};
	RelayStats	st = {0};
	const char *bad;
	int			c;

	cfg.plugin_options = calloc(argc, sizeof(char *));
	while ((c = getopt_long(argc, argv, "d:S:s:o:E:v?", longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd':
				cfg.conninfo = optarg;
				break;
			case 'S':
				cfg.slot = optarg;
				break;
			case 's':
				cfg.nats_url = optarg;
				break;
			case 'o':
				cfg.plugin_options[cfg.n_plugin_options++] = optarg;
				if (strncmp(optarg, "format", 6) == 0 && strcmp(optarg, "format=json") != 0)
				{
					relay_log("the relay reads format=json lines only");
					return 1;
				}
				break;
			case 'E':
				if (!relay_parse_lsn(optarg, strlen(optarg), &cfg.endpos))
				{
					relay_log("not an LSN: \"%s\"", optarg);
					return 1;
				}
				break;
			case 'v':
				cfg.verbose = true;
				break;
			case 1:
				cfg.stream = optarg;
				break;
			case 2:
				cfg.create_stream = true;
				break;
			case 3:
				cfg.stream_subjects = optarg;
				break;
			case 4:
				cfg.duplicate_window_s = atoll(optarg);
				break;
			case 5:
				cfg.subject = optarg;
				break;
			case 6:
				cfg.message_subject = optarg;
				break;
			case 7:
				cfg.transaction_end = false;
				break;
			case 8:
				cfg.window = atoi(optarg);
				break;
			case 9:
				cfg.ack_timeout_ms = atoi(optarg);
				break;
			case 10:
				cfg.status_interval_ms = (int) (atof(optarg) * 1000);
				break;
			case 11:
				cfg.progress_ms = (int) (atof(optarg) * 1000);
				break;
			case 12:
				cfg.create_slot = true;
				break;
			case 13:
				cfg.backfill = true;
				break;
			case 14:
				cfg.checkpoint_file = optarg;
				break;
			case 15:
				cfg.verify = true;
				break;
			case 16:
				cfg.verify = true;
				cfg.count_only = true;
				break;
			case '?':
				if (strcmp(argv[optind - 1], "-?") == 0 ||
					strcmp(argv[optind - 1], "--help") == 0)
				{
					usage();
					return 0;
				}
				fprintf(stderr, "Try \"pg_cqrs_relay --help\".\n");
				return 1;
			default:
				return 1;
		}
	}
	if (optind < argc)
	{
		relay_log("too many arguments, first \"%s\" (try --help)", argv[optind]);
		return 1;
	}
	if (cfg.verify)
		return relay_verify(&cfg);
	if (cfg.conninfo == NULL)
	{
		relay_log("no database given: -d CONNSTR (try --help)");
		return 1;
	}
	if (cfg.window < 1 || cfg.window > 1000000 || cfg.ack_timeout_ms < 100 ||
		cfg.status_interval_ms < 100 || cfg.duplicate_window_s < 1)
	{
		relay_log("--window must be 1..1000000, --ack-timeout at least 100, "
				  "--status-interval at least 0.1, --duplicate-window at least 1");
		return 1;
	}
	if (!relay_check_template(cfg.subject, false, &bad) ||
		!relay_check_template(cfg.message_subject, true, &bad))
	{
		relay_log("bad subject template near \"%s\": events may use {category} {stream} "
				  "{type}, messages {topic}", bad ? bad : "");
		return 1;
	}
	if (cfg.backfill && !cfg.create_slot)
		cfg.create_slot = true;

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	st.last_ms = relay_now_ms();

	for (;;)
	{
		SessionResult r = run_session(&cfg, &st);

		if (r == SESSION_FATAL)
			return 1;
		if (r == SESSION_DONE || stop_requested)
			break;
		/* a second between sessions, in small steps so a signal is prompt */
		for (c = 0; c < 10 && !stop_requested; c++)
			usleep(100 * 1000);
		if (stop_requested)
			break;
		relay_log("starting again from the slot's confirmed position");
	}
	progress(&cfg, &st, NULL, true);
	return 0;
}
