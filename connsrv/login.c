/* Login (see login.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "connsrv/login.h"
#include "connsrv/peer.h"
#include "connsrv/push.h"
#include "sp_proto.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

void
cs_login_hello(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	if (sp_frame_u64(f, SP_F_VERSION) != SP_PROTO_VERSION) {
		cs_session_error(s, f->id, f->has_id, SP_EPROTO, "unsupported protocol version", NULL);
		cs_session_close(s, true);
		return;
	}
	randombytes_buf(s->nonce, sizeof(s->nonce));
	sp_frame c;
	sp_frame_init(&c, SP_T_CHALLENGE, f->id, f->has_id);
	sp_frame_set_bin(&c, SP_F_NONCE, s->nonce, sizeof(s->nonce));
	s->st = CS_ST_CHALLENGED;
	cs_session_send(s, &c);
}

typedef struct auth_op {
	cs_session *s;
	uint64_t id;
	bool has_id;
	uint64_t user, device, last_seq;
	uint8_t sig[SP_LOGIN_SIG_LEN];
	uint64_t t0;
} auth_op;

/* Redis answered the route claim with the previous holder (if any): a session on another
 * worker or connsrv is kicked there (one on this worker was kicked by cs_session_bind). */
static void
on_route_claimed(void *arg, int rc, const cs_route *old)
{
	cs_session *s = arg;
	cs_server *srv = s->srv;
	cs_push_cancel(srv, s->device);
	if (rc)
		sp_warn("route for device %llu not stored (%s): real-time push to it waits for the "
			"periodic check",
			(unsigned long long)s->device, sp_strerror(rc));
	if (old && old->url && strcmp(old->url, srv->pull_url) != 0)
		cs_peer_kick(srv, old->url, s->device, old->epoch, NULL);
	cs_session_call_end(s);
}

static void
on_auth_key(void *arg, int rc, const sp_frame *reply)
{
	auth_op *op = arg;
	cs_session *s = op->s;
	cs_server *srv = s->srv;

	sp_metric_observe(srv->m.rpc_latency, (double)(sp_mono_ns() - op->t0) / 1e9);
	if (s->closing)
		goto done;
	if (rc == SP_OK) {
		sp_bin key = sp_frame_bin(reply, SP_F_AUTH_KEY);
		if (sp_frame_u64(reply, SP_F_USER) != op->user ||
		    sp_login_verify(op->sig, sizeof(op->sig), s->nonce, op->user, op->device, key.p,
				    key.len) != SP_OK)
			rc = SP_EAUTH;
	}
	if (rc) {
		/* Unknown device, wrong user, bad signature: one answer for all. */
		sp_metric_inc(srv->m.login_fail);
		cs_session_error(s, op->id, op->has_id, rc == SP_ENOTFOUND ? SP_EAUTH : rc,
				 rc == SP_EAUTH || rc == SP_ENOTFOUND ? "authentication failed"
								      : "login unavailable, retry",
				 NULL);
		cs_session_close(s, true);
		goto done;
	}
	/* A fresh nonce per attempt: a signature cannot be replayed on this connection. */
	sodium_memzero(s->nonce, sizeof(s->nonce));
	s->user = op->user;
	s->device = op->device;
	randombytes_buf(&s->conn_epoch, sizeof(s->conn_epoch));
	s->conn_epoch &= 0x7fffffffffffffffULL;
	cs_session_bind(s);
	sp_metric_inc(srv->m.logins);

	sp_frame ok;
	sp_frame_init(&ok, SP_T_AUTH_OK, op->id, op->has_id);
	sp_frame_set_u64(&ok, SP_F_SERVER_TS, sp_time_ms());
	sp_frame_set_u64(&ok, SP_F_CONN_EPOCH, s->conn_epoch);
	sp_frame_set_u64(&ok, SP_F_USER, s->user);
	sp_frame_set_u64(&ok, SP_F_DEVICE, s->device);
	sp_frame_set_u64(&ok, SP_F_EXP_AFTER, (uint64_t)s->srv->cfg.expire_after_s * 1000);
	cs_session_send(s, &ok);

	cs_session_call_begin(s);
	if (cs_routes_claim(srv->routes, s->device, srv->pull_url, s->conn_epoch, on_route_claimed,
			    s) != SP_OK)
		on_route_claimed(s, SP_EREDIS, NULL);
	cs_session_logged_in(s, op->last_seq);
done:
	cs_session_call_end(s);
	free(op);
}

void
cs_login_auth(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	cs_server *srv = s->srv;
	auth_op *op = calloc(1, sizeof(*op));
	if (!op) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, NULL, NULL);
		return;
	}
	op->s = s;
	op->id = f->id;
	op->has_id = f->has_id;
	op->user = sp_frame_u64(f, SP_F_USER);
	op->device = sp_frame_u64(f, SP_F_DEVICE);
	op->last_seq = sp_frame_u64(f, SP_F_LAST_SEQ);
	memcpy(op->sig, sp_frame_bin(f, SP_F_SIG).p, sizeof(op->sig));
	op->t0 = sp_mono_ns();

	sp_frame q;
	sp_frame_init(&q, SP_T_AUTH_KEY_GET, 0, false);
	sp_frame_set_u64(&q, SP_F_USER, op->user);
	sp_frame_set_u64(&q, SP_F_DEVICE, op->device);
	s->st = CS_ST_AUTHING;
	cs_session_call_begin(s);
	int rc = cs_shardcall_keysrv(srv->shards, true, &q, on_auth_key, op);
	if (rc) {
		s->st = CS_ST_CHALLENGED;
		cs_session_error(s, f->id, f->has_id, SP_EUNAVAIL, "login unavailable, retry", NULL);
		cs_session_call_end(s);
		free(op);
	}
}
