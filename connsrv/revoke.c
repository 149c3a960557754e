/* Kicks of removed devices, here and on other connsrvs, and the periodic check that a
 * session's device is still current (see revoke.h). */
#include <stdlib.h>
#include <string.h>

#include "connsrv/peer.h"
#include "connsrv/revoke.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

static const char removed[] = "device removed";

typedef struct kick_op {
	cs_server *srv;
	uint64_t device;
} kick_op;

static void
on_route(void *arg, int rc, const cs_route *routes, size_t n)
{
	kick_op *op = arg;
	cs_server *srv = op->srv;
	if (rc == SP_OK && n == 1 && routes[0].url && strcmp(routes[0].url, srv->pull_url) != 0) {
		cs_peer_kick(srv, routes[0].url, op->device, routes[0].epoch, removed);
	} else if (rc) {
		sp_warn_rl("route of removed device %llu not read (%s): its session ends at its next "
			   "check",
			   (unsigned long long)op->device, sp_strerror(rc));
	}
	free(op);
}

void
cs_revoke_device(cs_server *srv, uint64_t device)
{
	cs_session *s;
	HASH_FIND(hh, srv->by_device, &device, sizeof(device), s);
	if (s)
		cs_session_kick(srv, device, s->conn_epoch, removed);
	kick_op *op = malloc(sizeof(*op));
	if (!op) {
		sp_metric_inc(srv->m.pushes_dropped);
		return;
	}
	op->srv = srv;
	op->device = device;
	if (cs_routes_lookup(srv->routes, &device, 1, on_route, op) != SP_OK) {
		sp_metric_inc(srv->m.pushes_dropped);
		free(op);
	}
}

static void
on_devices(void *arg, int rc, const uint64_t *devices, size_t n)
{
	cs_session *s = arg;
	s->verifying = false;
	if (!s->closing && s->st == CS_ST_READY) {
		bool listed = false;
		for (size_t i = 0; i < n && !listed; i++)
			listed = devices[i] == s->device;
		if (rc == SP_OK && listed) {
			s->verified_ms = sp_mono_ms();
		} else if (rc == SP_OK || rc == SP_ENOTFOUND) {
			sp_metric_inc(s->srv->m.revoked);
			sp_info("device %llu of user %llu is no longer current: session closed",
				(unsigned long long)s->device, (unsigned long long)s->user);
			cs_session_kick(s->srv, s->device, s->conn_epoch, removed);
		}
		/* Other failures (keysrv unreachable): checked again on a later frame. */
	}
	cs_session_call_end(s);
}

void
cs_revoke_check(cs_session *s)
{
	cs_server *srv = s->srv;
	if (s->st != CS_ST_READY || s->verifying || s->closing ||
	    sp_mono_ms() - s->verified_ms < (uint64_t)srv->cfg.devcache_ms)
		return;
	s->verifying = true;
	cs_session_call_begin(s);
	cs_devcache_get(srv, s->user, false, on_devices, s);
}
