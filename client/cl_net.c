/*
 * The connection: router bootstrap or a fixed connsrv, login, reconnect with exponential
 * backoff and full jitter, keepalive (PING when idle, a missing PONG drops the
 * connection), request/reply matching by request id, and a queue for the DELIVERs that
 * arrive while a reply is awaited (they are processed, in order, by the receive loop;
 * nothing is ACKed before it is stored).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "sp_time.h"

#define CL_REPLY_TIMEOUT_MS 20000
#define CL_PING_MS 60000
#define CL_PONG_TIMEOUT_MS 10000

uint64_t
cl_ping_ms(const sealpost *sp)
{
	return sp->cfg.ping_ms < 0 ? 0 : sp->cfg.ping_ms > 0 ? (uint64_t)sp->cfg.ping_ms : CL_PING_MS;
}

uint64_t
cl_pong_timeout_ms(const sealpost *sp)
{
	return sp->cfg.pong_timeout_ms > 0 ? (uint64_t)sp->cfg.pong_timeout_ms : CL_PONG_TIMEOUT_MS;
}

/* The next PING is due an interval after the last frame we sent, less up to a quarter of
 * it at random: clients that connected together (after a server restart) drift apart. */
static void
ping_schedule(sealpost *sp, uint64_t now)
{
	uint64_t iv = cl_ping_ms(sp);
	if (iv == 0) {
		sp->ping_at_ms = 0;
		return;
	}
	uint64_t q = iv / 4 < UINT32_MAX - 1 ? iv / 4 : UINT32_MAX - 1;
	sp->ping_at_ms = now + iv - randombytes_uniform((uint32_t)q + 1);
}

uint64_t
cl_backoff_ms(unsigned attempt, uint64_t base, uint64_t cap)
{
	uint64_t ceil = base;
	for (unsigned i = 0; i < attempt && ceil < cap; i++)
		ceil *= 2;
	if (ceil > cap)
		ceil = cap;
	if (ceil > UINT32_MAX - 1)
		ceil = UINT32_MAX - 1;
	return randombytes_uniform((uint32_t)ceil + 1);
}

void
cl_sleep_ms(uint64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

void
cl_deliver_free(cl_deliver *d)
{
	if (!d)
		return;
	free(d->env);
	free(d->ct);
	free(d);
}

void
cl_disconnect(sealpost *sp)
{
	spc_conn_close(sp->conn);
	sp->conn = NULL;
	sp->logged_in = false;
	sp->status_checked = false;
	sp->queue_empty = false;
	/* Unprocessed DELIVERs were not ACKed: the server sends them again. */
	while (sp->dq_head) {
		cl_deliver *d = sp->dq_head;
		sp->dq_head = d->next;
		cl_deliver_free(d);
	}
	sp->dq_tail = NULL;
}

/* The connection was lost (not closed on purpose): the next connect waits a backoff
 * first, longer while connections keep dropping soon after they were made. */
static void
conn_lost(sealpost *sp, const char *why)
{
	if (sp->conn) {
		uint64_t cap = sp->cfg.backoff_cap_ms > 0 ? (uint64_t)sp->cfg.backoff_cap_ms : 10000;
		if (sp_time_ms() - sp->connected_at_ms >= cap)
			sp->drop_streak = 0; /* it stayed up: this is a fresh failure */
		if (sp->drop_streak < 32)
			sp->drop_streak++;
		sp->dropped = true;
		snprintf(sp->drop_reason, sizeof(sp->drop_reason), "%s", why);
	}
	cl_disconnect(sp);
}

static int
split_hostport(const char *s, char *host, size_t cap, int *port)
{
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || (size_t)(colon - s) >= cap)
		return SP_EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (*end || p <= 0 || p > 65535)
		return SP_EINVAL;
	*port = (int)p;
	return SP_OK;
}

#define CL_MAX_SERVERS 16
#define CL_META_SERVERS "connsrvs"

/* Keeps the connsrv list a router gave in the home's store ("host:port" lines), so that a
 * later process can connect while every router is down. */
