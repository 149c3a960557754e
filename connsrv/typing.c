/* Typing indicators to the recipient's online devices (see typing.h). */
#include <stdlib.h>
#include <string.h>

#include "connsrv/typing.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

typedef struct typing_op {
	cs_server *srv;
	uint64_t from_user, from_device, kind;
	uint64_t *devices;
	size_t n;
} typing_op;

static void
op_free(typing_op *op)
{
	free(op->devices);
	free(op);
}

static void
write_ev(cs_session *s, uint64_t from_user, uint64_t from_device, uint64_t kind)
{
	sp_frame e;
	sp_frame_init(&e, SP_T_TYPING_EV, 0, false);
	sp_frame_set_u64(&e, SP_F_FROM_USER, from_user);
	sp_frame_set_u64(&e, SP_F_FROM_DEVICE, from_device);
	sp_frame_set_u64(&e, SP_F_KIND, kind);
	cs_session_send(s, &e);
	sp_metric_inc(s->srv->m.typing_sent);
}

/* To `device`'s session on this worker, if it is still the one of `conn_epoch`. */
static void
deliver_here(cs_server *srv, uint64_t device, uint64_t conn_epoch, uint64_t from_user,
	     uint64_t from_device, uint64_t kind)
{
	cs_session *s;
	HASH_FIND(hh, srv->by_device, &device, sizeof(device), s);
	if (s && s->conn_epoch == conn_epoch && !s->closing)
		write_ev(s, from_user, from_device, kind);
	else
		sp_metric_inc(srv->m.typing_dropped);
}

static void
on_routes(void *arg, int rc, const cs_route *routes, size_t n)
{
	typing_op *op = arg;
	cs_server *srv = op->srv;
	for (size_t i = 0; rc == SP_OK && i < n && i < op->n; i++) {
		if (!routes[i].url) {
			sp_metric_inc(srv->m.typing_dropped); /* offline: nothing is kept */
			continue;
		}
		if (strcmp(routes[i].url, srv->pull_url) == 0) {
			deliver_here(srv, op->devices[i], routes[i].epoch, op->from_user, op->from_device,
				     op->kind);
			continue;
		}
		sp_frame p;
		sp_frame_init(&p, SP_T_TYPING_PUSH, 0, false);
		sp_frame_set_u64(&p, SP_F_DEVICE, op->devices[i]);
		sp_frame_set_u64(&p, SP_F_CONN_EPOCH, routes[i].epoch);
		sp_frame_set_u64(&p, SP_F_FROM_USER, op->from_user);
		sp_frame_set_u64(&p, SP_F_FROM_DEVICE, op->from_device);
		sp_frame_set_u64(&p, SP_F_KIND, op->kind);
		if (cs_rpc_push(srv->rpc, routes[i].url, &p) != SP_OK)
			sp_metric_inc(srv->m.typing_dropped);
	}
	if (rc)
		sp_metric_add(srv->m.typing_dropped, (int64_t)op->n);
	op_free(op);
}

static void
on_devices(void *arg, int rc, const uint64_t *devices, size_t n)
{
	typing_op *op = arg;
	if (rc || n == 0 || !(op->devices = malloc(n * sizeof(uint64_t)))) {
		sp_metric_inc(op->srv->m.typing_dropped);
		op_free(op);
		return;
	}
	memcpy(op->devices, devices, n * sizeof(uint64_t));
	op->n = n;
	if (cs_routes_lookup(op->srv->routes, op->devices, n, on_routes, op) != SP_OK) {
		sp_metric_add(op->srv->m.typing_dropped, (int64_t)n);
		op_free(op);
	}
}

void
cs_typing(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	cs_server *srv = s->srv;
	uint64_t now = sp_mono_ms();
	uint64_t to = sp_frame_u64(f, SP_F_TO_USER), kind = sp_frame_u64(f, SP_F_KIND);
	/* Ephemeral and cheap to lose: over the rate, or malformed, it is dropped, not
	 * answered (a client sends these on every keystroke burst). */
	if (kind > 1 || to == 0 || to == s->user ||
	    (s->typing_ms && now - s->typing_ms < CS_TYPING_MIN_MS)) {
		sp_metric_inc(srv->m.typing_dropped);
		return;
	}
	s->typing_ms = now;
	typing_op *op = calloc(1, sizeof(*op));
	if (!op) {
		sp_metric_inc(srv->m.typing_dropped);
		return;
	}
	op->srv = srv;
	op->from_user = s->user;
	op->from_device = s->device;
	op->kind = kind;
	cs_devcache_get(srv, to, false, on_devices, op);
}

void
cs_typing_push(cs_server *srv, const sp_frame *f)
{
	uint64_t kind = sp_frame_u64(f, SP_F_KIND);
	if (kind > 1) {
		sp_metric_inc(srv->m.typing_dropped);
		return;
	}
	deliver_here(srv, sp_frame_u64(f, SP_F_DEVICE), sp_frame_u64(f, SP_F_CONN_EPOCH),
		     sp_frame_u64(f, SP_F_FROM_USER), sp_frame_u64(f, SP_F_FROM_DEVICE), kind);
}
