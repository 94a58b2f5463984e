/*-------------------------------------------------------------------------
 *
 * publish.c
 *	  NATS JetStream: the connection, the stream, the publish window, verify
 *
 * Publishing is asynchronous (js_PublishMsgAsync) with a bounded window:
 * at most cfg->window messages are unacknowledged; the next publish waits
 * for the oldest.  Every message published gets a sequence number of the
 * session (0, 1, 2 ...); the window is a ring indexed by it.  JetStream's
 * acks arrive on the library's thread, normally in order but not
 * necessarily: the ack handler marks its message's slot and moves "acked"
 * (every message below it is acknowledged) over the contiguous prefix.
 * The session confirms an LSN once "acked" passes the number of messages
 * published before that LSN was reached (pg_cqrs_relay.c).
 *
 * The ack handler finds its message by pointer among the unacknowledged
 * slots, starting at the oldest: in order, the first look finds it.  A
 * pointer can be reused only after its message was acknowledged and
 * destroyed, and acknowledged slots are never searched.
 *
 * A negative ack, a timeout or a lost connection marks the window failed;
 * the session then ends and the next one re-sends from the slot's confirmed
 * position (Nats-Msg-Id makes that harmless within the stream's duplicate
 * window).
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "relay.h"

struct RelayNats
{
	natsOptions *opts;
	natsConnection *nc;
	jsCtx	   *js;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	int			size;
	natsMsg   **ring;			/* the message of each unacked slot */
	char	   *acked_flag;
	uint64_t	published;		/* messages handed to the library */
	uint64_t	acked;			/* every message below this is acked */
	int64_t		last_progress_ms;	/* when "acked" last moved */
	int			ack_timeout_ms;
	bool		failed;
	char		why[256];
};

/*
 * The library may call the handlers below after relay_nats_close() (the
 * connection's close runs the disconnected callback on the library's
 * thread): they reach the window through "live", which close clears.  One
 * window at a time per process.
 */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static RelayNats *live;

static void
fail_locked(RelayNats *rn, const char *why)
{
	if (!rn->failed)
	{
		rn->failed = true;
		snprintf(rn->why, sizeof(rn->why), "%s", why);
	}
	pthread_cond_broadcast(&rn->cond);
}

static void
ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	RelayNats  *rn;
	uint64_t	s;

	pthread_mutex_lock(&live_lock);
	rn = live;
	if (rn == NULL || rn != closure)
	{
		pthread_mutex_unlock(&live_lock);
		natsMsg_Destroy(msg);
		return;
	}
	pthread_mutex_lock(&rn->lock);
	if (pae != NULL || pa == NULL)
	{
		char		why[200];

		snprintf(why, sizeof(why), "JetStream refused a message: %s (%d)",
				 pae && pae->ErrText ? pae->ErrText :
				 pae ? natsStatus_GetText(pae->Err) : "no ack", pae ? (int) pae->ErrCode : 0);
		fail_locked(rn, why);
	}
	else
	{
		for (s = rn->acked; s < rn->published; s++)
		{
			int			i = (int) (s % rn->size);

			if (!rn->acked_flag[i] && rn->ring[i] == msg)
			{
				rn->acked_flag[i] = 1;
				rn->ring[i] = NULL;
				break;
			}
		}
		if (s < rn->published)
		{
			bool		moved = false;

			while (rn->acked < rn->published && rn->acked_flag[rn->acked % rn->size])
			{
				rn->acked_flag[rn->acked % rn->size] = 0;
				rn->acked++;
				moved = true;
			}
			if (moved)
			{
				rn->last_progress_ms = relay_now_ms();
				pthread_cond_broadcast(&rn->cond);
			}
		}
	}
	pthread_mutex_unlock(&rn->lock);
	pthread_mutex_unlock(&live_lock);
	natsMsg_Destroy(msg);
}

