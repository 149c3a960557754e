/* The router's NNG side: a REP socket answering MAP_GET and HEARTBEAT with the MAP, and a
 * PUB socket for map changes. Both are driven from the libevent loop: the REP socket's
 * receive descriptor wakes the loop and requests are read without blocking. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "internal.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"

/* How long the loop may wait for a member's pipe to take a reply. A non-blocking send
 * would drop a reply whenever the previous one to the same peer is still in flight. */
#define REPLY_TIMEOUT_MS 100

struct router_server {
	router *r;
	nng_socket rep, pub;
	bool rep_open, pub_open;
	struct event *ev;
};

/* Sends a reply (REP: bounded by REPLY_TIMEOUT_MS, for a peer whose pipe is still busy
 * with the previous reply) or a publication (PUB never blocks). A reply that cannot go is
 * dropped, and the member asks again. On error the message is freed. */
static int
send_msg(nng_socket s, nng_msg *m)
{
	int rv = nng_sendmsg(s, m, 0);
	if (rv)
		nng_msg_free(m);
	return sp_nng_err(rv);
}

static int
send_packed(nng_socket s, msgpack_sbuffer *sb)
{
	nng_msg *m;
	int rv = nng_msg_alloc(&m, 0);
	if (rv)
		return sp_nng_err(rv);
	if ((rv = nng_msg_append(m, sb->data, sb->size))) {
		nng_msg_free(m);
		return sp_nng_err(rv);
	}
	return send_msg(s, m);
}

static void
reply_error(router_server *s, const sp_frame *q, int code, const char *reason)
{
	sp_frame f;
	nng_msg *m;
	sp_frame_init(&f, SP_T_ERROR, q ? q->id : 0, q ? q->has_id : false);
	sp_frame_set_i64(&f, SP_F_CODE, code);
	sp_frame_set_str(&f, SP_F_REASON, reason);
	if (sp_nng_msg_from_frame(&f, &m) == SP_OK)
		send_msg(s->rep, m);
}

static void
reply_map(router_server *s, const sp_frame *q)
{
	msgpack_sbuffer sb;
	int rc;
	if (s->r->store) {
		const sp_frame *m = router_store_map(s->r->store, NULL, NULL);
		if (!m) {
			/* Never this router's own epoch: it could pass etcd's and stick. */
			reply_error(s, q, SP_EUNAVAIL, "no cluster map in etcd yet");
			return;
		}
		sp_frame f = *m;
		f.id = q->id;
		f.has_id = q->has_id;
		msgpack_sbuffer_init(&sb);
		rc = sp_frame_pack(&f, &sb);
	} else {
		msgpack_sbuffer_init(&sb);
		rc = router_map_pack(s->r->map, q->id, q->has_id, &sb);
	}
	if (rc == SP_OK)
		rc = send_packed(s->rep, &sb);
	else
		reply_error(s, q, rc, "cannot encode the map");
	msgpack_sbuffer_destroy(&sb);
	if (rc && rc != SP_EAGAIN)
		sp_debug("MAP reply not sent: %s", sp_strerror(rc));
}

static void
on_heartbeat(router_server *s, const sp_frame *q)
{
	router *r = s->r;
	char name[ROUTER_NAME_MAX + 1], reason[160];
	sp_bin nb = sp_frame_bin(q, SP_F_NAME);
	uint64_t role = sp_frame_u64(q, SP_F_ROLE);
	bool changed;

	sp_metric_inc(r->m_heartbeats);
	if (memchr(nb.p, '\0', nb.len) || sp_frame_str(q, SP_F_NAME, name, sizeof(name)) ||
	    role > INT_MAX) {
		reply_error(s, q, SP_ENOTFOUND, "no such member");
		return;
	}
	int rc = router_map_heartbeat(r->map, name, (int)role, sp_frame_u64(q, SP_F_CONNS),
				      router_now_ms(), &changed);
	if (rc == SP_ENOTFOUND) {
		snprintf(reason, sizeof(reason), "'%s' is not in the cluster file", name);
		reply_error(s, q, rc, reason);
		return;
	}
	if (rc) {
		snprintf(reason, sizeof(reason), "'%s' is not a %s", name,
			 sp_cluster_role_name((int)role));
		reply_error(s, q, rc, reason);
		return;
	}
	if (changed) {
		sp_info("%s is healthy (epoch %llu)", name,
			(unsigned long long)router_map_epoch(r->map));
		router_changed(r);
	}
	reply_map(s, q);
}

