/*
 * Login: HELLO -> CHALLENGE{nonce} -> AUTH{user, device, sig} checked against the device's
 * auth key from keysrv (Ed25519 over "sealpost-auth-v1" || nonce || user || device), then
 * the route in Redis and the kick of an older session of the same device.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "connsrv/internal.h"
#include "sp_proto.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

void
cs_auth_hello(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
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

void
cs_auth_route_value(const cs_session *s, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s|%llu", s->srv->pull_url, (unsigned long long)s->conn_epoch);
}

typedef struct auth_op {
	cs_session *s;
	uint64_t id;
	bool has_id;
	uint64_t user, device, last_seq;
	uint8_t sig[SP_LOGIN_SIG_LEN];
	uint64_t t0;
} auth_op;

static void
kick_session(cs_session *old, const char *why)
{
	sp_frame k;
	sp_frame_init(&k, SP_T_KICKED, 0, false);
	sp_frame_set_str(&k, SP_F_REASON, why);
	cs_session_send(old, &k);
	sp_metric_inc(old->srv->m.kicks);
	cs_session_close(old, true);
}

void
cs_auth_kick(cs_server *srv, uint64_t device, uint64_t conn_epoch)
{
	cs_session *old;
	HASH_FIND(hh, srv->by_device, &device, sizeof(device), old);
	if (old && old->conn_epoch == conn_epoch)
		kick_session(old, "logged in elsewhere");
}

/* Redis answered the route claim with the previous holder (if any): kick it. */
static void
on_route_claimed(void *arg, int rc, const char *old)
{
	cs_session *s = arg;
	cs_server *srv = s->srv;
	if (rc)
		sp_warn("route for device %llu not stored (%s): real-time push to it waits for the "
			"periodic check",
			(unsigned long long)s->device, sp_strerror(rc));
	if (old && *old) {
		char ours[300];
		cs_auth_route_value(s, ours, sizeof(ours));
		const char *bar = strrchr(old, '|');
		if (bar && strcmp(old, ours) != 0) {
			char url[256];
			size_t n = (size_t)(bar - old);
			if (n < sizeof(url)) {
				memcpy(url, old, n);
				url[n] = '\0';
				uint64_t epoch = strtoull(bar + 1, NULL, 10);
				if (strcmp(url, srv->pull_url) != 0) {
					sp_frame k;
					sp_frame_init(&k, SP_T_KICK, 0, false);
					sp_frame_set_u64(&k, SP_F_DEVICE, s->device);
					sp_frame_set_u64(&k, SP_F_CONN_EPOCH, epoch);
					cs_rpc_push(srv->rpc, url, &k);
				}
			}
		}
	}
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
	cs_session *old;
	HASH_FIND(hh, srv->by_device, &s->device, sizeof(s->device), old);
	if (old) {
		HASH_DEL(srv->by_device, old);
		old->st = CS_ST_HELLO; /* it no longer owns the route */
		kick_session(old, "logged in elsewhere");
	}
	HASH_ADD(hh, srv->by_device, device, sizeof(s->device), s);
	s->st = CS_ST_READY;
	sp_metric_inc(srv->m.logins);

	sp_frame ok;
	sp_frame_init(&ok, SP_T_AUTH_OK, op->id, op->has_id);
	sp_frame_set_u64(&ok, SP_F_SERVER_TS, sp_time_ms());
	sp_frame_set_u64(&ok, SP_F_CONN_EPOCH, s->conn_epoch);
	sp_frame_set_u64(&ok, SP_F_USER, s->user);
	sp_frame_set_u64(&ok, SP_F_DEVICE, s->device);
	cs_session_send(s, &ok);

	char value[300];
	cs_auth_route_value(s, value, sizeof(value));
	cs_session_call_begin(s);
	if (cs_routes_claim(srv->routes, s->device, value, on_route_claimed, s) != SP_OK)
		on_route_claimed(s, SP_EREDIS, NULL);
	cs_deliver_login(s, op->last_seq);
done:
	cs_session_call_end(s);
	free(op);
}

void
cs_auth_auth(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
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
	char url[256];
	s->st = CS_ST_AUTHING;
	cs_session_call_begin(s);
	int rc = cs_keysrv_url(srv, url, sizeof(url));
	if (rc == SP_OK)
		rc = cs_rpc_call(srv->rpc, url, &q, on_auth_key, op);
	if (rc) {
		s->st = CS_ST_CHALLENGED;
		cs_session_error(s, f->id, f->has_id, SP_EUNAVAIL, "login unavailable, retry", NULL);
		cs_session_call_end(s);
		free(op);
	}
}

void
cs_auth_logout(cs_session *s)
{
	cs_server *srv = s->srv;
	cs_session *cur;
	HASH_FIND(hh, srv->by_device, &s->device, sizeof(s->device), cur);
	if (cur == s)
		HASH_DEL(srv->by_device, s);
	char value[300];
	cs_auth_route_value(s, value, sizeof(value));
	cs_routes_release(srv->routes, s->device, value);
	s->st = CS_ST_HELLO;
}
