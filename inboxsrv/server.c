#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include <nng/nng.h>

#include "internal.h"
#include "server.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_time.h"

typedef enum { CTX_RECV, CTX_WAIT, CTX_SEND } ctx_state;

typedef struct srv_ctx {
	inbox_server *srv;
	nng_ctx ctx;
	nng_aio *aio;
	ctx_state state;
	uint64_t t_recv; /* ns */
} srv_ctx;

struct inbox_server {
	nng_socket sock;
	inbox_dispatch *d;
	srv_ctx *ctxs;
	int nctx;
	/* Held (read) around every nng_ctx_recv/send, (write) to set `closing`: once closing
	 * is set nobody is inside those calls, so nng_close never races them (NNG 1.5 was
	 * seen to crash on a recv issued while the socket closed). */
	pthread_rwlock_t lock;
	bool closing;
};

static void
ctx_recv(srv_ctx *c)
{
	pthread_rwlock_rdlock(&c->srv->lock);
	if (!c->srv->closing) {
		c->state = CTX_RECV;
		nng_ctx_recv(c->ctx, c->aio);
	}
	pthread_rwlock_unlock(&c->srv->lock);
}

/* Reply route of the dispatcher: runs on this context's callback thread or on the commit
 * completion thread. */
static void
ctx_reply(void *arg, nng_msg *reply)
{
	srv_ctx *c = arg;
	if (!reply) {
		inbox_drop(inbox_m.dropped_replies,
		    "no reply could be built (out of memory); the requester's resend retries");
		ctx_recv(c);
		return;
	}
	sp_metric_observe(inbox_m.request_seconds, (double)(sp_mono_ns() - c->t_recv) / 1e9);
	pthread_rwlock_rdlock(&c->srv->lock);
	if (c->srv->closing) {
		inbox_drop(
		    inbox_m.dropped_replies, "reply after the socket closed (shutting down)");
		nng_msg_free(reply);
	} else {
		c->state = CTX_SEND;
		nng_aio_set_msg(c->aio, reply);
		nng_ctx_send(c->ctx, c->aio);
	}
	pthread_rwlock_unlock(&c->srv->lock);
}

static void
ctx_cb(void *arg)
{
	srv_ctx *c = arg;
	int rv = nng_aio_result(c->aio);

	switch (c->state) {
	case CTX_RECV:
		if (rv) {
			if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
				return;
			inbox_drop(inbox_m.dropped_requests, "receive: %s", nng_strerror(rv));
			ctx_recv(c);
			return;
		}
		c->state = CTX_WAIT;
		c->t_recv = sp_mono_ns();
		inbox_dispatch_handle(c->srv->d, nng_aio_get_msg(c->aio), ctx_reply, c);
		return;
	case CTX_SEND:
		if (rv) {
			nng_msg_free(nng_aio_get_msg(c->aio));
			inbox_drop(inbox_m.dropped_replies, "reply send: %s", nng_strerror(rv));
			if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
				return;
		}
		ctx_recv(c);
		return;
	case CTX_WAIT:
		return;
	}
}

int
inbox_server_start(inbox_server **out, const char *url, int nctx, inbox_dispatch *d)
{
	inbox_server *srv = calloc(1, sizeof(*srv));
	int rc, rv;
	if (!srv)
		return SP_ENOMEM;
	srv->d = d;
	srv->nctx = nctx;
	if (!(srv->ctxs = calloc((size_t)nctx, sizeof(srv_ctx)))) {
		free(srv);
		return SP_ENOMEM;
	}
	pthread_rwlock_init(&srv->lock, NULL);
	if ((rc = sp_nng_rep_listen(&srv->sock, url))) {
		sp_error("listen %s: %s", url, sp_strerror(rc));
		pthread_rwlock_destroy(&srv->lock);
		free(srv->ctxs);
		free(srv);
		return rc;
	}
	for (int i = 0; i < nctx; i++) {
		srv_ctx *c = &srv->ctxs[i];
		c->srv = srv;
		if ((rv = nng_aio_alloc(&c->aio, ctx_cb, c))
		    || (rv = nng_ctx_open(&c->ctx, srv->sock))) {
			sp_error("nng context: %s", nng_strerror(rv));
			srv->nctx = i + (c->aio != NULL);
			inbox_server_close(srv);
			inbox_server_free(srv);
			return sp_nng_err(rv);
		}
	}
	for (int i = 0; i < nctx; i++)
		ctx_recv(&srv->ctxs[i]);
	*out = srv;
	return SP_OK;
}

void
inbox_server_close(inbox_server *srv)
{
	pthread_rwlock_wrlock(&srv->lock);
	srv->closing = true;
	pthread_rwlock_unlock(&srv->lock);
	nng_close(srv->sock);
}

void
inbox_server_free(inbox_server *srv)
{
	if (!srv)
		return;
	for (int i = 0; i < srv->nctx; i++)
		if (srv->ctxs[i].aio)
			nng_aio_stop(srv->ctxs[i].aio);
	for (int i = 0; i < srv->nctx; i++)
		if (srv->ctxs[i].aio)
			nng_aio_free(srv->ctxs[i].aio);
	pthread_rwlock_destroy(&srv->lock);
	free(srv->ctxs);
	free(srv);
}