static void
disconnected_cb(natsConnection *nc, void *closure)
{
	RelayNats  *rn;

	pthread_mutex_lock(&live_lock);
	rn = live;
	if (rn == NULL || rn != closure)
	{
		pthread_mutex_unlock(&live_lock);
		return;
	}
	pthread_mutex_lock(&rn->lock);
	/* in-flight messages may be lost with the connection: start again */
	if (rn->published > rn->acked)
		fail_locked(rn, "disconnected from NATS with messages in flight");
	pthread_mutex_unlock(&rn->lock);
	pthread_mutex_unlock(&live_lock);
}

RelayNats *
relay_nats_connect(const RelayConfig *cfg)
{
	RelayNats  *rn = calloc(1, sizeof(RelayNats));
	jsOptions	jo;
	natsStatus	s;

	rn->size = cfg->window;
	rn->ack_timeout_ms = cfg->ack_timeout_ms;
	rn->ring = calloc(rn->size, sizeof(natsMsg *));
	rn->acked_flag = calloc(rn->size, 1);
	pthread_mutex_init(&rn->lock, NULL);
	pthread_cond_init(&rn->cond, NULL);
	rn->last_progress_ms = relay_now_ms();
	pthread_mutex_lock(&live_lock);
	live = rn;
	pthread_mutex_unlock(&live_lock);

	s = natsOptions_Create(&rn->opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(rn->opts, cfg->nats_url);
	if (s == NATS_OK)
		s = natsOptions_SetName(rn->opts, "pg_cqrs_relay");
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(rn->opts, 2000);
	/* the library reconnects by itself; the session decides what to resend */
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(rn->opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(rn->opts, 250);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(rn->opts, disconnected_cb, rn);
	if (s == NATS_OK)
		s = natsConnection_Connect(&rn->nc, rn->opts);
	if (s == NATS_OK)
	{
		jsOptions_Init(&jo);
		/* our window bounds what is in flight; the library's must not bite first */
		jo.PublishAsync.MaxPending = 2 * (int64_t) cfg->window;
		jo.PublishAsync.AckHandler = ack_handler;
		jo.PublishAsync.AckHandlerClosure = rn;
		jo.Wait = cfg->ack_timeout_ms;
		s = natsConnection_JetStream(&rn->js, rn->nc, &jo);
	}
	if (s != NATS_OK)
	{
		relay_log("could not connect to NATS at %s: %s", cfg->nats_url,
				  natsStatus_GetText(s));
		relay_nats_close(rn);
		return NULL;
	}
	return rn;
}

void
relay_nats_close(RelayNats *rn)
{
	natsMsgList pending;

	if (rn == NULL)
		return;
	pthread_mutex_lock(&live_lock);
	if (live == rn)
		live = NULL;
	pthread_mutex_unlock(&live_lock);
	if (rn->js)
	{
		/*
		 * Whatever is still unacknowledged is ours to drop (3.4 crashes here
		 * when nothing was ever published asynchronously).
		 */
		if (rn->published > 0 &&
			js_PublishAsyncGetPendingList(&pending, rn->js) == NATS_OK)
			natsMsgList_Destroy(&pending);
		jsCtx_Destroy(rn->js);
	}
	if (rn->nc)
	{
		natsConnection_Close(rn->nc);
		natsConnection_Destroy(rn->nc);
	}
	natsOptions_Destroy(rn->opts);
	pthread_mutex_destroy(&rn->lock);
	pthread_cond_destroy(&rn->cond);
	free(rn->ring);
	free(rn->acked_flag);
	free(rn);
}

/*
 * Create the stream when it does not exist: file storage, the relay's
 * subjects, an explicit duplicate window.  An existing stream is left as
 * it is, but its duplicate window is reported (exactly-once holds within
 * it).
 */
bool
relay_nats_ensure_stream(RelayNats *rn, const RelayConfig *cfg)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;

	s = js_GetStreamInfo(&si, rn->js, cfg->stream, NULL, &jerr);
	if (s == NATS_OK)
	{
		relay_log("stream %s exists, duplicate window %llds",
				  cfg->stream, (long long) (si->Config->Duplicates / 1000000000));
		jsStreamInfo_Destroy(si);
		return true;
	}
	if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
	{
		jsStreamConfig sc;
		const char *subjects[1] = {cfg->stream_subjects};

		jsStreamConfig_Init(&sc);
		sc.Name = cfg->stream;
		sc.Subjects = subjects;
		sc.SubjectsLen = 1;
		sc.Storage = js_FileStorage;
		sc.Duplicates = cfg->duplicate_window_s * 1000000000LL;
		s = js_AddStream(&si, rn->js, &sc, NULL, &jerr);
		if (s == NATS_OK)
		{
			relay_log("created stream %s on %s, duplicate window %llds", cfg->stream,
					  cfg->stream_subjects, (long long) cfg->duplicate_window_s);
			jsStreamInfo_Destroy(si);
			return true;
		}
	}
	relay_log("could not find or create stream %s: %s (%d) %s", cfg->stream,
			  natsStatus_GetText(s), (int) jerr, nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
	return false;
}

/*
 * Publish one line.  Waits while the window is full; false when the
 * window failed (or fails while waiting), or the library refused.
 */
bool
relay_nats_publish(RelayNats *rn, const char *subject, const char *data, int len,
				   const char *msgid)
{
	natsMsg    *msg = NULL;
	jsPubOptions po;
	natsStatus	s;
	uint64_t	seq;

	s = natsMsg_Create(&msg, subject, NULL, data, len);
	if (s != NATS_OK)
	{
		relay_log("could not create a message: %s", natsStatus_GetText(s));
		return false;
	}
	jsPubOptions_Init(&po);
	po.MsgId = msgid;

	/* one lock: wait for room, then take the slot */
	pthread_mutex_lock(&rn->lock);
	while (!rn->failed && rn->published - rn->acked >= (uint64_t) rn->size)
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000;
		if (ts.tv_nsec >= 1000000000)
		{
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&rn->cond, &rn->lock, &ts);
		/* a window that does not move is a failure, as in the session loop */
		if (relay_now_ms() - rn->last_progress_ms > rn->ack_timeout_ms)
			fail_locked(rn, "no JetStream ack within --ack-timeout");
	}
	if (rn->failed)
	{
		pthread_mutex_unlock(&rn->lock);
		natsMsg_Destroy(msg);
		return false;
	}
	/* the slot first: the ack may arrive before js_PublishMsgAsync returns */
	if (rn->published == rn->acked)
		rn->last_progress_ms = relay_now_ms();
	seq = rn->published++;
	rn->ring[seq % rn->size] = msg;
	rn->acked_flag[seq % rn->size] = 0;
	pthread_mutex_unlock(&rn->lock);

	s = js_PublishMsgAsync(rn->js, &msg, &po);
	if (s != NATS_OK)
	{
		char		why[200];

		/* not taken: msg is still ours, and the slot stays unacked forever */
		natsMsg_Destroy(msg);
		snprintf(why, sizeof(why), "could not publish: %s", natsStatus_GetText(s));
		pthread_mutex_lock(&rn->lock);
		rn->ring[seq % rn->size] = NULL;
		fail_locked(rn, why);
		pthread_mutex_unlock(&rn->lock);
		return false;
	}
	return true;
}

/*
 * Only the session's thread changes "published" (relay_nats_publish): it
 * reads it without the lock.
 */
uint64_t
relay_nats_published(RelayNats *rn)
{
	return rn->published;
}

uint64_t
relay_nats_acked(RelayNats *rn, int64_t *last_progress_ms)
{
	uint64_t	v;

	pthread_mutex_lock(&rn->lock);
	v = rn->acked;
	if (last_progress_ms)
		*last_progress_ms = rn->published > rn->acked ? rn->last_progress_ms : relay_now_ms();
	pthread_mutex_unlock(&rn->lock);
	return v;
}

bool
relay_nats_failed(RelayNats *rn, char *why, size_t whysize)
{
	bool		f;

	pthread_mutex_lock(&rn->lock);
	f = rn->failed;
	if (f && why)
		snprintf(why, whysize, "%s", rn->why);
	pthread_mutex_unlock(&rn->lock);
	return f;
}

/* wait until everything published is acked; false on failure or timeout */
bool
relay_nats_wait_acked(RelayNats *rn, int timeout_ms)
{
	int64_t		deadline = relay_now_ms() + timeout_ms;
	bool		ok;

	pthread_mutex_lock(&rn->lock);
	while (!rn->failed && rn->acked < rn->published && relay_now_ms() < deadline)
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000)
		{
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&rn->cond, &rn->lock, &ts);
	}
	ok = !rn->failed && rn->acked == rn->published;
	pthread_mutex_unlock(&rn->lock);
	return ok;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * --verify: read the stream back, message by message, and print each
 * message's body on stdout (one line each, in stream order); on stderr the
 * count, the distinct Nats-Msg-Ids and the duplicates.  Exit status 0 when there
 * is no duplicate and every message has an id.
 */