/* The handlers, indexed by frame type: the catalogue's SP_TIER_ROUTER frames. */
static void (*const handlers[256])(router_server *s, const sp_frame *q) = {
	[SP_T_MAP_GET] = reply_map,
	[SP_T_HEARTBEAT] = on_heartbeat,
};

bool
router_server_serves(unsigned type)
{
	return type < 256 && handlers[type] != NULL;
}

static void
handle(router_server *s, nng_msg *in)
{
	sp_frame q;
	int rc = sp_nng_msg_decode(in, &q);
	if (rc) {
		reply_error(s, NULL, rc, sp_strerror(rc));
		return;
	}
	if (router_server_serves(q.type))
		handlers[q.type](s, &q);
	else
		reply_error(s, &q, SP_EBADTYPE, "the router answers MAP_GET and HEARTBEAT");
	sp_frame_fini(&q);
}

static void
on_readable(evutil_socket_t fd, short what, void *arg)
{
	router_server *s = arg;
	nng_msg *m;
	(void)fd;
	(void)what;
	/* Bounded per wake-up so that HTTP and the health tick are not starved. */
	for (int i = 0; i < 256; i++) {
		int rv = nng_recvmsg(s->rep, &m, NNG_FLAG_NONBLOCK);
		if (rv == NNG_EAGAIN)
			return;
		if (rv) {
			sp_warn("router REP receive: %s", nng_strerror(rv));
			return;
		}
		handle(s, m);
		nng_msg_free(m);
	}
}

int
router_server_publish(router_server *s, const router_map *m)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	int rc = router_map_pack(m, 0, false, &sb);
	if (rc == SP_OK)
		rc = send_packed(s->pub, &sb);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

int
router_server_publish_frame(router_server *s, const sp_frame *f)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	int rc = sp_frame_pack(f, &sb);
	if (rc == SP_OK)
		rc = send_packed(s->pub, &sb);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

int
router_server_start(router *r, const char *listen_url, const char *publish_url,
		    router_server **out)
{
	int rv, fd, rc;
	router_server *s = calloc(1, sizeof(*s));
	if (!s)
		return SP_ENOMEM;
	s->r = r;
	if ((rc = sp_nng_rep_listen(&s->rep, listen_url))) {
		sp_error("cannot listen on %s: %s", listen_url, sp_strerror(rc));
		goto fail;
	}
	s->rep_open = true;
	if ((rv = nng_socket_set_ms(s->rep, NNG_OPT_SENDTIMEO, REPLY_TIMEOUT_MS))) {
		rc = sp_nng_err(rv);
		goto fail;
	}
	if ((rv = nng_pub0_open(&s->pub))) {
		rc = sp_nng_err(rv);
		goto fail;
	}
	s->pub_open = true;
	/* Members subscribe with the same certificates they heartbeat with. */
	if ((rc = sp_nng_listen(s->pub, publish_url, NULL))) {
		sp_error("cannot listen on %s: %s", publish_url, sp_strerror(rc));
		goto fail;
	}
	if ((rv = nng_socket_get_int(s->rep, NNG_OPT_RECVFD, &fd))) {
		rc = sp_nng_err(rv);
		goto fail;
	}
	s->ev = event_new(r->base, fd, EV_READ | EV_PERSIST, on_readable, s);
	if (!s->ev || event_add(s->ev, NULL)) {
		rc = SP_ENOMEM;
		goto fail;
	}
	*out = s;
	return SP_OK;
fail:
	router_server_free(s);
	return rc;
}

void
router_server_free(router_server *s)
{
	if (!s)
		return;
	if (s->ev)
		event_free(s->ev);
	if (s->rep_open)
		nng_close(s->rep);
	if (s->pub_open)
		nng_close(s->pub);
	free(s);
}
