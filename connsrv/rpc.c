#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "rpc.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "sp_time.h"

/* A PEER_BATCH's bounds: the catalogue's count bound of its frames, and bytes well under
 * the large-frame limit (a lone DELIVER is at most ~66 KiB). */
#define PUSH_BATCH_MAX 256
#define PUSH_BATCH_BYTES (256 * 1024)

typedef struct peer {
	char url[256];
	nng_socket sock;
	bool push;
	/* A PUSH peer's frames of this loop pass, packed back to back; pend_end[i] is where
	 * the i-th ends. In r->pending (by next_pending) from the first until the flush. */
	msgpack_sbuffer pend;
	uint32_t npend;
	bool listed;
	size_t pend_end[PUSH_BATCH_MAX];
	struct peer *next_pending;
	UT_hash_handle hh;
} peer;

typedef struct call {
	cs_rpc *rpc;
	nng_aio *aio;
	nng_ctx ctx;
	bool sent;
	int rv;
	nng_msg *reply;
	cs_rpc_cb cb;
	void *arg;
	struct call *next; /* completion queue */
	struct call *prev_live, *next_live;
	uint64_t t0;
} call;

struct cs_rpc {
	struct event_base *base;
	struct event *notify;
	int timeout_ms;
	peer *peers; /* by url, one table for both kinds (a url is either REQ or PUSH) */
	pthread_mutex_t lock;
	call *done_head, *done_tail; /* completed on NNG threads, waiting for the loop */
	call *live;                  /* every call not yet handed back (loop thread only) */
	unsigned inflight;
	struct event *flush_ev; /* end of a pass that queued pushes */
	peer *pending;          /* PUSH peers with frames queued, or listed since the flush */
	sp_metric *latency, *failures, *push_msgs, *push_frames, *push_dropped;
};

static void
complete(call *c)
{
	cs_rpc *r = c->rpc;
	pthread_mutex_lock(&r->lock);
	c->next = NULL;
	if (r->done_tail)
		r->done_tail->next = c;
	else
		r->done_head = c;
	r->done_tail = c;
	pthread_mutex_unlock(&r->lock);
	event_active(r->notify, EV_READ, 0);
}

/* NNG thread: send finished -> receive; receive finished -> hand over to the loop. */
static void
on_aio(void *arg)
{
	call *c = arg;
	int rv = nng_aio_result(c->aio);
	if (!c->sent) {
		c->sent = true;
		if (rv) {
			nng_msg_free(nng_aio_get_msg(c->aio));
			c->rv = rv;
			complete(c);
			return;
		}
		nng_ctx_recv(c->ctx, c->aio);
		return;
	}
	c->rv = rv;
	if (!rv)
		c->reply = nng_aio_get_msg(c->aio);
	complete(c);
}

static void
call_free(call *c)
{
	nng_ctx_close(c->ctx);
	nng_aio_free(c->aio);
	if (c->reply)
		nng_msg_free(c->reply);
	free(c);
}

static void
finish(cs_rpc *r, call *c)
{
	sp_frame f;
	int rc;
	if (c->prev_live)
		c->prev_live->next_live = c->next_live;
	else
		r->live = c->next_live;
	if (c->next_live)
		c->next_live->prev_live = c->prev_live;
	r->inflight--;
	sp_metric_observe(r->latency, (double)(sp_mono_ns() - c->t0) / 1e9);
	if (c->rv)
		sp_metric_inc(r->failures);
	if (c->rv) {
		c->cb(c->arg, sp_nng_err(c->rv), NULL);
	} else if ((rc = sp_nng_msg_decode(c->reply, &f))) {
		c->cb(c->arg, rc, NULL);
	} else {
		rc = SP_OK;
		if (f.type == SP_T_ERROR) {
			int64_t code = sp_frame_i64(&f, SP_F_CODE);
			rc = code < 0 ? (int)code : SP_EPROTO;
		}
		c->cb(c->arg, rc, &f);
		sp_frame_fini(&f);
	}
	call_free(c);
}

static void
on_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_rpc *r = arg;
	pthread_mutex_lock(&r->lock);
	call *c = r->done_head;
	r->done_head = r->done_tail = NULL;
	pthread_mutex_unlock(&r->lock);
	while (c) {
		call *next = c->next;
		finish(r, c);
		c = next;
	}
}

static void on_flush(evutil_socket_t fd, short what, void *arg);