static void
save_servers(sealpost *sp, const spc_server *sv, size_t n)
{
	char buf[CL_MAX_SERVERS * 264];
	size_t len = 0;
	for (size_t i = 0; i < n && i < CL_MAX_SERVERS; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s:%d\n", sv[i].host, sv[i].port);
	char old[sizeof(buf)];
	int olen = cl_meta_blob(sp, CL_META_SERVERS, old, sizeof(old));
	if (olen == (int)len && memcmp(old, buf, len) == 0)
		return; /* the usual case: no write */
	/* A failure to save costs only the fallback: the connection goes on. */
	cl_meta_set_blob(sp, CL_META_SERVERS, buf, len);
}

/* The saved list, starting at a random entry (so that clients without a router do not all
 * pick the first). Returns how many. */
static size_t
load_servers(sealpost *sp, spc_server *sv, size_t cap)
{
	char buf[CL_MAX_SERVERS * 264 + 1];
	int len = cl_meta_blob(sp, CL_META_SERVERS, buf, sizeof(buf) - 1);
	spc_server all[CL_MAX_SERVERS];
	size_t n = 0;
	if (len <= 0)
		return 0;
	buf[len] = '\0';
	for (char *line = buf, *nl; *line && n < CL_MAX_SERVERS; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		if (spc_hostport(line, (size_t)(nl - line), all[n].host, sizeof(all[n].host),
				 &all[n].port) == SP_OK)
			n++;
	}
	size_t start = n ? randombytes_uniform((uint32_t)n) : 0;
	for (size_t i = 0; i < n && i < cap; i++)
		sv[i] = all[(start + i) % n];
	return n < cap ? n : cap;
}

/* Opens a connection to the first of sv[0..n) that takes it. */
static int
open_any(sealpost *sp, const spc_server *sv, size_t n, char *host, size_t hostcap, int *port,
	 char *err, size_t errlen)
{
	int rc = SP_EUNAVAIL;
	for (size_t i = 0; i < n; i++) {
		rc = spc_conn_open(sv[i].host, sv[i].port, sp->cfg.ca, 5000, &sp->conn, err, errlen);
		if (rc == SP_OK) {
			size_t hl = strnlen(sv[i].host, hostcap - 1);
			memcpy(host, sv[i].host, hl);
			host[hl] = '\0';
			*port = sv[i].port;
			return SP_OK;
		}
		if (rc == SP_ENOMEM)
			return rc;
	}
	return rc;
}

static int
connect_once(sealpost *sp)
{
	char host[256], err[512] = "";
	int port = 0, rc;
	if (!sp->cfg.ca)
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "no CA file: use --ca or SEALPOST_CA");
	if (sp->cfg.server) {
		if (split_hostport(sp->cfg.server, host, sizeof(host), &port))
			return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "--server must be HOST:PORT, got '%s'",
				       sp->cfg.server);
		if ((rc = spc_conn_open(host, port, sp->cfg.ca, 5000, &sp->conn, err, sizeof(err))))
			return cl_fail(sp, rc == SP_ENOMEM ? rc : SP_ECLOSED, SEALPOST_ERR_NET, "%s", err);
	} else if (sp->cfg.router) {
		/* Routers in turn; with none answering, the connsrvs the last one listed. */
		spc_server sv[CL_MAX_SERVERS];
		size_t n = 0;
		rc = spc_bootstrap_list(sp->cfg.router, sv, CL_MAX_SERVERS, &n, NULL, 0, err, sizeof(err));
		if (rc == SP_EINVAL)
			return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "%s", err);
		if (rc == SP_OK)
			save_servers(sp, sv, n);
		else if ((n = load_servers(sp, sv, CL_MAX_SERVERS)) == 0)
			return cl_fail(sp, SP_EUNAVAIL, SEALPOST_ERR_NET, "%s", err);
		char oerr[512] = "";
		if ((rc = open_any(sp, sv, n, host, sizeof(host), &port, oerr, sizeof(oerr))))
			return cl_fail(sp, rc == SP_ENOMEM ? rc : SP_ECLOSED, SEALPOST_ERR_NET, "%s%s%s",
				       err[0] ? err : "", err[0] ? "; " : "", oerr);
	} else {
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE,
			       "no server: use --server, --router or SEALPOST_ROUTER");
	}
	sp->queue_empty = false;
	sp->connected_at_ms = sp_time_ms();
	sp->ping_sent_ms = 0;
	ping_schedule(sp, sp->connected_at_ms);
	snprintf(sp->server, sizeof(sp->server), "%s:%d", host, port);
	if (!cl_registered(sp)) {
		sp->connects++;
		return SP_OK;
	}
	rc = spc_conn_login(sp->conn, sp->user, sp->device, sp->auth_sk, sp->last_seq, NULL);
	if (rc) {
		int cls = cl_class_of(rc) == SEALPOST_ERR_NET ? SEALPOST_ERR_NET : SEALPOST_ERR_SERVER;
		cl_disconnect(sp);
		return cl_fail(sp, rc, cls, "login to %s:%d: %s", host, port, sp_strerror(rc));
	}
	sp->logged_in = true;
	sp->connects++;
	uint64_t auth_ts, exp_after;
	spc_conn_login_info(sp->conn, &auth_ts, &exp_after);
	cl_expiry_learn(sp, auth_ts, exp_after);
	/* What we stored before may not have reached the server as an ACK. */
	if (sp->last_seq && (rc = cl_ack(sp, sp->last_seq)))
		return rc;
	return cl_presence_resubscribe(sp);
}

