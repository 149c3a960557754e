/* Notifying the connsrvs of recipients (see notify.h). */
#include <stdlib.h>
#include <string.h>

#include "connsrv/notify.h"
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

static void
on_routes(void *arg, int rc, const cs_route *routes, size_t n)
{
	notify_op *op = arg;
	cs_server *srv = op->srv;
	sp_frame d;
	if (rc || sp_frame_decode((const uint8_t *)op->tmpl.data, op->tmpl.size, &d) != SP_OK) {
		notify_free(op);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (!routes[i].url)
			continue; /* offline: the device drains its inbox when it connects */
		sp_frame_set_u64(&d, SP_F_SEQ, op->seqs[i]);
		sp_frame_set_u64(&d, SP_F_DEVICE, op->devices[i]);
		sp_frame_set_u64(&d, SP_F_CONN_EPOCH, routes[i].epoch);
		if (strcmp(routes[i].url, srv->pull_url) == 0)
			srv->ops->push(srv, &d);
		else
			cs_rpc_push(srv->rpc, routes[i].url, &d);
	}
	sp_frame_fini(&d);
	notify_free(op);
}

void
cs_notify(cs_server *srv, const sp_frame *entry, const uint64_t *devices, const uint64_t *seqs,
	  size_t n)
{
	if (n == 0)
		return;
	notify_op *op = calloc(1, sizeof(*op));
	if (!op)
		return;
	op->srv = srv;
	op->n = n;
	msgpack_sbuffer_init(&op->tmpl);
	op->devices = malloc(2 * n * sizeof(uint64_t));
	if (!op->devices || sp_frame_pack(entry, &op->tmpl) != SP_OK) {
		notify_free(op);
		return;
	}
	op->seqs = op->devices + n;
	memcpy(op->devices, devices, n * sizeof(uint64_t));
	memcpy(op->seqs, seqs, n * sizeof(uint64_t));
	if (cs_routes_lookup(srv->routes, devices, n, on_routes, op) != SP_OK)
		notify_free(op);
}