int
cs_rpc_new(struct event_base *base, int timeout_ms, cs_rpc **out)
{
	cs_rpc *r = calloc(1, sizeof(*r));
	if (!r)
		return SP_ENOMEM;
	r->base = base;
	r->timeout_ms = timeout_ms;
	r->latency = sp_metric_histogram("sp_connsrv_call_seconds",
					 "calls to inbox shards and keysrv over NNG, request to reply");
	r->failures = sp_metric_counter("sp_connsrv_call_failures_total",
					"NNG calls that timed out or failed in transport");
	r->push_msgs = sp_metric_counter("sp_connsrv_peer_messages_sent_total",
					 "NNG messages pushed to other connsrvs (a lone frame or a PEER_BATCH)");
	r->push_frames = sp_metric_counter("sp_connsrv_peer_frames_sent_total",
					   "peer frames those messages carried");
	r->push_dropped = sp_metric_counter("sp_connsrv_pushes_dropped_total",
					    "DELIVER hints (the check repairs) and KICKs not sent to peers");
	pthread_mutex_init(&r->lock, NULL);
	r->notify = event_new(base, -1, 0, on_notify, r);
	r->flush_ev = r->notify ? event_new(base, -1, 0, on_flush, r) : NULL;
	if (!r->flush_ev) {
		if (r->notify)
			event_free(r->notify);
		pthread_mutex_destroy(&r->lock);
		free(r);
		return SP_ENOMEM;
	}
	*out = r;
	return SP_OK;
}

