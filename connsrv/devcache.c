/* Device lists of users, from keysrv, kept for devcache_ms: every SEND checks its items
 * against them. A mismatch is re-checked against a fresh list before the client hears.
 * Answers are always given later on the loop: a cache hit (or a call that could not be
 * made) is queued and answered by an event made active, so a caller never sees its
 * callback run inside cs_devcache_get. */
#include <stdlib.h>
#include <string.h>

#include "connsrv/internal.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

#define DC_MAX_DEVICES 8
#define DC_MAX_ENTRIES 100000

typedef struct dc_entry {
	uint64_t user;
	uint64_t devices[DC_MAX_DEVICES];
	size_t n;
	uint64_t fetched_ms;
	UT_hash_handle hh;
} dc_entry;

/* An answer waiting for the loop (a copy: the entry may change before it runs). */
typedef struct dc_answer {
	cs_devices_cb cb;
	void *arg;
	int rc;
	size_t n;
	uint64_t devices[DC_MAX_DEVICES];
} dc_answer;

struct cs_devcache {
	dc_entry *by_user;
	size_t count;
	struct event *answer_ev;
	/* Grown by doubling and reused: a cache hit allocates nothing once it has room. */
	dc_answer *answers;
	size_t nanswers, cap;
	bool closing;
};

/* Runs the queued answers, including those their callbacks queue meanwhile. */
static void
on_answers(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_devcache *c = arg;
	for (size_t i = 0; i < c->nanswers; i++) {
		dc_answer a = c->answers[i]; /* the array may move when a callback queues more */
		if (c->closing)
			a.rc = SP_ECLOSED;
		a.cb(a.arg, a.rc, a.rc ? NULL : a.devices, a.rc ? 0 : a.n);
	}
	c->nanswers = 0;
}

static void
answer_later(cs_devcache *c, cs_devices_cb cb, void *arg, int rc, const uint64_t *devs, size_t n)
{
	if (c->nanswers == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 64;
		dc_answer *a = realloc(c->answers, cap * sizeof(*a));
		/* No room to defer and no way to answer now: out of memory is fatal here. */
		SP_ASSERT(a != NULL);
		c->answers = a;
		c->cap = cap;
	}
	dc_answer *a = &c->answers[c->nanswers++];
	a->cb = cb;
	a->arg = arg;
	a->rc = rc;
	a->n = n;
	if (n)
		memcpy(a->devices, devs, n * sizeof(uint64_t));
	if (c->answer_ev && !c->closing)
		event_active(c->answer_ev, EV_READ, 0);
}

int
cs_devcache_new(cs_server *srv, cs_devcache **out)
{
	cs_devcache *c = calloc(1, sizeof(cs_devcache));
	if (!c)
		return SP_ENOMEM;
	if (!(c->answer_ev = event_new(srv->base, -1, 0, on_answers, c))) {
		free(c);
		return SP_ENOMEM;
	}
	*out = c;
	return SP_OK;
}

void
cs_devcache_free(cs_devcache *c)
{
	if (!c)
		return;
	/* Shutdown: what waits is answered SP_ECLOSED (so are gets those answers make). */
	c->closing = true;
	on_answers(-1, 0, c);
	event_free(c->answer_ev);
	free(c->answers);
	dc_entry *e, *tmp;
	HASH_ITER(hh, c->by_user, e, tmp) {
		HASH_DEL(c->by_user, e);
		free(e);
	}
	free(c);
}

void
cs_devcache_forget(cs_server *srv, uint64_t user)
{
	cs_devcache *c = srv->devcache;
	dc_entry *e;
	HASH_FIND(hh, c->by_user, &user, sizeof(user), e);
	if (e) {
		HASH_DEL(c->by_user, e);
		free(e);
		c->count--;
	}
}

typedef struct dc_op {
	cs_server *srv;
	uint64_t user;
	cs_devices_cb cb;
	void *arg;
} dc_op;

static void
on_devices(void *arg, int rc, const sp_frame *reply)
{
	dc_op *op = arg;
	cs_devcache *c = op->srv->devcache;
	uint64_t devs[DC_MAX_DEVICES];
	size_t n = 0;
	if (rc == SP_OK) {
		const sp_val *v = sp_frame_get(reply, SP_F_DEVICE_LIST);
		for (uint32_t i = 0; v && i < v->rs.n && n < DC_MAX_DEVICES; i++)
			devs[n++] = sp_frame_u64(&v->rs.v[i], SP_F_DEVICE);
		if (n == 0)
			rc = SP_ENOTFOUND;
	}
	if (rc == SP_OK) {
		dc_entry *e;
		HASH_FIND(hh, c->by_user, &op->user, sizeof(op->user), e);
		if (!e && c->count < DC_MAX_ENTRIES && (e = calloc(1, sizeof(*e)))) {
			e->user = op->user;
			HASH_ADD(hh, c->by_user, user, sizeof(e->user), e);
			c->count++;
		}
		if (e) {
			memcpy(e->devices, devs, n * sizeof(uint64_t));
			e->n = n;
			e->fetched_ms = sp_time_ms();
		}
	}
	op->cb(op->arg, rc, devs, n);
	free(op);
}

void
cs_devcache_get(cs_server *srv, uint64_t user, bool fresh, cs_devices_cb cb, void *arg)
{
	cs_devcache *c = srv->devcache;
	dc_entry *e;
	HASH_FIND(hh, c->by_user, &user, sizeof(user), e);
	if (c->closing) {
		answer_later(c, cb, arg, SP_ECLOSED, NULL, 0);
		return;
	}
	if (e && !fresh && sp_time_ms() - e->fetched_ms < (uint64_t)srv->cfg.devcache_ms) {
		answer_later(c, cb, arg, SP_OK, e->devices, e->n);
		return;
	}
	dc_op *op = malloc(sizeof(*op));
	int rc = op ? SP_OK : SP_ENOMEM;
	if (rc == SP_OK) {
		op->srv = srv;
		op->user = user;
		op->cb = cb;
		op->arg = arg;
		sp_frame q;
		sp_frame_init(&q, SP_T_DEVICES_GET, 0, false);
		sp_frame_set_u64(&q, SP_F_USER, user);
		rc = cs_shardcall_keysrv(srv->shards, true, &q, on_devices, op);
	}
	if (rc) {
		free(op);
		answer_later(c, cb, arg, rc, NULL, 0);
	}
}
