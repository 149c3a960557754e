/* The peer plane (see peer.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "connsrv/peer.h"
#include "connsrv/presence.h"
#include "connsrv/typing.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"

typedef struct pulled {
	nng_msg *m;
	struct pulled *next;
} pulled;

typedef struct pull_q {
	pthread_mutex_t lock;
	pulled *head, *tail;
} pull_q;

/* A peer frame not acted on (counted and logged from any thread): a lost DELIVER hint is
 * repaired by the periodic check; a lost KICK leaves the old session until it goes idle or
 * its client reconnects. */
static void
peer_dropped(cs_server *srv, const char *why)
{
	sp_metric_inc(srv->m.peer_dropped);
	sp_warn_rl("peer frame dropped: %s", why);
}

/* NNG thread: queue the message for the loop and receive the next. */
static void
on_pull_aio(void *arg)
{
	cs_server *srv = arg;
	if (nng_aio_result(srv->pull_aio) != 0)
		return; /* closed (shutdown) */
	pulled *p = malloc(sizeof(*p));
	nng_msg *m = nng_aio_get_msg(srv->pull_aio);
	if (p) {
		pull_q *q = srv->pull_q;
		p->m = m;
		p->next = NULL;
		pthread_mutex_lock(&q->lock);
		if (q->tail)
			q->tail->next = p;
		else
			q->head = p;
		q->tail = p;
		pthread_mutex_unlock(&q->lock);
		event_active(srv->pull_ev, EV_READ, 0);
	} else {
		nng_msg_free(m);
		peer_dropped(srv, "out of memory");
	}
	nng_recv_aio(srv->pull, srv->pull_aio);
}

void
cs_peer_kick(cs_server *srv, const char *url, uint64_t device, uint64_t conn_epoch,
	     const char *reason)
{
	sp_frame k;
	sp_frame_init(&k, SP_T_KICK, 0, false);
	sp_frame_set_u64(&k, SP_F_DEVICE, device);
	sp_frame_set_u64(&k, SP_F_CONN_EPOCH, conn_epoch);
	if (reason)
		sp_frame_set_str(&k, SP_F_REASON, reason);
	int rc = cs_rpc_push(srv->rpc, url, &k);
	if (rc != SP_OK) {
		sp_metric_inc(srv->m.pushes_dropped);
		sp_warn_rl("KICK of device %llu to %s not sent: %s", (unsigned long long)device, url,
			   sp_strerror(rc));
	}
}

/* A KICK from a peer: its reason, bounded, for the client. */
static void
kick(cs_server *srv, const sp_frame *f)
{
	char why[64] = "";
	if (sp_frame_has(f, SP_F_REASON) && sp_frame_str(f, SP_F_REASON, why, sizeof(why)))
		snprintf(why, sizeof(why), "kicked");
	cs_session_kick(srv, sp_frame_u64(f, SP_F_DEVICE), sp_frame_u64(f, SP_F_CONN_EPOCH),
			why[0] ? why : NULL);
}

/* One peer frame (never a PEER_BATCH). */
static void
handle(cs_server *srv, const sp_frame *f)
{
	if (f->type == SP_T_DELIVER && sp_frame_has(f, SP_F_DEVICE))
		srv->ops->push(srv, f);
	else if (f->type == SP_T_KICK)
		kick(srv, f);
	else if (f->type == SP_T_TYPING_PUSH)
		cs_typing_push(srv, f);
	else if (f->type == SP_T_PRESENCE_PUSH)
		cs_presence_push(srv, f);
	else
		peer_dropped(srv, sp_frame_type_name(f->type));
}

/* A PEER_BATCH: each element decoded and handled in order; one that does not decode, or
 * is itself a batch, is dropped alone. */
static void
handle_batch(cs_server *srv, const sp_frame *b)
{
	const sp_val *v = sp_frame_get(b, SP_F_PEER_FRAMES);
	for (uint32_t i = 0; v && i < v->bs.n; i++) {
		sp_frame f;
		int rc = sp_frame_decode(v->bs.v[i].p, v->bs.v[i].len, &f);
		if (rc != SP_OK) {
			peer_dropped(srv, sp_strerror(rc));
			continue;
		}
		if (f.type == SP_T_PEER_BATCH)
			peer_dropped(srv, "PEER_BATCH inside a PEER_BATCH");
		else
			handle(srv, &f);
		sp_frame_fini(&f);
	}
}

static void
on_pull_ready(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	pull_q *q = srv->pull_q;
	pthread_mutex_lock(&q->lock);
	pulled *p = q->head;
	q->head = q->tail = NULL;
	pthread_mutex_unlock(&q->lock);
	while (p) {
		pulled *next = p->next;
		sp_frame f;
		int rc = sp_nng_msg_decode(p->m, &f);
		if (rc == SP_OK) {
			if (f.type == SP_T_PEER_BATCH)
				handle_batch(srv, &f);
			else
				handle(srv, &f);
			sp_frame_fini(&f);
		} else {
			peer_dropped(srv, sp_strerror(rc));
		}
		nng_msg_free(p->m);
		free(p);
		p = next;
	}
}

/* Extends the routes of the logged-in sessions (each only if it still holds it). */
static void
on_refresh_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	for (cs_session *s = srv->sessions; s; s = s->next)
		if (s->st == CS_ST_READY)
			cs_routes_refresh(srv->routes, s->device, srv->pull_url, s->conn_epoch);
}

int
cs_peer_start(cs_server *srv)
{
	pull_q *q = calloc(1, sizeof(*q));
	if (!q)
		return SP_ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	srv->pull_q = q;
	int rc = sp_nng_pull_listen(&srv->pull, srv->pull_listen);
	if (rc) {
		sp_error("cannot listen on %s: %s", srv->pull_listen, sp_strerror(rc));
		return rc;
	}
	srv->pull_ev = event_new(srv->base, -1, 0, on_pull_ready, srv);
	if (!srv->pull_ev || nng_aio_alloc(&srv->pull_aio, on_pull_aio, srv))
		return SP_ENOMEM;
	nng_recv_aio(srv->pull, srv->pull_aio);

	struct timeval ri = {srv->cfg.route_ttl_s / 3 > 0 ? srv->cfg.route_ttl_s / 3 : 1, 0};
	srv->refresh_ev = event_new(srv->base, -1, EV_PERSIST, on_refresh_tick, srv);
	if (!srv->refresh_ev)
		return SP_ENOMEM;
	event_add(srv->refresh_ev, &ri);
	return SP_OK;
}

void
cs_peer_stop(cs_server *srv)
{
	if (srv->pull_aio) {
		nng_aio_stop(srv->pull_aio);
		nng_aio_free(srv->pull_aio);
		srv->pull_aio = NULL;
	}
	nng_close(srv->pull);
	if (srv->pull_ev) {
		on_pull_ready(-1, 0, srv); /* frees what was queued */
		event_free(srv->pull_ev);
		srv->pull_ev = NULL;
	}
	if (srv->refresh_ev)
		event_free(srv->refresh_ev);
	srv->refresh_ev = NULL;
	pull_q *q = srv->pull_q;
	if (q) {
		pthread_mutex_destroy(&q->lock);
		free(q);
		srv->pull_q = NULL;
	}
}
