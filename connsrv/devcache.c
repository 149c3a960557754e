/* Device lists of users, from keysrv, kept for devcache_ms: every SEND checks its items
 * against them. A mismatch is re-checked against a fresh list before the client hears. */
#include <stdlib.h>
#include <string.h>

#include "connsrv/internal.h"
#include "sp_error.h"
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

struct cs_devcache {
	dc_entry *by_user;
	size_t count;
};

int
cs_devcache_new(cs_server *srv, cs_devcache **out)
{
	(void)srv;
	*out = calloc(1, sizeof(cs_devcache));
	return *out ? SP_OK : SP_ENOMEM;
}

void
cs_devcache_free(cs_devcache *c)
{
	if (!c)
		return;
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
	if (e && !fresh && sp_time_ms() - e->fetched_ms < (uint64_t)srv->cfg.devcache_ms) {
		cb(arg, SP_OK, e->devices, e->n);
		return;
	}
	char url[256];
	dc_op *op = malloc(sizeof(*op));
	int rc = op ? cs_keysrv_url(srv, url, sizeof(url)) : SP_ENOMEM;
	if (rc == SP_OK) {
		op->srv = srv;
		op->user = user;
		op->cb = cb;
		op->arg = arg;
		sp_frame q;
		sp_frame_init(&q, SP_T_DEVICES_GET, 0, false);
		sp_frame_set_u64(&q, SP_F_USER, user);
		rc = cs_rpc_call(srv->rpc, url, &q, on_devices, op);
	}
	if (rc) {
		free(op);
		cb(arg, rc, NULL, 0);
	}
}