int
cl_connect(sealpost *sp, int attempts)
{
	if (sp->conn)
		return SP_OK;
	uint64_t base = sp->cfg.backoff_base_ms > 0 ? (uint64_t)sp->cfg.backoff_base_ms : 200;
	uint64_t cap = sp->cfg.backoff_cap_ms > 0 ? (uint64_t)sp->cfg.backoff_cap_ms : 10000;
	if (sp->dropped) {
		sp->dropped = false;
		cl_sleep_ms(cl_backoff_ms(sp->drop_streak - 1, base, cap));
	}
	for (unsigned attempt = 0;; attempt++) {
		int rc = connect_once(sp);
		if (rc == SP_OK || sp->errclass != SEALPOST_ERR_NET)
			return rc;
		if (attempts >= 0 && attempt + 1 >= (unsigned)attempts)
			return rc;
		cl_sleep_ms(cl_backoff_ms(attempt, base, cap));
	}
}

/* Network-level failure: the connection is dropped and the error recorded. */
static int
net_fail(sealpost *sp, int rc, const char *what)
{
	if (cl_class_of(rc) != SEALPOST_ERR_NET)
		rc = SP_EPROTO;
	cl_fail(sp, rc == SP_EPROTO ? SP_ECLOSED : rc, SEALPOST_ERR_NET, "%s: %s", what, sp_strerror(rc));
	conn_lost(sp, sp->err);
	return rc == SP_EPROTO ? SP_ECLOSED : rc;
}

/* Sends one frame. Only a failed write loses the connection: a frame that cannot be
 * encoded (too large, a field out of bounds) was not written at all, and is that
 * request's own permanent error. */
static int
conn_send(sealpost *sp, const sp_frame *f)
{
	int rc = spc_conn_send(sp->conn, f);
	if (rc == SP_ECLOSED || rc == SP_EIO)
		return net_fail(sp, rc, sp_frame_type_name(f->type));
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_OTHER, "%s cannot be sent: %s", sp_frame_type_name(f->type),
			       sp_strerror(rc));
	ping_schedule(sp, sp_time_ms());
	return SP_OK;
}

static void
dq_append(sealpost *sp, cl_deliver *d)
{
	if (sp->dq_tail)
		sp->dq_tail->next = d;
	else
		sp->dq_head = d;
	sp->dq_tail = d;
}

static int
enqueue(sealpost *sp, const sp_frame *f)
{
	cl_deliver *d = calloc(1, sizeof(*d));
	if (!d)
		return SP_ENOMEM;
	sp_bin env = sp_frame_bin(f, SP_F_ENV), ct = sp_frame_bin(f, SP_F_CT);
	d->seq = sp_frame_u64(f, SP_F_SEQ);
	d->from_user = sp_frame_u64(f, SP_F_FROM_USER);
	d->from_device = sp_frame_u64(f, SP_F_FROM_DEVICE);
	d->server_ts = sp_frame_u64(f, SP_F_SERVER_TS);
	d->etype = sp_frame_u64(f, SP_F_ETYPE);
	d->group = sp_frame_u64(f, SP_F_GROUP);
	memcpy(d->msg_id, sp_frame_bin(f, SP_F_MSG_ID).p, 16);
	if (!(d->env = malloc(env.len ? env.len : 1)) || (ct.len && !(d->ct = malloc(ct.len)))) {
		cl_deliver_free(d);
		return SP_ENOMEM;
	}
	memcpy(d->env, env.p, env.len);
	d->env_len = env.len;
	if (ct.len)
		memcpy(d->ct, ct.p, ct.len);
	d->ct_len = ct.len;
	dq_append(sp, d);
	return SP_OK;
}

/* A TYPING_EV, queued with the deliveries so that listeners see it in order (marked
 * `typing`: nothing to store or acknowledge). */
