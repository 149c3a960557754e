/* Notifying the connsrvs of recipients (see notify.h). */
#include <stdlib.h>
#include <string.h>

#include "connsrv/notify.h"
#include "connsrv/push.h"
#include "sp_error.h"
#include "sp_log.h"

typedef struct notify_op {
	cs_server *srv;
	msgpack_sbuffer tmpl; /* packed DELIVER template (owned copy of the entry) */
	size_t n;
	uint64_t *devices, *seqs;
} notify_op;

static void
notify_free(notify_op *op)
{
	msgpack_sbuffer_destroy(&op->tmpl);
	free(op->devices);
	free(op);
}

/* Hints that cannot be sent: the periodic check delivers those entries instead. */
static void
pushes_dropped(cs_server *srv, size_t n, int rc)
{
	sp_metric_add(srv->m.pushes_dropped, n);
	sp_warn_rl("%zu delivery hints not sent: %s", n, sp_strerror(rc));
}

static void
on_routes(void *arg, int rc, const cs_route *routes, size_t n)
{
	notify_op *op = arg;
	cs_server *srv = op->srv;
	sp_frame d;
	if (rc || (rc = sp_frame_decode((const uint8_t *)op->tmpl.data, op->tmpl.size, &d)) != SP_OK) {
		pushes_dropped(srv, op->n, rc);
		notify_free(op);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (!routes[i].url) {
			/* offline: the device drains its inbox when it connects; a wake-up asks it to */
			cs_push_due(srv, op->devices[i]);
			continue;
		}
		sp_frame_set_u64(&d, SP_F_SEQ, op->seqs[i]);
		sp_frame_set_u64(&d, SP_F_DEVICE, op->devices[i]);
		sp_frame_set_u64(&d, SP_F_CONN_EPOCH, routes[i].epoch);
		if (strcmp(routes[i].url, srv->pull_url) == 0)
			srv->ops->push(srv, &d);
		else if ((rc = cs_rpc_push(srv->rpc, routes[i].url, &d)) != SP_OK)
			pushes_dropped(srv, 1, rc);
	}
	sp_frame_fini(&d);
	notify_free(op);
}

void
cs_notify_appended(cs_server *srv, const sp_frame *entry, const uint64_t *devices,
		   const uint64_t *seqs, size_t n)
{
	if (n == 0)
		return;
	notify_op *op = calloc(1, sizeof(*op));
	if (!op) {
		pushes_dropped(srv, n, SP_ENOMEM);
		return;
	}
	op->srv = srv;
	op->n = n;
	msgpack_sbuffer_init(&op->tmpl);
	op->devices = malloc(2 * n * sizeof(uint64_t));
	int rc = op->devices ? sp_frame_pack(entry, &op->tmpl) : SP_ENOMEM;
	if (rc == SP_OK) {
		op->seqs = op->devices + n;
		memcpy(op->devices, devices, n * sizeof(uint64_t));
		memcpy(op->seqs, seqs, n * sizeof(uint64_t));
		rc = cs_routes_lookup(srv->routes, devices, n, on_routes, op);
	}
	if (rc != SP_OK) {
		pushes_dropped(srv, n, rc);
		notify_free(op);
	}
}