void
cs_rpc_free(cs_rpc *r)
{
	if (!r)
		return;
	/* Stop every aio (their callbacks queue completions), then deliver them. */
	for (call *c = r->live; c; c = c->next_live)
		nng_aio_stop(c->aio);
	on_notify(-1, 0, r);
	on_flush(-1, 0, r); /* best effort, as every push */
	peer *p, *tmp;
	HASH_ITER(hh, r->peers, p, tmp) {
		HASH_DEL(r->peers, p);
		nng_close(p->sock);
		msgpack_sbuffer_destroy(&p->pend);
		free(p);
	}
	event_free(r->flush_ev);
	event_free(r->notify);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static peer *
get_peer(cs_rpc *r, const char *url, bool push)
{
	peer *p;
	HASH_FIND_STR(r->peers, url, p);
	if (p)
		return p->push == push ? p : NULL;
	if (strlen(url) >= sizeof(p->url) || !(p = calloc(1, sizeof(*p))))
		return NULL;
	strcpy(p->url, url);
	p->push = push;
	msgpack_sbuffer_init(&p->pend);
	int rc = push ? sp_nng_push_open(&p->sock, url, 100)
		      : sp_nng_req_open(&p->sock, url, r->timeout_ms, r->timeout_ms / 3 + 1);
	if (rc) {
		sp_warn("cannot open %s socket to %s: %s", push ? "push" : "req", url, sp_strerror(rc));
		free(p);
		return NULL;
	}
	HASH_ADD_STR(r->peers, url, p);
	return p;
}

/* Sends `m` (taken in every case) to the REQ socket of `url`. */
static int
call_msg(cs_rpc *r, const char *url, nng_msg *m, cs_rpc_cb cb, void *arg)
{
	peer *p = get_peer(r, url, false);
	call *c = p ? calloc(1, sizeof(*c)) : NULL;
	if (!c) {
		nng_msg_free(m);
		return p ? SP_ENOMEM : SP_EUNAVAIL;
	}
	c->rpc = r;
	c->cb = cb;
	c->arg = arg;
	int rv = nng_aio_alloc(&c->aio, on_aio, c);
	if (!rv && (rv = nng_ctx_open(&c->ctx, p->sock)))
		nng_aio_free(c->aio);
	if (rv) {
		nng_msg_free(m);
		free(c);
		return sp_nng_err(rv);
	}
	nng_aio_set_timeout(c->aio, r->timeout_ms);
	nng_aio_set_msg(c->aio, m);
	c->next_live = r->live;
	if (r->live)
		r->live->prev_live = c;
	r->live = c;
	r->inflight++;
	c->t0 = sp_mono_ns();
	nng_ctx_send(c->ctx, c->aio);
	return SP_OK;
}

int
cs_rpc_call(cs_rpc *r, const char *url, const sp_frame *req, cs_rpc_cb cb, void *arg)
{
	nng_msg *m;
	int rc = sp_nng_msg_from_frame(req, &m);
	if (rc)
		return rc;
	return call_msg(r, url, m, cb, arg);
}

/* An NNG message holding a copy of `len` packed bytes. */
static int
msg_from_packed(const void *data, size_t len, nng_msg **out)
{
	nng_msg *m;
	int rv = nng_msg_alloc(&m, 0);
	if (!rv && (rv = nng_msg_append(m, data, len)))
		nng_msg_free(m);
	if (rv)
		return sp_nng_err(rv);
	*out = m;
	return SP_OK;
}

int
cs_rpc_call_packed(cs_rpc *r, const char *url, const void *req, size_t len, cs_rpc_cb cb,
		   void *arg)
{
	nng_msg *m;
	int rc = msg_from_packed(req, len, &m);
	if (rc)
		return rc;
	return call_msg(r, url, m, cb, arg);
}

void
cs_rpc_cancel(cs_rpc *r, cs_rpc_cb cb, bool (*pick)(void *arg))
{
	/* Cancelled, not stopped: an operation begun on a stopped aio may end without its
	 * callback (nng 1.5), which would lose the call. A cancel that falls between the send and
	 * the receive is missed, and that call ends by its timeout as before. */
	for (call *c = r->live; c; c = c->next_live)
		if (c->cb == cb && pick(c->arg))
			nng_aio_cancel(c->aio);
}

/* Sends what `p` has queued: a lone frame as itself, more as one PEER_BATCH. Non-blocking:
 * a full queue or an absent peer drops them (counted; the lost-push check repairs hints). */
static void
flush_peer(cs_rpc *r, peer *p)
{
	uint32_t n = p->npend;
	if (n == 0)
		return;
	nng_msg *m = NULL;
	int rc;
	if (n == 1) {
		rc = msg_from_packed(p->pend.data, p->pend.size, &m);
	} else {
		sp_bin frames[PUSH_BATCH_MAX];
		size_t start = 0;
		for (uint32_t i = 0; i < n; i++) {
			frames[i].p = (const uint8_t *)p->pend.data + start;
			frames[i].len = (uint32_t)(p->pend_end[i] - start);
			start = p->pend_end[i];
		}
		sp_frame b;
		sp_frame_init(&b, SP_T_PEER_BATCH, 0, false);
		sp_frame_set_bins(&b, SP_F_PEER_FRAMES, frames, n);
		rc = sp_nng_msg_from_frame(&b, &m);
	}
	if (rc == SP_OK) {
		int rv = nng_sendmsg(p->sock, m, NNG_FLAG_NONBLOCK);
		if (rv) {
			nng_msg_free(m);
			rc = sp_nng_err(rv);
		}
	}
	if (rc == SP_OK) {
		sp_metric_inc(r->push_msgs);
		sp_metric_add(r->push_frames, n);
	} else {
		sp_metric_add(r->push_dropped, n);
		sp_warn_rl("%u peer frames to %s not sent: %s", n, p->url, sp_strerror(rc));
	}
	p->pend.size = 0;
	p->npend = 0;
}

/* End of the loop pass in which pushes were queued. */
static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_rpc *r = arg;
	peer *p = r->pending;
	r->pending = NULL;
	while (p) {
		peer *next = p->next_pending;
		p->listed = false;
		p->next_pending = NULL;
		flush_peer(r, p);
		p = next;
	}
}

int
cs_rpc_push(cs_rpc *r, const char *url, const sp_frame *f)
{
	peer *p = get_peer(r, url, true);
	if (!p)
		return SP_EUNAVAIL;
	if (p->npend == PUSH_BATCH_MAX || p->pend.size >= PUSH_BATCH_BYTES)
		flush_peer(r, p); /* full: this pass's next frames start another message */
	size_t start = p->pend.size;
	int rc = sp_frame_pack(f, &p->pend);
	if (rc)
		return rc;
	if (p->pend.size - start > sp_field_def_get(SP_F_PEER_FRAMES)->max) {
		p->pend.size = start;
		return SP_ETOOBIG;
	}
	p->pend_end[p->npend++] = p->pend.size;
	if (!p->listed) {
		/* The first of the pass arms the flush, which runs after the events already
		 * active in this pass, like appendq's. */
		if (!r->pending)
			event_active(r->flush_ev, EV_READ, 0);
		p->listed = true;
		p->next_pending = r->pending;
		r->pending = p;
	}
	return SP_OK;
}

unsigned
cs_rpc_inflight(const cs_rpc *r)
{
	return r->inflight;
}