static int
enqueue_typing(sealpost *sp, const sp_frame *f)
{
	cl_deliver *d = calloc(1, sizeof(*d));
	if (!d)
		return SP_ENOMEM;
	d->typing = true;
	d->from_user = sp_frame_u64(f, SP_F_FROM_USER);
	d->from_device = sp_frame_u64(f, SP_F_FROM_DEVICE);
	d->etype = sp_frame_u64(f, SP_F_KIND);
	dq_append(sp, d);
	return SP_OK;
}

/* Frames the server sends unprompted. Returns 1 if f was consumed (and finalised), 0 if
 * the caller should look at it, or an error (connection dropped). */
static int
unprompted(sealpost *sp, sp_frame *f)
{
	int rc = 1;
	switch (f->type) {
	case SP_T_DELIVER:
		if (enqueue(sp, f))
			rc = SP_ENOMEM;
		break;
	case SP_T_QUEUE_EMPTY:
		sp->queue_empty = true;
		break;
	case SP_T_TYPING_EV:
		if (enqueue_typing(sp, f))
			rc = SP_ENOMEM;
		break;
	case SP_T_PRESENCE_EV: {
		cl_deliver *d;
		if (cl_presence_deliver(f, &d))
			rc = SP_ENOMEM;
		else
			dq_append(sp, d);
		break;
	}
	case SP_T_PONG:
		break;
	case SP_T_KICKED:
	case SP_T_DRAIN: {
		char why[80] = "server draining";
		if (f->type == SP_T_KICKED) {
			char reason[64] = "";
			if (sp_frame_has(f, SP_F_REASON))
				sp_frame_str(f, SP_F_REASON, reason, sizeof(reason));
			snprintf(why, sizeof(why), "kicked (%s)", reason[0] ? reason : "logged in elsewhere");
		}
		sp_frame_fini(f);
		return net_fail(sp, SP_ECLOSED, why);
	}
	default:
		return 0;
	}
	sp_frame_fini(f);
	return rc;
}

int
cl_call(sealpost *sp, sp_frame *q, sp_frame *r)
{
	if (!sp->conn)
		return cl_fail(sp, SP_ECLOSED, SEALPOST_ERR_NET, "not connected");
	q->has_id = true;
	q->id = ++sp->next_id;
	int rc = conn_send(sp, q);
	if (rc)
		return rc;
	uint64_t deadline = sp_time_ms() + CL_REPLY_TIMEOUT_MS;
	for (;;) {
		uint64_t now = sp_time_ms();
		if (now >= deadline)
			return net_fail(sp, SP_ETIMEDOUT, sp_frame_type_name(q->type));
		rc = spc_conn_recv(sp->conn, (int)(deadline - now), r);
		if (rc)
			return net_fail(sp, rc, sp_frame_type_name(q->type));
		sp->ping_sent_ms = 0; /* the server is alive */
		if ((rc = unprompted(sp, r)) < 0)
			return rc;
		if (rc == 1)
			continue;
		if (!r->has_id || r->id != q->id) {
			if (r->type == SP_T_ERROR && !r->has_id) {
				char reason[257] = "";
				sp_frame_str(r, SP_F_REASON, reason, sizeof(reason));
				rc = (int)sp_frame_i64(r, SP_F_CODE);
				sp_frame_fini(r);
				cl_fail(sp, rc < 0 ? rc : SP_EPROTO, SEALPOST_ERR_SERVER, "server error: %s",
					reason[0] ? reason : sp_strerror(rc));
				conn_lost(sp, sp->err);
				return rc < 0 ? rc : SP_EPROTO;
			}
			sp_frame_fini(r); /* a late reply to a request we gave up on */
			continue;
		}
		if (r->type == SP_T_ERROR) {
			char reason[257] = "";
			sp_frame_str(r, SP_F_REASON, reason, sizeof(reason));
			rc = (int)sp_frame_i64(r, SP_F_CODE);
			if (rc >= 0)
				rc = SP_EPROTO;
			uint64_t retry = sp_frame_u64(r, SP_F_RETRY_AFTER);
			sp_frame_fini(r);
			cl_fail(sp, rc, SEALPOST_ERR_SERVER, "%s refused: %s%s%s", sp_frame_type_name(q->type),
				sp_strerror(rc), reason[0] ? ": " : "", reason);
			if (rc == SP_ERATELIMIT && retry)
				cl_sleep_ms(retry < 5000 ? retry : 5000);
			return rc;
		}
		if (sp_frame_slot(r->type, SP_F_REFILL) >= 0 && sp_frame_u64(r, SP_F_REFILL))
			sp->refill = true;
		return SP_OK;
	}
}