int
relay_verify(const RelayConfig *cfg)
{
	RelayNats  *rn = relay_nats_connect(cfg);
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;
	uint64_t	first,
				last,
				seq,
				count = 0,
				noid = 0;
	char	  **ids;
	uint64_t	nids = 0,
				dups = 0,
				i;

	if (rn == NULL)
		return 2;
	s = js_GetStreamInfo(&si, rn->js, cfg->stream, NULL, &jerr);
	if (s != NATS_OK)
	{
		relay_log("no stream %s: %s", cfg->stream, natsStatus_GetText(s));
		relay_nats_close(rn);
		return 2;
	}
	if (cfg->count_only)
	{
		fprintf(stderr, "pg_cqrs_relay: stream %s: %llu messages\n", cfg->stream,
				(unsigned long long) si->State.Msgs);
		jsStreamInfo_Destroy(si);
		relay_nats_close(rn);
		return 0;
	}
	first = si->State.FirstSeq;
	last = si->State.LastSeq;
	jsStreamInfo_Destroy(si);
	ids = calloc(last >= first ? last - first + 1 : 1, sizeof(char *));
	for (seq = first; seq <= last && last > 0; seq++)
	{
		natsMsg    *msg = NULL;
		const char *id = NULL;

		s = js_GetMsg(&msg, rn->js, cfg->stream, seq, NULL, &jerr);
		if (s == NATS_NOT_FOUND)
			continue;			/* deleted */
		if (s != NATS_OK)
		{
			relay_log("could not read message %llu: %s", (unsigned long long) seq,
					  natsStatus_GetText(s));
			relay_nats_close(rn);
			return 2;
		}
		count++;
		if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id)
		{
			fwrite(natsMsg_GetData(msg), 1, natsMsg_GetDataLength(msg), stdout);
			putchar('\n');
			ids[nids++] = strdup(id);
		}
		else
			noid++;
		natsMsg_Destroy(msg);
	}
	qsort(ids, nids, sizeof(char *), cmp_str);
	for (i = 1; i < nids; i++)
		if (strcmp(ids[i - 1], ids[i]) == 0)
			dups++;
	fprintf(stderr, "pg_cqrs_relay: stream %s: %llu messages, %llu distinct ids, "
			"%llu duplicates, %llu without id\n", cfg->stream,
			(unsigned long long) count, (unsigned long long) (nids - dups),
			(unsigned long long) dups, (unsigned long long) noid);
	fflush(stdout);
	for (i = 0; i < nids; i++)
		free(ids[i]);
	free(ids);
	relay_nats_close(rn);
	return (dups == 0 && noid == 0) ? 0 : 1;
}
