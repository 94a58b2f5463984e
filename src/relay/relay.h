/*-------------------------------------------------------------------------
 *
 * relay.h
 *	  pg_cqrs_relay: a pg_cqrs outbox slot into NATS JetStream
 *
 * A frontend program, not part of the extension's library (so not on the
 * layer map of src/pg_cqrs.h).  One concept per file:
 *
 *	  pg_cqrs_relay.c	options, the session loop, confirming, progress
 *	  stream.c			the replication protocol: slot, START_REPLICATION,
 *						CopyData messages, standby status updates
 *	  line.c			the outbox's JSON lines: top-level fields, subjects
 *	  publish.c			NATS JetStream: connection, stream, the async
 *						publish window and its acks, verify
 *	  backfill.c		failover: a re-created slot back-filled from
 *						cqrs.read_all, and the checkpoint that makes it safe
 *
 * The one rule everything serves: the slot is confirmed (flush LSN) up to
 * a point only once JetStream acknowledged every message the relay
 * received before that point.  Any failure ends the session, and the next
 * one starts again from the slot's confirmed position; re-sent events
 * carry the same Nats-Msg-Id, which JetStream's duplicate window drops.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_CQRS_RELAY_H
#define PG_CQRS_RELAY_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include <libpq-fe.h>

typedef uint64_t RelayLsn;

#define RELAY_LSN_FMT "%X/%X"
#define RELAY_LSN_ARGS(l) (unsigned) ((l) >> 32), (unsigned) (l)

typedef struct RelayConfig
{
	const char *conninfo;		/* PostgreSQL: where the slot is */
	const char *slot;
	const char *nats_url;
	const char *stream;			/* JetStream stream (create, verify) */
	const char *stream_subjects;	/* its subjects when we create it */
	int64_t		duplicate_window_s;	/* its duplicate window */
	bool		create_stream;
	const char *subject;		/* template for events */
	const char *message_subject;	/* template for cqrs.publish messages */
	const char **plugin_options;	/* name=value, from -o */
	int			n_plugin_options;
	bool		transaction_end;	/* ask the plugin for commit lines */
	int			window;			/* unacknowledged publishes at most */
	int			status_interval_ms;
	int			progress_ms;	/* 0: no progress lines */
	int			ack_timeout_ms; /* no ack progress that long: new session */
	bool		create_slot;	/* create the slot when it is missing */
	bool		backfill;		/* ... and back-fill from the log */
	const char *checkpoint_file;
	RelayLsn	endpos;			/* stop once confirmed here (0: never) */
	bool		verify;
	bool		count_only;		/* --count: the stream's message count */
	bool		verbose;
} RelayConfig;

/* A top-level field of a line: a string's content (no quotes), or the
 * whole text of another value. */
typedef struct RelaySpan
{
	const char *p;
	int			len;
} RelaySpan;

typedef struct RelayLine
{
	RelaySpan	id;
	RelaySpan	stream;
	RelaySpan	type;
	RelaySpan	topic;
	RelaySpan	lsn;
	RelaySpan	position;
	RelaySpan	commit;			/* {"commit":{...}}: the transaction's end */
} RelayLine;

/* line.c */
extern bool relay_parse_line(const char *buf, int len, RelayLine *line);
extern bool relay_parse_lsn(const char *p, int len, RelayLsn *lsn);
extern bool relay_build_subject(const char *tmpl, const RelayLine *line,
								char *out, size_t outsize);
extern bool relay_check_template(const char *tmpl, bool message, const char **bad);

/* publish.c */
typedef struct RelayNats RelayNats;
extern RelayNats *relay_nats_connect(const RelayConfig *cfg);
extern void relay_nats_close(RelayNats *rn);
extern bool relay_nats_ensure_stream(RelayNats *rn, const RelayConfig *cfg);
extern bool relay_nats_publish(RelayNats *rn, const char *subject,
							   const char *data, int len,
							   const char *msgid);
extern uint64_t relay_nats_published(RelayNats *rn);
extern uint64_t relay_nats_acked(RelayNats *rn, int64_t *last_progress_ms);
extern bool relay_nats_failed(RelayNats *rn, char *why, size_t whysize);
extern bool relay_nats_wait_acked(RelayNats *rn, int timeout_ms);
extern int	relay_verify(const RelayConfig *cfg);

/* stream.c */
typedef enum RelayMsgKind
{
	RELAY_MSG_NONE,				/* nothing yet (timeout) */
	RELAY_MSG_DATA,				/* XLogData: a line */
	RELAY_MSG_KEEPALIVE,
	RELAY_MSG_END,				/* the server ended the stream */
	RELAY_MSG_ERROR
} RelayMsgKind;

typedef struct RelayMsg
{
	RelayMsgKind kind;
	RelayLsn	wal_start;
	RelayLsn	wal_end;
	bool		reply_requested;
	const char *data;
	int			len;
} RelayMsg;

extern PGconn *relay_pg_connect(const RelayConfig *cfg, bool replication);
extern int	relay_slot_exists(PGconn *conn, const char *slot);
extern bool relay_create_slot(PGconn *conn, const char *slot, RelayLsn *consistent);
extern bool relay_start_replication(PGconn *conn, const RelayConfig *cfg);
extern RelayMsgKind relay_next_message(PGconn *conn, int timeout_ms, RelayMsg *msg);
extern void relay_message_done(RelayMsg *msg);
extern bool relay_send_feedback(PGconn *conn, RelayLsn written, RelayLsn flushed,
								bool reply);
extern void relay_end_replication(PGconn *conn);

/* backfill.c */
extern bool relay_backfill(const RelayConfig *cfg, RelayNats *rn,
						   volatile int *stop);
extern bool relay_backfill_pending(const RelayConfig *cfg);
extern bool relay_backfill_mark(const RelayConfig *cfg, bool pending);
extern void relay_checkpoint_note(const RelayConfig *cfg, RelayLsn confirmed);
extern bool relay_checkpoint_poll(const RelayConfig *cfg, PGconn **conn);

/* pg_cqrs_relay.c */
extern int64_t relay_now_ms(void);
extern void relay_log(const char *fmt,...) __attribute__((format(printf, 1, 2)));

#endif							/* PG_CQRS_RELAY_H */