int
cl_call_want(sealpost *sp, sp_frame *q, unsigned want, sp_frame *r)
{
	int rc = cl_call(sp, q, r);
	if (rc)
		return rc;
	if (r->type != want) {
		unsigned got = r->type;
		sp_frame_fini(r);
		return cl_fail(sp, SP_EPROTO, SEALPOST_ERR_SERVER, "expected %s, got %s", sp_frame_type_name(want),
			       sp_frame_type_name(got));
	}
	return SP_OK;
}

/* Keepalive while waiting: sends a PING when one is due; drops a connection whose PING
 * went unanswered too long. Returns how long the caller may block (at most max_ms), or
 * a negative error (the connection is gone). */
static int64_t
keepalive(sealpost *sp, uint64_t now, uint64_t max_ms)
{
	if (sp->ping_sent_ms) {
		uint64_t dead = sp->ping_sent_ms + cl_pong_timeout_ms(sp);
		if (now >= dead) {
			char what[64];
			snprintf(what, sizeof(what), "no PONG within %" PRIu64 " ms", cl_pong_timeout_ms(sp));
			return net_fail(sp, SP_ETIMEDOUT, what);
		}
		return (int64_t)(dead - now < max_ms ? dead - now : max_ms);
	}
	if (!sp->ping_at_ms)
		return (int64_t)max_ms;
	if (now >= sp->ping_at_ms) {
		sp_frame p;
		sp_frame_init(&p, SP_T_PING, 0, false);
		int rc = conn_send(sp, &p);
		if (rc)
			return rc;
		sp->ping_sent_ms = now;
		uint64_t t = cl_pong_timeout_ms(sp);
		return (int64_t)(t < max_ms ? t : max_ms);
	}
	return (int64_t)(sp->ping_at_ms - now < max_ms ? sp->ping_at_ms - now : max_ms);
}

int
cl_next_deliver(sealpost *sp, int timeout_ms, cl_deliver **out)
{
	if (sp->dq_head) {
		*out = sp->dq_head;
		sp->dq_head = (*out)->next;
		if (!sp->dq_head)
			sp->dq_tail = NULL;
		(*out)->next = NULL;
		return SP_OK;
	}
	if (!sp->conn)
		return cl_fail(sp, SP_ECLOSED, SEALPOST_ERR_NET, "not connected");
	uint64_t deadline = sp_time_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
	bool was_empty = sp->queue_empty;
	for (;;) {
		uint64_t now = sp_time_ms();
		int64_t wait = keepalive(sp, now, now < deadline ? deadline - now : 0);
		if (wait < 0)
			return (int)wait;
		sp_frame f;
		int rc = spc_conn_recv(sp->conn, (int)wait, &f);
		if (rc == SP_ETIMEDOUT) {
			if (sp_time_ms() >= deadline)
				return SP_ETIMEDOUT;
			continue; /* woken for the keepalive */
		}
		if (rc)
			return net_fail(sp, rc, "receive");
		sp->ping_sent_ms = 0; /* the server is alive */
		if ((rc = unprompted(sp, &f)) < 0)
			return rc;
		if (rc == 0) {
			sp_frame_fini(&f); /* a stray reply or a soft ERROR (e.g. to an ACK) */
			continue;
		}
		if (sp->dq_head) {
			*out = sp->dq_head;
			sp->dq_head = NULL;
			sp->dq_tail = NULL;
			return SP_OK;
		}
		if (sp->queue_empty && !was_empty)
			return SP_EAGAIN; /* let the caller notice QUEUE_EMPTY */
	}
}

int
cl_post(sealpost *sp, const sp_frame *f)
{
	if (!sp->conn)
		return cl_fail(sp, SP_ECLOSED, SEALPOST_ERR_NET, "not connected");
	return conn_send(sp, f);
}

int
cl_ack(sealpost *sp, uint64_t upto)
{
	if (!sp->conn)
		return cl_fail(sp, SP_ECLOSED, SEALPOST_ERR_NET, "not connected");
	sp_frame q;
	sp_frame_init(&q, SP_T_ACK, 0, false);
	sp_frame_set_u64(&q, SP_F_UPTO_SEQ, upto);
	return conn_send(sp, &q);
}
